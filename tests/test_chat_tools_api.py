"""Model.chat / chat_stream with tools: the answer read as OpenAI's assistant message
(Completion.message: content, reasoning, tool_calls), by the server's parsers, on the Python API.

A forced call (tool_choice "required" / named) runs a real tiny model under the call's grammar;
the free-form readings (a Hermes call after reasoning and prose, a plain answer) replace the
model's generation with a hand-written text, cut into 3-character pieces, as the server's
output-parsing tests do: the expected fields are written by hand.
"""
from __future__ import annotations

import json

import pytest

from forgert.completion import Completion, Usage
from api_routes_fixtures import tiny_chat_model
from scripted_model import THINKING_TEMPLATE

# enums: under the forced call's grammar even a random model's arguments end
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_chat_model(tiny_models, THINKING_TEMPLATE)


def scripted(monkeypatch, model, script: str):
    """Replaces the model's generation with `script` (the prompt is still rendered and checked)."""
    from forgert.model import TextStream

    def start(prompt_ids, params, logprobs, response_format=None, logit_bias=None):
        def gen():
            for i in range(0, len(script), 3):
                yield script[i:i + 3]
            return Completion(script, [], "stop", Usage(len(prompt_ids), 1, len(prompt_ids) + 1))
        return TextStream(gen())
    monkeypatch.setattr(model, "_start", start)


def scripted_reply(monkeypatch, model, script: str, stream: bool, **chat_kwargs) -> Completion:
    """`script` as the model's answer to ASK through Model.chat, or through Model.chat_stream
    (whose pieces must join to the script): the Completion either returns."""
    scripted(monkeypatch, model, script)
    if not stream:
        return model.chat(ASK, **chat_kwargs)
    s = model.chat_stream(ASK, **chat_kwargs)
    assert "".join(s) == script
    return s.completion


@pytest.mark.parametrize("choice, name", [("required", None), ({"type": "function", "function": {"name": "get_time"}},
                                                                 "get_time")])
def test_a_forced_call_is_one_tool_call(model, choice, name):
    c = model.chat(ASK, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=200, temperature=0)
    msg = c.message
    assert msg.content == "" and msg.reasoning is None and len(msg.tool_calls) == 1, (c.text, msg)
    call = msg.tool_calls[0]
    assert call.name == (name or call.name) and call.name in ("get_weather", "get_time")
    args = json.loads(call.arguments)
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.name]["function"]["parameters"]
    (key,) = schema["required"]
    assert list(args) == [key] and args[key] in schema["properties"][key]["enum"]     # as the schema says
    assert json.loads(c.text) == {"name": call.name, "arguments": args}


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_prose_and_a_call_are_split(model, monkeypatch, stream):
    script = ("<think>The user wants the weather.</think>\n\nLet me check.\n<tool_call>\n"
              '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    c = scripted_reply(monkeypatch, model, script, stream, tools=[WEATHER])
    assert c.text == script
    assert c.message.reasoning == "The user wants the weather."
    assert c.message.content == "Let me check.\n"
    assert [(t.name, json.loads(t.arguments)) for t in c.message.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_without_tools_a_call_tag_is_content_and_the_reasoning_still_split(model, monkeypatch):
    script = "<think>Easy.</think>Paris. <tool_call> is just text here."
    scripted(monkeypatch, model, script)
    msg = model.chat(ASK).message
    assert (msg.reasoning, msg.content, msg.tool_calls) == ("Easy.", "Paris. <tool_call> is just text here.", [])


def test_tools_reach_the_template(model):
    text = model.apply_chat_template(ASK, tools=[WEATHER])
    assert model.prompt_tokens(ASK, tools=[WEATHER]) == model.tokenize(text, add_bos=False)
    assert '"name": "get_weather"' in text
    # tool_choice "none" offers none
    assert "<tools>" not in model.apply_chat_template(ASK)


@pytest.mark.parametrize("kwargs, words", [
    (dict(tools=[{"name": "f"}]), "tools[0] must be {'type': 'function'"),
    (dict(tools=[]), "tools must be a non-empty list"),
    (dict(tools="get_weather"), "tools must be a non-empty list"),
    (dict(tool_choice="required"), "tool_choice 'required' needs tools"),
    (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
     "tool_choice names 'nope', which is not among the tools (get_weather)"),
    (dict(tools=[WEATHER], tool_choice="sometimes"), "tool_choice must be 'auto', 'none', 'required'"),
    (dict(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}),
     "tool_choice that forces a call and response_format both shape the output"),
])
def test_bad_tool_arguments_are_named(model, kwargs, words):
    with pytest.raises(ValueError) as e:
        model.chat(ASK, max_tokens=2, **kwargs)
    assert words in str(e.value)


def test_tool_choice_none_renders_without_tools(model, monkeypatch):
    seen = {}
    real = model._chat_ids

    def spy(messages, **kw):
        seen.update(kw)
        return real(messages, **kw)
    monkeypatch.setattr(model, "_chat_ids", spy)
    scripted(monkeypatch, model, "Paris.")
    msg = model.chat(ASK, tools=[WEATHER], tool_choice="none").message
    assert seen["tools"] is None and msg.content == "Paris."
