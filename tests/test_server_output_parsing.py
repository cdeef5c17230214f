"""A model's text split into OpenAI's fields: `reasoning_content` from <think>...</think>, and
`tool_calls` parsed from the Qwen/Hermes, Llama 3.x and Mistral formats, whole and streamed.

The parsers are checked on hand-written model outputs; end to end, a real (tiny) model whose
generation is replaced by a scripted text, cut into pieces at awkward places, is served to the
official `openai` client, which must get the hand-written reasoning, content and calls.
"""
from __future__ import annotations

import json

import pytest

from scripted_model import THINKING_TEMPLATE, ScriptedModel
from server_harness import LiveServer

from forgert.chat_output import ChoiceOutput, OutputMode
from forgert.tool_calls import parse_tool_calls, template_style

CALL_ARGS = {"city": "Paris", "unit": "celsius"}


# ----------------------------------------------------------------------------- parsers

@pytest.mark.parametrize("style, text, content, calls", [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
     "", [("get_weather", CALL_ARGS)]),
    ("hermes", 'Let me check.\n<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
               '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>',
     "Let me check.", [("a", {}), ("b", {"x": 1})]),
    ("hermes", "No tools needed: <tool_call> is just a tag here.", "No tools needed: <tool_call> is just a tag here.", []),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
     "", [("get_weather", CALL_ARGS)]),
    ("llama3", '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}',
     "", [("a", {}), ("b", {"x": 1})]),
    ("llama3", "{not json", "{not json", []),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
     "", [("get_weather", CALL_ARGS)]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
     "", [("get_weather", CALL_ARGS)]),
    ("mistral", "Plain answer.", "Plain answer.", []),
])
def test_tool_call_formats(style, text, content, calls):
    left, found = parse_tool_calls(text, style)
    assert left == content
    assert [(c.name, json.loads(c.arguments)) for c in found] == calls


def test_call_ids_suit_the_template():
    """Mistral's templates raise on call ids that are not 9 alphanumerics when they come back."""
    _, (call,) = parse_tool_calls('[TOOL_CALLS][{"name": "f", "arguments": {}}]', "mistral")
    assert len(call.id) == 9 and call.id.isalnum()
    _, (call,) = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "hermes")
    assert call.id.startswith("call_")


def test_template_style_follows_the_template():
    assert template_style("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert template_style("{{ '<|python_tag|>' }}{% if tools %}{% endif %}") == "llama3"
    assert template_style("[TOOL_CALLS]") == "mistral"


def feed_in_pieces(mode: OutputMode, text: str, size: int) -> tuple[str, str, list]:
    out = ChoiceOutput(mode)
    content, reasoning = "", ""
    for i in range(0, len(text), size):
        d = out.feed(text[i:i + size])
        content, reasoning = content + d.content, reasoning + d.reasoning
    d = out.finish()
    return content + d.content, reasoning + d.reasoning, out.tool_calls


THOUGHT = "<think>\nThe user asks about Paris; </ not the end yet.\n</think>\n\nParis is the capital."
HERMES = 'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_streamed_pieces_split_like_the_whole_text(size):
    content, reasoning, calls = feed_in_pieces(OutputMode(thinking=True), THOUGHT, size)
    assert reasoning == "\nThe user asks about Paris; </ not the end yet.\n"
    assert content == "Paris is the capital." and calls == []
    content, reasoning, calls = feed_in_pieces(OutputMode(tool_style="hermes"), HERMES, size)
    assert content == "Checking." and reasoning == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", CALL_ARGS)]
    # a prompt that opened <think> itself (Qwen3-style templates): the output starts inside it
    content, reasoning, _ = feed_in_pieces(OutputMode(thinking=True, think_open=True),
                                           "hmm, 2+2\n</think>\n4", size)
    assert (reasoning, content) == ("hmm, 2+2\n", "4")
    # no think tag at all: everything is content, held-back prefixes included
    content, reasoning, _ = feed_in_pieces(OutputMode(thinking=True), "<thi is not a tag", size)
    assert (reasoning, content) == ("", "<thi is not a tag")


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    import forgert
    return forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=256)


def serve_script(tiny_model, script):
    return LiveServer(ScriptedModel(tiny_model, script), model_id="scripted")


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_content_is_returned_apart(tiny_model, stream):
    with serve_script(tiny_model, THOUGHT) as server:
        client = server.openai_client()
        kwargs = dict(model="scripted", messages=[{"role": "user", "content": "Capital of France?"}])
        if stream:
            content, reasoning = "", ""
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                if chunk.choices:
                    content += chunk.choices[0].delta.content or ""
                    reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        else:
            msg = client.chat.completions.create(**kwargs).choices[0].message
            content, reasoning = msg.content, msg.model_extra["reasoning_content"]
    assert reasoning == "\nThe user asks about Paris; </ not the end yet.\n"
    assert content == "Paris is the capital."


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}}}


def collect_choice(client, stream: bool, **kwargs):
    """(content, reasoning, [(name, arguments dict)], finish_reason) of one chat completion."""
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or ()]
        return (choice.message.content, (choice.message.model_extra or {}).get("reasoning_content"),
                calls, choice.finish_reason)
    content, reasoning, calls, reason = "", "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        content += d.content or ""
        reasoning += (d.model_extra or {}).get("reasoning_content") or ""
        for tc in d.tool_calls or ():
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        reason = chunk.choices[0].finish_reason or reason
    return (content or None, reasoning or None,
            [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())], reason)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_parsed_from_the_models_text(tiny_model, stream):
    script = "<think>Need the weather.</think>" + HERMES
    with serve_script(tiny_model, script) as server:
        client = server.openai_client()
        kwargs = dict(model="scripted", messages=[{"role": "user", "content": "Weather in Paris?"}],
                      tools=[WEATHER])
        content, reasoning, calls, reason = collect_choice(client, stream, **kwargs)
    assert reason == "tool_calls"
    assert reasoning == "Need the weather."
    assert content == "Checking."
    assert calls == [("get_weather", CALL_ARGS)]


def test_a_json_answer_after_an_opened_think_is_content(tiny_model):
    """A template that opens <think> in the prompt, but response_format makes the output the
    JSON document: it is the content, not reasoning."""
    template = THINKING_TEMPLATE.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")
    with LiveServer(ScriptedModel(tiny_model, '{"a": 1}', template), model_id="scripted") as server:
        msg = server.openai_client().chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"}).choices[0].message
        assert msg.content == '{"a": 1}' and not (msg.model_extra or {}).get("reasoning_content")
        plain = server.openai_client().chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}]).choices[0].message
        assert plain.content == "" and plain.model_extra["reasoning_content"] == '{"a": 1}'


def test_without_tools_a_tool_call_tag_is_plain_content(tiny_model):
    with serve_script(tiny_model, HERMES) as server:
        msg = server.openai_client().chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}]).choices[0].message
    assert msg.content == HERMES and msg.tool_calls is None


# ----------------------------------------------------------------------------- tools in templates

# The tool-calling part of Qwen2.5's chat template (Hermes format), as the model ships it.
QWEN25_TOOLS_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def test_a_template_that_knows_tools_renders_them_as_transformers_does():
    """Tools and a previous call/answer round, through forgert's request schema and template
    rendering, equal transformers' apply_chat_template of the same template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    from forgert.chat import ChatTemplate
    from forgert.server.schemas import ChatCompletionRequest
    from forgert.tool_calls import messages_with_tools

    request = ChatCompletionRequest.model_validate({"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps(CALL_ARGS)}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"}]})
    messages = [m.as_template_message() for m in request.messages]
    rendered_messages, extra = messages_with_tools(QWEN25_TOOLS_TEMPLATE, messages, request.tool_dicts())
    ours = ChatTemplate(QWEN25_TOOLS_TEMPLATE).render(rendered_messages, **extra)

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
    hf_messages = [{"role": "user", "content": "Weather in Paris?"},
                   {"role": "assistant", "content": "", "tool_calls": [
                       {"type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}]},
                   {"role": "tool", "content": "21 C"}]
    expected = hf.apply_chat_template(hf_messages, tools=[WEATHER], chat_template=QWEN25_TOOLS_TEMPLATE,
                                      add_generation_prompt=True, tokenize=False)
    assert ours == expected
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}' in ours
    assert template_style(QWEN25_TOOLS_TEMPLATE) == "hermes"
