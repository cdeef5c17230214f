"""forgert.logprobs.token_logprob against a NumPy f64 log-softmax of the whole row and np.sort's
top entries (rows of many sizes, with and without ties); the C++ reduction that scores a prompt's
rows in the engine pass (_core.score_logits, row_scores.cpp) against the same; Model.prompt_logprobs
against a NumPy log-softmax of Model.logits."""
from __future__ import annotations

import numpy as np
import pytest

from forgert.logprobs import _largest, token_logprob


class _Tokenizer:
    def decode(self, ids):
        return f"<{ids[0]}>"

    def token_bytes(self, token_id):
        return self.decode([token_id]).encode()

    def token_piece(self, token_id):
        return self.decode([token_id])


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
        assert np.array_equal(got, np.argsort(-x, kind="stable")[:n])     # ties to the lower index


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


@pytest.mark.parametrize("vocab", [1, 7, 64, 1000, 49152, 151936])
@pytest.mark.parametrize("ties", [False, True])
def test_cpp_row_scores_equal_token_logprob(vocab, ties):
    """The engine's scoring of prompt rows reports what token_logprob reports for a sampled token:
    the same logprob and the same alternatives in the same order (ties to the lower id)."""
    from forgert import _core
    rng = np.random.default_rng(vocab + ties)
    x = (rng.standard_normal((3, vocab)) * 5).astype(np.float32)
    if ties:
        x = np.round(x)
    targets = rng.integers(0, vocab, size=3)
    k = min(5, vocab)
    scores = _core.RowScores(targets, k)
    _core.score_logits(x, scores)
    for row, tok in enumerate(targets):
        want = token_logprob(x[row], int(tok), k, _Tokenizer())
        # both sum f32 exponentials in f64 (C's expf and NumPy's differ by an ulp here and
        # there): measured <= 9.2e-9
        worst = max([abs(scores.logprob[row] - want.logprob)]
                    + [abs(a - b) for a, (_, b) in zip(scores.top_logprob[row], want.top)])
        assert worst < 1e-7
        assert [f"<{i}>" for i in scores.top_ids[row]] == [t for t, _ in want.top]
        assert abs(scores.logprob[row] - log_softmax(x[row])[tok]) < 1e-6    # and NumPy's f64


@pytest.mark.parametrize("chunk, threads", [(512, 1), (64, 2)])
def test_prompt_logprobs_are_the_log_softmax_of_model_logits(tiny_models, monkeypatch, chunk, threads):
    """A 150-token prompt (three 64-row score blocks; with 64-token prefill chunks, three passes;
    with 2 threads, each block's rows scored on the CPU pool's threads): each token's logprob and
    top 3 from NumPy's log-softmax of Model.logits; the first has none."""
    import forgert
    monkeypatch.setattr(forgert.model, "PREFILL_CHUNK", chunk)
    path = tiny_models("llama3_untied").path("gguf-F32")
    model = forgert.Model(path, backend="cpu", threads=threads, n_ctx=256)
    ids = np.random.default_rng(5).integers(20, 300, size=150).tolist()
    x = model.logits(ids)
    got = model.prompt_logprobs(ids, 3)
    assert len(got) == 150 and got[0].logprob is None and got[0].top == []
    ref = np.stack([log_softmax(row) for row in x])
    worst = 0.0
    for i in range(1, 150):
        best = np.argsort(-ref[i - 1], kind="stable")[:3]
        assert [t for t, _ in got[i].top] == [model.detokenize([int(t)]) for t in best]
        worst = max([worst, abs(got[i].logprob - ref[i - 1, ids[i]])]
                    + [abs(v - ref[i - 1, t]) for (_, v), t in zip(got[i].top, best)])
    print(f"prompt logprobs vs NumPy: {worst:.3g}")
    assert worst < 1e-7     # measured 1.3e-8 (one pass or 64-token chunks alike)
    assert model.prompt_logprobs(ids[:1], 2)[0].logprob is None
    with pytest.raises(ValueError, match="at most 64"):
        model.prompt_logprobs(ids, 65)
