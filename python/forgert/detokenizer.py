"""Incremental detokenization for streaming.

Decoding token by token is wrong twice over: a character may span several tokens (byte-level BPE,
<0xXX> byte fallback) and SentencePiece decoders strip the leading space of the first token. So
we decode a short window of recent tokens and emit only the text that the newest token added,
holding it back while it ends in an incomplete UTF-8 sequence (decoded as U+FFFD).
"""
from __future__ import annotations

from .tokenizer import REPLACEMENT

_CONTEXT_TOKENS = 4


class StreamingDetokenizer:
    def __init__(self, tokenizer, context_ids=()):
        """tokenizer: ModelTokenizer; context_ids: the tokens before the first one pushed (the prompt),
        so the first piece keeps its leading space."""
        self.tok = tokenizer
        ctx = list(context_ids)[-_CONTEXT_TOKENS:]
        if ctx and self.tok.decode(ctx).endswith(REPLACEMENT):
            ctx = []   # a prompt ending mid-character would make the window misaligned
        self.ids = ctx
        self.prefix_offset = 0           # window start
        self.read_offset = len(ctx)      # tokens before this are already emitted
        self._prefix_text = self.tok.decode(ctx) if ctx else ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (maybe "")."""
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids[self.prefix_offset:])
        if len(text) > len(self._prefix_text) and not text.endswith(REPLACEMENT):
            piece = text[len(self._prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self._prefix_text = self.tok.decode(self.ids[self.prefix_offset:self.read_offset])
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character comes out as U+FFFD)."""
        text = self.tok.decode(self.ids[self.prefix_offset:])
        piece = text[len(self._prefix_text):]
        self._prefix_text = ""
        self.ids = []
        self.prefix_offset = self.read_offset = 0
        return piece
