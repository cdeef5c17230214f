"""Pipelined decoding (Engine.decode_begin / decode_next / decode_end; docs/design.md
"Pipelined decoding"): on Metal, Model.generate/stream keep the next step in flight while the
host streams a token. The tokens must be those of the step-by-step path, and those the
transformers reference ranks first (up to near-ties within the format's bound, as in
test_e2e_tiny.py); a stop found one step late must leave the KV cache and the cached-token count
exactly as the step-by-step path leaves them. The order of the command stream itself (commit of
step t+1 before the wait for step t) is asserted by tests/metal/encoder_test.cpp."""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
from test_e2e_tiny import assert_follows_reference

# Metal's bound for quantized weights and the float one (test_e2e_tiny.py's QUANT_BOUNDS["metal"]
# and FLOAT_BOUNDS max_rel: measured <= 1.1e-3 and 1.3e-4 of max|logit| there).
MAX_REL = {"gguf-F32": 5e-4, "gguf-Q4_1": 5e-3}


def token_ids(tm, n: int, seed: int) -> list:
    rng = np.random.default_rng(1000 * seed + n)
    return rng.integers(0, tm.vocab, n).tolist()


class EngineSpy:
    """Stands in for Model._engine: counts the calls the decode loop makes, forwards them all."""

    def __init__(self, engine):
        self._engine, self.calls = engine, {}

    def __getattr__(self, name):
        attr = getattr(self._engine, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)
        return counted


def spied(m) -> EngineSpy:
    m._engine = EngineSpy(m._engine)
    return m._engine


def generate(m, prompt, n, pipelined: bool, **kw):
    m._pipelined_decode = pipelined
    m.reset()
    kw.setdefault("temperature", 0.0)
    kw.setdefault("ignore_eos", True)
    return m.generate(list(prompt), max_tokens=n, **kw)


def check_follows_reference(ref_model, prompt, toks, max_rel, what):
    ref = mf.reference_logits(ref_model, list(prompt) + list(toks))  # teacher-forced
    assert_follows_reference(ref, len(prompt), toks, max_rel * np.abs(ref).max(), what)


@pytest.fixture(scope="module")
def metal_model(forgert, tiny_models, metal_reason):
    if metal_reason is not None:
        pytest.skip(metal_reason)
    cache = {}

    def get(name, fmt):
        if (name, fmt) not in cache:
            m = forgert.Model(str(tiny_models(name).path(fmt)), backend="metal")
            assert m.backend == "metal" and m._pipelined_decode   # Metal pipelines by default
            cache[(name, fmt)] = m
        m = cache[(name, fmt)]
        m._pipelined_decode = True
        return m
    return get


# ----------------------------------------------------------------------------- Metal (emulated here)

@pytest.mark.metal
@pytest.mark.parametrize("name,fmt", [("llama_tied", "gguf-F32"), ("qwen2_untied", "gguf-Q4_1")])
def test_pipelined_greedy_equals_step_by_step_and_reference(tiny_models, reference_models, metal_model, name, fmt):
    tm = tiny_models(name)
    m = metal_model(name, fmt)
    prompt = token_ids(tm, 6, 9)
    spy = spied(m)
    try:
        piped = generate(m, prompt, 8, pipelined=True)
        assert spy.calls.get("decode_next") == 7 and spy.calls.get("forward_argmax") == 1, spy.calls
        spy.calls.clear()
        stepped = generate(m, prompt, 8, pipelined=False)
        assert "decode_next" not in spy.calls and spy.calls.get("forward_argmax") == 8, spy.calls
    finally:
        m._engine = spy._engine
    assert piped.tokens == stepped.tokens
    assert piped.finish_reason == "length" and piped.usage.completion_tokens == 8
    assert piped.timings.decode_tokens == stepped.timings.decode_tokens == 7
    check_follows_reference(reference_models(name, fmt), prompt, piped.tokens, MAX_REL[fmt], f"{name} {fmt}")


@pytest.mark.metal
def test_stop_found_late_leaves_cache_as_step_by_step(tiny_models, reference_models, metal_model):
    """A stop token is seen after the step evaluating it was launched: that step's K/V row is not
    counted as cached, and the next prompt overwrites it (a continuation that differs from the
    stop token right there gives the reference's tokens)."""
    name, fmt = "llama_tied", "gguf-F32"
    tm = tiny_models(name)
    m = metal_model(name, fmt)
    prompt = token_ids(tm, 6, 9)     # greedy: 13 278 104 265 265 ... (a new token at 3)
    toks = generate(m, prompt, 8, pipelined=False).tokens
    k = next(i for i in range(3, 8) if toks[i] not in toks[:i])   # a token that first appears at k
    stop_ids = m.tokenizer.stop_ids
    m.tokenizer.stop_ids = frozenset({toks[k]})
    try:
        c = generate(m, prompt, 8, pipelined=True, ignore_eos=False)
    finally:
        m.tokenizer.stop_ids = stop_ids
    assert c.tokens == toks[:k] and c.finish_reason == "stop"
    assert m._cache_tokens == prompt + toks[:k]     # the speculative step's position is not counted
    other = (toks[k] + 1) % tm.vocab
    follow = prompt + toks[:k] + [other]            # evaluated at the speculative step's position
    m._pipelined_decode = True
    piped = m.generate(follow, max_tokens=5, temperature=0.0, ignore_eos=True)
    assert piped.timings.cached_tokens == len(follow) - 1    # the prefix came from the cache
    fresh = generate(m, follow, 5, pipelined=False)
    assert piped.tokens == fresh.tokens
    check_follows_reference(reference_models(name, fmt), follow, piped.tokens, MAX_REL[fmt], "after a late stop")


@pytest.mark.metal
def test_pipelined_sampling_equals_step_by_step(tiny_models, metal_model):
    """Sampled in C++ (temperature > 0, seeded): the pipelined path draws from the same logits in
    the same order, so a seed gives the same tokens."""
    name, fmt = "qwen2_untied", "gguf-Q4_1"
    tm = tiny_models(name)
    m = metal_model(name, fmt)
    prompt = token_ids(tm, 5, 3)
    spy = spied(m)
    try:
        piped = generate(m, prompt, 8, pipelined=True, temperature=1.5, top_k=40, seed=7)
        assert spy.calls.get("decode_next") == 7, spy.calls
        stepped = generate(m, prompt, 8, pipelined=False, temperature=1.5, top_k=40, seed=7)
    finally:
        m._engine = spy._engine
    assert piped.tokens == stepped.tokens
    assert len(set(piped.tokens)) > 1


@pytest.mark.metal
def test_metal_backend_draws_on_a_pool_of_host_threads(forgert, tiny_models, metal_reason, core):
    """The Metal backend's host_parallel_for runs on a pool of the host's threads (the sampler's
    passes over a row while the GPU waits for the drawn token): the same tokens as one thread,
    over rows of several chunks (8192 logits each), whole-vocabulary and flat-row top_p."""
    if metal_reason is not None:
        pytest.skip(metal_reason)
    m = forgert.Model(str(tiny_models("llama_tied").path("gguf-F32")), backend="metal", threads=3)
    rng = np.random.default_rng(9)
    for std, top_p in ((2.0, 1.0), (0.5, 0.9), (2.0, 0.5)):
        row = (rng.standard_normal(30000) * std).astype(np.float32)
        a, b = (core.Sampler(1.0, 0, top_p, 0.0, repetition_penalty=1.3, seed=6) for _ in range(2))
        a.reset_history(np.arange(50, dtype=np.int32))
        b.reset_history(np.arange(50, dtype=np.int32))
        assert [m._engine.sample_row(a, row) for _ in range(6)] == [b.sample(row) for _ in range(6)]


@pytest.mark.metal
def test_profiling_decodes_step_by_step(tiny_models, metal_model):
    """Profiling syncs the device per stage of every call: it takes the step-by-step path, and
    its profile counts every decode step."""
    name, fmt = "llama_tied", "gguf-F32"
    m = metal_model(name, fmt)
    prompt = token_ids(tiny_models(name), 6, 9)
    spy = spied(m)
    m.set_profiling(True)
    try:
        c = m.generate(list(prompt), max_tokens=4, temperature=0.0, ignore_eos=True)
        assert "decode_next" not in spy.calls and spy.calls.get("forward_argmax") == 4, spy.calls
        assert m.profile["layers"] > 0
    finally:
        m.set_profiling(False)
        m._engine = spy._engine
    assert c.tokens == generate(m, prompt, 4, pipelined=False).tokens


@pytest.mark.metal
def test_stream_closed_with_a_step_in_flight(tiny_models, metal_model):
    """Closing a stream mid-pipeline finishes the step in flight; the model is then free and the
    next generation gives the step-by-step tokens."""
    name, fmt = "llama_tied", "gguf-F32"
    tm = tiny_models(name)
    m = metal_model(name, fmt)
    prompt = token_ids(tm, 6, 9)
    m._pipelined_decode = True
    m.reset()
    s = m.stream(list(prompt), max_tokens=8, temperature=0.0, ignore_eos=True)
    next(iter(s))
    s.close()
    assert m.generate(list(prompt), max_tokens=6, temperature=0.0, ignore_eos=True).tokens == \
        generate(m, prompt, 6, pipelined=False).tokens


# ----------------------------------------------------------------------------- the engine contract (CPU)

@pytest.fixture(scope="module")
def cpu_engine(forgert, tiny_models):
    tm = tiny_models("llama_tied")
    return tm, forgert.Model(str(tm.path("gguf-F32")), backend="cpu", n_ctx=32)._engine


def test_cpu_pipeline_greedy_equals_forward_argmax(cpu_engine):
    """The CPU runs each op as called: the same calls work, one step after another."""
    tm, eng = cpu_engine
    prompt = np.asarray(token_ids(tm, 6, 2), dtype=np.int32)
    first = eng.forward_argmax(prompt, 0)
    want, tok = [], first
    for i in range(5):
        tok = eng.forward_argmax(np.asarray([tok], dtype=np.int32), len(prompt) + i)
        want.append(tok)
    eng.forward_argmax(prompt, 0)                     # the same cache again
    eng.decode_begin(first, len(prompt), True)
    got = [eng.decode_next(i < 4) for i in range(5)]
    eng.decode_end()
    assert got == want


def test_cpu_pipeline_sampled_equals_forward_sample(cpu_engine, core):
    """Sampled, on a backend that runs ops as called: the drawn token is uploaded before its step
    runs (nothing can be encoded ahead), and a seed gives forward_sample's tokens."""
    tm, eng = cpu_engine
    prompt = np.asarray(token_ids(tm, 6, 4), dtype=np.int32)

    def sampler():
        return core.Sampler(1.5, 40, 1.0, 0.0, seed=5)
    s1 = sampler()
    first = tok = eng.forward_sample(prompt, 0, s1)
    want = []
    for i in range(5):
        s1.add_history(tok)
        tok = eng.forward_sample(np.asarray([tok], dtype=np.int32), len(prompt) + i, s1)
        want.append(tok)
    s2 = sampler()
    assert eng.forward_sample(prompt, 0, s2) == first
    eng.decode_begin(first, len(prompt), False)
    got, tok = [], first
    for i in range(5):
        s2.add_history(tok)
        tok = eng.decode_next(i < 4, s2)
        got.append(tok)
    eng.decode_end()
    assert got == want and len(set(want)) > 1


def test_pipeline_bad_input(cpu_engine, core):
    tm, eng = cpu_engine
    eng.decode_end()
    with pytest.raises(ValueError, match="decode_begin"):
        eng.decode_next(True)
    with pytest.raises(ValueError, match="out of range"):
        eng.decode_begin(tm.vocab, 0, True)
    with pytest.raises(ValueError, match="context overflow"):
        eng.decode_begin(1, 32, True)
    eng.decode_begin(1, 31, True)                     # the last position: no step after it fits
    with pytest.raises(ValueError, match="context overflow"):
        eng.decode_next(True)
    eng.decode_begin(1, 0, True)
    eng.forward(np.asarray([2], dtype=np.int32), 0)   # another pass: the pipeline is stale
    with pytest.raises(ValueError, match="another evaluation"):
        eng.decode_next(True)
    eng.decode_begin(1, 0, False)
    with pytest.raises(ValueError, match="sampler"):
        eng.decode_next(True)
    eng.decode_begin(1, 0, False)
    assert 0 <= eng.decode_next(False, core.Sampler(0.0, 0, 1.0, 0.0)) < tm.vocab
