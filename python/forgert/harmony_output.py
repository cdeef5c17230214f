"""gpt-oss's harmony output split into `reasoning_content`, `content` and `tool_calls`.

After the prompt's `<|start|>assistant` the model writes messages, each a header and a body:
    <|channel|>analysis<|message|>...reasoning...<|end|>
    <|start|>assistant<|channel|>final<|message|>...answer...
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{...}
and ends its turn with <|return|> (an answer) or <|call|> (a tool call), where generation stops
(tokenizer.HARMONY_STOPS), so that token is not in the text. The analysis channel's bodies are the
reasoning; a body whose header names a recipient `to=functions.NAME` (before or after the
channel, as gpt-oss's template writes it and as the model does) is a tool call when tools were
offered; every other body (final, a commentary preamble) is content; headers are dropped. Works
on the stream as it arrives, holding back text that may be the start of a marker, like
choice_output.ChoiceOutput, whose interface (feed / finish, content / reasoning / tool_calls) it
has: a call's body is held until its message ends and goes out whole in tool_calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .tool_calls import harmony_call, harmony_function
from .chat_output import Delta, _partial_suffix

CHANNEL, MESSAGE = "<|channel|>", "<|message|>"
# A body ends at <|end|>; <|call|> / <|return|> end the turn (stops, so only seen with ignore_eos).
BODY_ENDS = ("<|end|>", "<|call|>", "<|return|>")
REASONING_CHANNEL = "analysis"
RECIPIENT = "to="       # a header may start with it: `<|start|>assistant to=functions.f<|channel|>...`


def is_harmony(template: str | None) -> bool:
    """Whether a chat template writes harmony (gpt-oss): its messages carry channels."""
    return bool(template) and CHANNEL in template and MESSAGE in template


def _channel(header: str) -> str:
    """'<|start|>assistant<|channel|>final<|message|>' header text -> 'final' ('' when none)."""
    _, found, rest = header.partition(CHANNEL)
    words = rest.split("<|", 1)[0].split()      # "commentary to=functions.f <|constrain|>json": commentary
    return words[0] if found and words else ""


def _may_be_header(head: str) -> bool:
    """Whether text (stripped) that has no <|message|> yet may still be a message header."""
    return any(head.startswith(m) or m.startswith(head) for m in ("<|", RECIPIENT))


def _body_end(body: str) -> tuple[int, int]:
    """(where the body ends, the end marker's length); (-1, 0) when not yet."""
    hits = [(i, len(m)) for i, m in ((body.find(m), m) for m in BODY_ENDS) if i >= 0]
    return min(hits) if hits else (-1, 0)


@dataclass
class HarmonyOutput:
    parse_calls: bool = False       # tools were offered: bodies sent to functions.NAME are calls
    _in_body: bool = field(init=False, default=False)
    _to_reasoning: bool = field(init=False, default=False)   # the current body is the analysis channel
    _recipient: str | None = field(init=False, default=None)  # the function the current body calls: held
    _held_call: str = field(init=False, default="")
    _buffer: str = field(init=False, default="")
    content: str = field(init=False, default="")
    reasoning: str = field(init=False, default="")
    tool_calls: list = field(init=False, default_factory=list)

    def feed(self, text: str) -> Delta:
        delta = Delta()
        self._buffer += text
        while True:
            if not self._in_body:
                header, found, rest = self._buffer.partition(MESSAGE)
                if not found:
                    if _may_be_header(header.lstrip()):
                        break               # a header still coming (or nothing yet)
                    self._start_body("")    # plain text, no header: content
                    continue
                self._start_body(header)
                self._buffer = rest
            end, marker_len = _body_end(self._buffer)
            body = self._buffer if end < 0 else self._buffer[:end]
            keep = 0 if end >= 0 else max(_partial_suffix(body, m) for m in BODY_ENDS)
            self._emit(delta, body[:len(body) - keep])
            if end < 0:
                self._buffer = body[len(body) - keep:]
                break
            self._end_body(delta)
            self._buffer = self._buffer[end + marker_len:]
        self._add(delta)
        return delta

    def finish(self) -> Delta:
        """The held-back tail of a body once generation ended (an unfinished header is dropped);
        a call's body, cut off or not, is parsed now."""
        delta = Delta()
        head = self._buffer.lstrip()
        if not self._in_body and head and RECIPIENT.startswith(head) and head != RECIPIENT:
            self._start_body("")            # "t", "to": the start of plain text after all
        if self._in_body:
            self._emit(delta, self._buffer)
            self._end_body(delta)
        self._buffer = ""
        self._add(delta)
        return delta

    def _start_body(self, header: str):
        recipient = harmony_function(header) if self.parse_calls else None
        self._in_body, self._to_reasoning = True, _channel(header) == REASONING_CHANNEL and recipient is None
        self._recipient, self._held_call = recipient, ""

    def _end_body(self, delta: Delta):
        self._in_body = False
        if self._recipient is None:
            return
        call = harmony_call(self._recipient, self._held_call)
        if call is None:
            delta.content += self._held_call      # not a call to a function offered: content
        else:
            self.tool_calls.append(call)
        self._recipient, self._held_call = None, ""

    def _emit(self, delta: Delta, text: str):
        if self._recipient is not None:
            self._held_call += text
        elif self._to_reasoning:
            delta.reasoning += text
        else:
            delta.content += text

    def _add(self, delta: Delta):
        self.reasoning += delta.reasoning
        self.content += delta.content
