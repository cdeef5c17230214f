"""One choice's generation events read the way /v1/responses and /v1/messages report them: text
in order, each piece tagged "reasoning" or "content" (split by ChoiceOutput / HarmonyOutput as
for the chat route), then the Finish, once the output's tool_calls are parsed."""
from __future__ import annotations

import json
from typing import AsyncIterator, Union

from .generation import Finish, Piece

REASONING, CONTENT = "reasoning", "content"


async def choice_events(events: AsyncIterator, output) -> AsyncIterator[Union[tuple[str, str], Finish]]:
    """(REASONING | CONTENT, text) pairs as the model writes them, then the Finish (output.tool_calls
    set by then). Both APIs run one choice per request (no n)."""
    async for event in events:
        delta = output.feed(event.text) if isinstance(event, Piece) else output.finish()
        if delta.reasoning:
            yield REASONING, delta.reasoning
        if delta.content:
            yield CONTENT, delta.content
        if isinstance(event, Finish):
            yield event


def sse_event(name: str, payload: dict) -> bytes:
    """A server-sent event with its `event:` line (both APIs name their events)."""
    return f"event: {name}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
