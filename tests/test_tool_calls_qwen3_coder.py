"""Tool calls in the XML of Qwen3-Coder and Qwen3.5 / Qwen3.6 (<tool_call><function=NAME>
<parameter=K>...): each value the raw text between the tags, read by its schema type as GLM-4.5's
and MiniMax-M2's are. The style picked from the template (Qwen3 / Qwen2.5's JSON in <tool_call>
still Hermes'), earlier calls rendered as transformers renders them and parsed back, calls parsed
whole, streamed in pieces, and through the server to the official `openai` client.
"""
from __future__ import annotations

import json

import pytest

from test_server_output_parsing import QWEN25_TOOLS_TEMPLATE, ScriptedModel, collect_choice, feed_in_pieces
from test_tool_calls_xml_and_deepseek import ARGS, SEARCH, calls_of, tiny_model  # noqa: F401 (tiny_model: a fixture)
from server_harness import LiveServer

from forgert.chat_output import OutputMode
from forgert.tool_calls import parse_tool_calls, template_style

# The tool-calling parts of Qwen3.5's chat template (its tool section, its way of writing an
# assistant's earlier calls and the tool's answers in a user turn), written here in its style.
QWEN35_TOOLS_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>' }}
    {{- '\\n\\nIf you choose to call a function ONLY reply in the following format with NO suffix:\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n<parameter=example_parameter_2>\\nThis is the value for the second parameter\\nthat can span\\nmultiple lines\\n</parameter>\\n</function>\\n</tool_call><|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "user" or message.role == "system" %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>assistant\\n' + content }}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {%- if loop.first %}
                    {%- if content|trim %}
                        {{- '\\n\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}
                    {%- else %}
                        {{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}
                    {%- endif %}
                {%- else %}
                    {{- '\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}
                {%- endif %}
                {%- for args_name, args_value in tool_call.arguments|items %}
                    {{- '<parameter=' + args_name + '>\\n' }}
                    {%- set args_value = args_value | tojson | safe if args_value is mapping or (args_value is sequence and args_value is not string) else args_value | string %}
                    {{- args_value }}
                    {{- '\\n</parameter>\\n' }}
                {%- endfor %}
                {{- '</function>\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.previtem and loop.previtem.role != "tool" %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != "tool" %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- else %}
        {{- '<think>\\n' }}
    {%- endif %}
{%- endif %}"""

WRITE = {"type": "function", "function": {"name": "write_file", "parameters": {"type": "object", "properties": {
    "path": {"type": "string"}, "content": {"type": "string"}, "overwrite": {"type": "boolean"}}}}}
# ARGS (from the GLM-4.5 tests): a string, an integer, a boolean, an object, and "42" for a string.
CALL = ("<tool_call>\n<function=search>\n<parameter=query>\nweather in Paris\n</parameter>\n"
        "<parameter=limit>\n3\n</parameter>\n<parameter=exact>\nfalse\n</parameter>\n"
        '<parameter=filters>\n{"lang": ["fr", "en"]}\n</parameter>\n<parameter=code>\n42\n</parameter>\n'
        "</function>\n</tool_call>")
# A multi-line value that ends with its own newline and holds the format's closing tags.
FILE_TEXT = "<parameter>x</parameter>\n</function>\nlast line\n"
WRITE_CALL = ("<tool_call>\n<function=write_file>\n<parameter=path>\nnotes.xml\n</parameter>\n"
              f"<parameter=content>\n{FILE_TEXT}\n</parameter>\n</function>\n</tool_call>")
NOW_CALL = "<tool_call>\n<function=now>\n</function>\n</tool_call>"


def test_arguments_follow_their_schema_types():
    """"42" stays a string where the schema says string; 3, false and the object are JSON."""
    left, found = parse_tool_calls("Let me look.\n\n" + CALL, "qwen3_coder", [SEARCH])
    assert left == "Let me look."
    assert calls_of(found) == [("search", ARGS)]


def test_several_calls_multi_line_values_and_calls_without_arguments():
    """One newline each side of a value is the layout; the value's own last newline and tags that
    are not followed by the next parameter or the function's end stay in it."""
    left, found = parse_tool_calls(CALL + "\n" + WRITE_CALL + "\n" + NOW_CALL, "qwen3_coder", [SEARCH, WRITE])
    assert left == ""
    assert calls_of(found) == [("search", ARGS), ("write_file", {"path": "notes.xml", "content": FILE_TEXT}),
                               ("now", {})]


def test_python_spellings_of_booleans_and_null_where_the_schema_allows_them():
    """Qwen3.5's template writes earlier calls' True / False / None as Python does; a string
    parameter, or one of a function the request did not describe, keeps the text."""
    tools = [WRITE, {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "flag": {"type": ["boolean", "null"]}, "other": {"type": ["boolean", "null"]}}}}}]
    text = ("<tool_call>\n<function=f>\n<parameter=flag>\nTrue\n</parameter>\n<parameter=other>\nNone\n"
            "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=write_file>\n<parameter=path>\nTrue\n"
            "</parameter>\n<parameter=overwrite>\nFalse\n</parameter>\n</function>\n</tool_call>\n"
            "<tool_call>\n<function=g>\n<parameter=n>\n7\n</parameter>\n<parameter=b>\nTrue\n</parameter>\n"
            "</function>\n</tool_call>")
    _, found = parse_tool_calls(text, "qwen3_coder", tools)
    assert calls_of(found) == [("f", {"flag": True, "other": None}),
                               ("write_file", {"path": "True", "overwrite": False}),
                               ("g", {"n": 7, "b": "True"})]


@pytest.mark.parametrize("text", [
    "<tool_call>\n<function=search>\n<parameter=query>\nunclosed",                            # cut short
    "<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n</function>\n",       # no </tool_call>
    "<tool_call>\n<function=search>\nstray words\n<parameter=query>\nx\n</parameter>\n</function>\n</tool_call>",
    "<tool_call>\n<parameter=query>\nx\n</parameter>\n</tool_call>",                            # no function
    '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>',                           # Hermes JSON
])
def test_what_is_not_a_call_stays_content(text):
    assert parse_tool_calls(text, "qwen3_coder", [SEARCH]) == (text, [])


def test_template_styles_of_qwen35_and_qwen3():
    """Qwen3.5's template (and Qwen3-Coder's, whose tool section asks for the same format) picks
    this style; Qwen3's and Qwen2.5's JSON inside <tool_call> stays Hermes'."""
    assert template_style(QWEN35_TOOLS_TEMPLATE) == "qwen3_coder"
    assert template_style(QWEN25_TOOLS_TEMPLATE) == "hermes"


def test_the_template_renders_tools_and_calls_as_transformers_does_and_they_parse_back():
    """forgert's request schema and template rendering of tools, two earlier calls and their
    answers equal transformers'; the calls as the template writes them (False as Python writes it)
    parse back to their arguments."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    from forgert.chat import ChatTemplate
    from forgert.server.schemas import ChatCompletionRequest
    from forgert.tool_calls import messages_with_tools

    write_args = {"path": "notes.xml", "content": FILE_TEXT, "overwrite": True}
    request = ChatCompletionRequest.model_validate({"tools": [SEARCH, WRITE], "messages": [
        {"role": "user", "content": "Find the weather and note it."},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": json.dumps(ARGS)}},
            {"id": "c2", "type": "function", "function": {"name": "write_file", "arguments": json.dumps(write_args)}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
        {"role": "tool", "tool_call_id": "c2", "content": "written"}]})
    messages = [m.as_template_message() for m in request.messages]
    rendered_messages, extra = messages_with_tools(QWEN35_TOOLS_TEMPLATE, messages, request.tool_dicts())
    ours = ChatTemplate(QWEN35_TOOLS_TEMPLATE).render(rendered_messages, **extra)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
    expected = hf.apply_chat_template(
        [{"role": "user", "content": "Find the weather and note it."},
         {"role": "assistant", "content": "Looking.", "tool_calls": [
             {"type": "function", "function": {"name": "search", "arguments": ARGS}},
             {"type": "function", "function": {"name": "write_file", "arguments": write_args}}]},
         {"role": "tool", "content": "21 C"}, {"role": "tool", "content": "written"}],
        tools=[SEARCH, WRITE], chat_template=QWEN35_TOOLS_TEMPLATE, add_generation_prompt=True, tokenize=False)
    assert ours == expected
    assert "<parameter=exact>\nFalse\n</parameter>" in ours
    assert "<|im_start|>user\n<tool_response>\n21 C\n</tool_response>\n<tool_response>\nwritten\n</tool_response><|im_end|>" in ours
    turn = ours.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert calls_of(parse_tool_calls(turn, "qwen3_coder", [SEARCH, WRITE])[1]) == [("search", ARGS),
                                                                                 ("write_file", write_args)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_calls_streamed_in_pieces_split_like_the_whole_text(size):
    content, _, found = feed_in_pieces(OutputMode(tool_style="qwen3_coder", tools=[SEARCH, WRITE]),
                                       "Checking.\n\n" + CALL + "\n" + WRITE_CALL, size)
    assert content == "Checking.\n\n"
    assert calls_of(found) == [("search", ARGS), ("write_file", {"path": "notes.xml", "content": FILE_TEXT})]


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_returns_the_calls_to_the_openai_client(tiny_model, stream):
    """Qwen3.5's prompt opens <think>: the reasoning, the prose before the calls, then the calls."""
    script = "The user wants the weather.\n</think>\n\nChecking.\n\n" + CALL + "\n" + NOW_CALL
    with LiveServer(ScriptedModel(tiny_model, script, QWEN35_TOOLS_TEMPLATE), model_id="scripted") as server:
        content, reasoning, found, reason = collect_choice(
            server.openai_client(), stream, model="scripted", tools=[SEARCH],
            messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert reason == "tool_calls"
    assert reasoning == "The user wants the weather.\n"
    assert content.strip() == "Checking."
    assert found == [("search", ARGS), ("now", {})]
