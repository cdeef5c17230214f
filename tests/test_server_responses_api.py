"""OpenAI's Responses API (POST /v1/responses) driven by the official `openai` client: text, the
typed event stream, reasoning items, function calls and their round trip, text.format, errors.

References: the chat route answering the same conversation at temperature 0 (the same text, the
same prompt tokens: the route translates into the chat request), the openai package's own types
(its client parses every response and event, and its `output_text` / stream helpers run on them),
pydantic validating structured output and forced call arguments, hand-written scripts for the
reasoning and call parsing.
"""
from __future__ import annotations

import json
from typing import Literal

import pydantic
import pytest

from api_routes_fixtures import (CALL_ARGS, HERMES_CALL, THOUGHT, WEATHER_PARAMETERS, chat, client,  # noqa: F401
                                 post, scripted_base, serve_script, server, sse_events)

openai = pytest.importorskip("openai")

INSTRUCTIONS = "Answer briefly."
QUESTION = "abc def ghi"
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": WEATHER_PARAMETERS}


class WeatherArgs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: Literal["Paris", "Rome"]
    unit: Literal["celsius", "fahrenheit"]


def chat_messages():
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]


# ----------------------------------------------------------------------------- text

@pytest.mark.parametrize("max_tokens", [6, 40])
def test_text_is_the_chat_routes_text(server, client, max_tokens):
    resp = client.responses.create(model="tiny", instructions=INSTRUCTIONS, input=QUESTION,
                                   max_output_tokens=max_tokens, temperature=0)
    ref = chat(server, messages=chat_messages(), max_tokens=max_tokens, temperature=0)
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.output_text == ref["choices"][0]["message"]["content"]
    assert resp.usage.input_tokens == ref["usage"]["prompt_tokens"]
    assert resp.usage.output_tokens == ref["usage"]["completion_tokens"]
    assert resp.usage.total_tokens == ref["usage"]["total_tokens"]
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    if ref["choices"][0]["finish_reason"] == "length":
        assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    else:
        assert resp.status == "completed" and resp.incomplete_details is None


def test_input_items_are_the_chat_messages(server, client):
    """Typed message items with parts (developer = system) give the chat route's prompt and text."""
    items = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": INSTRUCTIONS}]},
             {"role": "user", "content": [{"type": "input_text", "text": "abc "}, {"type": "input_text", "text": "def"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ghi"}]},
             {"role": "user", "content": "jkl"}]
    resp = client.responses.create(model="tiny", input=items, max_output_tokens=8, temperature=0)
    ref = chat(server, max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "abc def"},
        {"role": "assistant", "content": "ghi"}, {"role": "user", "content": "jkl"}])
    assert resp.usage.input_tokens == ref["usage"]["prompt_tokens"]
    assert resp.output_text == ref["choices"][0]["message"]["content"]


def test_stream_events_in_order(server, client):
    kwargs = dict(model="tiny", instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=12, temperature=0)
    whole = client.responses.create(**kwargs)
    events = list(client.responses.create(stream=True, **kwargs))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = "response.completed" if whole.status == "completed" else "response.incomplete"
    deltas = types.count("response.output_text.delta")
    assert deltas >= 1
    assert types == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * deltas +
                     ["response.output_text.done", "response.content_part.done", "response.output_item.done", final])
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    assert events[-4].text == text and events[-3].part.text == text
    assert events[-1].response.output_text == text and events[-1].response.status == whole.status
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {events[-1].response.output[0].id}
    # on the wire: each event's `event:` line names its type
    raw = post(server, "/v1/responses", dict(kwargs, stream=True))
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert all(name == data["type"] for name, data in sse_events(raw.text))


# ----------------------------------------------------------------------------- reasoning

def test_reasoning_is_an_output_item(scripted_base):
    with serve_script(scripted_base, THOUGHT) as live:
        client = live.openai_client()
        resp = client.responses.create(model="scripted", input="Capital of France?", reasoning={"effort": "low"})
        reasoning, message = resp.output
        assert reasoning.type == "reasoning" and reasoning.content[0].type == "reasoning_text"
        assert reasoning.content[0].text == "\nThe user asks about Paris.\n"
        assert message.type == "message" and resp.output_text == "Paris is the capital."
        assert resp.status == "completed"
        # streamed, through the client's stream helper
        with client.responses.stream(model="scripted", input="Capital of France?") as stream:
            events = list(stream)
            final = stream.get_final_response()
        assert final.output_text == "Paris is the capital."
        thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
        assert thought == "\nThe user asks about Paris.\n"
        added = [e.item.type for e in events if e.type == "response.output_item.added"]
        assert added == ["reasoning", "message"]
        assert [e.output_index for e in events if e.type == "response.output_item.done"] == [0, 1]


# ----------------------------------------------------------------------------- tools

@pytest.mark.parametrize("stream", [False, True])
def test_function_call_parsed_from_the_models_text(scripted_base, stream):
    with serve_script(scripted_base, HERMES_CALL) as live:
        client = live.openai_client()
        kwargs = dict(model="scripted", input="Weather in Paris?", tools=[WEATHER])
        if stream:
            with client.responses.stream(**kwargs) as s:
                events = list(s)
                resp = s.get_final_response()
            args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
            (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
            assert json.loads(args) == CALL_ARGS and done.name == "get_weather" and done.arguments == args
        else:
            resp = client.responses.create(**kwargs)
    message, call = resp.output
    assert resp.output_text == "Checking."
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments) == CALL_ARGS


def test_a_call_and_its_output_go_back_as_the_chat_routes_tool_messages(server, client):
    """function_call + function_call_output items: the same prompt as the chat route's assistant
    tool_calls + tool message (input_tokens equal), and the same greedy answer."""
    items = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather",
              "arguments": json.dumps(CALL_ARGS)},
             {"type": "function_call_output", "call_id": "call_1", "output": "21 degrees, sunny"}]
    resp = client.responses.create(model="tiny", input=items, tools=[WEATHER], max_output_tokens=6, temperature=0)
    ref = chat(server, max_tokens=6, temperature=0,
               tools=[{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}],
               messages=[{"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": json.dumps(CALL_ARGS)}}]},
                         {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
                          "content": "21 degrees, sunny"}])
    assert resp.usage.input_tokens == ref["usage"]["prompt_tokens"]
    assert resp.output_text == (ref["choices"][0]["message"]["content"] or "")
    # the tool's answer is in the prompt the model saw
    from forgert.server.responses_api import ResponsesRequest, responses_chat_request
    translated = responses_chat_request(ResponsesRequest.model_validate({"input": items}))
    assert [m.role for m in translated.messages] == ["user", "assistant", "tool"]
    assert translated.messages[2].content == "21 degrees, sunny" and translated.messages[2].name == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
def test_forced_function_call_is_valid(client, stream):
    kwargs = dict(model="tiny", input="Weather?", tools=[WEATHER], max_output_tokens=300, temperature=0,
                  tool_choice={"type": "function", "name": "get_weather"})
    if stream:
        events = list(client.responses.create(stream=True, **kwargs))
        assert events[-1].type == "response.completed"
        resp = events[-1].response
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert args == resp.output[-1].arguments
    else:
        resp = client.responses.create(**kwargs)
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    WeatherArgs.model_validate_json(calls[0].arguments)
    assert resp.output_text == ""


# ----------------------------------------------------------------------------- structured output

class Colour(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    color: Literal["red", "green", "blue"]
    ok: bool


def test_text_format_is_enforced(server, client):
    schema = {**Colour.model_json_schema(), "additionalProperties": False}
    text = {"format": {"type": "json_schema", "name": "colour", "schema": schema, "strict": True}}
    resp = client.responses.create(model="tiny", input="a colour as JSON", text=text, max_output_tokens=300,
                                   temperature=0)
    assert resp.status == "completed" and resp.text.format.type == "json_schema"
    Colour.model_validate_json(resp.output_text)
    response_format = {"type": "json_schema", "json_schema": {"name": "colour", "schema": schema}}
    ref = chat(server, messages=[{"role": "user", "content": "a colour as JSON"}], max_tokens=300,
               temperature=0, response_format=response_format)
    assert resp.output_text == ref["choices"][0]["message"]["content"]


def test_text_format_becomes_the_chat_response_format():
    """(json_object's free JSON does not end quickly on a random model: checked at the translation.)"""
    from forgert.server.responses_api import ResponsesRequest, responses_chat_request
    for fmt, expected in [({"type": "json_object"}, {"type": "json_object"}), ({"type": "text"}, None)]:
        req = ResponsesRequest.model_validate({"input": "x", "text": {"format": fmt}})
        assert responses_chat_request(req).response_format_dict() == expected


def test_parse_helper_reads_the_structured_output(client):
    resp = client.responses.parse(model="tiny", input="a colour as JSON", text_format=Colour, max_output_tokens=300,
                                  temperature=0)
    assert isinstance(resp.output_parsed, Colour)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("body, param, words", [
    (b'{"input": "hi",', None, "could not parse the JSON"),
    ({"model": "x"}, "input", "Missing required parameter"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "does not store responses"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation", "does not store"),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input.0.type", "'web_search_call' are not supported"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content",
     "'input_image' are not supported"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input.0.arguments",
     "Missing required parameter"),
    ({"input": []}, "input", "empty list"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type", "function tools only"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name",
     "not in 'tools'"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format", "'schema'"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}},
     "text.format", "Invalid value for 'text.format'"),
    ({"input": "hi", "max_output_tokens": 100000}, "input", "maximum context length"),
    ({"input": "hi", "temperature": "0"}, "temperature", "Invalid value for 'temperature'"),
])
def test_bad_requests_are_clear_400s(server, body, param, words):
    r = post(server, "/v1/responses", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"], error["message"]


def test_the_client_raises_on_a_refused_request(client):
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="tiny", input="hi", previous_response_id="resp_123")


def test_the_api_key_is_required(server):
    r = post(server, "/v1/responses", {"input": "hi", "max_output_tokens": 2}, headers={})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
