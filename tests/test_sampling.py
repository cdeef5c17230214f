"""Sampling: parameter validation, the exact kept sets of top-k/top-p/min-p (computed by hand),
penalties, seeded reproducibility, distributions, and stop strings."""
from __future__ import annotations

import numpy as np
import pytest

from forgert.sampling import Sampler, SamplingParams, apply_penalties, filter_logits
from forgert.stop_strings import StopStringMatcher

PROBS = np.array([0.05, 0.5, 0.15, 0.3])           # sorted by probability: 1, 3, 2, 0
LOGITS = np.log(PROBS).astype(np.float32)


def kept(params, logits=LOGITS):
    return set(np.flatnonzero(np.isfinite(filter_logits(logits, params))).tolist())


def P(**kw):
    base = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    base.update(kw)
    return SamplingParams(**base)


# ------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("field,value", [
    ("max_tokens", -1), ("max_tokens", 2.5), ("temperature", -0.1), ("temperature", float("nan")),
    ("top_k", -1), ("top_k", 1.5), ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("min_p", 2.0),
    ("repetition_penalty", 0.0), ("presence_penalty", 3.0), ("frequency_penalty", -2.5),
    ("seed", "x"), ("seed", 1.0), ("stop", [""]), ("stop", [1]), ("ignore_eos", "yes"), ("top_k", True),
])
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_stop_accepts_a_string():
    assert SamplingParams(stop="END").stop == ["END"]


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match="top_q"):
        SamplingParams.from_kwargs(None, top_q=0.5)


# ------------------------------------------------------------------------------ kept sets

def test_no_filters_keep_everything():
    assert kept(P()) == {0, 1, 2, 3}


@pytest.mark.parametrize("k,expected", [(1, {1}), (2, {1, 3}), (3, {1, 3, 2}), (4, {0, 1, 2, 3}), (10, {0, 1, 2, 3})])
def test_top_k(k, expected):
    assert kept(P(top_k=k)) == expected


@pytest.mark.parametrize("top_p,expected", [
    (0.3, {1}),             # 0.5 alone reaches 0.3
    (0.5, {1}),             # ... and exactly 0.5
    (0.79, {1, 3}),         # 0.5 + 0.3 = 0.8 reaches 0.79
    (0.81, {1, 3, 2}),      # 0.95 reaches 0.81
    (0.96, {0, 1, 2, 3}),
])
def test_top_p(top_p, expected):
    assert kept(P(top_p=top_p)) == expected


@pytest.mark.parametrize("min_p,expected", [
    (0.05, {0, 1, 2, 3}),   # threshold 0.025
    (0.2, {1, 3, 2}),       # threshold 0.1
    (0.5, {1, 3}),          # threshold 0.25
    (0.9, {1}),             # threshold 0.45
])
def test_min_p(min_p, expected):
    assert kept(P(min_p=min_p)) == expected


def test_top_p_sees_tempered_probabilities():
    # temperature 2: p ~ sqrt(PROBS) = [.224, .707, .387, .548] / 1.866 = [.120, .379, .208, .294]
    # top_p 0.6: .379 + .294 = .673 >= .6 -> {1, 3}; at temperature 1, 0.5 + 0.3 would also give {1, 3}
    # top_p 0.7: needs .379 + .294 + .208 -> {1, 3, 2} (at temperature 1 it would be {1, 3})
    assert kept(P(temperature=2.0, top_p=0.6)) == {1, 3}
    assert kept(P(temperature=2.0, top_p=0.7)) == {1, 3, 2}
    assert kept(P(temperature=1.0, top_p=0.7)) == {1, 3}


def brute_force_kept(logits, temperature, top_k, top_p, min_p):
    """The definition, applied in order over a full sort (HF's warper order)."""
    x = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-x, kind="stable")
    if top_k:
        order = order[:top_k]
    p = np.exp(x[order] - x[order].max())
    p /= p.sum()
    n = len(order)
    if top_p < 1:
        n = min(n, max(1, int(np.sum(np.cumsum(p) - p < top_p))))
    if min_p > 0:
        n = min(n, int(np.sum(p >= min_p * p[0])))
    return set(order[:n].tolist())


def test_fast_filters_match_the_definition():
    rng = np.random.default_rng(0)
    for trial in range(300):
        vocab = int(rng.integers(2, 3000))
        logits = (rng.standard_normal(vocab) * rng.uniform(0.1, 8)).astype(np.float32)
        kw = dict(temperature=float(rng.uniform(0.2, 2.0)), top_k=int(rng.choice([0, 1, 5, 50, 5000])),
                  top_p=float(rng.choice([1.0, 0.5, 0.9, 0.99])), min_p=float(rng.choice([0.0, 0.01, 0.1])))
        assert kept(P(**kw), logits) == brute_force_kept(logits, **kw), (trial, kw)


def test_filters_combine():
    assert kept(P(top_k=3, top_p=0.81, min_p=0.5)) == {1, 3}


def test_sampling_only_draws_kept_tokens():
    s = Sampler(P(top_k=2, seed=1))
    draws = {s.sample(LOGITS) for _ in range(300)}
    assert draws == {1, 3}


def test_distribution_matches_probabilities():
    # Renormalized top-2: 0.5 / 0.8 = 0.625 and 0.375. 4000 seeded draws: the standard error is
    # 0.0077, so +-0.03 is ~4 sigma; the seed makes the test deterministic anyway.
    s = Sampler(P(top_k=2, seed=1234))
    draws = np.array([s.sample(LOGITS) for _ in range(4000)])
    assert abs(np.mean(draws == 1) - 0.625) < 0.03
    # Full distribution at temperature 1
    s = Sampler(P(seed=99))
    counts = np.bincount([s.sample(LOGITS) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, PROBS, atol=0.03)


def test_temperature_sharpens():
    # temperature 0.5 squares the probabilities: [.0025, .25, .0225, .09] / .365
    s = Sampler(P(temperature=0.5, seed=7))
    counts = np.bincount([s.sample(LOGITS) for _ in range(4000)], minlength=4) / 4000
    expected = PROBS ** 2 / np.sum(PROBS ** 2)
    np.testing.assert_allclose(counts, expected, atol=0.03)


def test_same_seed_same_draws_and_other_seed_differs():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    s1, s2, s3 = Sampler(P(seed=5)), Sampler(P(seed=5)), Sampler(P(seed=6))
    d1 = [s1.sample(logits) for _ in range(50)]
    d2 = [s2.sample(logits) for _ in range(50)]
    d3 = [s3.sample(logits) for _ in range(50)]
    assert d1 == d2 and d1 != d3


def test_greedy_is_argmax():
    logits = np.array([0.1, 5.0, 4.9, -1.0], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0)).sample(logits) == 1


# ------------------------------------------------------------------------------ penalties

def test_penalties_hand_computed():
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    history = [0, 1, 1]
    p = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, history, p)
    # token 0 (seen once): 2/2 - 0.5 - 0.25 = 0.25; token 1 (twice): -1*2 - 0.5 - 0.5 = -3
    np.testing.assert_allclose(out, [0.25, -3.0, 0.5, 3.0])
    np.testing.assert_array_equal(logits, [2.0, -1.0, 0.5, 3.0])   # input untouched


def test_repetition_penalty_changes_greedy_choice():
    logits = np.array([3.0, 2.0, 0.0], dtype=np.float32)
    p = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert Sampler(p).sample(logits, history=[0]) == 1      # 3/2 = 1.5 < 2
    assert Sampler(p).sample(logits, history=[2]) == 0


# ------------------------------------------------------------------------------ stop strings

def feed_all(stops, pieces):
    m = StopStringMatcher(stops)
    out = [m.feed(p) for p in pieces]
    return "".join(out) + m.flush(), m.stopped, out


def test_stop_string_inside_a_piece():
    text, stopped, _ = feed_all(["STOP"], ["Hello wor", "ld! STOP here"])
    assert text == "Hello world! " and stopped


def test_stop_string_split_over_pieces_is_held_back():
    text, stopped, out = feed_all(["</end>"], ["abc <", "/e", "nd> more"])
    assert out == ["abc ", "", ""] and text == "abc " and stopped


def test_held_text_is_released_when_it_is_not_a_stop():
    text, stopped, out = feed_all(["STOP"], ["abc S", "Tx", " ST"])
    assert out == ["abc ", "STx", " "] and text == "abc STx ST" and not stopped


def test_earliest_stop_wins():
    text, stopped, _ = feed_all(["b", "xyz"], ["a xyz b"])
    assert text == "a " and stopped


def test_character_by_character():
    text, stopped, _ = feed_all(["\n\n"], list("line one\nline two\n\nafter"))
    assert text == "line one\nline two" and stopped


def test_no_stops_pass_through():
    text, stopped, out = feed_all([], ["a", "b"])
    assert out == ["a", "b"] and not stopped


# ------------------------------------------------------------------------------ in the model

@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    import forgert
    return forgert.Model(smollm2_gguf, n_ctx=512)


@pytest.mark.slow
def test_model_seeded_generation_is_reproducible(smol):
    kw = dict(max_tokens=12, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = smol.generate("Once upon a time", seed=42, **kw)
    b = smol.generate("Once upon a time", seed=42, **kw)
    c = smol.generate("Once upon a time", seed=43, **kw)
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens


@pytest.mark.slow
def test_model_stop_string_cuts_the_text(smol):
    full = smol.generate("The capital of France is", max_tokens=12, temperature=0)
    assert "." in full.text, full.text      # the reference continuation contains a period
    cut = smol.generate("The capital of France is", max_tokens=12, temperature=0, stop=["."])
    assert cut.text == full.text[:full.text.index(".")]
    assert cut.finish_reason == "stop"
    assert full.finish_reason == "length" and len(full.tokens) == 12


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    import forgert
    tm = tiny_models("llama_tied")
    return forgert.Model(tm.path("gguf-F32"), n_ctx=64)


def test_stream_logprobs_match_the_logits(tiny_model):
    from forgert.completion import StreamPiece
    prompt = [5, 17, 42, 99]
    s = tiny_model.stream(prompt, logprobs=3, max_tokens=6, temperature=0, ignore_eos=True)
    pieces = list(s)
    assert all(isinstance(p, StreamPiece) for p in pieces)
    lps = [lp for p in pieces for lp in p.logprobs]
    c = s.completion
    assert "".join(p.text for p in pieces) == c.text
    assert len(lps) == len(c.tokens) == 6
    full = tiny_model.logits(prompt + c.tokens).astype(np.float64)   # an independent evaluation
    for i, (tok, lp) in enumerate(zip(c.tokens, lps)):
        row = full[len(prompt) - 1 + i]
        logsm = row - row.max() - np.log(np.exp(row - row.max()).sum())
        assert lp.logprob == pytest.approx(logsm[tok], abs=1e-3)
        assert len(lp.top) == 3 and lp.top[0][1] == pytest.approx(lp.logprob)   # greedy picks the top
        assert [t for t, _ in lp.top][0] == tiny_model.detokenize([tok])


def test_seeded_sampling_in_the_model(tiny_model):
    kw = dict(max_tokens=10, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True)
    a = tiny_model.generate([5, 6], seed=1, **kw)
    b = tiny_model.generate([5, 6], seed=1, **kw)
    c = tiny_model.generate([5, 6], seed=2, **kw)
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_greedy_matches_the_argmax_of_the_logits(tiny_model):
    prompt = [3, 8, 13]
    c = tiny_model.generate(prompt, max_tokens=5, temperature=0, ignore_eos=True)
    full = tiny_model.logits(prompt + c.tokens)
    assert c.tokens == full[len(prompt) - 1:-1].argmax(axis=1).tolist()
