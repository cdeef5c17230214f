"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens): text, the event
stream, stop reasons (max_tokens, stop_sequence, tool_use, end_turn), thinking blocks, tool_use
and tool_result round trips, forced tool calls, Anthropic-shaped errors and the x-api-key header.

The wire format is checked by hand against Anthropic's documented shapes (httpx, every test);
where the `anthropic` package can be imported, its client must also parse the answers and run its
stream helper on them. References: the chat route answering the same conversation at temperature
0 (the same text and prompt tokens), pydantic validating forced call arguments, scripts.
"""
from __future__ import annotations

import json
from typing import Literal

import httpx
import pydantic
import pytest

from api_routes_fixtures import (API_KEY, CALL_ARGS, HERMES_CALL, THOUGHT, WEATHER_PARAMETERS, chat, post,  # noqa: F401
                                 scripted_base, serve_script, server, sse_events, tiny_chat_model)
from server_harness import LiveServer

SYSTEM = "Answer briefly."
QUESTION = "abc def ghi"
WEATHER = {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_PARAMETERS}
CHAT_WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                 "parameters": WEATHER_PARAMETERS}}
STOP_REASON = {"length": "max_tokens", "stop": "end_turn"}


class WeatherArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: Literal["Paris", "Rome"]
    unit: Literal["celsius", "fahrenheit"]


def messages(server, **body) -> dict:
    r = post(server, "/v1/messages", body)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(server, **body) -> list[tuple[str, dict]]:
    r = post(server, "/v1/messages", dict(body, stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = sse_events(r.text)
    assert all(name == data["type"] for name, data in events)     # each `event:` line names its data
    return [data for _, data in events]


def blocks_of(events: list[dict]) -> list[dict]:
    """The content blocks a stream builds (deltas applied), as a client accumulates them."""
    blocks = []
    for e in events:
        if e["type"] == "content_block_start":
            assert e["index"] == len(blocks)
            blocks.append(dict(e["content_block"], partial_json=""))
        elif e["type"] == "content_block_delta":
            d, b = e["delta"], blocks[e["index"]]
            key = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}[d["type"]]
            b[key] += d["partial_json" if key == "partial_json" else key]
    for b in blocks:
        if b["type"] == "tool_use":
            b["input"] = json.loads(b["partial_json"])
        del b["partial_json"]
    return blocks


def check_stream_frame(events: list[dict], whole: dict):
    """message_start ... message_stop in Anthropic's order, agreeing with the whole message."""
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    assert start["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    delta = events[-2]
    assert delta["type"] == "message_delta"
    assert delta["delta"] == {"stop_reason": whole["stop_reason"], "stop_sequence": whole["stop_sequence"]}
    assert delta["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    opened = 0
    for e in events[1:-2]:     # blocks one at a time: start, deltas, stop
        if e["type"] == "content_block_start":
            assert e["index"] == opened
        elif e["type"] in ("content_block_delta", "content_block_stop"):
            assert e["index"] == opened
            opened += e["type"] == "content_block_stop"
    assert opened == len(whole["content"])
    assert blocks_of(events) == whole["content"]


# ----------------------------------------------------------------------------- text

@pytest.mark.parametrize("max_tokens", [6, 40])
def test_text_is_the_chat_routes_text(server, max_tokens):
    msg = messages(server, model="tiny", system=SYSTEM, max_tokens=max_tokens, temperature=0,
                   messages=[{"role": "user", "content": QUESTION}])
    ref = chat(server, max_tokens=max_tokens, temperature=0,
               messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
    assert msg["id"].startswith("msg_") and msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == "tiny"
    assert msg["content"] == [{"type": "text", "text": ref["choices"][0]["message"]["content"]}]
    assert msg["stop_reason"] == STOP_REASON[ref["choices"][0]["finish_reason"]] and msg["stop_sequence"] is None
    assert msg["usage"] == {"input_tokens": ref["usage"]["prompt_tokens"],
                            "output_tokens": ref["usage"]["completion_tokens"]}
    events = streamed(server, model="tiny", system=SYSTEM, max_tokens=max_tokens, temperature=0,
                      messages=[{"role": "user", "content": QUESTION}])
    check_stream_frame(events, msg)


def test_blocks_are_the_chat_messages(server):
    """System text blocks, user text blocks, an assistant turn: the chat route's prompt."""
    msg = messages(server, max_tokens=8, temperature=0, system=[{"type": "text", "text": SYSTEM}], messages=[
        {"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "text", "text": "def"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ghi"}]},
        {"role": "user", "content": "jkl"}])
    ref = chat(server, max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "abc\n\ndef"},
        {"role": "assistant", "content": "ghi"}, {"role": "user", "content": "jkl"}])
    assert msg["usage"]["input_tokens"] == ref["usage"]["prompt_tokens"]
    assert msg["content"][0]["text"] == ref["choices"][0]["message"]["content"]


def test_stop_sequences(server):
    ask = dict(max_tokens=40, temperature=0, messages=[{"role": "user", "content": QUESTION}])
    free = messages(server, **ask)["content"][0]["text"]
    assert len(free) >= 6, free
    stop = free[3:6]            # seen first at or before offset 3
    cut = free[:free.find(stop)]
    msg = messages(server, stop_sequences=["never-there", stop], **ask)
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == stop
    assert msg["content"] == [{"type": "text", "text": cut}]
    ref = chat(server, stop=["never-there", stop], **ask)
    assert ref["choices"][0]["message"]["content"] == cut
    check_stream_frame(streamed(server, stop_sequences=["never-there", stop], **ask), msg)


def test_count_tokens_is_the_prompts_length(server):
    body = dict(system=SYSTEM, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER])
    r = post(server, "/v1/messages/count_tokens", body)
    assert r.status_code == 200, r.text
    ref = chat(server, max_tokens=1, tools=[CHAT_WEATHER],
               messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
    assert r.json() == {"input_tokens": ref["usage"]["prompt_tokens"]}


# ----------------------------------------------------------------------------- thinking and tools

def test_thinking_is_a_block(scripted_base):
    with serve_script(scripted_base, THOUGHT) as live:
        body = dict(model="scripted", max_tokens=100, messages=[{"role": "user", "content": "Capital of France?"}])
        msg = messages(live, **body)
        assert msg["content"] == [{"type": "thinking", "thinking": "\nThe user asks about Paris.\n", "signature": ""},
                                  {"type": "text", "text": "Paris is the capital."}]
        assert msg["stop_reason"] == "end_turn"
        check_stream_frame(streamed(live, **body), msg)


def test_tool_use_parsed_from_the_models_text(scripted_base):
    with serve_script(scripted_base, HERMES_CALL) as live:
        body = dict(model="scripted", max_tokens=100, tools=[WEATHER],
                    messages=[{"role": "user", "content": "Weather in Paris?"}])
        msg = messages(live, **body)
        text, call = msg["content"]
        assert text == {"type": "text", "text": "Checking."}
        assert call["type"] == "tool_use" and call["name"] == "get_weather" and call["input"] == CALL_ARGS
        assert call["id"]
        assert msg["stop_reason"] == "tool_use"
        events = streamed(live, **body)
        check_stream_frame(events, {**msg, "content": [text, {**call, "id": blocks_of(events)[1]["id"]}]})


def test_tool_use_and_result_go_back_as_the_chat_routes_tool_messages(server):
    convo = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": [
                 {"type": "thinking", "thinking": "dropped", "signature": "x"},
                 {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": CALL_ARGS}]},
             {"role": "user", "content": [
                 {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21 C"}]},
                 {"type": "text", "text": "And tomorrow?"}]}]
    msg = messages(server, max_tokens=6, temperature=0, tools=[WEATHER], messages=convo)
    ref = chat(server, max_tokens=6, temperature=0, tools=[CHAT_WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": json.dumps(CALL_ARGS)}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather", "content": "21 C"},
        {"role": "user", "content": "And tomorrow?"}])
    assert msg["usage"]["input_tokens"] == ref["usage"]["prompt_tokens"]
    assert msg["content"][0]["text"] == ref["choices"][0]["message"]["content"]


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
def test_forced_tool_use_is_valid(server, choice):
    body = dict(max_tokens=300, temperature=0, tools=[WEATHER], tool_choice=choice,
                messages=[{"role": "user", "content": "Weather?"}])
    msg = messages(server, **body)
    (call,) = msg["content"]
    assert call["type"] == "tool_use" and call["name"] == "get_weather" and msg["stop_reason"] == "tool_use"
    WeatherArgs.model_validate(call["input"])
    events = streamed(server, **body)
    check_stream_frame(events, {**msg, "content": [{**call, "id": blocks_of(events)[0]["id"]}]})


# ----------------------------------------------------------------------------- structured output

class Colour(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    color: Literal["red", "green", "blue"]
    ok: bool


def test_output_format_is_enforced(server):
    schema = {**Colour.model_json_schema(), "additionalProperties": False}
    ask = [{"role": "user", "content": "a colour as JSON"}]
    msg = messages(server, max_tokens=300, temperature=0, messages=ask,
                   output_config={"format": {"type": "json_schema", "schema": schema}})
    assert msg["stop_reason"] == "end_turn"
    Colour.model_validate_json(msg["content"][0]["text"])
    ref = chat(server, max_tokens=300, temperature=0, messages=ask,
               response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert msg["content"][0]["text"] == ref["choices"][0]["message"]["content"]


# ----------------------------------------------------------------------------- errors, keys

@pytest.mark.parametrize("body, words", [
    (b'{"max_tokens": 5,', "could not parse the JSON"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "'max_tokens'"),
    ({"max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "messages.0.content.0.type: blocks of type 'image' are not supported"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}, "a user message cannot hold tool_use"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "'messages.0.content.0.text'"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
      "tool_choice": {"type": "tool", "name": "nope"}}, "'nope' is not in 'tools'"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stop_sequences": [""]}, "must not be empty"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}, "temperature"),
    ({"max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}, "maximum context length"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
      "output_config": {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}}},
     "Invalid value for 'output_config.format'"),
])
def test_bad_requests_are_anthropic_shaped_400s(server, body, words):
    r = post(server, "/v1/messages", body)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["type"] == "error" and out["error"]["type"] == "invalid_request_error"
    assert set(out) == {"type", "error"} and set(out["error"]) == {"type", "message"}
    assert words in out["error"]["message"], out["error"]["message"]


def test_x_api_key(server):
    body = {"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert post(server, "/v1/messages", body, headers={"x-api-key": API_KEY}).status_code == 200
    for headers in ({}, {"x-api-key": "wrong"}):
        r = post(server, "/v1/messages", body, headers=headers)
        assert r.status_code == 401
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"
    # the OpenAI routes take it too, and keep their own error shape
    r = post(server, "/v1/chat/completions", {"max_tokens": 2, "messages": body["messages"]},
             headers={"x-api-key": API_KEY})
    assert r.status_code == 200
    assert post(server, "/v1/chat/completions", {}, headers={"x-api-key": "wrong"}).json()["error"]["type"] \
        == "authentication_error"
    r = post(server, "/v1/messages/nothing", body)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


# ----------------------------------------------------------------------------- the anthropic client

def test_the_anthropic_client_reads_the_answers(server, scripted_base):
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300)
    # (the client has no sampling arguments any more: temperature travels in extra_body)
    ask = dict(model="tiny", max_tokens=12, extra_body={"temperature": 0}, system=SYSTEM,
               messages=[{"role": "user", "content": QUESTION}])
    msg = client.messages.create(**ask)
    ref = chat(server, max_tokens=12, temperature=0,
               messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
    assert msg.content[0].text == ref["choices"][0]["message"]["content"]
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == msg.content[0].text and final.content[0].text == text
    assert final.stop_reason == msg.stop_reason and final.usage.output_tokens == msg.usage.output_tokens
    assert client.messages.count_tokens(model="tiny", system=SYSTEM, messages=ask["messages"]).input_tokens \
        == msg.usage.input_tokens
    with pytest.raises(anthropic.BadRequestError, match="maximum context length"):
        client.messages.create(model="tiny", max_tokens=100000, messages=ask["messages"])
    parsed = client.messages.parse(model="tiny", max_tokens=300, output_format=Colour, extra_body={"temperature": 0},
                                   messages=[{"role": "user", "content": "a colour as JSON"}])
    assert isinstance(parsed.parsed_output, Colour)
    with serve_script(scripted_base, "<think>hmm</think>" + HERMES_CALL) as live:
        scripted = anthropic.Anthropic(base_url=live.base_url, api_key=API_KEY, max_retries=0, timeout=300)
        body = dict(model="scripted", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "?"}])
        msg = scripted.messages.create(**body)
        assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
        assert msg.content[0].thinking == "hmm" and msg.content[2].input == CALL_ARGS
        with scripted.messages.stream(**body) as stream:
            final = stream.get_final_message()
        assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
        assert final.content[2].input == CALL_ARGS and final.stop_reason == "tool_use"


# ----------------------------------------------------------------------------- the running batch

def test_a_batching_server_answers_both_apis_as_the_single_path(server, tiny_models):
    """With --parallel the requests join the running batch (batch_worker.py): the same greedy
    text, stop sequence and forced call as the single-sequence server's."""
    model = tiny_chat_model(tiny_models, parallel=3)
    ask = dict(max_tokens=20, temperature=0, messages=[{"role": "user", "content": QUESTION}])
    free = messages(server, **ask)["content"][0]["text"]
    stop = free[3:6]
    bodies = [("/v1/messages", ask), ("/v1/messages", dict(ask, stop_sequences=[stop])),
              ("/v1/messages", dict(ask, max_tokens=300, tools=[WEATHER], tool_choice={"type": "any"})),
              ("/v1/responses", {"input": QUESTION, "max_output_tokens": 20, "temperature": 0})]
    with LiveServer(model, model_id="tiny", api_key=None) as batched:
        assert batched.app.state.forgert.batch_worker is not None
        for route, body in bodies:
            alone = post(server, route, body).json()
            together = httpx.post(batched.base_url + route, json=body, timeout=300).json()
            for answer in (alone, together):
                answer.pop("id")
                for item in answer.get("output", []) + answer.get("content", []):
                    item.pop("id", None)
                for key in ("created_at", "completed_at"):
                    answer.pop(key, None)
                answer.get("usage", {}).get("input_tokens_details", {}).pop("cached_tokens", None)
            assert together == alone, route
