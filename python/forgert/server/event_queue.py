"""How a request's events cross from a worker thread (worker.py, batch_worker.py) to its
coroutine: the thread puts events into the request's asyncio.Queue, then END, or a Failure
holding the error that ended it; the coroutine drains the queue with `events_until_end`."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

END = object()      # the request's last item: its events are done


class Failure:
    """The error that ended a request on the worker thread, raised again on the asyncio side."""

    def __init__(self, error: BaseException):
        self.error = error


async def events_until_end(queue: asyncio.Queue) -> AsyncIterator[object]:
    """The queue's events as they arrive, up to END; a Failure raises its error."""
    while True:
        item = await queue.get()
        if item is END:
            return
        if isinstance(item, Failure):
            raise item.error
        yield item
