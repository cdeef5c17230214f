"""gpt-oss's harmony output split into `reasoning_content` and `content`.

After the prompt's `<|start|>assistant` the model writes messages, each a header and a body:
    <|channel|>analysis<|message|>...reasoning...<|end|>
    <|start|>assistant<|channel|>final<|message|>...answer...
and ends its turn with <|return|> (or <|call|>), where generation stops (tokenizer.HARMONY_STOPS),
so that token is not in the text. The analysis channel's bodies are the reasoning; every other
channel's (final, commentary) the content; headers are dropped. Works on the stream as it arrives,
holding back text that may be the start of a marker, like choice_output.ChoiceOutput, whose
interface (feed / finish, content / reasoning / tool_calls) it has.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .choice_output import Delta, _partial_suffix

CHANNEL, MESSAGE, END = "<|channel|>", "<|message|>", "<|end|>"
REASONING_CHANNEL = "analysis"


def is_harmony(template: str | None) -> bool:
    """Whether a chat template writes harmony (gpt-oss): its messages carry channels."""
    return bool(template) and CHANNEL in template and MESSAGE in template


def _channel(header: str) -> str:
    """'<|start|>assistant<|channel|>final<|message|>' header text -> 'final' ('' when none)."""
    _, found, rest = header.partition(CHANNEL)
    words = rest.split("<|", 1)[0].split()      # "commentary to=functions.f <|constrain|>json": commentary
    return words[0] if found and words else ""


@dataclass
class HarmonyOutput:
    _in_body: bool = field(init=False, default=False)
    _to_reasoning: bool = field(init=False, default=False)   # the current body is the analysis channel
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
                    head = header.lstrip()
                    if head.startswith("<|") or "<|".startswith(head):
                        break               # a header still coming (or nothing yet)
                    self._in_body, self._to_reasoning = True, False   # plain text, no header: content
                    continue
                self._in_body, self._to_reasoning, self._buffer = True, _channel(header) == REASONING_CHANNEL, rest
            body, found, rest = self._buffer.partition(END)
            keep = 0 if found else _partial_suffix(body, END)
            self._emit(delta, body[:len(body) - keep])
            if not found:
                self._buffer = body[len(body) - keep:]
                break
            self._in_body, self._buffer = False, rest
        self._add(delta)
        return delta

    def finish(self) -> Delta:
        """The held-back tail of a body once generation ended (an unfinished header is dropped)."""
        delta = Delta()
        if self._in_body:
            self._emit(delta, self._buffer)
        self._buffer = ""
        self._add(delta)
        return delta

    def _emit(self, delta: Delta, text: str):
        if self._to_reasoning:
            delta.reasoning += text
        else:
            delta.content += text

    def _add(self, delta: Delta):
        self.reasoning += delta.reasoning
        self.content += delta.content
