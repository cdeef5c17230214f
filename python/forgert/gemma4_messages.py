"""A conversation's tool results laid out as Gemma 4's chat template reads them.

OpenAI clients send a call round as assistant(tool_calls) -> tool -> tool ... -> assistant(answer).
Gemma 4's published template has no "tool" role: it renders an assistant message's `tool_calls`,
then its `tool_responses` ([{"name", "response"}], each `<|tool_response>response:NAME{...}
<tool_response|>`), then its content, in one model turn (and leaves that turn open, with no new
`<|turn>model`, when there is no content yet: the model goes on after the results). So the tool
messages after an assistant's calls become that message's tool_responses, and the answer that
follows them its content, as llama.cpp's gemma4 workaround does; a result that is JSON is handed
over parsed (the template prints a mapping's keys and values in its own syntax), any other as
its text; the calls' JSON-text arguments are handed over parsed too (the template prints a
string as it stands inside the call's braces).
"""
from __future__ import annotations

import json

from .gemma4_output import is_gemma4


def uses_tool_responses(template: str | None) -> bool:
    """Whether the template is Gemma 4's and reads tool results as `tool_responses`."""
    return is_gemma4(template) and "tool_responses" in template


def _text(content) -> str:
    if isinstance(content, list):       # OpenAI's content parts: the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return content if isinstance(content, str) else ""


def _parsed(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def _with_parsed_arguments(call):
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    args = _parsed(fn["arguments"])
    return {**call, "function": {**fn, "arguments": args}} if isinstance(args, dict) else call


def _call_name(calls, result: dict, index: int) -> str:
    """The function a tool message answers: the call with its tool_call_id, else the call in
    its position, else the message's own name."""
    names = [(c.get("id"), (c.get("function") or {}).get("name")) for c in calls if isinstance(c, dict)]
    by_id = dict(names)
    if result.get("tool_call_id") in by_id and by_id[result["tool_call_id"]]:
        return by_id[result["tool_call_id"]]
    if index < len(names) and names[index][1]:
        return names[index][1]
    return result.get("name") or result.get("tool_call_id") or "unknown"


def with_tool_responses(messages) -> list:
    """The messages with each assistant(tool_calls) -> tool... -> assistant(content) run merged
    into one assistant message carrying tool_calls, tool_responses and content."""
    out, i = [], 0
    while i < len(messages):
        msg = messages[i]
        i += 1
        if msg.get("role") != "assistant" or not msg.get("tool_calls"):
            out.append(msg)
            continue
        calls = list(msg["tool_calls"])
        merged = {**msg, "tool_calls": [_with_parsed_arguments(c) for c in calls]}
        responses = []
        while i < len(messages) and messages[i].get("role") == "tool":
            result = messages[i]
            responses.append({"name": _call_name(calls, result, len(responses)),
                              "response": _parsed(_text(result.get("content")))})
            i += 1
        if responses:
            merged["tool_responses"] = responses
            after = messages[i] if i < len(messages) else None
            if after is not None and after.get("role") == "assistant" and not after.get("tool_calls") \
                    and _text(after.get("content")):
                merged["content"] = after["content"]
                i += 1
        out.append(merged)
    return out
