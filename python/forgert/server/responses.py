"""OpenAI response objects and stream chunks, built from generation events."""
from __future__ import annotations

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


def usage(finish: Finish) -> dict:
    return {"prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens,
            "total_tokens": finish.prompt_tokens + finish.completion_tokens}


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

    def response(self, text: str, logprobs: Optional[list[TokenLogprob]], finish: Finish) -> dict:
        body = self._envelope(streaming=False)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": chat_logprobs(logprobs), "finish_reason": finish.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": completion_logprobs(logprobs),
                      "finish_reason": finish.finish_reason}
        body["choices"] = [choice]
        body["usage"] = usage(finish)
        body["timings"] = finish.timings
        return body

    # -- stream chunks -----------------------------------------------------------------------

    def chunk(self, text: Optional[str], logprobs: Optional[list[TokenLogprob]] = None, *,
              finish_reason: Optional[str] = None, role: bool = False,
              with_usage_field: bool = False, text_offset: int = 0) -> dict:
        body = self._envelope(streaming=True)
        if self.chat:
            delta = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": chat_logprobs(logprobs),
                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "",
                      "logprobs": completion_logprobs(logprobs, text_offset),
                      "finish_reason": finish_reason}
        body["choices"] = [choice]
        if with_usage_field:
            body["usage"] = None    # OpenAI sends usage: null on every chunk but the last
        return body

    def usage_chunk(self, finish: Finish) -> dict:
        body = self._envelope(streaming=True)
        body["choices"] = []
        body["usage"] = usage(finish)
        body["timings"] = finish.timings
        return body


def chat_logprobs(logprobs: Optional[list[TokenLogprob]]) -> Optional[dict]:
    if logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [dict(entry(lp.token, lp.logprob),
                             top_logprobs=[entry(t, p) for t, p in lp.top])
                        for lp in logprobs],
            "refusal": None}


def completion_logprobs(logprobs: Optional[list[TokenLogprob]], text_offset: int = 0) -> Optional[dict]:
    """The legacy completions shape: parallel lists, offsets into the generated text."""
    if logprobs is None:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(text_offset)
        text_offset += len(lp.token)
    return {"tokens": [lp.token for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [dict(lp.top) for lp in logprobs],
            "text_offset": offsets}
