"""Offline batch generation: several prompts decoded together, one engine pass per step.

Each prompt gets a KV slot of the engine. A step evaluates every decoding sequence's next token
(one row each) plus, while slots are free, one prefill chunk of a newly admitted prompt, in one
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
        self.next_token = None          # the token to evaluate next (decoding)
        self.generated, self.pieces = [], []
        self.n_sampled, self.n_decode, self.finish = 0, 0, "length"
        self.t_start = self.t_first = None

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

    def flush(self) -> str:
        return "" if self.stops.stopped else self.stops.feed(self.detok.flush()) + self.stops.flush()

    def completion(self, t_end) -> Completion:
        n_prompt = len(self.prompt)
        return Completion(
            text="".join(self.pieces), tokens=self.generated, finish_reason=self.finish,
            usage=Usage(n_prompt, self.n_sampled, n_prompt + self.n_sampled),
            timings=Timings(n_prompt if self.t_first is not None else 0, 0,
                            (self.t_first or t_end) - self.t_start, self.n_decode, t_end - (self.t_first or t_end)))


def run_batch(engine, tokenizer, prompts, params_list, prefill_chunk):
    """Generator of (prompt index, text piece); returns the Completions in prompt order.

    engine: a _core.Engine (its n_slots sequences at a time); prompts: lists of token ids, each
    shorter than the context; params_list: one SamplingParams per prompt."""
    n_ctx, n_slots, max_batch = engine.n_ctx, engine.n_slots, engine.max_batch
    waiting = deque(_Sequence(i, p, params_list[i], tokenizer, n_ctx) for i, p in enumerate(prompts))
    done, running = {}, []
    free_slots = list(range(n_slots - 1, -1, -1))
    t0 = time.perf_counter()
    for seq in list(waiting):
        seq.t_start = t0
        if seq.limit == 0:          # no room for a single token: finished before it starts
            waiting.remove(seq)
            done[seq.index] = seq.completion(t0)
    while waiting or running:
        while waiting and free_slots:
            seq = waiting.popleft()
            seq.slot = free_slots.pop()
            running.append(seq)
        decoding = [s for s in running if s.decoding]
        # Each admitted prompt first prefills its prefix (all but the last token), one chunk per
        # step beside the decoding rows; then its last token joins them as a decode row.
        entries, rows = [], []
        for s in running:
            if s.decoding:
                entries.append((s.slot, np.array([s.next_token], np.int32), len(s.prompt) + len(s.generated) - 1))
                rows.append(s)
            elif s.n_prefilled == len(s.prompt) - 1:
                entries.append((s.slot, np.array(s.prompt[-1:], np.int32), s.n_prefilled))
                rows.append(s)
        prefill = None
        room = max_batch - len(entries)
        for s in running:
            if not s.decoding and s.n_prefilled < len(s.prompt) - 1 and room > 0:
                n = min(prefill_chunk, room, len(s.prompt) - 1 - s.n_prefilled)
                entries.append((s.slot, np.array(s.prompt[s.n_prefilled:s.n_prefilled + n], np.int32), s.n_prefilled))
                prefill = (s, n)
                break
        if all(s.greedy for s in rows):
            chosen = engine.forward_batch_argmax(entries)
        else:
            samplers = [s.sampler if s.sampler is not None else _greedy_sampler() for s in rows]
            if prefill is not None:
                samplers.append(_greedy_sampler())    # its row is not used
            chosen = engine.forward_batch_sample(entries, samplers)
        if prefill is not None:
            prefill[0].n_prefilled += prefill[1]
        now = time.perf_counter()
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
                yield s.index, piece
            if finished:
                running.remove(s)
                free_slots.append(s.slot)
                done[s.index] = s.completion(now)
    return [done[i] for i in range(len(prompts))]


def _greedy_sampler():
    """A temperature-0 sampler (the argmax) for the greedy rows of a batch that also samples."""
    from . import _core
    return _core.Sampler(0.0, 0, 1.0, 0.0)
