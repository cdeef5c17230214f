"""Offline batch generation: several prompts decoded together, one engine pass per step.

Each prompt gets a KV slot of the engine. A step evaluates every decoding sequence's next token
(one row each) plus prefill chunks of newly admitted prompts (up to prefill_chunk tokens), in one
_core.Engine.forward_batch* call: the projections become a GEMM over the batch instead of a
GEMV per sequence. A finished sequence frees its slot for the next waiting prompt (continuous
batching), so more prompts than slots is fine.

As in Model's single-sequence path, a prompt's last token is evaluated alone as a decode row,
after its prefix was prefilled in chunks: at temperature 0 a prompt gives the same tokens in a
batch as alone (up to near-ties in f32 summation order, see tests/test_batch_generate.py).
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from .completion import Completion, Timings, Usage
from .detokenizer import StreamingDetokenizer
from .prompt_cache import common_prefix
from .sampling import native_sampler
from .stop_strings import StopStringMatcher


class _Sequence:
    """One prompt's generation state in the batch."""

    def __init__(self, index, prompt_ids, params, tokenizer, n_ctx):
        self.index = index
        self.prompt = list(prompt_ids)
        self.params = params
        self.greedy = params.greedy and not params.has_penalties
        self.sampler = None if self.greedy else native_sampler(params, prompt_ids)
        self.stop_ids = set() if params.ignore_eos else tokenizer.stop_ids
        self.detok = StreamingDetokenizer(tokenizer, prompt_ids)
        self.stops = StopStringMatcher(params.stop)
        room = n_ctx - len(prompt_ids)
        self.limit = room if params.max_tokens is None else min(params.max_tokens, room)
        self.slot = -1
        self.n_prefilled = 0            # prompt tokens already in the slot's cache
        self.n_cached = 0               # of those, found there from an earlier sequence (its prefix)
        self.next_token = None          # the token to evaluate next (decoding)
        self.generated, self.pieces = [], []
        self.n_sampled, self.n_decode, self.finish = 0, 0, "length"
        self.t_start = self.t_first = None
        self.done, self.result = False, None    # result: the Completion, once finished

    @property
    def decoding(self) -> bool:
        return self.next_token is not None

    def accept(self, tok):
        """Takes a sampled token; returns (text piece, done)."""
        self.n_sampled += 1
        if tok in self.stop_ids:
            self.finish = "stop"
            return "", True
        self.generated.append(tok)
        if self.sampler is not None:
            self.sampler.add_history(tok)
        out = self.stops.feed(self.detok.push(tok))
        if self.stops.stopped:
            self.finish = "stop"
            return out, True
        if len(self.generated) >= self.limit:
            return out, True
        self.next_token = tok
        return out, False

    def cached_tokens(self) -> list:
        """The tokens whose K/V this sequence left in its slot (positions 0..)."""
        return self.prompt[:self.n_prefilled] + self.generated[:self.n_decode]

    def flush(self) -> str:
        return "" if self.stops.stopped else self.stops.feed(self.detok.flush()) + self.stops.flush()

    def completion(self, t_end) -> Completion:
        n_prompt = len(self.prompt)
        return Completion(
            text="".join(self.pieces), tokens=self.generated, finish_reason=self.finish,
            usage=Usage(n_prompt, self.n_sampled, n_prompt + self.n_sampled),
            timings=Timings(n_prompt - self.n_cached if self.t_first is not None else 0, self.n_cached,
                            (self.t_first or t_end) - self.t_start, self.n_decode, t_end - (self.t_first or t_end)))


class BatchScheduler:
    """Continuous batching over an engine's KV slots: add() queues a prompt (first come, first
    served), step() runs one engine pass for everything running and reports what it produced,
    cancel() drops a sequence (its slot is free for the next step). Not thread-safe: one thread
    owns it (and the engine) while it runs."""

    def __init__(self, engine, tokenizer, prefill_chunk, slots=None):
        """slots: the KV slots it may use (default all of the engine's)."""
        self.engine, self.tokenizer, self.prefill_chunk = engine, tokenizer, prefill_chunk
        self.waiting, self.running = deque(), []
        self.free_slots = sorted(range(engine.n_slots) if slots is None else slots, reverse=True)
        self.slot_tokens = {slot: [] for slot in self.free_slots}   # what each free slot's cache holds
        self._count = 0

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, prompt_ids, params) -> _Sequence:
        """Queues a prompt (token ids, shorter than the context); `.done` / `.completion` on
        the returned sequence once finished."""
        seq = _Sequence(self._count, prompt_ids, params, self.tokenizer, self.engine.n_ctx)
        self._count += 1
        seq.t_start = time.perf_counter()
        seq.done = seq.limit == 0       # no room for a single token: finished before it starts
        seq.result = seq.completion(seq.t_start) if seq.done else None
        if not seq.done:
            self.waiting.append(seq)
        return seq

    def cancel(self, seq) -> None:
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
            self._release(seq)
        seq.done = True

    def _admit(self, seq) -> None:
        """Into the free slot whose cache shares the longest prefix with the prompt (a
        conversation taking its turn finds its history); prefill starts after that prefix."""
        shared = {slot: common_prefix(self.slot_tokens[slot], seq.prompt) for slot in self.free_slots}
        slot = max(self.free_slots, key=lambda sl: (shared[sl], -sl))
        self.free_slots.remove(slot)
        seq.slot = slot
        seq.n_prefilled = seq.n_cached = min(shared[slot], len(seq.prompt) - 1)
        self.running.append(seq)

    def _release(self, seq) -> None:
        self.slot_tokens[seq.slot] = seq.cached_tokens()
        self.free_slots.append(seq.slot)

    def step(self) -> list:
        """One engine pass; returns [(sequence, text piece, finished)] for the rows it sampled."""
        while self.waiting and self.free_slots:
            self._admit(self.waiting.popleft())
        if not self.running:
            return []
        # Each admitted prompt first prefills its prefix (all but the last token), one chunk per
        # step beside the decoding rows; then its last token joins them as a decode row.
        entries, rows = [], []
        for s in self.running:
            if s.decoding:
                entries.append((s.slot, np.array([s.next_token], np.int32), len(s.prompt) + len(s.generated) - 1))
                rows.append(s)
            elif s.n_prefilled == len(s.prompt) - 1:
                entries.append((s.slot, np.array(s.prompt[-1:], np.int32), s.n_prefilled))
                rows.append(s)
        # Prefill chunks of admitted prompts, up to prefill_chunk tokens in all per step (so a
        # long prompt does not stall the decoding rows for long), in admission order.
        prefills = []
        budget = min(self.prefill_chunk, self.engine.max_batch - len(entries))
        for s in self.running:
            if not s.decoding and s.n_prefilled < len(s.prompt) - 1 and budget > 0:
                n = min(budget, len(s.prompt) - 1 - s.n_prefilled)
                entries.append((s.slot, np.array(s.prompt[s.n_prefilled:s.n_prefilled + n], np.int32), s.n_prefilled))
                prefills.append((s, n))
                budget -= n
        if all(s.greedy for s in rows):
            chosen = self.engine.forward_batch_argmax(entries)
        else:
            samplers = [s.sampler if s.sampler is not None else _greedy_sampler() for s in rows]
            samplers += [_greedy_sampler() for _ in prefills]    # their rows are not used
            chosen = self.engine.forward_batch_sample(entries, samplers)
        for s, n in prefills:
            s.n_prefilled += n
        now = time.perf_counter()
        out = []
        for s, tok in zip(rows, chosen):
            if not s.decoding:
                s.n_prefilled = len(s.prompt)
                s.t_first = now
            else:
                s.n_decode += 1
            piece, finished = s.accept(int(tok))
            if finished:
                piece += s.flush()
                s.next_token = None
            if piece:
                s.pieces.append(piece)
            if finished:
                self.running.remove(s)
                self._release(s)
                s.done, s.result = True, s.completion(now)
            out.append((s, piece, finished))
        return out


def run_batch(engine, tokenizer, prompts, params_list, prefill_chunk):
    """Generator of (prompt index, text piece); returns the Completions in prompt order.

    engine: a _core.Engine (its n_slots sequences at a time); prompts: lists of token ids, each
    shorter than the context; params_list: one SamplingParams per prompt."""
    sched = BatchScheduler(engine, tokenizer, prefill_chunk)
    seqs = [sched.add(p, params_list[i]) for i, p in enumerate(prompts)]
    index = {id(s): i for i, s in enumerate(seqs)}
    while sched.busy:
        for s, piece, _ in sched.step():
            if piece:
                yield index[id(s)], piece
    return [s.result for s in seqs]


def _greedy_sampler():
    """A temperature-0 sampler (the argmax) for the greedy rows of a batch that also samples."""
    from . import _core
    return _core.Sampler(0.0, 0, 1.0, 0.0)
