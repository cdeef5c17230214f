"""The batched step of the engine (_core.Engine.forward_batch*): several sequences, each in its
own KV slot, evaluated in one pass, against each sequence evaluated alone in a one-slot engine
(the single-sequence path, itself tested against transformers in test_e2e_tiny.py).

Batches are skewed on purpose: one sequence long, others short, one admitted at position 0 as
a prefill chunk beside sequences decoding one token each, slots used out of order. On Metal
(the emulated device on Linux) every case runs under the emulator's three thread orders.

Bound: the batch runs the projections as one GEMM over all rows where a lone decode step runs a
GEMV, so f32 sums are ordered differently and an f16 K/V rounding may flip by one ulp (as in
test_e2e_tiny.py's F32/F16 bound). Measured max |batched - alone| / max|alone| on the CPU (AVX2)
and the emulated Metal device, f32 weights: <= 1.8e-5 on the Llama/Qwen specs (most < 1e-6), 7.7e-5
on Gemma 3 (a 2-token prompt whose K/V came from a 36-row pass in the batch, a 2-row one alone)
-> 3e-4 (a slot or window mix-up moves logits by > 1e-2).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import model_factory as mf
from conftest import metal_skip_reason

SCHEDULES = ["forward"] if sys.platform == "darwin" else ["forward", "reverse", "random"]
MAX_REL = 3e-4  # measured <= 7.7e-5 (see the module docstring)


def make_engine(tiny, backend, n_slots, max_batch=512, n_ctx=64):
    """tiny: a model_factory TinyModel, or a GGUF path."""
    from forgert import _core
    from forgert.loader import load_model
    model = load_model(str(tiny if isinstance(tiny, (str, Path)) else tiny.path("gguf-F32")))
    return _core.Engine(model.config.core_dict(n_ctx), model.core_tensors, backend=backend, n_threads=1,
                        max_batch=max_batch, n_slots=n_slots)


def prompts(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).astype(np.int32) for n in lengths]


def assert_close(batched, alone, what):
    err = np.max(np.abs(batched - alone)) / np.max(np.abs(alone))
    assert err <= MAX_REL, f"{what}: max rel err {err:.2e}"


@pytest.fixture(params=["cpu"] + [f"metal-{s}" for s in SCHEDULES])
def backend(request):
    if request.param == "cpu":
        yield "cpu"
        return
    reason = metal_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from forgert import _core
    schedule = request.param.split("-", 1)[1]
    _core.set_emulator_schedule(schedule, 7)
    yield "metal"
    _core.set_emulator_schedule("forward", 0)


@pytest.mark.parametrize("spec", ["llama3_untied", "qwen2_tied"])
def test_skewed_batch_equals_each_sequence_alone(tiny_models, backend, spec):
    """Slot 3: a long prompt; slot 0: a short one; slot 2 admitted later at position 0 as a
    prefill chunk beside the others decoding; then every sequence decodes together."""
    tiny = tiny_models(spec)
    batch = make_engine(tiny, backend, n_slots=4)
    alone = {s: make_engine(tiny, backend, n_slots=1) for s in (0, 2, 3)}
    long_p, short_p, late_p = prompts(tiny.vocab, [37, 3, 6])
    seqs = {3: list(long_p), 0: list(short_p)}
    pos = {3: 0, 0: 0}

    # Step 1: two prompts of very different lengths in one pass.
    entries = [(3, long_p, 0), (0, short_p, 0)]
    got = batch.forward_batch(entries)
    assert got.shape == (2, tiny.vocab)
    for row, (slot, toks, p) in enumerate(entries):
        assert_close(got[row], alone[slot].forward(toks, p)[-1], f"prompt of slot {slot}")
    pos = {3: len(long_p), 0: len(short_p)}

    # Step 2 on: decoding sequences (one token each) beside a prefill chunk at position 0, then
    # all three decoding; greedy tokens through forward_batch_argmax.
    nxt = {3: int(np.argmax(got[0])), 0: int(np.argmax(got[1]))}
    for step in range(5):
        entries = [(s, np.array([nxt[s]], np.int32), pos[s]) for s in sorted(nxt)]
        if step == 0:
            entries.insert(1, (2, late_p, 0))
        ids = batch.forward_batch_argmax(entries)
        logits = batch.forward_batch(entries) if step == 0 else None  # re-evaluated: same rows, same cache
        for row, (slot, toks, p) in enumerate(entries):
            ref = alone[slot].forward(toks, p)[-1]
            if logits is not None:
                assert_close(logits[row], ref, f"step {step} slot {slot}")
            # A near-tie may flip: the batched choice must be within the bound of the best logit.
            assert ref[ids[row]] >= ref.max() - MAX_REL * np.max(np.abs(ref)), f"step {step} slot {slot}"
            nxt[slot] = int(ids[row])
            pos[slot] = p + len(toks)
        if step == 0:
            assert ids.shape == (3,)


@pytest.fixture(scope="module")
def gemma_paths(tmp_path_factory):
    import gemma_factory as gf
    root = tmp_path_factory.mktemp("gemma_batch")
    return {name: gf.make_tiny_gemma(spec, root, hf_dtypes=(), gguf_types=("F32",)).path("gguf-F32")
            for name, spec in gf.SPECS.items()}


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_sliding_window_and_softcap_per_slot(gemma_paths, backend, arch):
    """Gemma's local layers (window 8, far shorter than the prompts) and Gemma 2's score and
    logit soft-capping, per slot: sequences past the window beside short ones and a decode at
    position 0's neighbour, each against the same calls on it alone."""
    path = gemma_paths[arch]
    batch = make_engine(path, backend, n_slots=3)
    alone = make_engine(path, backend, n_slots=1)
    vocab = batch.vocab
    a, b, c = prompts(vocab, [23, 2, 11], seed=3)
    entries = [(2, a, 0), (0, b, 0), (1, c, 0)]
    got = batch.forward_batch(entries)
    for row, (slot, toks, p) in enumerate(entries):
        assert_close(got[row], alone.forward(toks, p)[-1], f"{arch} prompt of slot {slot}")
    nxt = [int(np.argmax(r)) for r in got]
    steps = [(2, np.array([nxt[0]], np.int32), 23), (0, np.array([nxt[1]], np.int32), 2),
             (1, np.array([nxt[2]], np.int32), 11)]
    got = batch.forward_batch(steps)
    for row, (slot, toks, p) in enumerate(steps):
        alone.forward({2: a, 0: b, 1: c}[slot], 0)     # the same calls, one sequence at a time
        ref = alone.forward(toks, p)[-1]
        assert_close(got[row], ref, f"{arch} decode of slot {slot}")


def test_single_slot_forward_is_slot_zero_of_a_batch(tiny_models):
    """forward() on a many-slot engine uses slot 0: the prompt-cache state (kv_save) is slot 0's."""
    tiny = tiny_models("llama_tied")
    batch = make_engine(tiny, "cpu", n_slots=3)
    p0, p1 = prompts(tiny.vocab, [9, 5], seed=1)
    batch.forward_batch([(1, p1, 0)])           # another slot's rows must not touch slot 0
    a = batch.forward(p0, 0)[-1]
    b = batch.forward_batch([(0, p0[-1:], len(p0) - 1), (1, p1[-1:], len(p1) - 1)])[0]
    assert_close(b, a, "slot 0 through forward_batch")
    alone = make_engine(tiny, "cpu", n_slots=1)
    alone.forward(p0, 0)
    np.testing.assert_array_equal(batch.kv_save(len(p0)), alone.kv_save(len(p0)))


def test_per_sequence_samplers(tiny_models):
    """forward_batch_sample draws each entry's token with its own sampler: the same draws as
    forward_sample with a like-seeded sampler on each sequence alone."""
    from forgert import _core
    tiny = tiny_models("llama_tied")
    batch = make_engine(tiny, "cpu", n_slots=2)
    alone = make_engine(tiny, "cpu", n_slots=1)
    p0, p1 = prompts(tiny.vocab, [7, 4], seed=2)
    params = [dict(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0, seed=11),
              dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.0, seed=12)]
    got = batch.forward_batch_sample([(0, p0, 0), (1, p1, 0)], [_core.Sampler(**params[0]), _core.Sampler(**params[1])])
    for prompt, kw, tok in zip((p0, p1), params, got):
        assert alone.forward_sample(prompt, 0, _core.Sampler(**kw)) == tok


@pytest.mark.parametrize("entries, message", [
    ([], "no sequences"),
    ([(4, [1, 2], 0)], "slot 4"),
    ([(-1, [1], 0)], "slot -1"),
    ([(0, [1], 0), (0, [2], 1)], "appears twice"),
    ([(0, [1], 64)], "context overflow"),
    ([(1, [10**6], 0)], "out of range"),
    ([(0, [1] * 9, 0), (1, [1] * 8, 0)], "max_batch"),
    ([(0, [1])], "(slot, tokens, pos)"),
])
def test_bad_batches_raise(tiny_models, entries, message):
    tiny = tiny_models("llama_tied")
    eng = make_engine(tiny, "cpu", n_slots=4, max_batch=16)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eng.forward_batch(entries)


def log_softmax(logits):
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# Scored rows vs NumPy's f64 log-softmax of the same sequence's logits from a one-slot engine
# (the batched pass's rounding plus the f32 exponentials): measured max |difference| 1.5e-6 on
# the CPU, 1.7e-8 on the emulated Metal device (tiny Llama 3 and Gemma 2, f32 weights).
SCORE_TOL = 1e-5


def assert_scores(scores, ref_logits, targets, what):
    """scores: a filled _core.RowScores; ref_logits: f32 [n, vocab] of the same rows alone."""
    ref = log_softmax(ref_logits)
    n, k = len(targets), scores.top_k
    want = ref[np.arange(n), targets]
    assert np.max(np.abs(scores.logprob - want)) <= SCORE_TOL, f"{what}: target logprobs"
    if k:
        kth = -np.sort(-ref, axis=1)[:, k - 1]
        chosen = np.take_along_axis(ref, scores.top_ids.astype(np.int64), axis=1)   # [n, k]
        assert np.max(np.abs(scores.top_logprob - chosen)) <= SCORE_TOL, f"{what}: top values"
        assert np.all(chosen >= kth[:, None] - SCORE_TOL), f"{what}: not the top {k}"
        assert np.all(np.diff(scores.top_logprob, axis=1) <= 0), f"{what}: most likely first"
        assert all(len(set(row)) == k for row in scores.top_ids.tolist()), f"{what}: repeated ids"
        return float(max(np.max(np.abs(scores.logprob - want)), np.max(np.abs(scores.top_logprob - chosen))))
    return float(np.max(np.abs(scores.logprob - want)))


@pytest.mark.parametrize("spec", ["llama3_untied", "gemma2"])
def test_scored_entries_are_the_log_softmax_of_each_row(tiny_models, gemma_paths, backend, spec):
    """An entry with a RowScores (echo's prompt logprobs) beside decoding rows and a plain prefill:
    each of its 140 rows (three kScoreBlock blocks, two in flight at a time) scored against the
    token after it equals NumPy's log-softmax of that sequence's logits evaluated alone; the
    other entries' outputs are those of the same pass without scores. Gemma 2: the final logit
    soft-cap applies to scored rows."""
    from forgert import _core
    tiny = gemma_paths["gemma2"] if spec == "gemma2" else tiny_models(spec)
    batch = make_engine(tiny, backend, n_slots=3, n_ctx=160)
    alone = make_engine(tiny, backend, n_slots=1, n_ctx=160)
    vocab = batch.vocab
    scored, decoded, plain = prompts(vocab, [141, 5, 9], seed=4)
    batch.forward_batch([(1, decoded, 0)])
    nxt = np.array([7], np.int32)

    def entries(scores):
        return [(1, nxt, len(decoded)), (2, scored[:-1], 0, scores), (0, plain, 0)]
    unscored = batch.forward_batch(entries(None))
    scores = _core.RowScores(scored[1:], 5)
    got = batch.forward_batch(entries(scores))     # the same pass again, now scored
    np.testing.assert_array_equal(got, unscored)   # scoring reads the pass, changes none of it
    worst = assert_scores(scores, alone.forward(scored[:-1], 0, all_logits=True), scored[1:], spec)

    # The same through forward_batch_argmax and through prefill (one entry on slot 0).
    for call in ("argmax", "prefill"):
        again = _core.RowScores(scored[1:], 0)
        if call == "argmax":
            assert list(batch.forward_batch_argmax(entries(again))) == list(np.argmax(unscored, axis=1))
        else:
            batch.prefill(scored[:-1], 0, again)
        assert again.top_ids.shape == (140, 0)
        worst = max(worst, assert_scores(again, alone.forward(scored[:-1], 0, all_logits=True), scored[1:], call))
    print(f"{spec} {backend}: largest scored logprob difference {worst:.3g}")


def test_scores_in_a_pass_split_by_max_batch_are_refused(tiny_models):
    from forgert import _core
    eng = make_engine(tiny_models("llama_tied"), "cpu", n_slots=1, max_batch=16)
    toks = np.arange(20, dtype=np.int32)
    with pytest.raises(ValueError, match="max_batch"):
        eng.prefill(toks, 0, _core.RowScores(toks + 1, 1))


def test_forward_argmax_over_several_max_batch_chunks(tiny_models):
    """A prompt longer than max_batch from position 0: its first chunk holds decode rows
    (positions below kMaxDecodeRun) and prefix rows, split into two entries as forward splits
    it (it raised "run_layers: entries of one class each" before). The device's argmax is the
    argmax of forward's last logits row, and both agree with a one-chunk engine's."""
    tm = tiny_models("llama_tied")
    toks = prompts(tm.vocab, [40], seed=3)[0]
    chunked = make_engine(tm, "cpu", n_slots=1, max_batch=16)
    whole = make_engine(tm, "cpu", n_slots=1, max_batch=64)
    best = int(np.asarray(chunked.forward_argmax(toks, 0)).reshape(-1)[-1])
    last = np.asarray(chunked.forward(toks, 0)).reshape(-1)
    ref = np.asarray(whole.forward(toks, 0)).reshape(-1)
    assert best == int(last.argmax()) == int(ref.argmax())
    assert_close(last, ref, "forward in 16-token chunks")


@pytest.mark.parametrize("make, message", [
    (lambda c: (0, [1, 2], 0, c.RowScores([3], 1)), "1 targets for 2 tokens"),
    (lambda c: (0, [1, 2], 0, c.RowScores([3, 10**6], 1)), "target token id 1000000"),
    (lambda c: (0, [1, 2], 0, "scores"), "must be a RowScores"),
    (lambda c: (0, [1, 2], 0, c.RowScores([3, 4], 65)), "top_k must be in 0..64"),
    (lambda c: (0, [1, 2], 0, c.RowScores([[3, 4]], 1)), "1-D array"),
])
def test_bad_scores_raise(tiny_models, make, message):
    from forgert import _core
    eng = make_engine(tiny_models("llama_tied"), "cpu", n_slots=2, max_batch=16)
    with pytest.raises(ValueError, match=message):
        eng.forward_batch([make(_core)])


def test_n_slots_must_be_positive(tiny_models):
    with pytest.raises(ValueError, match="n_slots"):
        make_engine(tiny_models("llama_tied"), "cpu", n_slots=0)


def test_per_sequence_samplers_side_by_side(smollm2_gguf):
    """Over SmolLM2's 49152-token vocabulary three entries' draws run on threads (sampling/
    batch_draw.cpp: from 2^17 logits): still the draws each sampler makes alone, its RNG advanced
    by its own rows only."""
    from forgert import _core
    batch = make_engine(smollm2_gguf, "cpu", n_slots=3)
    alone = make_engine(smollm2_gguf, "cpu", n_slots=1)
    p = prompts(batch.vocab, [6, 9, 4], seed=5)
    params = [dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=21),      # the whole vocabulary
              dict(temperature=0.9, top_k=0, top_p=0.9, min_p=0.0, seed=22),
              dict(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, seed=23)]
    samplers = [_core.Sampler(**kw) for kw in params]
    got = batch.forward_batch_sample([(i, p[i], 0) for i in range(3)], samplers)
    nxt = batch.forward_batch_sample([(i, got[i:i + 1], len(p[i])) for i in range(3)], samplers)
    for i, kw in enumerate(params):
        s = _core.Sampler(**kw)
        assert alone.forward_sample(p[i], 0, s) == got[i]
        assert alone.forward_sample(got[i:i + 1], len(p[i]), s) == nxt[i]
