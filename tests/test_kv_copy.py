"""Copying one KV slot's rows into another (Backend::copy, _core.Engine.kv_copy) and its use by
BatchScheduler: the n choices of one prompt prefill it once, in the first choice's slot.

References: NumPy for the op (the copied rows equal the source bit for bit, a copy does no
arithmetic; every other row untouched), on the CPU and on the emulated Metal device under its
three thread orders; for the scheduler, each choice generated alone by a one-slot Model with
its own seed (each prefilling the prompt itself), token for token.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import metal_skip_reason
from forgert.sampling import SamplingParams

SCHEDULES = ["forward"] if sys.platform == "darwin" else ["forward", "reverse", "random"]


@pytest.fixture(params=["cpu"] + [f"metal-{s}" for s in SCHEDULES])
def ops(request):
    from forgert import _core
    if request.param == "cpu":
        yield _core.Ops("cpu", 2)
        return
    reason = metal_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    _core.set_emulator_schedule(request.param.split("-", 1)[1], 7)
    yield _core.Ops("metal")
    _core.set_emulator_schedule("forward", 0)


def f16_cache(rows, cols, seed):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float16)


# (rows, cols, src, dst, n): slots of 8 rows, slot 0 -> slot 2, slot 2 -> slot 0 (a later slot
# into an earlier one), n = 0, a whole slot, and a cache large enough for the CPU's parallel copy.
CASES = [(24, 24, 0, 16, 5), (24, 24, 16, 0, 7), (24, 24, 8, 0, 0), (24, 64, 8, 16, 8), (4096, 128, 0, 2048, 2000)]


@pytest.mark.parametrize("rows,cols,src,dst,n", CASES)
def test_copy_rows_against_numpy(ops, rows, cols, src, dst, n):
    cache = f16_cache(rows, cols, seed=rows + src)
    expect = cache.copy()
    expect[dst:dst + n] = cache[src:src + n]
    got = ops.copy_rows(cache, [(src, dst, n)])
    assert got.dtype == np.float16 and got.shape == cache.shape
    np.testing.assert_array_equal(got.view(np.uint16), expect.view(np.uint16))


def test_chained_copies_in_one_command_buffer(ops):
    """Slot 0 -> 1, then slot 1 -> 2 and slot 0 -> 3 (reads of what the first wrote, and of what
    it read), in one command buffer: each copy sees the ones before it (the encoder's hazards)."""
    cache = f16_cache(4 * 16, 32, seed=9)
    expect = cache.copy()
    for src, dst, n in [(0, 16, 12), (16, 32, 12), (0, 48, 16)]:
        expect[dst:dst + n] = expect[src:src + n]
    got = ops.copy_rows(cache, [(0, 16, 12), (16, 32, 12), (0, 48, 16)])
    np.testing.assert_array_equal(got.view(np.uint16), expect.view(np.uint16))


def test_copy_rows_refuses_overlap(ops):
    with pytest.raises(ValueError, match="overlap"):
        ops.copy_rows(f16_cache(16, 8, 0), [(0, 4, 8)])
    with pytest.raises(ValueError, match="past the cache"):
        ops.copy_rows(f16_cache(16, 8, 0), [(0, 12, 8)])


def make_engine(tiny, n_slots, backend="cpu"):
    from forgert import _core
    from forgert.loader import load_model
    model = load_model(str(tiny.path("gguf-F32")))
    return _core.Engine(model.config.core_dict(64), model.core_tensors, backend=backend, n_threads=1,
                        max_batch=64, n_slots=n_slots)


@pytest.mark.parametrize("backend", ["cpu", "metal"])
def test_engine_kv_copy_continues_like_its_source(tiny_models, backend):
    """A prompt's prefix prefilled in slot 1 and copied to slot 2: the last token evaluated in
    both slots (one pass) gives the logits of that token after the prompt prefilled alone."""
    if backend == "metal" and metal_skip_reason() is not None:
        pytest.skip(metal_skip_reason())
    tiny = tiny_models("llama3_untied")
    prompt = np.random.default_rng(3).integers(0, tiny.vocab, 11).astype(np.int32)
    engine = make_engine(tiny, 3, backend)
    engine.forward_batch([(2, prompt[:4][::-1].copy(), 0)])     # slot 2 holds something else first
    engine.forward_batch([(1, prompt[:-1], 0)])
    engine.kv_copy(1, 2, len(prompt) - 1)
    got = engine.forward_batch([(1, prompt[-1:], len(prompt) - 1), (2, prompt[-1:], len(prompt) - 1)])
    alone = make_engine(tiny, 1, backend).forward(prompt, 0)[-1]
    scale = np.abs(alone).max()
    # A one-slot engine evaluates the whole prompt in one pass, the batch the prefix then the
    # last token: f32 sums ordered differently (test_batch_engine.py's bound, 3e-4).
    assert np.abs(got[0] - alone).max() / scale <= 3e-4
    np.testing.assert_array_equal(got[1], got[0])    # the same K/V rows and token: the same logits


def test_engine_kv_copy_bad_arguments(tiny_models):
    engine = make_engine(tiny_models("llama3_untied"), 2)
    for src, dst, n, what in [(0, 2, 1, "slots"), (-1, 1, 1, "slots"), (1, 1, 1, "distinct"), (0, 1, 65, "rows")]:
        with pytest.raises(ValueError, match=what):
            engine.kv_copy(src, dst, n)


class CountingEngine:
    """The engine with a tally of the tokens each pass evaluates and of its slot copies."""

    def __init__(self, engine):
        self._engine, self.tokens, self.copies = engine, 0, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _count(self, entries):
        self.tokens += sum(len(entry[1]) for entry in entries)   # (slot, tokens, pos, ...)

    def forward_batch(self, entries):
        self._count(entries)
        return self._engine.forward_batch(entries)

    def forward_batch_argmax(self, entries):
        self._count(entries)
        return self._engine.forward_batch_argmax(entries)

    def forward_batch_sample(self, entries, samplers):
        self._count(entries)
        return self._engine.forward_batch_sample(entries, samplers)

    def kv_copy(self, src, dst, n):
        self.copies.append((src, dst, n))
        self._engine.kv_copy(src, dst, n)


@pytest.fixture
def load(forgert):
    def make(tm, **kw):
        return forgert.Model(str(tm.path("gguf-F32")), backend="cpu", threads=1, n_ctx=96, **kw)
    return make


def seeded(seed, max_tokens=6):
    return SamplingParams(temperature=1.0, top_k=40, seed=seed, max_tokens=max_tokens, ignore_eos=True)


@pytest.mark.parametrize("name", ["llama3_untied", "qwen2_tied"])
def test_n_choices_prefill_the_prompt_once(tiny_models, load, name):
    """Three seeded choices of one 30-token prompt in a batch: each equals that choice generated
    alone (prefilling the prompt itself), and the batch evaluated the prefix once (two copies)."""
    tm = tiny_models(name)
    prompt = np.random.default_rng(11).integers(0, tm.vocab, 30).tolist()
    params = [seeded(seed) for seed in (5, 6, 7)]
    m = load(tm, parallel=3)
    m._engine = counting = CountingEngine(m._engine)
    batch = m.generate([prompt] * 3, params)
    single = load(tm)
    assert [c.tokens for c in batch] == [single.generate(prompt, p).tokens for p in params]
    assert len({tuple(c.tokens) for c in batch}) > 1     # the seeds did give different choices
    # The prefix once, each choice's last prompt token, then 5 decode rows each.
    assert counting.tokens == (len(prompt) - 1) + 3 * 1 + 3 * 5
    lead = counting.copies[0][0]
    assert sorted(counting.copies) == [(lead, s, len(prompt) - 1) for s in sorted({0, 1, 2} - {lead})]
    # Timings say so too: the copied prefix counts as cached, as a prompt-cache hit does.
    assert [c.timings.prompt_tokens_evaluated for c in batch] == [len(prompt), 1, 1]
    assert [c.timings.cached_tokens for c in batch] == [0, len(prompt) - 1, len(prompt) - 1]


def test_followers_prefill_themselves_when_the_leader_is_cancelled(tiny_models, load):
    """The first choice cancelled while it prefills a long prompt in chunks: the second takes
    its place (prefills the prompt itself), the third copies from it, and both still equal each
    choice alone."""
    from forgert.batch import BatchScheduler
    tm = tiny_models("llama3_untied")
    prompt = np.random.default_rng(12).integers(0, tm.vocab, 40).tolist()
    params = [seeded(seed, 4) for seed in (1, 2, 3)]
    m = load(tm, parallel=3)
    engine = CountingEngine(m._engine)
    sched = BatchScheduler(engine, m.tokenizer, prefill_chunk=16)
    seqs = [sched.add(prompt, p) for p in params]
    sched.step()                    # the leader's first chunk; the others wait for it
    assert engine.tokens == 16 and engine.copies == []
    sched.cancel(seqs[0])
    while sched.busy:
        sched.step()
    assert engine.copies == [(seqs[1].slot, seqs[2].slot, len(prompt) - 1)]
    assert engine.tokens == 16 + (len(prompt) - 1) + 2 * 4     # the cancelled chunk, one prefix, 2 x 4 rows
    single = load(tm)
    for p, s in zip(params[1:], seqs[1:]):
        assert s.result.tokens == single.generate(prompt, p).tokens


def test_a_copied_slot_keeps_its_prefix_for_the_next_turn(tiny_models, load):
    """A follower's slot records the prompt it copied: the next prompt extending it is admitted
    there and prefills only its new tokens."""
    from forgert.batch import BatchScheduler
    tm = tiny_models("qwen2_untied")
    prompt = np.random.default_rng(13).integers(0, tm.vocab, 20).tolist()
    m = load(tm, parallel=2)
    engine = CountingEngine(m._engine)
    sched = BatchScheduler(engine, m.tokenizer, prefill_chunk=16)
    a, b = sched.add(prompt, seeded(1, 3)), sched.add(prompt, seeded(2, 3))
    while sched.busy:
        sched.step()
    assert engine.copies == [(a.slot, b.slot, len(prompt) - 1)]
    turn = prompt + b.result.tokens + [5, 6, 7]
    engine.tokens = 0
    c = sched.add(turn, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    while sched.busy:
        sched.step()
    assert c.slot == b.slot and c.n_cached == len(prompt) + 2      # its last token was never evaluated
    single = load(tm)
    assert c.result.tokens == single.generate(turn, temperature=0.0, max_tokens=3, ignore_eos=True).tokens
