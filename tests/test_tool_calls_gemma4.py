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

from api_routes_fixtures import tiny_chat_model
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


# ----------------------------------------------------------------------------- end to end

# Gemma 4's chat template, cut down to what the published one does with tools: the tools in the
# system turn, an assistant's calls in Gemma's value syntax, then its tool_responses, then its
# content; the turn left open (no <|turn>model) while results wait for the model's answer.
GEMMA4_TOOLS_TEMPLATE = """{%- macro arg(v) -%}
{%- if v is string -%}{{ '<|"|>' + v + '<|"|>' }}{%- elif v is boolean -%}{{ 'true' if v else 'false' }}
{%- elif v is mapping -%}{{ '{' }}{%- for k, x in v | dictsort -%}{{ k }}:{{ arg(x) }}{{ ',' if not loop.last }}{%- endfor -%}{{ '}' }}
{%- elif v is sequence -%}{{ '[' }}{%- for x in v -%}{{ arg(x) }}{{ ',' if not loop.last }}{%- endfor -%}{{ ']' }}
{%- else -%}{{ v }}{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(prev=None) -%}
{{- bos_token -}}
{%- if tools -%}
{{- '<|turn>system\n' -}}{%- for t in tools -%}{{ '<|tool>declaration:' + t['function']['name'] + '<tool|>' }}{%- endfor -%}{{ '<turn|>\n' }}
{%- endif -%}
{%- for message in messages -%}
{%- set ns.prev = None -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{- '<|turn>' + role + '\n' -}}
{%- if message['tool_calls'] -%}{%- for c in message['tool_calls'] -%}
{{- '<|tool_call>call:' + c['function']['name'] + '{' -}}
{%- if c['function']['arguments'] is mapping -%}{%- for k, x in c['function']['arguments'] | dictsort -%}{{ k }}:{{ arg(x) }}{{ ',' if not loop.last }}{%- endfor -%}
{%- else -%}{{ c['function']['arguments'] }}{%- endif -%}
{{- '}<tool_call|>' -}}
{%- endfor -%}{%- endif -%}
{%- if message['tool_responses'] -%}{%- for r in message['tool_responses'] -%}
{%- if r['response'] is mapping -%}{{ '<|tool_response>response:' + r['name'] + arg(r['response']) + '<tool_response|>' }}
{%- else -%}{{ '<|tool_response>response:' + r['name'] + '{value:' + arg(r['response']) + '}<tool_response|>' }}{%- endif -%}
{%- endfor -%}{%- set ns.prev = 'tool_response' -%}{%- endif -%}
{{- message['content'] | trim -}}
{%- if not (message['tool_responses'] and not message['content']) -%}{{ '<turn|>\n' }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and ns.prev != 'tool_response' -%}{{ '<|turn>model\n' }}{%- endif -%}
{#- the model thinks in <|channel>thought ... <channel|> -#}"""

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
SCRIPT = ("<|channel>thought\nThe user wants the weather.<channel|>Let me check.\n" + WEATHER_CALL
          + "<|tool_call>call:get_weather{city:" + gemma_str("Rome, Italy") + ",days:1}<tool_call|>")
SCRIPT_CALLS = [("get_weather", {"city": "Paris", "days": 3}), ("get_weather", {"city": "Rome, Italy", "days": 1})]


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_chat_model(tiny_models, GEMMA4_TOOLS_TEMPLATE)


def test_the_test_template_is_read_as_gemma4s():
    from forgert.gemma4_messages import uses_tool_responses
    assert is_gemma4(GEMMA4_TOOLS_TEMPLATE) and uses_tool_responses(GEMMA4_TOOLS_TEMPLATE)


@pytest.mark.parametrize("stream", [False, True])
def test_model_chat_reads_gemma4s_calls(model, monkeypatch, stream):
    from test_chat_tools_api import scripted_reply
    c = scripted_reply(monkeypatch, model, SCRIPT, stream, tools=[WEATHER])
    assert (c.message.reasoning, c.message.content) == ("The user wants the weather.", "Let me check.\n")
    assert [(t.name, json.loads(t.arguments)) for t in c.message.tool_calls] == SCRIPT_CALLS


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_reads_gemma4s_calls(model, stream):
    from scripted_model import ScriptedModel
    from server_harness import LiveServer
    from test_server_output_parsing import collect_choice
    with LiveServer(ScriptedModel(model, SCRIPT, GEMMA4_TOOLS_TEMPLATE), model_id="scripted") as server:
        content, reasoning, calls, reason = collect_choice(
            server.openai_client(), stream, model="scripted", messages=ASK, tools=[WEATHER])
        plain = server.openai_client().chat.completions.create(model="scripted", messages=ASK).choices[0]
    assert (content, reasoning, calls, reason) == ("Let me check.\n", "The user wants the weather.", SCRIPT_CALLS,
                                                   "tool_calls")
    # no tools offered: the calls are content, the thought still reasoning
    assert plain.message.content == SCRIPT.split("<channel|>")[1]
    assert plain.message.model_extra["reasoning_content"] == "The user wants the weather."


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


ROUND = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}'),
                                                        call("c2", "get_weather", {"city": "Rome"})]},
    {"role": "tool", "tool_call_id": "c2", "content": '{"temp": 25, "sky": "clear"}'},
    {"role": "tool", "tool_call_id": "c1", "content": "Rain, 14 C"},
]


def test_tool_results_become_the_calling_messages_tool_responses():
    from forgert.gemma4_messages import with_tool_responses
    calls = [call("c1", "get_weather", {"city": "Paris"}), call("c2", "get_weather", {"city": "Rome"})]
    merged = {"role": "assistant", "content": "", "tool_calls": calls,
              "tool_responses": [{"name": "get_weather", "response": {"temp": 25, "sky": "clear"}},
                                 {"name": "get_weather", "response": "Rain, 14 C"}]}
    assert with_tool_responses(ROUND) == [ROUND[0], merged]
    answer = {"role": "assistant", "content": "Paris: rain; Rome: clear."}
    after = [{"role": "user", "content": "Thanks"}]
    assert with_tool_responses(ROUND + [answer] + after) == [ROUND[0], {**merged, "content": answer["content"]}] + after
    # names found by position when no ids match, else from the tool message; parts joined
    lone = [{"role": "assistant", "tool_calls": [call("x", "f", {})]},
            {"role": "tool", "content": [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}]},
            {"role": "tool", "name": "g", "content": "null"}]
    assert with_tool_responses(lone)[0]["tool_responses"] == [{"name": "f", "response": 42},
                                                              {"name": "g", "response": None}]
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert with_tool_responses(plain) == plain


def test_a_call_round_renders_as_gemma4_expects(model):
    prompt = model.apply_chat_template(ROUND, tools=[WEATHER])
    bos = model.tokenizer.bos_token or ""
    assert prompt == (bos + "<|turn>system\n<|tool>declaration:get_weather<tool|><turn|>\n"
                      "<|turn>user\nWeather in Paris and Rome?<turn|>\n"
                      "<|turn>model\n<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>"
                      "<|tool_call>call:get_weather{city:<|\"|>Rome<|\"|>}<tool_call|>"
                      "<|tool_response>response:get_weather{sky:<|\"|>clear<|\"|>,temp:25}<tool_response|>"
                      "<|tool_response>response:get_weather{value:<|\"|>Rain, 14 C<|\"|>}<tool_response|>")
    answered = model.apply_chat_template(ROUND + [{"role": "assistant", "content": "Rainy, then sunny."},
                                                  {"role": "user", "content": "Thanks"}], tools=[WEATHER])
    assert answered == prompt + "Rainy, then sunny.<turn|>\n<|turn>user\nThanks<turn|>\n<|turn>model\n"


def test_the_server_renders_a_call_round_as_gemma4_expects(model):
    import httpx
    from scripted_model import ScriptedModel
    from server_harness import LiveServer
    round_ = [dict(m) for m in ROUND]
    round_[1] = {**ROUND[1], "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}'),
                                            call("c2", "get_weather", '{"city": "Rome"}')]}   # OpenAI's JSON text
    expected = ((model.tokenizer.bos_token or "") + "<|turn>user\nWeather in Paris and Rome?<turn|>\n"
                "<|turn>model\n<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>"
                "<|tool_call>call:get_weather{city:<|\"|>Rome<|\"|>}<tool_call|>"
                "<|tool_response>response:get_weather{sky:<|\"|>clear<|\"|>,temp:25}<tool_response|>"
                "<|tool_response>response:get_weather{value:<|\"|>Rain, 14 C<|\"|>}<tool_response|>")
    with LiveServer(ScriptedModel(model, SCRIPT, GEMMA4_TOOLS_TEMPLATE), model_id="scripted") as server:
        r = httpx.post(server.base_url + "/tokenize", headers=server.headers, json={"messages": round_})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == model.tokenize(expected, add_bos=False)
