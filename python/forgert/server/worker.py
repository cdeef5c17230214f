"""One model, many clients: a single worker thread runs jobs strictly in arrival order.

The model (and its KV cache) is touched only from that thread, so requests never interleave
inside it. Each job streams events back to the asyncio side through a queue; when the client
goes away the worker stops iterating the job before its next token and closes it, which frees
the model for the next request in line.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Generator

from .event_queue import END, Failure, events_until_end

# A job yields events until done; it runs on the worker thread, which stops iterating (and
# closes the iterator) as soon as the request is cancelled.
Job = Callable[[], Generator[object, None, None]]

class ModelWorker:
    def __init__(self):
        # One thread => one job at a time; the executor's queue is FIFO, which makes it fair.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forgert-model")
        self._lock = threading.Lock()
        self.queued = 0    # jobs running or waiting for a client still there, for /health

    async def events(self, job: Job) -> AsyncIterator[object]:
        """Run `job` when its turn comes and yield its events as they are produced.

        Leaving the iteration early (the client disconnected, the task was cancelled) cancels
        the job: if it has not started it is skipped; if it is running it stops at its next event.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        started = False     # guarded by self._lock, like the cancellation of a job still queued

        def deliver(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:    # the event loop is gone (server shutting down)
                cancelled.set()

        def run() -> None:
            nonlocal started
            with self._lock:
                if cancelled.is_set():
                    return      # its client left while it waited; it was counted off then
                started = True
            try:
                produced = job()
                try:
                    for event in produced:
                        if cancelled.is_set():
                            break
                        deliver(event)
                finally:
                    produced.close()    # stops the generator mid-way: the model generates nothing more
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting request
                deliver(Failure(error))
            finally:
                with self._lock:
                    self.queued -= 1
                deliver(END)

        with self._lock:
            self.queued += 1
        loop.run_in_executor(self._executor, run)
        try:
            async for item in events_until_end(queue):
                yield item
        finally:
            with self._lock:
                cancelled.set()
                if not started:
                    self.queued -= 1    # skipped when its turn comes; no longer in flight
