"""OpenAI response objects and stream chunks, built from generation events."""
from __future__ import annotations

import codecs
import json
import time
import uuid
from typing import Optional

from ..completion import TokenLogprob
from .generation import Finish


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def sse(payload: dict | str) -> bytes:
    """One server-sent event; `payload` is a JSON object or the final "[DONE]"."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def usage(finishes: list[Finish]) -> dict:
    """Totals over the choices: each prompt counted once, every choice's completion."""
    prompt = sum(f.prompt_tokens for f in finishes)
    completion = sum(f.completion_tokens for f in finishes)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ResponseHeader:
    """The fields every response and chunk of one request shares."""

    def __init__(self, kind: str, model_id: str):
        self.chat = kind == "chat"
        self.id = new_id("chatcmpl" if self.chat else "cmpl")
        self.created = int(time.time())
        self.model_id = model_id

    def _envelope(self, streaming: bool) -> dict:
        if self.chat:
            obj = "chat.completion.chunk" if streaming else "chat.completion"
        else:
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model_id,
                "system_fingerprint": "forgert"}

    # -- whole responses ---------------------------------------------------------------------

    def response(self, choices: list[dict], usage: dict, timings: dict) -> dict:
        body = self._envelope(streaming=False)
        body["choices"] = choices
        body["usage"] = usage
        body["timings"] = timings
        return body

    @staticmethod
    def chat_choice(index: int, output, logprobs: Optional[list[TokenLogprob]], finish_reason: str) -> dict:
        """output: the choice's ChoiceOutput (content, reasoning, tool calls)."""
        message = {"role": "assistant", "content": output.content}
        if output.reasoning:
            message["reasoning_content"] = output.reasoning
        if output.tool_calls:
            message["content"] = output.content or None
            message["tool_calls"] = [c.as_openai() for c in output.tool_calls]
            finish_reason = "tool_calls"
        return {"index": index, "message": message, "logprobs": chat_logprobs(logprobs),
                "finish_reason": finish_reason}

    @staticmethod
    def text_choice(index: int, text: str, logprobs: Optional[list[TokenLogprob]], finish_reason: str) -> dict:
        return {"index": index, "text": text, "logprobs": completion_logprobs(logprobs),
                "finish_reason": finish_reason}

    # -- stream chunks -----------------------------------------------------------------------

    def chunk(self, index: int = 0, *, content: Optional[str] = None, reasoning: Optional[str] = None,
              tool_calls: Optional[list] = None, logprobs: Optional[list[TokenLogprob]] = None,
              finish_reason: Optional[str] = None, role: bool = False,
              with_usage_field: bool = False, offsets: Optional["TextOffsets"] = None) -> dict:
        body = self._envelope(streaming=True)
        if self.chat:
            delta = {}
            if role:
                delta["role"] = "assistant"
            if content is not None:
                delta["content"] = content
            if reasoning:
                delta["reasoning_content"] = reasoning
            if tool_calls:
                delta["tool_calls"] = [c.as_openai(i) for i, c in enumerate(tool_calls)]
            choice = {"index": index, "delta": delta, "logprobs": chat_logprobs(logprobs),
                      "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": content or "",
                      "logprobs": completion_logprobs(logprobs, offsets),
                      "finish_reason": finish_reason}
        body["choices"] = [choice]
        if with_usage_field:
            body["usage"] = None    # OpenAI sends usage: null on every chunk but the last
        return body

    def usage_chunk(self, usage: dict, timings: dict) -> dict:
        body = self._envelope(streaming=True)
        body["choices"] = []
        body["usage"] = usage
        body["timings"] = timings
        return body


def chat_logprobs(logprobs: Optional[list[TokenLogprob]]) -> Optional[dict]:
    if logprobs is None:
        return None

    def entry(token: str, logprob: float, raw: Optional[bytes]) -> dict:
        return {"token": token, "logprob": logprob,
                "bytes": list(token.encode("utf-8") if raw is None else raw)}

    return {"content": [dict(entry(lp.token, lp.logprob, lp.token_bytes),
                             top_logprobs=[entry(t, p, raw) for (t, p), raw
                                           in zip(lp.top, lp.top_bytes or [None] * len(lp.top))])
                        for lp in logprobs],
            "refusal": None}


def legacy_token(token: str, raw: Optional[bytes]) -> str:
    """A token as the legacy completions format writes it: its text, or, for a token that is not
    whole UTF-8 characters (part of one, decoded alone as U+FFFD), OpenAI's 'bytes:\\xNN...'."""
    if raw is None or raw == token.encode("utf-8"):
        return token
    return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class TextOffsets:
    """Where each token starts in the text (legacy completions' text_offset, in characters): its
    bytes decoded after those before it, so that the halves of a character both start where it
    does and count it once (U+FFFD per half would count it twice). One per choice's stream."""

    def __init__(self, start: int = 0):
        self.at = start
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def advance(self, lp: TokenLogprob) -> int:
        """lp's offset; the text then holds it."""
        start = self.at
        raw = lp.token_bytes if lp.token_bytes is not None else lp.token.encode("utf-8")
        self.at += len(self._decoder.decode(raw))
        return start


def completion_logprobs(logprobs: Optional[list[TokenLogprob]],
                        offsets: Optional[TextOffsets] = None) -> Optional[dict]:
    """The legacy completions shape: parallel lists, offsets into the generated text (`offsets`
    carries a stream's on from its previous chunks)."""
    if logprobs is None:
        return None
    offsets = offsets or TextOffsets()

    def top(lp: TokenLogprob) -> dict:
        raws = lp.top_bytes or [None] * len(lp.top)
        return {legacy_token(t, raw): p for (t, p), raw in zip(lp.top, raws)}

    # An echoed prompt's first token has no logprob (nothing before it): null, as OpenAI sends it.
    return {"tokens": [legacy_token(lp.token, lp.token_bytes) for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [None if lp.logprob is None else top(lp) for lp in logprobs],
            "text_offset": [offsets.advance(lp) for lp in logprobs]}
