"""Tool calling: tools into the prompt through the model's template, tool calls out of its text.

Chat templates that know tools (Qwen2.5/3, Hermes, Llama 3.1+, Mistral) take a `tools` variable
and describe them in the model's own words. A template that ignores `tools` (SmolLM2's) gets them
in a system message asking for the Hermes format. The model's answer is parsed in the format its
template teaches:

  hermes   <tool_call>{"name": ..., "arguments": {...}}</tool_call> (one block per call; Qwen, Hermes)
  llama3   {"name": ..., "parameters": {...}} as the whole answer, optionally after <|python_tag|>,
           several separated by ';'
  mistral  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]  or  [TOOL_CALLS]name[ARGS]{...}
  glm45    GLM-4.5 / 4.6 / 4.7: <tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>
           (newlines between the parts), V as written for string parameters and JSON otherwise, as
           its template writes the arguments of earlier calls
  minimax  MiniMax-M2: <minimax:tool_call><invoke name="NAME"><parameter name="K">V</parameter>...
           </invoke>...</minimax:tool_call>, V read as glm45's
  qwen3_coder  Qwen3-Coder, Qwen3.5 / 3.6: <tool_call>\n<function=NAME>\n<parameter=K>\nV\n</parameter>\n...
           </function>\n</tool_call> (one block per call), V read as glm45's
  deepseek DeepSeek V3 / R1 / V3.1: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}
           <｜tool▁call▁end｜>...<｜tool▁calls▁end｜>, or (V3, R1) function<｜tool▁sep｜>NAME then the
           arguments in a ```json fence
  harmony  gpt-oss: a commentary message whose header names the recipient, the body the arguments:
           <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}  (the header
           is split off by harmony_output.py; harmony_call reads one such message)
  Gemma 4  <|tool_call>call:NAME{key:<|"|>text<|"|>,n:3,...}<tool_call|>, read with its thought
           channel by gemma4_output.py (chat_reader picks it from the template, as harmony)
"""
from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass


@dataclass
class ToolCall:
    name: str
    arguments: str          # JSON text, as OpenAI sends it
    id: str = ""

    def __post_init__(self):
        if not self.id:
            self.id = "call_" + uuid.uuid4().hex[:24]

    @classmethod
    def for_style(cls, style: str, name: str, arguments: str) -> "ToolCall":
        """Mistral's templates refuse call ids that are not 9 letters or digits when the calls
        come back in the next request; other templates take OpenAI's call_... ids."""
        if style == "mistral":
            return cls(name, arguments, "".join(secrets.choice(string.ascii_letters + string.digits)
                                                for _ in range(9)))
        return cls(name, arguments)

    def as_openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out["index"] = index
        return out


def template_style(template: str | None) -> str:
    """Which output format the chat template teaches (a style of the module's docstring)."""
    t = template or ""
    if "<|channel|>" in t and "<|message|>" in t:
        return "harmony"
    if "<arg_key>" in t:    # GLM-4.5's XML calls (its template has <tool_call> too)
        return "glm45"
    if "<tool_call>" in t and "<function=" in t and "<parameter=" in t:   # not Qwen3's JSON in <tool_call>
        return "qwen3_coder"
    if "<minimax:tool_call>" in t:
        return "minimax"
    if DEEPSEEK_CALLS_BEGIN in t:
        return "deepseek"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<tool_call>" in t:
        return "hermes"
    if "<|python_tag|>" in t or "ipython" in t:
        return "llama3"
    return "hermes"


def _template_knows_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def _fallback_system_text(tools) -> str:
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("You may call one or more functions to assist with the user query. The functions:\n"
            f"<tools>\n{listing}\n</tools>\n"
            "To call a function, answer with a JSON object with its name and arguments inside "
            "<tool_call></tool_call> tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def messages_with_tools(template: str | None, messages, tools) -> tuple[list, dict]:
    """(messages, extra template variables) that put `tools` in the prompt."""
    if _template_knows_tools(template):
        return list(messages), {"tools": list(tools)}
    text = _fallback_system_text(tools)
    messages = list(messages)
    if messages and messages[0].get("role") == "system":
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
    else:
        messages.insert(0, {"role": "system", "content": text})
    return messages, {}


# -- parsing ---------------------------------------------------------------------------------

# Text that, at the start of a tool call in each style, ends the plain content.
# Harmony has none in the text: its calls are told apart by their message headers (harmony_call).
DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
# The styles whose calls are tagged blocks that may follow some prose: (opening tag, closing tag).
BLOCK_TAGS = {"hermes": ("<tool_call>", "</tool_call>"), "glm45": ("<tool_call>", "</tool_call>"),
              "qwen3_coder": ("<tool_call>", "</tool_call>"),
              "minimax": ("<minimax:tool_call>", "</minimax:tool_call>"),
              "deepseek": (DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END)}
CALL_MARKERS = {"hermes": ("<tool_call>",), "glm45": ("<tool_call>",), "qwen3_coder": ("<tool_call>",),
                "minimax": ("<minimax:tool_call>",),
                "deepseek": (DEEPSEEK_CALLS_BEGIN,), "mistral": ("[TOOL_CALLS]",), "llama3": ("<|python_tag|>", "{"),
                "harmony": ()}


def _arguments_text(value) -> str:
    if isinstance(value, str):     # some models write the arguments as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def _call_from_object(obj) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return ToolCall(obj["name"], _arguments_text(args))


def _json_values(text: str) -> list:
    """Consecutive JSON values in text (separated by whitespace, ';' or ','); [] if any is broken."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return []
        values.append(value)


def _flatten(values) -> list:
    out = []
    for v in values:
        out.extend(v if isinstance(v, list) else [v])
    return out


_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def parameter_types(tools) -> dict:
    """{function name: {parameter: its JSON-schema type (a name, or a list of them)}} of a
    request's tools."""
    out = {}
    for tool in tools or ():
        fn = tool.get("function") or {}
        props = (fn.get("parameters") or {}).get("properties") or {}
        out[fn.get("name")] = {k: (v or {}).get("type") for k, v in props.items() if isinstance(v, dict)}
    return out


def _typed_value(raw: str, kind):
    """A call argument written as text: as written where the schema says string, else JSON (as
    written when it is not JSON). Where the schema allows a boolean or null, Python's spellings
    count too: Qwen3.5's template writes earlier calls' True, False and None so."""
    kinds = kind if isinstance(kind, list) else [kind]
    if "string" in kinds:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw in ("True", "False") and "boolean" in kinds:
            return raw == "True"
        return None if raw == "None" and "null" in kinds else raw


def _glm45_call(body: str, types: dict) -> ToolCall | None:
    """One GLM-4.5 call body (NAME, then <arg_key>/<arg_value> pairs); None unless that is all it
    holds. A value is kept as written where the function's schema says string, else read as JSON
    (as written when it is not JSON)."""
    name, _, _ = body.partition("<arg_key>")
    name = name.strip()
    if not name or any(c in name for c in "<>{}\n"):
        return None
    params, args = types.get(name, {}), {}
    pos = body.index(name) + len(name)
    for m in _GLM_ARG.finditer(body, pos):
        if body[pos:m.start()].strip():
            return None
        key = m.group(1).strip()
        args[key] = _typed_value(m.group(2), params.get(key))
        pos = m.end()
    if body[pos:].strip():
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


_MINIMAX_INVOKE = re.compile(r'<invoke name="([^"]+)">(.*?)</invoke>', re.S)
_MINIMAX_PARAM = re.compile(r'<parameter name="([^"]+)">(.*?)</parameter>', re.S)
# A Qwen3-Coder value may hold its own closing tags (code the model writes): a parameter ends only
# where the next one or the function's end follows, a function where the next one or the block's.
_QWEN_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>(?=\s*(?:<function=|\Z))", re.S)
_QWEN_PARAM = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>(?=\s*(?:<parameter=|\Z))", re.S)


def _only(pattern: re.Pattern, text: str) -> list | None:
    """pattern's matches when they and whitespace make up all of text, else None."""
    found, pos = [], 0
    for m in pattern.finditer(text):
        if text[pos:m.start()].strip():
            return None
        found.append(m)
        pos = m.end()
    return found if not text[pos:].strip() else None


def _xml_calls(body: str, types: dict, function: re.Pattern, parameter: re.Pattern, layout) -> list:
    """The calls of one MiniMax-M2 or Qwen3-Coder block: the `function` matches (NAME, its
    parameters) that make it up, each made up of `parameter` matches (K, V); layout(V) drops the
    newlines the format puts around a value."""
    functions = _only(function, body)
    if not functions:
        return [None]
    calls = []
    for fn in functions:
        params = _only(parameter, fn.group(2))
        if params is None:
            return [None]
        name = fn.group(1).strip()
        kinds = types.get(name, {})
        args = {}
        for p in params:
            key = p.group(1).strip()
            args[key] = _typed_value(layout(p.group(2)), kinds.get(key))
        calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
    return calls


def _deepseek_calls(body: str) -> list:
    """The calls of one DeepSeek calls block: NAME<｜tool▁sep｜>ARGS (V3.1), or
    function<｜tool▁sep｜>NAME, a newline and ARGS in a ```json fence (V3, R1)."""
    calls, rest = [], body.strip()
    while rest:
        if not rest.startswith(DEEPSEEK_CALL_BEGIN):
            return [None]
        one, closed, rest = rest[len(DEEPSEEK_CALL_BEGIN):].partition(DEEPSEEK_CALL_END)
        name, sep, args = one.partition(DEEPSEEK_SEP)
        if not closed or not sep:
            return [None]
        if name.strip() == "function" and "\n" in args:   # V3 / R1: the name, then fenced JSON
            name, _, args = args.partition("\n")
            args = args.strip().removeprefix("```json").removesuffix("```")
        values = _json_values(args.strip())
        if not name.strip() or len(values) != 1 or not isinstance(values[0], dict):
            return [None]
        calls.append(ToolCall(name.strip(), json.dumps(values[0], ensure_ascii=False)))
        rest = rest.strip()
    return calls or [None]


def _block_calls(style: str, body: str, types: dict) -> list:
    """The calls one tagged block holds ([None] when it is not a well-formed call block)."""
    if style == "glm45":
        return [_glm45_call(body, types)]
    if style == "minimax":      # newlines around a value are layout
        return _xml_calls(body, types, _MINIMAX_INVOKE, _MINIMAX_PARAM, lambda v: v.strip("\n"))
    if style == "qwen3_coder":  # one newline either side is layout (a file's own last newline stays)
        return _xml_calls(body, types, _QWEN_FUNCTION, _QWEN_PARAM,
                          lambda v: v.removeprefix("\n").removesuffix("\n"))
    if style == "deepseek":
        return _deepseek_calls(body)
    return [_call_from_object(v) for v in _flatten(_json_values(body.strip()))]


def parse_tool_calls(text: str, style: str, tools=None) -> tuple[str, list[ToolCall]]:
    """(content left, tool calls) from a whole answer. Text that does not parse as calls stays
    content: a model that meant to answer in prose is not turned into a broken call. tools: the
    request's, whose parameter types the XML styles' (GLM-4.5's, MiniMax-M2's, Qwen3-Coder's) values
    are read by."""
    if style in BLOCK_TAGS:
        open_tag, close_tag = BLOCK_TAGS[style]
        types = parameter_types(tools)
        content, calls, rest = [], [], text
        while open_tag in rest:
            before, _, after = rest.partition(open_tag)
            body, closed, rest = after.partition(close_tag)
            found = _block_calls(style, body, types) if closed or style == "hermes" else []
            if not found or None in found:
                content.append(before + open_tag + body + (close_tag if closed else ""))
                continue
            content.append(before)
            calls.extend(found)
        content.append(rest)
        return "".join(content).strip() if calls else text, calls
    if style == "mistral":
        before, marker, after = text.partition("[TOOL_CALLS]")
        if not marker:
            return text, []
        calls = []
        for part in after.split("[TOOL_CALLS]"):
            name, args_marker, args = part.partition("[ARGS]")
            if args_marker:                 # v11+: [TOOL_CALLS]name[ARGS]{...}
                values = _json_values(args.strip())
                if len(values) != 1:
                    return text, []
                calls.append(ToolCall(name.strip(), _arguments_text(values[0])))
            else:
                found = [_call_from_object(v) for v in _flatten(_json_values(part.strip()))]
                if not found or None in found:
                    return text, []
                calls.extend(found)
        return before.strip(), [ToolCall.for_style("mistral", c.name, c.arguments) for c in calls]
    # llama3: the whole answer is the call(s)
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    found = [_call_from_object(v) for v in _flatten(_json_values(body))]
    if not found or None in found:
        return text, []
    return "", found


HARMONY_FUNCTIONS = "functions."     # the namespace gpt-oss's template puts the request's tools in


def harmony_function(header: str) -> str | None:
    """The function a harmony message header sends its body to ('to=functions.get_weather',
    before or after its <|channel|>); None when it names no recipient or one outside the
    request's functions (a built-in tool such as browser.search, which this server does not run)."""
    for word in header.replace("<|", " <|").split():
        if word.startswith("to=" + HARMONY_FUNCTIONS):
            return word[len("to=" + HARMONY_FUNCTIONS):] or None
    return None


def harmony_call(name: str, body: str) -> ToolCall | None:
    """The call a harmony message body to function `name` makes; None when the body is not one
    JSON value: that message stays content, as a broken call does in the other formats."""
    values = _json_values(body.strip())
    return ToolCall(name, _arguments_text(values[0])) if len(values) == 1 else None


def forced_call_format(tools, name: str | None) -> dict:
    """The response_format (OpenAI's json_schema shape) that a forced tool_choice puts on the
    output: forced_call_schema's call, for the server's routes and Model.chat alike."""
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": forced_call_schema(tools, name)}}


def forced_call_schema(tools, name: str | None) -> dict:
    """The JSON schema of a call a forced tool_choice must produce: {"name", "arguments"}, for
    the named function or any of them ("required")."""
    def one(tool):
        fn = tool["function"]
        return {"type": "object",
                "properties": {"name": {"const": fn["name"]},
                               "arguments": fn.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False}

    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    return one(chosen[0]) if len(chosen) == 1 else {"anyOf": [one(t) for t in chosen]}
