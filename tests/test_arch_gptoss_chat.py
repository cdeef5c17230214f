"""gpt-oss's chat format (harmony): generation stops at <|return|> / <|call|> and not at <|end|>,
found by the tokens' text in the file's vocabulary (GGUF and HF directory alike), and the server
returns the analysis channel as `reasoning_content` and the final channel as `content`, whole and
streamed, to the official `openai` client.

The tokenizer is model_factory's tiny BPE with harmony's special tokens added (their ids are
whatever the tokenizer gives them: nothing here knows gpt-oss's real ids); the template is a
minimal harmony template (gpt-oss's own also needs strftime_now and a system preamble).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import gptoss_factory as gf
import model_factory as mf
from server_harness import LiveServer
from test_server_output_parsing import ScriptedModel, collect_choice

from forgert.harmony_output import HarmonyOutput, is_harmony

HARMONY_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
HARMONY_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{%- else -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}")
REASONING = "The user wants the capital; <|en is not a marker, nor is <|end without its bar."
ANSWER = "Paris."
SCRIPT = (f"<|channel|>analysis<|message|>{REASONING}<|end|>"
          f"<|start|>assistant<|channel|>final<|message|>{ANSWER}")


@pytest.fixture(scope="module")
def harmony(tmp_path_factory):
    """(gguf path, hf dir, tokenizer): a tiny gpt-oss whose vocabulary has harmony's tokens."""
    import json as _json
    root = tmp_path_factory.mktemp("gptoss_chat")
    tok = mf.build_tokenizer()
    tok.add_special_tokens(HARMONY_TOKENS)
    model = gf.build_gpt_oss(tok.get_vocab_size())
    gguf_path = gf.write_gguf(model, root / "m.gguf", "F32", tok, chat_template=HARMONY_TEMPLATE)
    hf_dir = gf.save_hf(model, tok, root / "hf", "F32")
    cfg_path = hf_dir / "tokenizer_config.json"
    cfg = _json.loads(cfg_path.read_text())
    cfg["chat_template"] = HARMONY_TEMPLATE
    cfg_path.write_text(_json.dumps(cfg))
    return gguf_path, hf_dir, tok


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
def test_stops_are_return_and_call_not_end(forgert, harmony, fmt):
    gguf_path, hf_dir, tok = harmony
    m = forgert.Model(str(gguf_path if fmt == "gguf" else hf_dir), backend="cpu", n_ctx=64)
    ret, call, end = (tok.token_to_id(t) for t in ("<|return|>", "<|call|>", "<|end|>"))
    assert {ret, call} <= m.tokenizer.stop_ids and end not in m.tokenizer.stop_ids
    prompt = m.tokenize("<|start|>user<|message|>hi<|end|><|start|>assistant", add_bos=False)
    assert prompt[0] == tok.token_to_id("<|start|>") and end in prompt    # one id each
    # <|end|> forced at every step: it closes a message and generation goes on to max_tokens
    c = m.generate(prompt, max_tokens=5, temperature=0, logit_bias={end: 100})
    assert (c.tokens, c.finish_reason) == ([end] * 5, "length")
    for stop in (ret, call):
        c = m.generate(prompt, max_tokens=5, temperature=0, logit_bias={stop: 100})
        assert (c.tokens, c.text, c.finish_reason) == ([], "", "stop")


def test_template_is_recognised_as_harmony():
    assert is_harmony(HARMONY_TEMPLATE)
    assert not is_harmony("{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}")


def feed(text: str, size: int):
    out, content, reasoning = HarmonyOutput(), "", ""
    for i in range(0, len(text), size):
        d = out.feed(text[i:i + size])
        content, reasoning = content + d.content, reasoning + d.reasoning
    d = out.finish()
    assert (out.content, out.reasoning) == (content + d.content, reasoning + d.reasoning)   # deltas add up
    return content + d.content, reasoning + d.reasoning


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_channels_split_in_any_pieces(size):
    assert feed(SCRIPT, size) == (ANSWER, REASONING)
    # no analysis: all content; a commentary channel's body is content too
    assert feed("<|channel|>final<|message|>Hi.", size) == ("Hi.", "")
    assert feed("<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}", size) == ("{}", "")
    # cut off inside the analysis (max_tokens): what there is is reasoning; a bare header is dropped
    assert feed("<|channel|>analysis<|message|>hmm", size) == ("", "hmm")
    assert feed(f"<|channel|>analysis<|message|>a<|end|><|start|>assistant<|chan", size) == ("", "a")
    # a model that writes no header at all: plain content
    assert feed("Just text <|end", size) == ("Just text <|end", "")


@pytest.mark.parametrize("stream", [False, True])
def test_server_returns_analysis_as_reasoning_content(forgert, harmony, stream):
    gguf_path, _, _ = harmony
    m = forgert.Model(str(gguf_path), backend="cpu", n_ctx=256)
    with LiveServer(ScriptedModel(m, SCRIPT, HARMONY_TEMPLATE), model_id="scripted") as srv:
        client = srv.openai_client()
        messages = [{"role": "user", "content": "Capital of France?"}]
        if stream:
            content = reasoning = ""
            for chunk in client.chat.completions.create(model="scripted", messages=messages, stream=True):
                if chunk.choices:
                    d = chunk.choices[0].delta
                    content += d.content or ""
                    reasoning += (d.model_extra or {}).get("reasoning_content") or ""
        else:
            msg = client.chat.completions.create(model="scripted", messages=messages).choices[0].message
            content, reasoning = msg.content, msg.model_extra["reasoning_content"]
    assert (content, reasoning) == (ANSWER, REASONING)


# ----------------------------------------------------------------------------- tool calls

# The tool-calling parts of gpt-oss's own template, written for these tests (the real one also
# renders the tools as TypeScript and needs strftime_now): tools in a developer message, an
# earlier call as `<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>ARGS<|call|>`,
# a tool's answer as `<|start|>functions.NAME to=assistant<|channel|>commentary<|message|>"..."<|end|>`.
HARMONY_TOOLS_TEMPLATE = (
    "{%- if tools -%}<|start|>developer<|message|># Tools\n\nnamespace functions {\n"
    "{%- for t in tools %}\ntype {{ t.function.name }} = (_: {{ t.function.parameters | tojson }}) => any;{% endfor %}\n"
    "} // namespace functions<|end|>{%- endif -%}"
    "{%- set last = namespace(name=none) -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' and m.tool_calls -%}"
    "{%- set call = m.tool_calls[0].function -%}"
    "<|start|>assistant to=functions.{{ call.name }}<|channel|>commentary json<|message|>{{ call.arguments | tojson }}<|call|>"
    "{%- set last.name = call.name -%}"
    "{%- elif m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{%- elif m.role == 'tool' -%}"
    "{%- if last.name is none -%}{{ raise_exception('a tool message with no call before it') }}{%- endif -%}"
    "<|start|>functions.{{ last.name }} to=assistant<|channel|>commentary<|message|>{{ m.content | tojson }}<|end|>"
    "{%- else -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ANALYSIS = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant"
CALL_AFTER_CHANNEL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
CALL_BEFORE_CHANNEL = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city":"Paris"}'


def feed_calls(text: str, size: int, parse_calls: bool = True):
    out, content, reasoning = HarmonyOutput(parse_calls=parse_calls), "", ""
    for i in range(0, len(text), size):
        d = out.feed(text[i:i + size])
        content, reasoning = content + d.content, reasoning + d.reasoning
    d = out.finish()
    assert (out.content, out.reasoning) == (content + d.content, reasoning + d.reasoning)
    return content + d.content, reasoning + d.reasoning, [(c.name, json.loads(c.arguments)) for c in out.tool_calls]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_tool_calls_split_in_any_pieces(size):
    paris = [("get_weather", {"city": "Paris"})]
    # the recipient after the channel (as gpt-oss writes it) or before (as its template does)
    assert feed_calls(ANALYSIS + CALL_AFTER_CHANNEL, size) == ("", "Need the weather.", paris)
    assert feed_calls(CALL_BEFORE_CHANNEL, size) == ("", "", paris)
    # a commentary preamble without a recipient is content; <|call|> ends the body (ignore_eos)
    assert feed_calls("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant"
                      + CALL_AFTER_CHANNEL + "<|call|>", size) == ("Checking.", "", paris)
    # arguments that are not JSON (or cut off by max_tokens): the body stays content, no call
    broken = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Par'
    assert feed_calls(broken, size) == ('{"city": "Par', "", [])
    # no tools offered: a call's body is content, as before; a built-in tool's message is no call
    assert feed_calls(CALL_AFTER_CHANNEL, size, parse_calls=False) == ('{"city": "Paris"}', "", [])
    assert feed_calls("<|channel|>analysis to=browser.search<|message|>{}", size) == ("", "{}", [])
    # plain text that starts like a recipient is still text
    assert feed_calls("to", size) == ("to", "", [])
    assert feed_calls("today", size) == ("today", "", [])


def test_harmony_template_is_the_harmony_tool_style():
    from forgert.tool_calls import template_style
    assert template_style(HARMONY_TOOLS_TEMPLATE) == "harmony" and template_style(HARMONY_TEMPLATE) == "harmony"


TOOL_ROUND = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]


def test_tools_and_tool_messages_render_as_transformers_does():
    """Tools and a call/answer round through forgert's request schema and template rendering
    equal transformers' apply_chat_template of the same template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    from forgert.chat import ChatTemplate
    from forgert.server.schemas import ChatCompletionRequest
    from forgert.tool_calls import messages_with_tools

    request = ChatCompletionRequest.model_validate({"tools": [WEATHER], "messages": TOOL_ROUND})
    messages = [m.as_template_message() for m in request.messages]
    rendered, extra = messages_with_tools(HARMONY_TOOLS_TEMPLATE, messages, request.tool_dicts())
    ours = ChatTemplate(HARMONY_TOOLS_TEMPLATE).render(rendered, **extra)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
    hf_messages = [TOOL_ROUND[0], {"role": "assistant", "content": "", "tool_calls": [
                       {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                   {"role": "tool", "content": "21 C"}]
    assert ours == hf.apply_chat_template(hf_messages, tools=[WEATHER], chat_template=HARMONY_TOOLS_TEMPLATE,
                                          add_generation_prompt=True, tokenize=False)
    assert ('<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"21 C"<|end|>'
            '<|start|>assistant') in ours
    assert "type get_weather = (_: {" in ours


@pytest.mark.parametrize("stream", [False, True])
def test_server_returns_harmony_calls_as_tool_calls(forgert, harmony, stream):
    gguf_path, _, _ = harmony
    m = forgert.Model(str(gguf_path), backend="cpu", n_ctx=512)
    script = ANALYSIS + CALL_AFTER_CHANNEL      # generation stopped at <|call|>
    with LiveServer(ScriptedModel(m, script, HARMONY_TOOLS_TEMPLATE), model_id="scripted") as srv:
        client = srv.openai_client()
        got = collect_choice(client, stream, model="scripted", messages=TOOL_ROUND[:1], tools=[WEATHER])
        assert got == (None, "Need the weather.", [("get_weather", {"city": "Paris"})], "tool_calls")
        # the call and the tool's answer go back in the next request (OpenAI's message shapes)
        got = collect_choice(client, stream, model="scripted", messages=TOOL_ROUND, tools=[WEATHER])
        assert got[3] == "tool_calls"
        # without tools the same text is no call: its body is content
        got = collect_choice(client, stream, model="scripted", messages=TOOL_ROUND[:1])
        assert got == ('{"city": "Paris"}', "Need the weather.", [], "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_server_keeps_malformed_harmony_arguments_as_content(forgert, harmony, stream):
    gguf_path, _, _ = harmony
    m = forgert.Model(str(gguf_path), backend="cpu", n_ctx=512)
    script = ANALYSIS + '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": Paris}'
    with LiveServer(ScriptedModel(m, script, HARMONY_TOOLS_TEMPLATE), model_id="scripted") as srv:
        got = collect_choice(srv.openai_client(), stream, model="scripted", messages=TOOL_ROUND[:1], tools=[WEATHER])
    assert got == ('{"city": Paris}', "Need the weather.", [], "stop")


def test_tool_message_without_a_call_is_a_400(forgert, harmony):
    import openai
    gguf_path, _, _ = harmony
    m = forgert.Model(str(gguf_path), backend="cpu", n_ctx=512)
    with LiveServer(ScriptedModel(m, "", HARMONY_TOOLS_TEMPLATE), model_id="scripted") as srv:
        with pytest.raises(openai.BadRequestError, match="no call before it"):
            srv.openai_client().chat.completions.create(
                model="scripted", tools=[WEATHER], messages=[TOOL_ROUND[0], TOOL_ROUND[2]])


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_choice_on_harmony_is_a_call(forgert, harmony, stream):
    """tool_choice required: the grammar makes the output one {"name", "arguments"} object (the
    scripted text stands for what it lets through), read as in the other formats."""
    gguf_path, _, _ = harmony
    m = forgert.Model(str(gguf_path), backend="cpu", n_ctx=512)
    script = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    with LiveServer(ScriptedModel(m, script, HARMONY_TOOLS_TEMPLATE), model_id="scripted") as srv:
        got = collect_choice(srv.openai_client(), stream, model="scripted", messages=TOOL_ROUND[:1],
                             tools=[WEATHER], tool_choice="required")
    assert got == (None, None, [("get_weather", {"city": "Paris"})], "tool_calls")
