"""forgert.logprobs.token_logprob against a NumPy f64 log-softmax of the whole row and np.sort's
top entries (rows of many sizes, with and without ties)."""
from __future__ import annotations

import numpy as np
import pytest

from forgert.logprobs import _largest, token_logprob


class _Tokenizer:
    def decode(self, ids):
        return f"<{ids[0]}>"


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


@pytest.mark.parametrize("vocab", [1, 7, 64, 1000, 49152, 151936])
@pytest.mark.parametrize("ties", [False, True])
def test_largest_are_the_sorted_top_entries(vocab, ties):
    rng = np.random.default_rng(vocab)
    x = rng.standard_normal(vocab).astype(np.float32) * 4
    if ties:
        x = np.round(x)         # a handful of distinct values: ties across the cut
    for n in sorted({1, 2, 5, 20} & set(range(1, vocab + 1))):
        got = _largest(x, n)
        assert len(set(got.tolist())) == n
        assert np.array_equal(x[got], np.sort(x)[::-1][:n])


def test_token_logprob_equals_a_f64_log_softmax():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(49152) * 5).astype(np.float32)
    ref = log_softmax(x)
    lp = token_logprob(x, 17, 5, _Tokenizer())
    # measured 2.5e-9: the exp in f32, the sum in f64
    assert lp.token == "<17>" and abs(lp.logprob - ref[17]) < 1e-6
    order = np.argsort(-ref, kind="stable")[:5]
    assert [t for t, _ in lp.top] == [f"<{i}>" for i in order]
    assert np.allclose([v for _, v in lp.top], ref[order], atol=1e-6, rtol=0)
    assert token_logprob(x, 3, 0, _Tokenizer()).top == []
