"""Tool calls in the formats that are not JSON objects in tags: GLM-4.5's and MiniMax-M2's XML
(each argument read by its schema type: as written for strings, JSON for the rest, which is what
GLM-4.5's template writes for earlier calls) and DeepSeek's special-token blocks (V3.1's
NAME<sep>JSON, V3 / R1's fenced JSON). Parsed whole, streamed in pieces, and through the server
to the official `openai` client; GLM-4.5's template style rendered as transformers renders it.
"""
from __future__ import annotations

import json

import pytest

from test_server_output_parsing import ScriptedModel, collect_choice, feed_in_pieces
from server_harness import LiveServer

from forgert.chat_output import OutputMode
from forgert.tool_calls import parse_tool_calls, template_style

# The tool-calling parts of GLM-4.5's chat template (its tool section, its way of writing an
# assistant's earlier calls and the tool's answers), written here in its style.
GLM45_TOOLS_TEMPLATE = """[gMASK]<sop>
{%- if tools -%}
<|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{function-name}
<arg_key>{arg-key-1}</arg_key>
<arg_value>{arg-value-1}</arg_value>
...
</tool_call>
{%- endif -%}
{%- for m in messages %}
{%- if m.role == 'user' %}<|user|>
{{ m.content }}
{%- elif m.role == 'assistant' %}<|assistant|>
{{ m.content or '' }}
{%- if m.tool_calls %}
{%- for tc in m.tool_calls %}
{%- if tc.function %}{%- set tc = tc.function %}{%- endif %}
{{ '\\n<tool_call>' + tc.name }}
{%- for k, v in tc.arguments.items() %}
<arg_key>{{ k }}</arg_key>
<arg_value>{{ v | tojson(ensure_ascii=False) if v is not string else v }}</arg_value>
{%- endfor %}
</tool_call>
{%- endfor %}
{%- endif %}
{%- elif m.role == 'tool' %}<|observation|>
<tool_response>
{{ m.content }}
</tool_response>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|assistant|>{% endif %}"""

SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
    "query": {"type": "string"}, "limit": {"type": "integer"}, "exact": {"type": "boolean"},
    "filters": {"type": "object"}, "code": {"type": ["string", "null"]}}}}}
ARGS = {"query": "weather in Paris", "limit": 3, "exact": False, "filters": {"lang": ["fr", "en"]}, "code": "42"}
CALL = ("<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>weather in Paris</arg_value>\n"
        "<arg_key>limit</arg_key>\n<arg_value>3</arg_value>\n<arg_key>exact</arg_key>\n<arg_value>false</arg_value>\n"
        '<arg_key>filters</arg_key>\n<arg_value>{"lang": ["fr", "en"]}</arg_value>\n'
        "<arg_key>code</arg_key>\n<arg_value>42</arg_value>\n</tool_call>")


def calls_of(found):
    return [(c.name, json.loads(c.arguments)) for c in found]


def test_arguments_follow_their_schema_types():
    """"42" stays a string where the schema says string; 3, false and the object are JSON."""
    left, found = parse_tool_calls("Let me look.\n" + CALL, "glm45", [SEARCH])
    assert left == "Let me look."
    assert calls_of(found) == [("search", ARGS)]


def test_several_calls_and_calls_without_arguments():
    text = CALL + "\n<tool_call>now\n</tool_call>"
    left, found = parse_tool_calls(text, "glm45", [SEARCH])
    assert left == "" and calls_of(found) == [("search", ARGS), ("now", {})]


def test_a_function_the_request_did_not_describe_reads_json_where_it_parses():
    left, found = parse_tool_calls("<tool_call>f\n<arg_key>n</arg_key>\n<arg_value>7</arg_value>\n"
                                   "<arg_key>s</arg_key>\n<arg_value>plain text</arg_value>\n</tool_call>",
                                   "glm45", [SEARCH])
    assert calls_of(found) == [("f", {"n": 7, "s": "plain text"})]


@pytest.mark.parametrize("text", [
    "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>unclosed",               # cut short
    "<tool_call>search\nstray words <arg_key>q</arg_key><arg_value>x</arg_value></tool_call>",
    "<tool_call>\n<arg_key>q</arg_key><arg_value>x</arg_value></tool_call>",          # no name
    "<tool_call>{\"name\": \"search\", \"arguments\": {}}</tool_call>",                 # Hermes JSON
])
def test_what_is_not_a_call_stays_content(text):
    left, found = parse_tool_calls(text, "glm45", [SEARCH])
    assert (left, found) == (text, [])


def test_the_template_renders_tools_and_calls_as_transformers_does_and_they_parse_back():
    """forgert's request schema and template rendering of tools and an earlier call equal
    transformers'; the earlier call as the template writes it parses back to its arguments."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    from forgert.chat import ChatTemplate
    from forgert.server.schemas import ChatCompletionRequest
    from forgert.tool_calls import messages_with_tools

    assert template_style(GLM45_TOOLS_TEMPLATE) == "glm45"
    request = ChatCompletionRequest.model_validate({"tools": [SEARCH], "messages": [
        {"role": "user", "content": "Find the weather."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "search", "arguments": json.dumps(ARGS)}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"}]})
    messages = [m.as_template_message() for m in request.messages]
    rendered_messages, extra = messages_with_tools(GLM45_TOOLS_TEMPLATE, messages, request.tool_dicts())
    ours = ChatTemplate(GLM45_TOOLS_TEMPLATE).render(rendered_messages, **extra)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")))
    expected = hf.apply_chat_template(
        [{"role": "user", "content": "Find the weather."},
         {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
             "name": "search", "arguments": ARGS}}]},
         {"role": "tool", "content": "21 C"}],
        tools=[SEARCH], chat_template=GLM45_TOOLS_TEMPLATE, add_generation_prompt=True, tokenize=False)
    assert ours == expected
    written = "<tool_call>" + ours.split("<tool_call>")[-1].split("</tool_call>")[0] + "</tool_call>"
    assert calls_of(parse_tool_calls(written, "glm45", [SEARCH])[1]) == [("search", ARGS)]


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    """A context past the tiny model's 256 trained positions: the tool section alone takes ~600 of
    its byte-level tokens (the scripted output does not depend on the positions)."""
    import warnings

    import forgert
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=2048)


# ----------------------------------------------------------------- MiniMax-M2 and DeepSeek; all three formats streamed and served

MINIMAX_CALL = ('<minimax:tool_call>\n<invoke name="search">\n<parameter name="query">weather in Paris</parameter>\n'
                '<parameter name="limit">3</parameter>\n<parameter name="exact">false</parameter>\n'
                '<parameter name="filters">{"lang": ["fr", "en"]}</parameter>\n<parameter name="code">42</parameter>\n'
                '</invoke>\n<invoke name="now">\n</invoke>\n</minimax:tool_call>')
DEEPSEEK_V31_CALL = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>search<｜tool▁sep｜>" + json.dumps(ARGS)
                     + "<｜tool▁call▁end｜><｜tool▁call▁begin｜>now<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
DEEPSEEK_V3_CALL = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>search\n```json\n" + json.dumps(ARGS)
                    + "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


@pytest.mark.parametrize("style, text, calls", [
    ("minimax", MINIMAX_CALL, [("search", ARGS), ("now", {})]),
    ("deepseek", DEEPSEEK_V31_CALL, [("search", ARGS), ("now", {})]),
    ("deepseek", DEEPSEEK_V3_CALL, [("search", ARGS)]),
])
def test_minimax_and_deepseek_calls(style, text, calls):
    left, found = parse_tool_calls("Let me look.\n" + text, style, [SEARCH])
    assert left == "Let me look."
    assert calls_of(found) == calls


@pytest.mark.parametrize("style, text", [
    ("minimax", '<minimax:tool_call>\n<invoke name="search">\n<parameter name="q">x</parameter>\n'),   # cut short
    ("minimax", '<minimax:tool_call>stray <invoke name="now"></invoke></minimax:tool_call>'),
    ("deepseek", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>search<｜tool▁sep｜>{broken<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
    ("deepseek", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>search<｜tool▁sep｜>{}"),                    # cut short
])
def test_broken_minimax_and_deepseek_calls_stay_content(style, text):
    assert parse_tool_calls(text, style, [SEARCH]) == (text, [])


def test_template_styles_of_minimax_and_deepseek():
    assert template_style("{{ '<minimax:tool_call>' }}<invoke name=") == "minimax"
    assert template_style("{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'}}") == "deepseek"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("style, text, calls", [
    ("glm45", CALL, [("search", ARGS)]),
    ("minimax", MINIMAX_CALL, [("search", ARGS), ("now", {})]),
    ("deepseek", DEEPSEEK_V31_CALL, [("search", ARGS), ("now", {})]),
])
def test_calls_streamed_in_pieces_split_like_the_whole_text(size, style, text, calls):
    content, _, found = feed_in_pieces(OutputMode(tool_style=style, tools=[SEARCH]), "Checking.\n" + text, size)
    assert content == "Checking.\n" and calls_of(found) == calls


# Templates that teach these formats (only the markers matter to the server: the scripted output is fixed).
MINIMAX_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                    "{% if tools %}<tools>{{ tools | tojson }}</tools> answer with <minimax:tool_call>{% endif %}"
                    "{% if add_generation_prompt %}<assistant>{% endif %}")
DEEPSEEK_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                     "{% if tools %}<tools>{{ tools | tojson }}</tools>{{ '<｜tool▁calls▁begin｜>' }}{% endif %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("template, text, calls", [
    (GLM45_TOOLS_TEMPLATE, CALL, [("search", ARGS)]),
    (MINIMAX_TEMPLATE, MINIMAX_CALL, [("search", ARGS), ("now", {})]),
    (DEEPSEEK_TEMPLATE, DEEPSEEK_V3_CALL, [("search", ARGS)]),
])
def test_the_server_returns_the_calls_to_the_openai_client(tiny_model, stream, template, text, calls):
    with LiveServer(ScriptedModel(tiny_model, "Checking.\n" + text, template), model_id="scripted") as server:
        content, _, found, reason = collect_choice(
            server.openai_client(), stream, model="scripted", tools=[SEARCH],
            messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert reason == "tool_calls"
    assert content.strip() == "Checking."
    assert found == calls
