"""How a chat answer is read, for the server's routes and Model.chat alike: the reasoning split
off (<think>...</think>, gpt-oss's analysis channel or Gemma 4's thought channel), the content,
and the tool calls parsed from the format the chat template teaches (chat_output.py,
harmony_output.py, gemma4_output.py); and the checks of
the Python API's `tools` / `tool_choice` (the server's pydantic schemas make its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .chat_output import ChoiceOutput, OutputMode, thinking_mode
from .gemma4_output import Gemma4Output, is_gemma4
from .harmony_output import HarmonyOutput, is_harmony
from .tool_calls import template_style


@dataclass
class ChatMessage:
    """A chat answer as OpenAI's assistant message has it."""
    content: str                                        # the answer without reasoning and calls
    reasoning: str | None = None                        # a thinking model's reasoning, if it wrote any
    tool_calls: list = field(default_factory=list)      # [tool_calls.ToolCall]


def output_reader(template: str | None, prompt_tail: str, tools, forced_call: bool, constrained: bool):
    """A () -> reader factory (feed(text) / finish() -> deltas; content, reasoning, tool_calls)
    for one answer. template: the one the prompt was rendered with; prompt_tail: the prompt's
    last text (a template may open <think> itself); tools: those offered, or None; forced_call:
    tool_choice made the whole output one JSON call; constrained: a grammar shapes the output
    (a forced call or a response_format), so it is neither reasoning nor harmony."""
    thinks, inside = thinking_mode(template, prompt_tail)
    if constrained:
        thinks = inside = False
    if is_harmony(template) and not constrained:   # gpt-oss: channels, not <think>
        return lambda: HarmonyOutput(parse_calls=bool(tools))
    if is_gemma4(template) and not constrained:    # Gemma 4: <|channel>thought, <|tool_call>call:...
        return lambda: Gemma4Output(parse_calls=bool(tools))
    mode = OutputMode(thinking=thinks, think_open=inside, forced_call=forced_call,
                      tool_style=template_style(template) if tools else None, tools=tools or None)
    return lambda: ChoiceOutput(mode)


def read_answer(reader_factory, text: str) -> ChatMessage:
    """The whole answer's text through a fresh reader."""
    reader = reader_factory()
    reader.feed(text)
    reader.finish()
    return ChatMessage(reader.content, reader.reasoning or None, list(reader.tool_calls))


def check_tools(tools, tool_choice):
    """(tools offered to the template or None, False | None | name: forced_tool's meaning) of the
    Python API's arguments, as the server's schemas read a request's: tools, OpenAI's
    [{"type": "function", "function": {"name", "description", "parameters"}}]; tool_choice None /
    "auto", "none" (offered none), "required" (some call), or {"type": "function", "function":
    {"name": NAME}} (that call)."""
    if tools is None:
        if tool_choice not in (None, "auto", "none"):
            raise ValueError(f"tool_choice {tool_choice!r} needs tools")
        return None, False
    if not isinstance(tools, (list, tuple)) or not tools:
        raise ValueError(f"tools must be a non-empty list of OpenAI tool definitions, got {tools!r}")
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                             f"'parameters': {{...}}}}}}, got {t!r}")
        if not isinstance(fn.get("parameters", {}), dict):
            raise ValueError(f"tools[{i}]'s function.parameters must be a JSON schema object")
        names.append(fn["name"])
    if tool_choice in (None, "auto"):
        return list(tools), False
    if tool_choice == "none":
        return None, False
    if tool_choice == "required":
        return list(tools), None
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise ValueError("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', "
                         f"'function': {{'name': ...}}}}, got {tool_choice!r}")
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools ({', '.join(names)})")
    return list(tools), name
