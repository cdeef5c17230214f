"""Gemma 4's answers read as OpenAI's fields (gemma4_output.py): the thought channel as
`reasoning_content`, `<|tool_call>call:NAME{...}<tool_call|>` as `tool_calls` with the value
syntax turned into JSON arguments, and the rest as content, whole and streamed in pieces of every
size from 1 to 7 characters, on hand-written outputs in the format llama.cpp's gemma4 parser
reads; end to end through Model.chat and the server (a scripted generation under a template
with Gemma 4's markers); and the tool results of a conversation given to Gemma 4's template as
the `tool_responses` of the assistant message that made the calls.
"""
from __future__ import annotations

import json

import pytest

from forgert.chat_reader import output_reader, read_answer
from forgert.gemma4_output import Gemma4Output, is_gemma4, parse_call, read_value

Q = '<|"|>'


def gemma_str(s: str) -> str:
    return Q + s + Q


WEATHER_CALL = "<|tool_call>call:get_weather{city:" + gemma_str("Paris") + ",days:3}<tool_call|>"

# (text, tools offered, content, reasoning, [(name, arguments)])
CASES = [
    (WEATHER_CALL, True, "", "", [("get_weather", {"city": "Paris", "days": 3})]),
    (WEATHER_CALL + "<|tool_call>call:get_time{zone:" + gemma_str("CET") + "}<tool_call|>", True,
     "", "", [("get_weather", {"city": "Paris", "days": 3}), ("get_time", {"zone": "CET"})]),
    ("<|tool_call>call:plan{trip:{from:" + gemma_str("Paris") + ", to:" + gemma_str("Rome") + ", stops:[1, 2.5, -3e2]},"
     " fast:true, slow:false, note:null, tags:[" + gemma_str("a, b") + ", " + gemma_str("x:{y}") + "], empty:{}, "
     "none:[]}<tool_call|>", True, "", "",
     [("plan", {"trip": {"from": "Paris", "to": "Rome", "stops": [1, 2.5, -300.0]}, "fast": True, "slow": False,
                "note": None, "tags": ["a, b", "x:{y}"], "empty": {}, "none": []})]),
    ("Let me check the weather.\n" + WEATHER_CALL, True, "Let me check the weather.\n", "",
     [("get_weather", {"city": "Paris", "days": 3})]),
    ("<|channel>thought\nThe user wants Paris' weather.<channel|>" + WEATHER_CALL, True,
     "", "The user wants Paris' weather.", [("get_weather", {"city": "Paris", "days": 3})]),
    ("<|channel><|channel>thought\nHmm.<channel|>Paris.", False, "Paris.", "Hmm.", []),
    ("<|channel>thought\n<channel|>Paris.", False, "Paris.", "", []),
    ("Paris.<channel|>", False, "Paris.", "", []),
    ("<|channel>thought\nA <b>bold</b> idea.<channel|>Paris is the capital.<|channel>thought\n<channel|>", False,
     "Paris is the capital.", "A <b>bold</b> idea.", []),
    ("The <|tool_call> marker opens a call; " + Q + " quotes.", True,
     "The <|tool_call> marker opens a call; " + Q + " quotes.", "", []),
    ("Write <|channel> to open a channel.", False, "Write <|channel> to open a channel.", "", []),
    (WEATHER_CALL, False, WEATHER_CALL, "", []),                          # no tools: content
    ("<|tool_call>call:broken{city:Paris}<tool_call|> then text", True,    # not Gemma's syntax: content
     "<|tool_call>call:broken{city:Paris}<tool_call|> then text", "", []),
    ("Sure. " + WEATHER_CALL + " Done.", True, "Sure.  Done.", "", [("get_weather", {"city": "Paris", "days": 3})]),
    ("<|channel>thought\nUnfinished reason", False, "", "Unfinished reason", []),
    ("<|tool_call>call:get_weather{city:" + gemma_str("Par"), True,      # cut off: content
     "<|tool_call>call:get_weather{city:" + gemma_str("Par"), "", []),
    ("<|tool_call>call:get_weather{city:" + gemma_str("Paris") + "}", True,    # its close never came: still a call
     "", "", [("get_weather", {"city": "Paris"})]),
]


def read_whole(text, tools):
    r = Gemma4Output(parse_calls=tools)
    r.feed(text)
    r.finish()
    return r


@pytest.mark.parametrize("text, tools, content, reasoning, calls", CASES)
def test_gemma4_outputs_read_whole(text, tools, content, reasoning, calls):
    r = read_whole(text, tools)
    assert (r.content, r.reasoning) == (content, reasoning)
    assert [(c.name, json.loads(c.arguments)) for c in r.tool_calls] == calls


@pytest.mark.parametrize("size", range(1, 8))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gemma4_outputs_streamed_in_pieces(size, case):
    text, tools, content, reasoning, calls = CASES[case]
    r = Gemma4Output(parse_calls=tools)
    got_content, got_reasoning = "", ""
    for i in range(0, len(text), size):
        d = r.feed(text[i:i + size])
        got_content, got_reasoning = got_content + d.content, got_reasoning + d.reasoning
    d = r.finish()
    got_content, got_reasoning = got_content + d.content, got_reasoning + d.reasoning
    assert (got_content, got_reasoning) == (content, reasoning) == (r.content, r.reasoning)
    assert [(c.name, json.loads(c.arguments)) for c in r.tool_calls] == calls


def test_values_and_calls():
    assert read_value(gemma_str("a}b,c")) == ("a}b,c", 15)     # 5 + 5 + 5 characters
    assert read_value(" [1,  {k:[true]} ]")[0] == [1, {"k": [True]}]
    assert parse_call("call:f{}").arguments == "{}"
    assert parse_call("call:f{" + gemma_str("quoted key") + ":1}").arguments == '{"quoted key": 1}'
    assert json.loads(parse_call("call:f{s:" + gemma_str("é \"x\"") + "}").arguments) == {"s": "é \"x\""}
    for bad in ("f{}", "call:{}", "call:f", "call:f{a:1", "call:f{a:1} extra", "call:f{a:}", "call:f{:1}",
                "call:f{a:[1 2]}", "call:a b{}"):
        assert parse_call(bad) is None, bad
    with pytest.raises(ValueError, match="no value"):
        read_value("?")


def test_the_reader_follows_the_template():
    gemma = "{{ '<|turn>model' }}{{ '<|channel>thought' }}{{ '<|tool_call>call:' }}"
    assert is_gemma4(gemma) and not is_gemma4("<tool_call>") and not is_gemma4(None)
    text = "<|channel>thought\nHm.<channel|>Ok." + WEATHER_CALL
    msg = read_answer(output_reader(gemma, "<|turn>model\n", [{"type": "function"}], False, False), text)
    assert (msg.reasoning, msg.content) == ("Hm.", "Ok.")
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [("get_weather", {"city": "Paris", "days": 3})]
    msg = read_answer(output_reader(gemma, "<|turn>model\n", None, False, False), text)
    assert (msg.reasoning, msg.content, msg.tool_calls) == ("Hm.", "Ok." + WEATHER_CALL, [])
    # a forced call's grammar writes JSON: read as such, as for every template
    forced = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    msg = read_answer(output_reader(gemma, "", [{"type": "function"}], True, True), forced)
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
