"""The C++ sampler (_core.Sampler, used by Model.stream) against the NumPy sampler in
forgert.sampling, the independent reference: the same filtered probabilities within float
rounding and, for the same uniform draw, the same token. The draw walks the survivors in
increasing id order, so the reference token is found from NumPy's filtered probabilities the
same way (searchsorted on their cumulative sum)."""
import numpy as np
import pytest

from forgert.sampling import Sampler, SamplingParams, apply_penalties, filter_logits, native_sampler

# Largest |p_cpp - p_numpy| measured over the random cases below: 1.6e-15 (at p = 0.55; both
# compute in float64 from the same float32 logits, only the summation order differs).
PROB_TOL = 1e-14


def P(**kw):
    kw.setdefault("temperature", 1.0)
    return SamplingParams(**kw)


def reference_probs(logits, params, history):
    """float64 [vocab]: NumPy's filtered, renormalized probabilities (0 outside the filters)."""
    with np.errstate(over="ignore"):
        pen = apply_penalties(np.asarray(logits, dtype=np.float32), history, params)
    if params.greedy:
        p = np.zeros(len(pen))
        p[int(np.argmax(pen))] = 1.0
        return p
    x = filter_logits(pen, params)
    e = np.exp(x - x.max())
    return e / e.sum()


def core_probs(logits, params, history):
    ids, probs = native_sampler(params, history).filter(np.asarray(logits, dtype=np.float32))
    assert np.all(np.diff(ids) > 0)      # increasing ids
    p = np.zeros(len(logits))
    p[ids] = probs
    return p


def reference_token(p, u):
    ids = np.flatnonzero(p > 0)
    cdf = np.cumsum(p[ids])
    return int(ids[min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(ids) - 1)])


def random_params(rng):
    return P(temperature=float(rng.choice([0.0, 0.3, 0.8, 1.0, 1.7, 3.0])),
             top_k=int(rng.choice([0, 1, 2, 5, 40, 300, 2000, 5000])),
             top_p=float(rng.choice([1.0, 0.95, 0.5, 0.1, 1e-6])),
             min_p=float(rng.choice([0.0, 0.0, 0.05, 0.3, 1.0])),
             repetition_penalty=float(rng.choice([1.0, 1.1, 0.7, 2.0])),
             presence_penalty=float(rng.choice([0.0, 0.5, -1.0])),
             frequency_penalty=float(rng.choice([0.0, 0.3, -0.2])))


def random_logits(rng, vocab, ties):
    if ties:   # few distinct values: many exact ties, at every cut
        x = rng.integers(-6, 6, vocab).astype(np.float32) * 0.5
    else:
        x = (rng.standard_normal(vocab) * rng.choice([0.5, 2.0, 8.0])).astype(np.float32)
    if rng.random() < 0.3:
        x[rng.integers(0, vocab, vocab // 10)] = -np.inf
    if rng.random() < 0.3:   # huge finite values
        x[rng.integers(0, vocab, 3)] = np.float32(rng.choice([1e30, -1e30, 3e38]))
    return x


def check_case(logits, params, history, rng):
    ref = reference_probs(logits, params, history)
    got = core_probs(logits, params, history)
    with np.errstate(over="ignore"):
        pen = apply_penalties(np.asarray(logits, dtype=np.float32), history, params)
    dropped = pen[(ref == 0) & np.isfinite(pen)]
    if not np.isin(pen[ref > 0], dropped).any():
        # no tie across the cut: the same tokens with the same probabilities
        np.testing.assert_allclose(got, ref, rtol=0, atol=PROB_TOL)
        cdf = np.cumsum(ref[ref > 0])
        s = native_sampler(params, history)
        for u in list(rng.random(8)) + [0.0, 1 - 2**-53]:
            # away from a bin edge, where rounding of the two sums could pick the neighbour
            if np.min(np.abs(cdf / cdf[-1] - u)) > 1e-9:
                assert s.sample(logits, u) == reference_token(ref, u), (params, u)
    else:
        # tied logits at a cut: NumPy keeps an arbitrary subset of the tied tokens, C++ the
        # lowest ids. The same probabilities kept, and every kept token at least as likely as
        # every dropped one.
        np.testing.assert_allclose(np.sort(got[got > 0]), np.sort(ref[ref > 0]), rtol=0, atol=PROB_TOL)
        kept, dropped = pen[got > 0], pen[(got == 0) & np.isfinite(pen)]
        if len(dropped):
            assert kept.min() >= dropped.max()


@pytest.mark.parametrize("ties", [False, True])
def test_filtered_probabilities_and_draws_match_numpy(ties):
    rng = np.random.default_rng(7 + ties)
    for case in range(250):
        vocab = int(rng.choice([2, 7, 100, 4099, 49152]))
        logits = random_logits(rng, vocab, ties)
        history = list(rng.integers(0, vocab, int(rng.choice([0, 1, 5, 40]))))
        params = random_params(rng)
        with np.errstate(over="ignore"):
            pen = apply_penalties(logits, history, params)
        if not np.isfinite(pen).any() or np.isposinf(pen).any():
            # no finite logit, or 3e38 / 0.7 = +inf: no distribution, refused by both
            for sample in (native_sampler(params, history).sample, lambda x: Sampler(params).sample(x, history)):
                with pytest.raises(ValueError, match="is inf|every logit is -inf"):
                    sample(logits)
            continue
        check_case(logits, params, history, rng)


def test_full_vocabulary_top_p_without_top_k_or_min_p():
    # The growing partial sort: top_p over all 49152 tokens, mass spread so it needs > 256.
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(49152) * 0.2).astype(np.float32)
    for top_p in (0.01, 0.5, 0.9, 0.999):
        check_case(logits, P(top_k=0, min_p=0.0, top_p=top_p), [], rng)


def test_top_k_1_and_tiny_top_p_keep_the_argmax():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(1000).astype(np.float32)
    best = int(np.argmax(logits))
    for params in (P(top_k=1, top_p=1.0, min_p=0.0), P(top_k=0, top_p=1e-9, min_p=0.0)):
        s = native_sampler(params)
        ids, probs = s.filter(logits)
        assert list(ids) == [best] and list(probs) == [1.0]
        assert {s.sample(logits, u) for u in (0.0, 0.5, 0.999)} == {best}


@pytest.mark.parametrize("bad,match", [(np.nan, r"logits\[2\] is NaN"), (np.inf, r"logits\[2\] is inf"),
                                       (-np.inf, "every logit is -inf")])
def test_rows_without_a_distribution_are_refused_by_both_samplers(bad, match):
    """An overflowed model's row (a NaN or +inf logit) and a row of -inf have no distribution:
    both samplers refuse them by name at every setting (the C++ one used to read past an empty
    candidate list: a segfault)."""
    logits = np.full(4, -np.inf, np.float32) if bad == -np.inf else np.array([1.0, 2.0, bad, 0.5], np.float32)
    for params in (P(), P(temperature=0.0), P(top_k=0, top_p=1.0, min_p=0.0), P(top_k=0, top_p=0.5, min_p=0.0)):
        with pytest.raises(ValueError, match=match):
            native_sampler(params).sample(logits)
        with pytest.raises(ValueError, match=match):
            native_sampler(params).filter(logits)
        with pytest.raises(ValueError, match=match):
            Sampler(params).sample(logits)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324])
def test_tiny_temperature_is_the_argmax(temperature):
    """3.0 / 5e-324 is inf in float64: logits are tempered relative to the best one, so a tiny
    temperature leaves it alone at probability 1 (the C++ sampler used to compute inf - inf)."""
    logits = np.array([1.0, 3.0, -np.inf, 2.0, 2.5], np.float32)
    for params in (P(temperature=temperature), P(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0)):
        ids, probs = native_sampler(params).filter(logits)
        assert {i: p for i, p in zip(ids, probs) if p > 0} == {1: 1.0}
        assert {native_sampler(params).sample(logits, u) for u in (0.0, 0.5, 0.999)} == {1}
        assert Sampler(params).sample(logits) == 1


def test_min_p_1_keeps_only_the_most_likely_ties_included():
    logits = np.array([1.0, 3.0, -2.0, 3.0, 2.9], dtype=np.float32)
    ids, probs = native_sampler(P(top_k=0, top_p=1.0, min_p=1.0)).filter(logits)
    assert list(ids) == [1, 3] and list(probs) == [0.5, 0.5]


def test_temperature_0_is_the_argmax_after_penalties():
    logits = np.array([0.0, 2.0, 1.5, 2.0], dtype=np.float32)
    s = native_sampler(P(temperature=0.0))
    assert s.sample(logits, 0.9) == 1                    # first of the tied maxima, as np.argmax
    s = native_sampler(P(temperature=0.0, repetition_penalty=2.0), [1, 3])
    assert s.sample(logits) == 2                         # 2 / 2 = 1 < 1.5


def test_penalties_with_repeated_tokens_hand_computed():
    logits = np.array([2.0, -1.0, 0.5], dtype=np.float32)
    params = P(top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=2.0, presence_penalty=0.5,
               frequency_penalty=0.25)
    # token 0 seen twice: 2 / 2 - 0.5 - 2 * 0.25 = 0; token 1 once: -1 * 2 - 0.5 - 0.25 = -2.75
    want = np.exp([0.0, -2.75, 0.5])
    ids, probs = native_sampler(params, [0, 1, 0]).filter(logits)
    assert list(ids) == [0, 1, 2]
    np.testing.assert_allclose(probs, want / want.sum(), rtol=1e-7)
    # add_history is the incremental form of the same history
    s = native_sampler(params, [0])
    s.add_history(1)
    s.add_history(0)
    np.testing.assert_allclose(s.filter(logits)[1], want / want.sum(), rtol=1e-7)


def test_empty_history_leaves_logits_alone():
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    params = P(top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=3.0, presence_penalty=1.0)
    want = np.exp(logits - 3.0)
    np.testing.assert_allclose(native_sampler(params, []).filter(logits)[1], want / want.sum(), rtol=1e-7)


def test_the_callers_logits_are_not_modified():
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    s = native_sampler(P(repetition_penalty=2.0), [2])
    s.sample(logits)
    s.filter(logits)
    assert list(logits) == [1.0, 2.0, 3.0]


def test_same_seed_same_draws_other_seed_differs():
    logits = np.zeros(1000, dtype=np.float32)
    params = dict(top_k=0, top_p=1.0, min_p=0.0)
    s = [native_sampler(P(seed=seed, **params)) for seed in (5, 5, 6, -7)]   # -7: any integer is a seed
    runs = [[x.sample(logits) for _ in range(20)] for x in s]
    # 20 draws of 1000 equally likely tokens: equal by chance with probability 1e-60
    assert runs[0] == runs[1] and runs[0] != runs[2] and runs[3] != runs[0]


def test_bad_input_is_a_value_error(core):
    with pytest.raises(ValueError, match="top_p"):
        core.Sampler(1.0, 0, 0.0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        core.Sampler(-1.0, 0, 1.0, 0.0)
    s = native_sampler(P(repetition_penalty=1.5), [10])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.sample(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        native_sampler(P()).sample(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        native_sampler(P()).sample(np.zeros(3, dtype=np.float32), 1.0)


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    import forgert
    tm = tiny_models("llama_tied")
    return forgert.Model(tm.path("gguf-F32"), n_ctx=64, parallel=2)   # batches: two sequences a step


def test_engine_forward_sample_is_forward_then_the_sampler(tiny_model):
    # forward_sample samples the logits row the engine wrote, as forward + the same sampler does.
    eng = tiny_model._engine
    params = P(temperature=1.3, top_k=50, top_p=0.9, min_p=0.01, repetition_penalty=1.2, seed=11)
    prompt = np.array([5, 17, 42, 99], dtype=np.int32)
    a, b = native_sampler(params, prompt), native_sampler(params, prompt)
    eng.prefill(prompt[:-1], 0)
    for step in range(6):
        row = eng.forward(prompt[-1:], len(prompt) - 1)[-1]
        tok = eng.forward_sample(prompt[-1:], len(prompt) - 1, a)
        assert tok == b.sample(row)
        a.add_history(tok)
        b.add_history(tok)
        prompt = np.append(prompt, np.int32(tok))


def test_stream_samples_in_cpp_with_the_numpy_filters(tiny_model):
    # Model.stream's tokens are draws the filters allow: each has nonzero probability under the
    # NumPy reference given the model's logits (top_k=3 keeps few, so a wrong path shows).
    params = dict(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, repetition_penalty=1.3, seed=4,
                  max_tokens=8, ignore_eos=True)
    prompt = [3, 8, 13]
    c = tiny_model.generate(prompt, **params)
    full = tiny_model.logits(prompt + c.tokens)
    sp = SamplingParams(**params)
    for i, tok in enumerate(c.tokens):
        hist = prompt + c.tokens[:i]
        assert reference_probs(full[len(prompt) - 1 + i], sp, hist)[tok] > 0


def test_engine_sample_row_is_the_sampler_on_the_engines_threads(tiny_model):
    # Engine.sample_row draws from a row Python holds (logprobs, grammars, logit_bias) on the
    # engine's threads: the sampler's token, the caller's row unchanged (penalties on a copy).
    eng = tiny_model._engine
    rng = np.random.default_rng(2)
    row = (rng.standard_normal(20000) * 2).astype(np.float32)
    keep = row.copy()
    params = P(temperature=0.9, top_k=0, top_p=0.9, min_p=0.0, repetition_penalty=1.5, seed=4)
    a, b = native_sampler(params, [1, 2, 3]), native_sampler(params, [1, 2, 3])
    assert [eng.sample_row(a, row) for _ in range(5)] == [b.sample(row) for _ in range(5)]
    assert np.array_equal(row, keep)
    with pytest.raises(ValueError, match="non-empty row"):
        eng.sample_row(a, row.reshape(100, 200))
    with pytest.raises(ValueError, match="non-empty row"):
        eng.sample_row(a, np.zeros(0, dtype=np.float32))


def test_a_seed_draws_the_same_tokens_with_logprobs_or_a_bias_on(tiny_model):
    # logprobs and logit_bias take the row through Python ("last" mode), where the C++ sampler
    # draws from it: the same sampler as the engine-side draw, so one seed gives one text with
    # them on or off (a zero bias changes no logit), alone and batched; and every token is one the
    # NumPy filters allow (reference_probs > 0: the independent check).
    params = dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.02, repetition_penalty=1.2, seed=21,
                  max_tokens=12, ignore_eos=True)
    prompts = [[3, 8, 13], [5, 9]]
    for prompt in prompts:
        plain = tiny_model.generate(prompt, **params).tokens
        assert tiny_model.generate(prompt, logprobs=2, **params).tokens == plain
        assert tiny_model.generate(prompt, logit_bias={7: 0.0}, **params).tokens == plain
        full = tiny_model.logits(prompt + plain)
        sp = SamplingParams(**params)
        for i, tok in enumerate(plain):
            assert reference_probs(full[len(prompt) - 1 + i], sp, prompt + plain[:i])[tok] > 0
    alone = [tiny_model.generate(p, **params).tokens for p in prompts]
    assert [c.tokens for c in tiny_model.generate(prompts, logprobs=1, **params)] == alone
    # a plain sampled row beside a Python row: drawn from the pass's logits by its own sampler
    assert [c.tokens for c in tiny_model.generate(prompts, logprobs=[None, 1], **params)] == alone


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_minus_inf_and_far_below_weigh_exactly_zero(temperature):
    # Every weight is exp(x - best) of a candidate (src/cpp/sampling/exp_rows.cpp): a -inf logit
    # (a masked token) must weigh exactly 0, and so must one whose weight is below double's
    # smallest (exp(-746) rounds to 0, as NumPy's does), or the draw at u = 0 would pick it.
    vocab = 4099
    logits = np.full(vocab, -np.inf, dtype=np.float32)
    logits[[7, 1000, 4098]] = [2.0, 2.5, 1.0]
    logits[[0, 1, 2]] = 2.5 - 746.0 * temperature - np.float32([1.0, 40.0, 200.0]) * temperature
    params = P(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0)
    got, ref = core_probs(logits, params, []), reference_probs(logits, params, [])
    assert list(np.flatnonzero(got)) == list(np.flatnonzero(ref)) == [7, 1000, 4098]
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=0)
    s = native_sampler(params)
    assert s.sample(logits, 0.0) == 7
    assert s.sample(logits, 1 - 2**-53) == 4098


def test_the_largest_draw_never_lands_on_a_trailing_minus_inf():
    # u just below 1 lands past the total only through the sums' rounding; the token drawn then is
    # the last one with weight, never a -inf logit after it (chunks of 8192: the row spans three).
    vocab = 20000
    logits = np.zeros(vocab, dtype=np.float32)
    logits[15000:] = -np.inf
    for params in (P(top_k=0, top_p=1.0, min_p=0.0), P(top_k=0, top_p=0.999, min_p=0.0)):
        ids, probs = native_sampler(params).filter(logits)
        last = ids[probs > 0][-1]   # 14999; top_p 0.999: 14984
        assert last == (14999 if params.top_p == 1.0 else 14984)
        for threads in (1, 3):
            assert native_sampler(params).sample(logits, 1 - 2**-53, threads=threads) == last


# (spread of the row's chunks: pool threads, order on one thread)
SPREADS = [dict(threads=3), dict(threads=2), dict(order="reverse"), dict(order="shuffle")]


@pytest.mark.parametrize("vocab", [20000, 49152, 128256])
def test_row_passes_on_threads_or_in_any_order_give_the_same_tokens(vocab):
    # The passes over the whole row (check + max, top-k, weights and their sums, top-p's partial
    # sort, the draw) run a chunk of 8192 logits at a time on the engine's threads. The chunks are
    # the row's, not the threads': the same ids, bit-identical probabilities and the same tokens
    # from one thread forward, from pools of 2 and 3, and from chunks taken in reverse or shuffled;
    # and those equal NumPy's (check_case on the pooled path).
    rng = np.random.default_rng(vocab)
    cases = [P(top_k=0, top_p=1.0, min_p=0.0), P(top_k=0, top_p=0.95, min_p=0.0),
             P(top_k=0, top_p=0.5, min_p=0.05), P(top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1),
             P(top_k=2000, top_p=1.0, min_p=0.0), P(top_k=0, top_p=1.0, min_p=0.3, temperature=0.7)]
    for params in cases:
        logits = (rng.standard_normal(vocab) * 2.5).astype(np.float32)
        logits[rng.integers(0, vocab, 20)] += rng.uniform(6, 12, 20).astype(np.float32)
        logits[rng.integers(0, vocab, vocab // 20)] = -np.inf
        history = list(rng.integers(0, vocab, 64))
        ids, probs = native_sampler(params, history).filter(logits)
        us = list(rng.random(16)) + [0.0, 1 - 2**-53]
        tokens = [native_sampler(params, history).sample(logits, u) for u in us]
        for spread in SPREADS:
            ids2, probs2 = native_sampler(params, history).filter(logits, **spread)
            assert np.array_equal(ids2, ids) and np.array_equal(probs2, probs), (params, spread)
            s = native_sampler(params, history)
            assert [s.sample(logits, u, **spread) for u in us] == tokens, (params, spread)
        ref = reference_probs(logits, params, history)
        np.testing.assert_allclose(core_probs(logits, params, history), ref, rtol=0, atol=PROB_TOL)
        cdf = np.cumsum(ref[ref > 0])
        for u, tok in zip(us, tokens):
            if np.min(np.abs(cdf / cdf[-1] - u)) > 1e-9:
                assert tok == reference_token(ref, u), (params, u)


def test_row_spread_arguments_are_checked():
    s = native_sampler(P())
    with pytest.raises(ValueError, match="threads must be >= 1"):
        s.sample(np.zeros(4, dtype=np.float32), 0.5, threads=0)
    with pytest.raises(ValueError, match="order must be"):
        s.filter(np.zeros(4, dtype=np.float32), order="sideways")


@pytest.mark.parametrize("vocab", [20000, 128256])
def test_top_p_over_flat_rows_matches_numpy(vocab):
    # A flat row (a model unsure, a high temperature) keeps most of the vocabulary at top_p 0.9:
    # the cut is found from bins of the weights (1/32 of a logit wide), then the crossing bin's
    # candidates sorted (src/cpp/sampling/row_passes.cpp); a sort of the best took 64 ms here.
    # Half-integer logits put hundreds of ties in one bin, at the cut.
    rng = np.random.default_rng(vocab + 1)
    for std, ties in ((0.3, False), (1.0, False), (3.0, False), (1.0, True)):
        logits = (rng.standard_normal(vocab) * std).astype(np.float32)
        if ties:
            logits = np.round(logits * 2) / 2
        for top_p in (0.3, 0.9, 0.99):
            params = P(top_k=0, top_p=top_p, min_p=0.0)
            ids, probs = native_sampler(params).filter(logits)
            for spread in SPREADS[:2]:
                ids2, probs2 = native_sampler(params).filter(logits, **spread)
                assert np.array_equal(ids2, ids) and np.array_equal(probs2, probs)
            check_case(logits, params, [], rng)


def test_top_p_cut_below_the_last_bin():
    # Weights under exp(-32) of the best's share the last bin; a top_p that needs them (their mass
    # is 20000 e^-40 = 8.5e-14 of the best's) sorts that bin.
    logits = np.full(20001, -40.0, dtype=np.float32)
    logits[7] = 0.0
    rng = np.random.default_rng(0)
    logits[100:200] = -40.0 - rng.random(100).astype(np.float32)
    for top_p in (1 - 1e-14, 1 - 5e-15):
        check_case(logits, P(top_k=0, min_p=0.0, top_p=top_p), [], rng)
        ids, _ = native_sampler(P(top_k=0, min_p=0.0, top_p=top_p)).filter(logits)
        assert 7 in ids and len(ids) > 1
