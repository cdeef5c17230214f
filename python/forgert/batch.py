"""Offline batch generation: several prompts decoded together, one engine pass per step.

Each prompt gets a KV slot of the engine. A step evaluates every decoding sequence's next token
(one row each) plus prefill chunks of newly admitted prompts (up to prefill_chunk tokens), in one
_core.Engine.forward_batch* call: the projections become a GEMM over the batch instead of a
GEMV per sequence. A finished sequence frees its slot for the next waiting prompt (continuous
batching), so more prompts than slots is fine.

Sequences of one prompt admitted together (the n > 1 choices of a request) prefill it once: the
first becomes the others' leader, they wait while it prefills the prefix, then its slot's K/V rows
are copied into theirs (_core.Engine.kv_copy) and each evaluates the last token as its own decode
row, so every choice samples from the same logits as if it had prefilled alone.

As in Model's single-sequence path, a prompt's last token is evaluated alone as a decode row,
after its prefix was prefilled in chunks. On the CPU the engine runs every decode row through the
decode kernels and every prefix row through the prefill GEMM, whatever else shares the step, so a
sequence's temperature-0 tokens and logits are bit-identical alone and in any batch, prompts
arriving mid-decode included (README "Identical results"; tests/test_batch_invariance.py).

Sequences that need their logits row in Python (LogitsOptions: logprobs, logit_bias, a grammar)
run in the same step: the step then asks the engine for every row's logits (forward_batch) and
samples the other rows from them as the engine would have (argmax, or their C++ sampler). A
grammar's token mask for the next token is computed on a worker thread while the engine
evaluates the step (the engine call releases the GIL), so it costs the batch only what
exceeds the pass (bench/batch_logits_rows.py measures the host time such rows add).

A sequence with prompt lookup (SamplingParams.prompt_lookup) adds draft tokens to its decode row:
its entry becomes a decode run (its next token and the draft, every row a decode row). A greedy one
keeps the draft's tokens while they equal the rows' argmaxes (which come back from the engine),
plus the one after the last kept: greedy decoding's tokens exactly. A sampling one (penalties
included) takes its rows' logits in Python, as the rows above do, and verifies the draft by
speculative sampling on the NumPy sampler's filters (prompt_lookup.verify_sampled): plain
sampling's distribution, as a single generation's lookup. Either takes several tokens a step where
the draft is right; the other sequences of the step are not changed by it.

A sequence that asks for its prompt's logprobs (LogitsOptions.prompt_logprobs: completions'
echo, what lm-eval's log-likelihood tasks send) prefills from position 0 in the same steps as
everything else, each of its chunks passed with a _core.RowScores: the engine scores every row
against the prompt token after it in C++ (logprob and top alternatives), so no [n, vocab]
logits reach Python. Its first StepOutput carries the whole prompt's logprobs.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from . import greedy
from .completion import Completion, StreamPiece, Timings, Usage
from .detokenizer import StreamingDetokenizer
from .grammar import Grammar
from .logprobs import first_prompt_logprob, scored_logprobs, token_logprob
from .prompt_cache import common_prefix
from .prompt_lookup import NgramDraft, accepted, refusal as lookup_refusal, verify_sampled
from .state_checkpoints import StateCheckpoints, resume
from .sampling import Sampler, native_sampler
from .stop_strings import StopStringMatcher


@dataclass(frozen=True)
class LogitsOptions:
    """What a sequence does with its logits row in Python, as Model.stream does for one sequence:
    logit_bias added, then the grammar's mask, then the C++ sampler on that row (seeded as Model's)."""
    top_logprobs: Optional[int] = None      # each sampled token's logprob and k alternatives
    bias: Optional[np.ndarray] = None       # float32 [vocab] added to the logits (logit_bias)
    grammar: Optional[Grammar] = None       # every token inside its mask (response_format)
    prompt_logprobs: bool = False           # the prompt's logprobs too (top_logprobs alternatives each)

    @property
    def needs_row(self) -> bool:
        return self.top_logprobs is not None or self.bias is not None or self.grammar is not None


class StepOutput(NamedTuple):
    """What one sequence produced in a step."""
    sequence: "_Sequence"
    text: str                   # the text its token completed ("" when none yet)
    logprobs: Optional[list]    # [TokenLogprob] of the tokens behind text (top_logprobs set), else None
    finished: bool              # its last step (sequence.error says if it failed)
    prompt_logprobs: Optional[list] = None  # [TokenLogprob] of every prompt token (the first's
                                            # logprob None), on its first output when asked for


class _Sequence:
    """One prompt's generation state in the batch."""

    def __init__(self, index, prompt_ids, params, tokenizer, n_ctx, options: LogitsOptions):
        self.index = index
        self.prompt = list(prompt_ids)
        self.params = params
        self.options = options
        self.tokenizer = tokenizer
        # Python rows: the grammar's parser, and the C++ sampler drawing from the row Python masked
        self.matcher = options.grammar.matcher() if options.grammar is not None else None
        self.row_sampler = native_sampler(params, prompt_ids) if options.needs_row else None
        self.pending_logprobs = []      # of tokens whose text is not out yet
        # the prompt's logprobs, filled chunk by chunk as its prefill rows are scored (it then
        # prefills from position 0: a cached prefix has no logits)
        self.prompt_logprobs = ([first_prompt_logprob(self.prompt[0], tokenizer)]
                                if options.prompt_logprobs else None)
        self.greedy = params.greedy and not params.has_penalties and not options.needs_row
        self.sampler = None if self.greedy or options.needs_row else native_sampler(params, prompt_ids)
        self.stop_ids = set() if params.ignore_eos else tokenizer.stop_ids
        self.detok = StreamingDetokenizer(tokenizer, prompt_ids)
        self.stops = StopStringMatcher(params.stop)
        room = n_ctx - len(prompt_ids)
        self.limit = room if params.max_tokens is None else min(params.max_tokens, room)
        self.slot = -1
        self.n_prefilled = 0            # prompt tokens already in the slot's cache
        self.n_cached = 0               # of those, found there from an earlier sequence (its prefix)
                                        # or copied from its leader's slot
        self.leader = None              # the running sequence of the same prompt whose prefix it copies
        self.next_token = None          # the token to evaluate next (decoding)
        self.generated, self.pieces = [], []
        self.n_sampled, self.n_decode, self.finish = 0, 0, "length"
        self.t_start = self.t_first = None
        self.done, self.result = False, None    # result: the Completion, once finished
        self.error = None               # the exception that ended it (its grammar refused a token)
        self.lookup = None              # its NgramDraft (prompt lookup), set by BatchScheduler.add
        self.draft_sampler = None       # with lookup and sampling: the NumPy Sampler verifying its drafts
        self.draft = []                 # the draft tokens of its row in the step being run
        self.n_drafted = self.n_accepted = 0

    @property
    def decoding(self) -> bool:
        return self.next_token is not None

    def pick(self, engine, logits, allowed=None) -> int:
        """The next token from its logits row [vocab]: biased, inside the grammar's mask (allowed:
        this step's, computed beside the engine pass), drawn by the C++ sampler on engine's threads."""
        row = logits if self.options.bias is None else np.asarray(logits, dtype=np.float32) + self.options.bias
        if self.matcher is not None:
            row = self.matcher.apply(row, allowed)
        return engine.sample_row(self.row_sampler, row)

    def accept(self, tok, logits=None):
        """Takes a sampled token (logits: the raw row it came from, for its logprob); returns
        (text piece, done)."""
        self.n_sampled += 1
        if tok in self.stop_ids:
            self.finish = "stop"
            return "", True
        self.generated.append(tok)
        if self.sampler is not None:
            self.sampler.add_history(tok)
        if self.row_sampler is not None:
            self.row_sampler.add_history(tok)
        if self.matcher is not None:
            self.matcher.accept(tok)
        if self.options.top_logprobs is not None:
            self.pending_logprobs.append(token_logprob(logits, tok, self.options.top_logprobs, self.tokenizer))
        out = self.stops.feed(self.detok.push(tok))
        if self.stops.stopped or (self.matcher is not None and self.matcher.done):
            self.finish = "stop"    # a stop string, or the document is complete (only EOS may follow)
            return out, True
        if len(self.generated) >= self.limit:
            return out, True
        self.next_token = tok
        return out, False

    def cached_tokens(self) -> list:
        """The tokens whose K/V this sequence left in its slot (positions 0..)."""
        return self.prompt[:self.n_prefilled] + self.generated[:self.n_decode]

    def take_logprobs(self, text: str, finished: bool) -> Optional[list]:
        """The logprobs to send with `text`: those gathered so far, once text is out (or at the
        end); None for a sequence that did not ask for them."""
        if self.options.top_logprobs is None or not (text or (finished and self.pending_logprobs)):
            return None
        out, self.pending_logprobs = self.pending_logprobs, []
        return out

    def flush(self) -> str:
        return "" if self.stops.stopped else self.stops.feed(self.detok.flush()) + self.stops.flush()

    def completion(self, t_end) -> Completion:
        n_prompt = len(self.prompt)
        return Completion(
            text="".join(self.pieces), tokens=self.generated, finish_reason=self.finish,
            usage=Usage(n_prompt, self.n_sampled, n_prompt + self.n_sampled),
            timings=Timings(n_prompt - self.n_cached if self.t_first is not None else 0, self.n_cached,
                            (self.t_first or t_end) - self.t_start, self.n_decode, t_end - (self.t_first or t_end),
                            self.n_drafted, self.n_accepted),
            stop_string=self.stops.matched)


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
        # a recurrent model's states a few tokens before recent prompts' ends, per slot
        self.checkpoints = StateCheckpoints(engine) if engine.recurrent else None
        self._count = 0
        self._mask_pool = None      # threads computing grammar masks beside the engine pass
        # what the steps cost, for the server's /metrics: steps run, tokens sampled, and seconds
        # in the engine pass (with the sampling of rows that need their logits in Python)
        self.steps = self.sampled_rows = 0
        self.pass_seconds = 0.0
        # called right before each engine pass: the server hands the previous step's events to
        # its event loop there, so that the loop's work runs beside the pass, not between passes
        self.before_pass = None

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, prompt_ids, params, options: LogitsOptions = LogitsOptions()) -> _Sequence:
        """Queues a prompt (token ids, shorter than the context); `.done` / `.completion` on
        the returned sequence once finished. ValueError for a grammar that cannot start."""
        if params.prompt_lookup:
            why = lookup_refusal(params, options.needs_row, self.engine.recurrent)
            if why is not None:
                raise ValueError(why)
        seq = _Sequence(self._count, prompt_ids, params, self.tokenizer, self.engine.n_ctx, options)
        if params.prompt_lookup:
            seq.lookup = NgramDraft(seq.prompt, params.prompt_lookup)
            if not seq.greedy:
                seq.draft_sampler = Sampler(params)
        if options.prompt_logprobs and seq.limit == 0:
            raise ValueError("prompt logprobs are scored on the way to the first token: "
                             "the prompt must leave room for one (max_tokens >= 1)")
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
        conversation taking its turn finds its history); prefill starts after that prefix.
        A sequence scoring its prompt prefills it all, in the slot whose cache loses least."""
        shared = {slot: common_prefix(self.slot_tokens[slot], seq.prompt) for slot in self.free_slots}
        if seq.prompt_logprobs is None:
            slot = max(self.free_slots, key=lambda sl: (shared[sl], -sl))
        else:   # scored from position 0: into the slot whose cache loses the fewest tokens
            slot = min(self.free_slots, key=lambda sl: (len(self.slot_tokens[sl]) - shared[sl], sl))
            shared[slot] = 0
        self.free_slots.remove(slot)
        seq.slot = slot
        self.running.append(seq)    # first: cancel() gives the slot back should the engine fail below
        seq.n_prefilled = seq.n_cached = resume(self.engine, self.checkpoints, slot, seq.prompt,
                                                min(shared[slot], len(seq.prompt) - 1))
        if seq.n_prefilled < len(seq.prompt) - 1:
            seq.leader = self._leader_for(seq)

    def _leader_for(self, seq):
        """A running sequence of the same prompt still prefilling it (and following no one), or None.
        One that wants the prompt's logprobs follows only a leader scoring them with as many
        alternatives (it copies them with the K/V rows)."""
        def scores_for(s):
            return seq.prompt_logprobs is None or (s.prompt_logprobs is not None and
                                                    s.options.top_logprobs == seq.options.top_logprobs)
        return next((s for s in self.running if s is not seq and s.leader is None and not s.decoding
                     and s.prompt == seq.prompt and scores_for(s)), None)

    def _copy_from_leaders(self) -> None:
        """Followers whose leader has prefilled the prefix take a copy of its K/V rows. Those whose
        leader was cancelled follow the first of them, which prefills the prompt itself."""
        for s in self.running:
            if s.leader is not None and s.leader not in self.running:
                s.leader = self._leader_for(s)
            lead = s.leader
            if lead is not None and lead.n_prefilled >= len(s.prompt) - 1 and not self._recurrent_moved_on(lead):
                n = len(s.prompt) - 1     # the prefix; each evaluates the last token itself
                self.engine.kv_copy(lead.slot, s.slot, n)
                s.n_prefilled = s.n_cached = n
                if s.prompt_logprobs is not None:
                    s.prompt_logprobs = list(lead.prompt_logprobs)
                s.leader = None

    def _recurrent_moved_on(self, lead) -> bool:
        """A recurrent model's leader whose state is past the prefix (it evaluated the last prompt
        token already): its state cannot be copied as the prefix's, so its followers prefill it
        themselves. (Attention-only models copy K/V rows of any length.)"""
        if not self.engine.recurrent or self.engine.state_position(lead.slot) == len(lead.prompt) - 1:
            return False
        for s in self.running:
            if s.leader is lead:
                s.leader = None
        return True

    def _checkpoint_position(self, seq):
        """Where seq's prompt saves its slot's recurrent state (None: nowhere)."""
        return None if self.checkpoints is None else StateCheckpoints.position(len(seq.prompt))

    def _release(self, seq) -> None:
        self.slot_tokens[seq.slot] = seq.cached_tokens()
        self.free_slots.append(seq.slot)

    def step(self) -> list[StepOutput]:
        """One engine pass; returns a StepOutput for each row it sampled."""
        # Each running sequence takes a row of the pass (its decode row, or later its prompt's
        # last token): no more run than the engine's rows, however many slots it has.
        while self.waiting and self.free_slots and len(self.running) < self.engine.max_batch:
            self._admit(self.waiting.popleft())
        if not self.running:
            return []
        self._copy_from_leaders()
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
        self._add_drafts(entries, rows)
        # Prefill chunks of admitted prompts, up to prefill_chunk tokens in all per step (so a
        # long prompt does not stall the decoding rows for long), in admission order.
        prefills = []
        budget = full_budget = min(self.prefill_chunk, self.engine.max_batch - sum(len(e[1]) for e in entries))
        for s in self.running:
            if not s.decoding and s.leader is None and s.n_prefilled < len(s.prompt) - 1 and budget > 0:
                a = s.n_prefilled
                n = prefix_chunk_length(a, len(s.prompt) - 1 - a, budget, full_budget)
                if n == 0:
                    continue
                checkpoint = self._checkpoint_position(s)
                if checkpoint is not None and a < checkpoint < a + n:
                    n = checkpoint - a      # the chunk ends where the state is saved
                scores = None
                if s.prompt_logprobs is not None:   # rows a..a+n-1 score prompt tokens a+1..a+n
                    scores = _row_scores(s.prompt[a + 1:a + n + 1], s.options.top_logprobs or 0)
                # marked a prefix chunk (even of one token): the engine runs it through the prefill
                # GEMM (past position 15), the decode rows through the decode kernels, so neither
                # depends on the other
                entries.append((s.slot, np.array(s.prompt[a:a + n], np.int32), a, scores, True))
                prefills.append((s, n, scores))
                budget -= n
        if self.before_pass is not None:
            self.before_pass()
        started = time.perf_counter()
        chosen, logits = self._evaluate(entries, rows, len(prefills))
        self.pass_seconds += time.perf_counter() - started
        self.steps += 1
        for s, n, scores in prefills:
            s.n_prefilled += n
            if s.n_prefilled == self._checkpoint_position(s):
                self.checkpoints.save(s.slot, s.prompt[:s.n_prefilled])
            if scores is not None:
                s.prompt_logprobs += scored_logprobs(scores, self.tokenizer)
        now = time.perf_counter()
        out = []
        for i, (s, toks) in enumerate(zip(rows, chosen)):
            first = not s.decoding      # its prompt's last token: the sequence's first output
            if first:
                s.n_prefilled = len(s.prompt)
                s.t_first = now
            try:
                if isinstance(toks, BaseException):
                    raise toks
                # a draft's kept tokens, then the model's choice after the last of them
                kept = accepted(s.draft, toks) if s.draft else 0
                if s.draft:
                    s.lookup.confirmed(len(s.draft), kept)
                    s.n_drafted, s.n_accepted = s.n_drafted + len(s.draft), s.n_accepted + kept
                if not first:
                    s.n_decode += 1 + kept      # the rows of its token and of the kept draft tokens
                # a greedy row whose logits had no token (NaN...) fails this sequence, naming it
                toks = greedy.tokens(toks[:kept + 1], len(s.prompt) + len(s.generated) - 1)
                piece, finished = "", False
                for tok in toks:
                    text, finished = s.accept(tok, None if logits is None else logits[i])
                    piece += text
                    self.sampled_rows += 1
                    if finished:
                        break
                    if s.lookup is not None:
                        s.lookup.push(tok)
            except Exception as error:  # noqa: BLE001 - this sequence fails, the batch goes on
                s.error, piece, finished = error, "", True
            s.draft = []
            if finished:
                piece += s.flush() if s.error is None else ""
                s.next_token = None
            if piece:
                s.pieces.append(piece)
            lps = s.take_logprobs(piece, finished)
            if finished:
                self.running.remove(s)
                self._release(s)
                s.done, s.result = True, s.completion(now)
            out.append(StepOutput(s, piece, lps, finished, s.prompt_logprobs if first else None))
        return out

    def _add_drafts(self, entries, rows) -> None:
        """Turns the decode entries of sequences with prompt lookup into decode runs: the token
        and a draft that fits the sequence's limit, the context and the pass's rows."""
        room = self.engine.max_batch - len(entries)
        for i, s in enumerate(rows):
            if s.lookup is None or not s.decoding or room <= 0:
                continue
            pos = len(s.prompt) + len(s.generated) - 1
            s.draft = s.lookup.propose(min(s.limit - len(s.generated) - 1, self.engine.n_ctx - pos - 1, room))
            if s.draft:
                entries[i] = (s.slot, np.array([s.next_token] + s.draft, np.int32), pos, None, False, True)
                room -= len(s.draft)

    def _evaluate(self, entries, rows, n_prefills):
        """Runs the pass; returns (each row's tokens: [its next token], a greedy decode run's
        argmax per row, or a sampled one's kept draft tokens and the token drawn after them; or
        the exception that stopped it; the logits f32 [rows, vocab] of each row's last output when
        Python rows asked for them, else None). Rows that need their logits never run drafts."""
        counts = [len(e[1]) if len(e) == 6 and e[5] else 1 for e in entries[:len(rows)]]
        starts = np.cumsum([0] + counts)

        def split(flat):
            return [[int(t) for t in flat[a:b]] for a, b in zip(starts[:-1], starts[1:])]

        # rows sampled in Python: those that need their logits row, and sampled drafts' verification
        python_rows = [s for s in rows if s.options.needs_row or (s.draft and s.draft_sampler is not None)]
        if not python_rows:     # everything is sampled in C++ on the logits where the engine wrote them
            if all(s.greedy for s in rows):
                return split(self.engine.forward_batch_argmax(entries)), None
            samplers = [s.sampler if s.sampler is not None else _greedy_sampler() for s in rows]
            samplers += [_greedy_sampler() for _ in range(n_prefills)]     # their rows are not used
            return split(self.engine.forward_batch_sample(entries, samplers)), None
        # The grammar masks of this step's tokens depend only on the tokens accepted so far:
        # computed while the engine evaluates the pass.
        masks = {id(s): self._masks().submit(s.matcher.mask) for s in python_rows if s.matcher is not None}
        outputs = self.engine.forward_batch(entries)    # f32 [output rows, vocab]; the rows' come first
        chosen = []
        for s, a, b in zip(rows, starts[:-1], starts[1:]):
            try:
                if s.options.needs_row:
                    mask = masks[id(s)].result() if s.matcher is not None else None
                    chosen.append([s.pick(self.engine, outputs[a], mask)])
                elif s.draft and s.draft_sampler is not None:   # the tokens kept, then one drawn
                    chosen.append(verify_sampled(s.draft, outputs[a:b], s.prompt + s.generated, s.draft_sampler))
                elif s.greedy:      # as the engine's argmax (its sentinels too: step() checks)
                    chosen.append([greedy.argmax(row) for row in outputs[a:b]])
                else:
                    chosen.append([int(self.engine.sample_row(s.sampler, outputs[a]))])
            except Exception as error:  # noqa: BLE001 - reported by step() for this sequence alone
                chosen.append(error)
        last = starts[1:] - 1   # each row's last output row (the rows' outputs lead, one each without drafts)
        return chosen, (outputs if last[-1] == len(rows) - 1 else outputs[last])

    def close(self) -> None:
        """Ends the grammar-mask threads (a scheduler used for one batch, as run_batch's)."""
        if self._mask_pool is not None:
            self._mask_pool.shutdown(wait=False)
            self._mask_pool = None

    def _masks(self) -> ThreadPoolExecutor:
        if self._mask_pool is None:
            self._mask_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                 thread_name_prefix="forgert-grammar")
        return self._mask_pool


# A prompt-prefix row at position 15 or later runs the engine's prefill GEMM (rows before it take
# the decode kernels), and a GEMM pass over fewer than 16 rows costs about as much as one of 16.
_GEMM_MIN_ROWS = 16
_FIRST_GEMM_POSITION = 15


def prefix_chunk_length(start: int, remaining: int, budget: int, full_budget: int) -> int:
    """Rows of a prompt's prefix to prefill in this step: [start, start + n) of the `remaining`
    rows left, with `budget` rows still free in the step and `full_budget` free in a step that
    carries no other prefill. A cut that would make a chunk of fewer than 16 GEMM rows is moved:
    a short tail is left at 16 rows instead, and a step with room for only a few such rows waits
    (returns 0) when a later step can take 16. Only the speed depends on the cut: a row's bits do
    not (docs/design.md "Batch invariance")."""
    def past(first, count):   # does a chunk of rows first.. reach the GEMM's positions?
        return first + count - 1 >= _FIRST_GEMM_POSITION

    n = min(budget, remaining)
    if n == remaining:
        return n
    if n < _GEMM_MIN_ROWS and past(start, n) and full_budget >= _GEMM_MIN_ROWS:
        return 0
    tail = remaining - n
    if tail < _GEMM_MIN_ROWS and past(start + n, tail) and n - (_GEMM_MIN_ROWS - tail) >= _GEMM_MIN_ROWS:
        n -= _GEMM_MIN_ROWS - tail
    return n


def run_batch(engine, tokenizer, prompts, params_list, prefill_chunk, options_list=None, slots=None):
    """Generator of (prompt index, text piece); returns the Completions in prompt order.

    engine: a _core.Engine (its n_slots sequences at a time); prompts: lists of token ids, each
    shorter than the context; params_list: one SamplingParams per prompt; options_list: one
    LogitsOptions per prompt, or None for none; slots: the KV slots it may use (default all of the
    engine's). A prompt asking for logprobs gets StreamPiece
    pieces (as Model.stream gives for one prompt), its last one possibly of empty text.
    The first sequence that fails (its grammar refused a token) raises its error."""
    sched = BatchScheduler(engine, tokenizer, prefill_chunk, slots)
    options_list = options_list or [LogitsOptions()] * len(prompts)
    seqs = [sched.add(p, params_list[i], options_list[i]) for i, p in enumerate(prompts)]
    index = {id(s): i for i, s in enumerate(seqs)}
    try:
        while sched.busy:
            for out in sched.step():
                if out.sequence.error is not None:
                    raise out.sequence.error
                if out.logprobs is not None:
                    yield index[id(out.sequence)], StreamPiece(out.text, out.logprobs)
                elif out.text:
                    yield index[id(out.sequence)], out.text
    finally:
        sched.close()
    return [s.result for s in seqs]


def _row_scores(targets, top_k):
    """A _core.RowScores: a prefill chunk's rows scored against the prompt tokens after them."""
    from . import _core
    return _core.RowScores(np.array(targets, np.int32), top_k)


def _greedy_sampler():
    """A temperature-0 sampler (the argmax) for the greedy rows of a batch that also samples."""
    from . import _core
    return _core.Sampler(0.0, 0, 1.0, 0.0)
