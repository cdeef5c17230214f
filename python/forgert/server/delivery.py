"""Generation events -> what the client receives: one whole response, or SSE chunks as tokens
are produced. Chat choices go through ChoiceOutput (reasoning and tool calls split off)."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional

from fastapi import Request

from .errors import generation_error, internal_error, log_unexpected
from .generation import Finish, Piece
from .metrics import RequestTimer, ServerMetrics
from .responses import ResponseHeader, TextOffsets, sse, usage


async def metered(events: AsyncIterator, metrics: ServerMetrics, timer: RequestTimer) -> AsyncIterator:
    async for event in events:
        if isinstance(event, Piece):
            timer.first_text()
        else:
            metrics.prompt_tokens.inc(event.prompt_tokens)
            metrics.generation_tokens.inc(event.completion_tokens)
        yield event


class _ChoiceText:
    """What one choice of a whole (non-streamed) response has gathered."""

    def __init__(self, output):
        self.output = output        # ChoiceOutput (chat) or None (text)
        self.pieces: list[str] = []
        self.logprobs = None
        self.finish: Optional[Finish] = None

    def add(self, event: Piece) -> None:
        if self.output is not None:
            self.output.feed(event.text)
        else:
            self.pieces.append(event.text)
        if event.logprobs is not None:
            self.logprobs = (self.logprobs or []) + event.logprobs


async def collect(events: AsyncIterator, header: ResponseHeader, new_output) -> dict:
    choices: dict[int, _ChoiceText] = {}
    try:
        async for event in events:
            choice = choices.setdefault(event.index, _ChoiceText(new_output() if new_output else None))
            if isinstance(event, Piece):
                choice.add(event)
            else:
                choice.finish = event
                if choice.output is not None:
                    choice.output.finish()
    except ValueError as exc:   # the model refused the request (e.g. bad token ids)
        raise generation_error(exc) from None
    finishes = [choices[i].finish for i in sorted(choices)]
    if header.chat:
        body = [header.chat_choice(i, c.output, c.logprobs, c.finish.finish_reason)
                for i, c in sorted(choices.items())]
    else:
        body = [header.text_choice(i, "".join(c.pieces), c.logprobs, c.finish.finish_reason)
                for i, c in sorted(choices.items())]
    return header.response(body, usage(finishes), finishes[0].timings)


async def collect_unless_disconnected(request: Request, collect) -> dict:
    """Awaits `collect`, but a client that hangs up cancels its generation (queued or running)."""
    collecting = asyncio.ensure_future(collect)
    watching = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not collecting.done():
            collecting.cancel()     # closes `events`, which cancels the job
            await asyncio.gather(collecting, return_exceptions=True)
    if collecting.cancelled():
        return {}   # nobody is listening any more
    return collecting.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def stream(events: AsyncIterator, header: ResponseHeader, include_usage: bool, new_output,
                  n_choices: int):
    """SSE chunks, each sent as soon as the worker produces its tokens.

    Starlette cancels this generator when the client disconnects; the cancellation closes
    `events`, which stops the generation at its next token.
    """
    def chunk(index, **fields):
        return sse(header.chunk(index, with_usage_field=include_usage, **fields))

    outputs = {}
    if header.chat:
        for index in range(n_choices):
            yield chunk(index, content="", role=True)
            outputs[index] = new_output()
    offsets = [TextOffsets() for _ in range(n_choices)]   # each choice's logprob tokens' (legacy completions)
    finishes = []
    try:
        async for event in events:
            i = event.index
            if isinstance(event, Piece):
                if header.chat:
                    delta = outputs[i].feed(event.text)
                    if not delta and event.logprobs is None:
                        continue
                    yield chunk(i, content=delta.content if delta.content or not delta.reasoning else None,
                                reasoning=delta.reasoning, logprobs=event.logprobs)
                else:
                    if not event.text and event.logprobs is None:
                        continue
                    yield chunk(i, content=event.text, logprobs=event.logprobs, offsets=offsets[i])
                continue
            finishes.append(event)
            reason = event.finish_reason
            if header.chat:
                out = outputs[i]
                tail = out.finish()
                if tail:
                    yield chunk(i, content=tail.content or None, reasoning=tail.reasoning)
                if out.tool_calls:
                    yield chunk(i, tool_calls=out.tool_calls)
                    reason = "tool_calls"
            yield chunk(i, content=None if header.chat else "", finish_reason=reason)
        if include_usage and finishes:
            yield sse(header.usage_chunk(usage(finishes), finishes[0].timings))
    except ValueError as exc:
        # Headers are gone already: report in-band, the way OpenAI does mid-stream.
        yield sse(generation_error(exc).body())
    except Exception as exc:  # noqa: BLE001 - the stream must still end properly
        log_unexpected(exc, "a streamed completion")
        yield sse(internal_error().body())
    yield sse("[DONE]")
