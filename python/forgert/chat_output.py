"""One choice's generated text split into what OpenAI clients expect: `reasoning_content` (a
thinking model's <think>...</think>), `content`, and `tool_calls` parsed from the model's format.

Works on the stream as it arrives: text that might be the start of a marker (`</th`, `<tool_`) is
held back until the next piece decides, so streamed deltas concatenate to the whole response's
fields. Once a tool call starts, the rest of the answer is held and parsed at the end (calls go
out whole, in one chunk each: clients accumulate argument fragments, so one fragment is valid).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .tool_calls import BLOCK_TAGS, CALL_MARKERS, ToolCall, parse_tool_calls

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


@dataclass
class Delta:
    content: str = ""
    reasoning: str = ""

    def __bool__(self):
        return bool(self.content or self.reasoning)


@dataclass
class OutputMode:
    """How a request's output is read."""
    thinking: bool = False          # the template thinks: split <think>...</think> off
    think_open: bool = False        # the prompt already opened <think> (the output starts inside it)
    tool_style: str | None = None   # tools were offered: the template's call format (parsed unless forced)
    tools: list | None = None       # the offered tools (GLM-4.5's calls are read by their parameter types)
    forced_call: bool = False       # tool_choice required / named: the whole output is one JSON call


def thinking_mode(template: str | None, prompt_text: str) -> tuple[bool, bool]:
    """(split reasoning?, already inside <think>?) for a chat template and the rendered prompt."""
    thinks = bool(template) and THINK_CLOSE in template
    return thinks, thinks and prompt_text.rstrip().endswith(THINK_OPEN)


@dataclass
class ChoiceOutput:
    mode: OutputMode
    _stage: str = field(init=False)         # "start" (maybe <think>) | "thinking" | "content"
    _buffer: str = field(init=False, default="")
    _content_started: bool = field(init=False, default=False)
    _held_call: str | None = field(init=False, default=None)   # text from a tool call's start on
    _after_think: bool = field(init=False, default=False)     # drop the blank lines after </think>
    content: str = field(init=False, default="")
    reasoning: str = field(init=False, default="")
    tool_calls: list = field(init=False, default_factory=list)

    def __post_init__(self):
        self._stage = ("thinking" if self.mode.think_open else "start") if self.mode.thinking else "content"

    def feed(self, text: str) -> Delta:
        delta = Delta()
        self._buffer += text
        if self._stage == "start":
            head = self._buffer.lstrip()
            if head.startswith(THINK_OPEN):
                self._stage, self._buffer = "thinking", head[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(head):
                return delta    # empty or a partial "<thi": wait
            else:
                self._stage = "content"
        if self._stage == "thinking":
            before, closed, after = self._buffer.partition(THINK_CLOSE)
            if closed:
                delta.reasoning = before
                self._stage, self._buffer, self._after_think = "content", after, True
            else:
                keep = _partial_suffix(before, THINK_CLOSE)
                delta.reasoning, self._buffer = before[:len(before) - keep], before[len(before) - keep:]
        if self._stage == "content":
            if self._after_think:
                self._buffer = self._buffer.lstrip()
                self._after_think = not self._buffer
            if not self._after_think:
                delta.content = self._content(final=False)
        self.reasoning += delta.reasoning
        self.content += delta.content
        return delta

    def _content(self, final: bool) -> str:
        """The content that can go out now; tool-call text is moved to _held_call."""
        text, self._buffer = self._buffer, ""
        if self._held_call is not None or self.mode.forced_call:
            self._held_call = (self._held_call or "") + text
            return ""
        style = self.mode.tool_style
        if style is None:
            return text
        markers = CALL_MARKERS[style]
        if style in BLOCK_TAGS:      # a call may follow some prose
            hits = [i for i in (text.find(m) for m in markers) if i >= 0]
            if hits:
                self._held_call = text[min(hits):]
                return text[:min(hits)]
            keep = 0 if final else max(_partial_suffix(text, m) for m in markers)
            self._buffer = text[len(text) - keep:] if keep else ""
            return text[:len(text) - keep]
        if self._content_started:  # llama3 / mistral: a call is the whole answer, so it comes first
            return text
        head = text.lstrip()
        if any(head.startswith(m) for m in markers):
            self._held_call = text
            return ""
        if not final and any(m.startswith(head) for m in markers):
            self._buffer = text     # nothing yet, or a partial marker: wait
            return ""
        self._content_started = True
        return text

    def finish(self) -> Delta:
        """The held-back tail, once the generation has ended; tool_calls are set after it."""
        delta = Delta()
        if self._stage in ("start", "thinking"):
            if self._stage == "thinking":
                delta.reasoning, self._buffer = self._buffer, ""      # never closed: all reasoning
            else:
                self._stage = "content"
        if self._stage == "content":
            delta.content = self._content(final=True)
        if self._held_call is not None:
            if self.mode.forced_call:
                delta.content += self._forced_call(self._held_call)
            else:
                left, self.tool_calls = parse_tool_calls(self._held_call, self.mode.tool_style, self.mode.tools)
                delta.content += left     # all of it when no call parsed; prose around the calls
            self._held_call = None
        self.reasoning += delta.reasoning
        self.content += delta.content
        return delta

    def _forced_call(self, text: str) -> str:
        """A grammar-constrained {"name", "arguments"} object becomes the call; anything else
        (cut short by max_tokens) stays content for the client to see."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return text
        self.tool_calls = [ToolCall.for_style(self.mode.tool_style, obj["name"],
                                              json.dumps(obj["arguments"], ensure_ascii=False))]
        return ""
