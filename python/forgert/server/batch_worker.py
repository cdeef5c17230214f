"""Continuous batching for the server: one thread steps a BatchScheduler over the model's KV
slots, admitting requests into the running batch as slots free up (first come, first served).

Each engine step decodes one token of every running sequence (and a prefill chunk of a newly
admitted one) and delivers the pieces to each request's asyncio queue: all of a step's pieces in
one hand-off to the event loop, made right before the next engine pass (or at once when none
follows). One wake-up of the loop per step, not one per request, and while the pass runs: the
self-pipe write that wakes the loop lets it take the GIL, and the batch thread then waits for
the loop's work (SSE chunks for every client) before it can go on; inside the pass (which
releases the GIL) that work costs the batch nothing but the CPU it takes. Every request batches:
each of its choices (n > 1, several prompts on /v1/completions) is a sequence of its own, and
logprobs, logit_bias and response_format are applied per sequence in the step (batch.py). A
request whose client leaves is cancelled before the next step: its slots go to the next in line.

Echo with logprobs (prompt logprobs, what lm-eval's log-likelihood tasks send) batches too: the
sequence prefills its prompt from position 0 in the running steps, the engine scoring each
prefill row against the next prompt token in C++ (batch.py), and the echoed prompt goes out with
its logprobs just before the first generated token. The n choices of one prompt prefill it once:
the scheduler copies the first choice's K/V rows (and prompt logprobs) into the others' slots.
Slot 0 stays the single-sequence path's (Model's own calls), the batch takes slots 1...
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import replace
from typing import AsyncIterator

from ..batch import BatchScheduler, LogitsOptions
from ..model import PREFILL_CHUNK
from ..sampling import SamplingParams
from .event_queue import END, Failure, events_until_end
from .generation import Finish, GenerationSpec, Piece, lookup_applies, timings_dict


class _Request:
    def __init__(self, spec, loop, queue):
        self.spec = spec
        self.loop, self.queue = loop, queue     # where its events go: an asyncio.Queue of that loop
        self.cancelled = threading.Event()
        self.seqs = []          # one per choice, in choice order
        self.left = 0           # choices not finished yet


class BatchWorker:
    def __init__(self, model, prompt_lookup: int = 0):
        """prompt_lookup: draft tokens of prompt lookup decoding for the requests it gives the
        same tokens (generation.lookup_applies); 0: off."""
        if model._engine.n_slots < 2:
            raise ValueError("BatchWorker needs a Model with parallel >= 2 (slot 0 stays the single path's)")
        model._serve_slots(range(1, model._engine.n_slots))     # Model's own list batches keep off them
        self.model = model
        self.prompt_lookup = prompt_lookup
        self.scheduler = BatchScheduler(model._engine, model.tokenizer, PREFILL_CHUNK,
                                        slots=range(1, model._engine.n_slots))
        self.scheduler.before_pass = self._hand_over
        self._cv = threading.Condition()
        self._new = deque()
        self._active = []       # admitted requests, in the scheduler (running or waiting)
        self._owner = {}        # id(sequence) -> (request, choice index)
        self.queued = 0         # requests in flight (waiting or running), for /health and /metrics
        self._outbox = {}       # event loop -> [(request, event)] not handed over yet (batch thread only)
        self.busy_seconds = 0.0     # the batch thread's time at work (steps, admission, hand-offs)
        self._thread = threading.Thread(target=self._loop, name="forgert-batch", daemon=True)
        self._thread.start()

    async def events(self, spec: GenerationSpec) -> AsyncIterator[object]:
        """The request's Piece and Finish events as the batch produces them; leaving the
        iteration early cancels it (its slots are freed before the next step)."""
        queue: asyncio.Queue = asyncio.Queue()
        req = _Request(spec, asyncio.get_running_loop(), queue)
        with self._cv:
            self.queued += 1
            self._new.append(req)
            self._cv.notify()
        try:
            async for item in events_until_end(queue):
                yield item
        finally:
            req.cancelled.set()
            with self._cv:
                self._cv.notify()

    def _deliver(self, req, item) -> None:
        """Queues an event for the request; _hand_over() sends what is queued (before the next
        engine pass, or once the batch has nothing left to run)."""
        self._outbox.setdefault(req.loop, []).append((req, item))

    def _hand_over(self) -> None:
        """Everything delivered since the last hand-off, in one call per event loop."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:    # the event loop is gone (server shutting down)
                for req, _ in items:
                    req.cancelled.set()

    def _finish(self, req, item=None) -> None:
        if item is not None:
            self._deliver(req, item)
        self._deliver(req, END)
        with self._cv:
            self.queued -= 1

    def _drop(self, req, item=None) -> None:
        """Ends a request early (its client left, or it failed): its sequences leave the batch."""
        for seq in req.seqs:
            self.scheduler.cancel(seq)
            self._owner.pop(id(seq), None)
        if req in self._active:
            self._active.remove(req)
        self._finish(req, item)

    def _admit(self, req) -> None:
        spec = req.spec
        try:
            options = LogitsOptions(spec.top_logprobs, self.model._bias_row(spec.logit_bias),
                                    spec.response_format)
            scored = replace(options, prompt_logprobs=True)    # echo with logprobs: the prompt's too
            lookup = self.prompt_lookup if self.prompt_lookup and lookup_applies(self.model, spec) else 0
            for index, choice in enumerate(spec.choices):
                params = SamplingParams.from_kwargs(None, **dict(spec.sampling, seed=choice.seed, prompt_lookup=lookup))
                scores_prompt = choice.echo is not None and spec.top_logprobs is not None
                if choice.echo is not None and not scores_prompt:
                    self._deliver(req, Piece(choice.echo, None, index))    # nothing to compute: out at once
                seq = self.scheduler.add(choice.prompt_ids, params, scored if scores_prompt else options)
                req.seqs.append(seq)
                self._owner[id(seq)] = (req, index)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting request
            self._drop(req, Failure(error))
            return
        req.left = len(req.seqs)
        for index, seq in enumerate(req.seqs):
            if seq.done:    # no room for a single token: finished at once
                self._owner.pop(id(seq))
                req.left -= 1
                self._deliver(req, self._finish_event(req, index))
        if req.left == 0:
            self._finish(req)
        else:
            self._active.append(req)

    def stats(self) -> dict:
        """Counters since start (read from any thread): engine steps, tokens sampled, seconds in
        the engine passes, seconds the batch thread was at work; their difference is the
        server's own time per step (/metrics, bench/load_test.py)."""
        s = self.scheduler
        return {"steps": s.steps, "sampled_rows": s.sampled_rows, "pass_seconds": s.pass_seconds,
                "busy_seconds": self.busy_seconds}

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._new and not self._active:
                    self._cv.wait()
                new = list(self._new)
                self._new.clear()
            started = time.perf_counter()
            self._run_once(new)
            if not self.scheduler.busy:     # no engine pass follows to carry the hand-off
                self._hand_over()
            self.busy_seconds += time.perf_counter() - started

    def _run_once(self, new) -> None:
        """Admits the new requests, drops the cancelled ones, runs a step and delivers its events."""
        for req in new:
            if req.cancelled.is_set():
                self._finish(req)       # its client left while it waited
            else:
                self._admit(req)
        for req in [r for r in self._active if r.cancelled.is_set()]:
            self._drop(req)
        if not self.scheduler.busy:
            return
        try:
            with self.model._lock("a batch step"):
                produced = self.scheduler.step()
        except BaseException as error:  # noqa: BLE001 - every running request is told
            for req in list(self._active):
                self._drop(req, Failure(error))
            return
        for out in produced:
            owner = self._owner.get(id(out.sequence))
            if owner is None:
                continue    # its request failed earlier in this step's results
            req, index = owner
            if out.sequence.error is not None:
                self._drop(req, Failure(out.sequence.error))
                continue
            if out.prompt_logprobs is not None:     # the echoed prompt, scored by its prefill
                self._deliver(req, Piece(req.spec.choices[index].echo, out.prompt_logprobs, index))
            if out.text or out.logprobs:
                self._deliver(req, Piece(out.text, out.logprobs, index))
            if out.finished:
                del self._owner[id(out.sequence)]
                self._deliver(req, self._finish_event(req, index))
                req.left -= 1
                if req.left == 0:
                    self._active.remove(req)
                    self._finish(req)

    @staticmethod
    def _finish_event(req, index) -> Finish:
        c = req.seqs[index].result
        return Finish(finish_reason=c.finish_reason,
                      prompt_tokens=c.usage.prompt_tokens if req.spec.choices[index].counts_prompt else 0,
                      completion_tokens=c.usage.completion_tokens, timings=timings_dict(c.timings), index=index,
                      stop_string=c.stop_string)


def _put_all(items) -> None:
    """On the event loop: a hand-off's events into their requests' queues, in order."""
    for req, item in items:
        req.queue.put_nowait(item)
