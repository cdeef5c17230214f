"""Result types of a generation."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int      # sampled tokens, including a final EOS/EOT that ended the text
    total_tokens: int


@dataclass
class Timings:
    prompt_tokens_evaluated: int    # prompt tokens actually run (the rest came from the prompt cache)
    cached_tokens: int
    prefill_s: float
    decode_tokens: int              # forward passes of one token each
    decode_s: float
    # prompt lookup decoding (SamplingParams.prompt_lookup): draft tokens proposed, and those
    # confirmed, each a decode step saved
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    prefill_tokens_per_s: float = field(init=False)
    decode_tokens_per_s: float = field(init=False)

    def __post_init__(self):
        self.prefill_tokens_per_s = self.prompt_tokens_evaluated / self.prefill_s if self.prefill_s > 0 else 0.0
        self.decode_tokens_per_s = self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class Completion:
    text: str
    tokens: list                    # generated ids, without a final EOS/EOT
    finish_reason: str              # "stop" (EOS/EOT or a stop string) | "length" (max_tokens or context full)
    usage: Usage
    timings: Timings = field(repr=False, default=None)
    stop_string: str | None = None  # the stop string that ended it (finish_reason "stop"), if one did
    # chat / chat_stream: the answer read as OpenAI's assistant message (chat_reader.ChatMessage:
    # content, reasoning, tool_calls); None for generate / stream
    message: object = field(repr=False, default=None)


@dataclass
class TokenLogprob:
    token: str                  # the token's text
    logprob: float              # natural log of its probability under the model's raw logits
    top: list = field(default_factory=list)    # [(token text, logprob)] most likely alternatives
    # The bytes of the token and of each alternative (ModelTokenizer.token_bytes: a token holding
    # part of a character has its own, not U+FFFD's); None where not computed (prompt logprobs)
    token_bytes: bytes | None = field(default=None, compare=False, repr=False)
    top_bytes: list | None = field(default=None, compare=False, repr=False)


@dataclass
class StreamPiece:
    """A streamed piece with the logprobs of the tokens that produced it (only when asked for)."""
    text: str
    logprobs: list              # [TokenLogprob]
