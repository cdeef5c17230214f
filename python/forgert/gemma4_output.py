"""Gemma 4's chat output split into `reasoning_content`, `content` and `tool_calls`.

After the prompt's `<|turn>model\\n` Gemma 4 writes (as its chat template teaches and llama.cpp's
gemma4 parser reads):
    <|channel>thought\\n...the reasoning...<channel|>
    prose <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|> ...
A channel whose name is `thought` (then whitespace) is reasoning up to `<channel|>`; an empty
channel (`<|channel>` right before another `<|channel>` or a `<channel|>`) and a stray
`<channel|>` outside a channel are dropped; `<|channel>` before anything else stays content (text
that mentions the marker). When tools were offered, `<|tool_call>call:NAME{...}<tool_call|>` is a
call whose arguments are Gemma's value syntax (read_value): strings between `<|"|>` marks,
numbers, true / false / null, `{key:value, ...}` with unquoted keys, `[a, b]`; they go out as
JSON text. A call that does not parse (or a `<|tool_call>` without tools) stays content.

Works on the stream as it arrives, holding back text that may be the start of a marker, with
ChoiceOutput's interface (feed / finish -> Delta; content / reasoning / tool_calls): a call is
held until its `<tool_call|>` and goes out whole in tool_calls.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .chat_output import Delta, _partial_suffix
from .tool_calls import ToolCall

CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
QUOTE = '<|"|>'
THOUGHT = "thought"
CALL_PREFIX = "call:"


def is_gemma4(template: str | None) -> bool:
    """Whether a chat template is Gemma 4's: it teaches <|tool_call> calls and <|channel> thoughts."""
    return bool(template) and CALL_OPEN in template and CHANNEL_OPEN in template


# -- Gemma's value syntax ----------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORDS = {"true": True, "false": False, "null": None}


class _Syntax(ValueError):
    pass


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def read_value(text: str, i: int = 0):
    """(value, index after it) of the Gemma value starting at text[i] (after whitespace);
    raises ValueError naming where it is not one."""
    i = _skip_space(text, i)
    if text.startswith(QUOTE, i):
        end = text.find(QUOTE, i + len(QUOTE))
        if end < 0:
            raise _Syntax(f"string at {i} has no closing {QUOTE}")
        return text[i + len(QUOTE):end], end + len(QUOTE)
    if text.startswith("{", i):
        return _read_dict(text, i)
    if text.startswith("[", i):
        return _read_list(text, i)
    for word, value in _WORDS.items():
        if text.startswith(word, i):
            return value, i + len(word)
    m = _NUMBER.match(text, i)
    if m:
        number = m.group()
        return (float(number) if any(c in number for c in ".eE") else int(number)), m.end()
    raise _Syntax(f"no value at {i}: {text[i:i + 20]!r}")


def _read_dict(text: str, i: int):
    out, i = {}, _skip_space(text, i + 1)
    if text.startswith("}", i):
        return out, i + 1
    while True:
        if text.startswith(QUOTE, i):       # a quoted key, as the template writes some
            key, i = read_value(text, i)
            i = _skip_space(text, i)
            if not text.startswith(":", i):
                raise _Syntax(f"key {key!r} at {i} has no ':'")
        else:
            colon = text.find(":", i)
            brace = text.find("}", i)
            if colon < 0 or (0 <= brace < colon):
                raise _Syntax(f"dict entry at {i} has no 'key:'")
            key, i = text[i:colon].strip(), colon
            if not key:
                raise _Syntax(f"empty key at {i}")
        out[key], i = read_value(text, i + 1)
        i = _skip_space(text, i)
        if text.startswith("}", i):
            return out, i + 1
        if not text.startswith(",", i):
            raise _Syntax(f"expected ',' or '}}' at {i}: {text[i:i + 20]!r}")
        i = _skip_space(text, i + 1)


def _read_list(text: str, i: int):
    out, i = [], _skip_space(text, i + 1)
    if text.startswith("]", i):
        return out, i + 1
    while True:
        value, i = read_value(text, i)
        out.append(value)
        i = _skip_space(text, i)
        if text.startswith("]", i):
            return out, i + 1
        if not text.startswith(",", i):
            raise _Syntax(f"expected ',' or ']' at {i}: {text[i:i + 20]!r}")
        i += 1


def parse_call(body: str) -> ToolCall | None:
    """`call:NAME{...}` (the text between <|tool_call> and <tool_call|>) as a ToolCall whose
    arguments are JSON text; None when it is not one."""
    body = body.strip()
    if not body.startswith(CALL_PREFIX):
        return None
    brace = body.find("{")
    name = body[len(CALL_PREFIX):brace].strip() if brace >= 0 else ""
    if not name or any(c.isspace() for c in name):
        return None
    try:
        args, end = _read_dict(body, brace)
    except ValueError:
        return None
    if body[end:].strip():
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


# -- the stream ----------------------------------------------------------------------------

@dataclass
class Gemma4Output:
    parse_calls: bool = False       # tools were offered: <|tool_call> blocks are calls
    _stage: str = field(init=False, default="content")    # "content" | "channel" (after <|channel>) | "thought" | "call"
    _thought_started: bool = field(init=False, default=False)   # the thought's leading whitespace is behind
    _buffer: str = field(init=False, default="")
    content: str = field(init=False, default="")
    reasoning: str = field(init=False, default="")
    tool_calls: list = field(init=False, default_factory=list)

    def _markers(self) -> tuple:
        return (CHANNEL_OPEN, CHANNEL_CLOSE, CALL_OPEN) if self.parse_calls else (CHANNEL_OPEN, CHANNEL_CLOSE)

    def feed(self, text: str) -> Delta:
        delta = Delta()
        self._buffer += text
        while self._step(delta, final=False):
            pass
        self._add(delta)
        return delta

    def finish(self) -> Delta:
        """The held-back tail once generation ended: an unclosed thought is reasoning, an unclosed
        call is parsed as it stands (content when it does not parse)."""
        delta = Delta()
        while self._step(delta, final=True):
            pass
        if self._stage == "channel":            # "<|channel>" then too little to tell: content
            delta.content += CHANNEL_OPEN + self._buffer
        elif self._stage == "thought":
            self._emit_thought(delta, self._buffer)
        elif self._stage == "call":
            self._end_call(delta, self._buffer, closed=False)
        else:
            delta.content += self._buffer
        self._buffer, self._stage = "", "content"
        self._add(delta)
        return delta

    def _step(self, delta: Delta, final: bool) -> bool:
        """Moves the buffer on by one stage change; False when it has to wait for more text."""
        buf = self._buffer
        if self._stage == "content":
            hits = [(i, m) for m in self._markers() if (i := buf.find(m)) >= 0]
            if not hits:
                keep = 0 if final else max(_partial_suffix(buf, m) for m in self._markers())
                delta.content += buf[:len(buf) - keep]
                self._buffer = buf[len(buf) - keep:]
                return False
            i, marker = min(hits)
            delta.content += buf[:i]
            self._buffer = buf[i + len(marker):]
            if marker == CHANNEL_OPEN:
                self._stage = "channel"
            elif marker == CALL_OPEN:
                self._stage = "call"
            return True                         # a stray <channel|>: dropped
        if self._stage == "channel":
            if buf.startswith(CHANNEL_OPEN) or buf.startswith(CHANNEL_CLOSE):
                self._stage = "content"         # an empty channel: the next marker is read as such
                if buf.startswith(CHANNEL_CLOSE):
                    self._buffer = buf[len(CHANNEL_CLOSE):]
                return True
            if buf.startswith(THOUGHT) and len(buf) > len(THOUGHT):
                rest = buf[len(THOUGHT):]
                if rest[0].isspace() or rest.startswith(CHANNEL_CLOSE):
                    self._stage, self._buffer, self._thought_started = "thought", rest, False
                    return True
                if not final and CHANNEL_CLOSE.startswith(rest):
                    return False                # "thought<chan": maybe an empty thought
            elif not final and any(m.startswith(buf) for m in (CHANNEL_OPEN, CHANNEL_CLOSE, THOUGHT)):
                return False                    # too little yet to tell
            elif not final and buf == THOUGHT:
                return False
            if final and buf.strip() in ("", THOUGHT):   # a channel opened at the very end: dropped
                self._stage, self._buffer = "content", ""
                return False
            delta.content += CHANNEL_OPEN       # a mention of the marker: content
            self._stage = "content"
            return True
        if self._stage == "thought":
            before, closed, after = buf.partition(CHANNEL_CLOSE)
            if closed:
                self._emit_thought(delta, before)
                self._stage, self._buffer = "content", after
                return True
            keep = 0 if final else _partial_suffix(before, CHANNEL_CLOSE)
            self._emit_thought(delta, before[:len(before) - keep])
            self._buffer = before[len(before) - keep:]
            return False
        # "call": held until its closing marker
        body, closed, after = buf.partition(CALL_CLOSE)
        if not closed:
            return False
        self._end_call(delta, body, closed=True)
        self._stage, self._buffer = "content", after
        return True

    def _emit_thought(self, delta: Delta, text: str):
        if not self._thought_started:
            text = text.lstrip()
            self._thought_started = bool(text)
        delta.reasoning += text

    def _end_call(self, delta: Delta, body: str, closed: bool):
        call = parse_call(body)
        if call is None:            # not a call after all: content, as written
            delta.content += CALL_OPEN + body + (CALL_CLOSE if closed else "")
        else:
            self.tool_calls.append(call)

    def _add(self, delta: Delta):
        self.reasoning += delta.reasoning
        self.content += delta.content
