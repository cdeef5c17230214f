"""Continuous batching for the server: one thread steps a BatchScheduler over the model's KV
slots, admitting requests into the running batch as slots free up (first come, first served).

Each engine step decodes one token of every running request (and a prefill chunk of a newly
admitted one) and delivers the pieces to each request's asyncio queue. A request whose client
leaves is cancelled before the next step: its slot goes to the next request in line. The step
holds the Model's lock, so requests that cannot batch (logprobs, response_format, logit_bias,
several choices) still run through ModelWorker on slot 0, between steps; the scheduler uses
slots 1.. so the single-sequence prompt cache on slot 0 stays valid.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import AsyncIterator

from ..batch import BatchScheduler
from ..model import PREFILL_CHUNK
from ..sampling import SamplingParams
from .generation import Finish, GenerationSpec, Piece, timings_dict

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def batchable(spec: GenerationSpec) -> bool:
    """A request the batch can run: one choice, sampled in C++ (no logprobs, grammar or bias)."""
    return (len(spec.choices) == 1 and spec.top_logprobs is None and spec.response_format is None
            and not spec.logit_bias)


class _Request:
    def __init__(self, spec, deliver):
        self.spec, self.deliver = spec, deliver
        self.cancelled = threading.Event()
        self.seq = None


class BatchWorker:
    def __init__(self, model):
        if model._engine.n_slots < 2:
            raise ValueError("BatchWorker needs a Model with parallel >= 2 (slot 0 stays the single path's)")
        self.model = model
        self.scheduler = BatchScheduler(model._engine, model.tokenizer, PREFILL_CHUNK,
                                        slots=range(1, model._engine.n_slots))
        self._cv = threading.Condition()
        self._new = deque()
        self._active = []       # admitted requests, in the scheduler (running or waiting)
        self.queued = 0         # requests in flight (waiting or running), for /health and /metrics
        self._thread = threading.Thread(target=self._loop, name="forgert-batch", daemon=True)
        self._thread.start()

    async def events(self, spec: GenerationSpec) -> AsyncIterator[object]:
        """The request's Piece and Finish events as the batch produces them; leaving the
        iteration early cancels it (its slot is freed before the next step)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def deliver(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:    # the event loop is gone (server shutting down)
                req.cancelled.set()

        req = _Request(spec, deliver)
        with self._cv:
            self.queued += 1
            self._new.append(req)
            self._cv.notify()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            req.cancelled.set()
            with self._cv:
                self._cv.notify()

    def _finish(self, req, item=None) -> None:
        if item is not None:
            req.deliver(item)
        req.deliver(_END)
        with self._cv:
            self.queued -= 1

    def _admit(self, req) -> None:
        choice = req.spec.choices[0]
        try:
            params = SamplingParams.from_kwargs(None, **dict(req.spec.sampling, seed=choice.seed))
            if choice.echo is not None:
                req.deliver(Piece(choice.echo, None, 0))
            req.seq = self.scheduler.add(choice.prompt_ids, params)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting request
            self._finish(req, _Failure(error))
            return
        if req.seq.done:    # no room for a single token: finished at once
            self._finish(req, self._finish_event(req))
            return
        self._active.append(req)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._new and not self._active:
                    self._cv.wait()
                new = list(self._new)
                self._new.clear()
            for req in new:
                if req.cancelled.is_set():
                    self._finish(req)       # its client left while it waited
                else:
                    self._admit(req)
            for req in [r for r in self._active if r.cancelled.is_set()]:
                self.scheduler.cancel(req.seq)
                self._active.remove(req)
                self._finish(req)
            if not self.scheduler.busy:
                continue
            try:
                with self.model._lock("a batch step"):
                    produced = self.scheduler.step()
            except BaseException as error:  # noqa: BLE001 - every running request is told
                for req in list(self._active):
                    self.scheduler.cancel(req.seq)
                    self._active.remove(req)
                    self._finish(req, _Failure(error))
                continue
            owner = {id(r.seq): r for r in self._active}
            for seq, piece, finished in produced:
                req = owner[id(seq)]
                if piece:
                    req.deliver(Piece(piece, None, 0))
                if finished:
                    self._active.remove(req)
                    self._finish(req, self._finish_event(req))

    @staticmethod
    def _finish_event(req) -> Finish:
        c = req.seq.result
        return Finish(finish_reason=c.finish_reason, prompt_tokens=c.usage.prompt_tokens,
                      completion_tokens=c.usage.completion_tokens, timings=timings_dict(c.timings), index=0)
