"""gpt-oss's ops of _core.Ops against NumPy, on the CPU and on the emulated Metal device under its
three thread orders (as tests/test_moe_ops.py): attention sinks (a learned logit per head that
joins the softmax denominator and weighs no value row; transformers' GptOssAttention /
eager_attention_forward concatenates it as an extra score column and drops that column after the
softmax).
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cpu_ops import attention_inputs, attention_reference, nmse, randn, rng_for
from test_moe_ops import ops  # noqa: F401  (the fixture: CPU and Metal under three orders)


def attention_sinks_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window, sinks):
    """float64 causal GQA attention whose softmax over each query's keys has one more term,
    exp(sinks[h]), in its denominator: softmax([scores, sink])[:-1] @ V."""
    return attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window,
                               sinks=sinks)


@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,window,n_ctx", [
    (1, 0, 4, 2, 32, 0, 16),        # first decode step: one key against the sink
    (1, 700, 4, 2, 64, 0, 1024),    # decode with the keys split across threads / threadgroups (merged)
    (1, 40, 8, 2, 64, 16, 64),      # decode in a 16-key window (gpt-oss's sliding layers, shrunk)
    (1, 300, 16, 2, 64, 0, 320),    # gpt-oss's GQA 8:1: one Metal threadgroup serves 8 heads, splits
    (7, 9, 8, 4, 64, 0, 32),        # short prefill after a prefix (Metal: one threadgroup per query)
    (20, 0, 4, 2, 64, 8, 32),       # prefill past an 8-key window (Metal: the tiled prefill kernel)
    (33, 5, 8, 2, 64, 0, 64),       # tiled prefill, full attention
])
def test_attention_sinks_match_numpy(ops, n, pos0, n_heads, n_kv_heads, head_dim, window, n_ctx):
    if ops.name == "metal" and n * (pos0 + n) > 2000 and pos0 < 500:
        pytest.skip("kept small on the emulator")
    rng = rng_for("attn_sinks", n, pos0, head_dim, window)
    q, k_cache, v_cache = attention_inputs(rng, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx)
    # Sinks around the scores' scale, one far above them (its head's output nearly vanishes)
    # and one far below (no effect): gpt-oss's trained sinks span about -5 .. 5.
    sinks = rng.uniform(-2.0, 3.0, n_heads).astype(np.float32)
    sinks[0], sinks[-1] = 12.0, -30.0
    scale = 1.0 / np.sqrt(head_dim)
    out = ops.attention(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window, sinks=sinks)
    ref = attention_sinks_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window, sinks)
    err = nmse(out, ref)
    assert err < 1e-6, err     # as test_attention (measured <= 1.5e-13 CPU, 1.2e-14 Metal)
    plain = attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window)
    assert nmse(plain, ref) > 1e-3   # the sinks matter here


def test_attention_sinks_without_sinks_unchanged(ops):
    """sinks=None is the plain softmax."""
    rng = rng_for("attn_no_sinks")
    q = randn(rng, 3, 4 * 32)
    cache = randn(rng, 8, 2 * 32).astype(np.float16)
    out = ops.attention(q, cache, cache, 2, 4, 2, 32, 0.2, 0, sinks=None)
    ref = attention_reference(q, cache, cache, 2, 4, 2, 32, 0.2)
    assert nmse(out, ref) < 1e-6


def test_attention_sinks_reject_wrong_count(ops):
    q = np.ones((1, 4 * 16), np.float32)
    cache = np.zeros((8, 2 * 16), np.float16)
    with pytest.raises(ValueError, match="one value per head"):
        ops.attention(q, cache, cache, 0, 4, 2, 16, 0.25, 0, sinks=np.zeros(3, np.float32))


# ----------------------------------------------------------------------------- clamped SwiGLU

def swiglu_oai_reference(gate, up, alpha, limit):
    """transformers' GptOssExperts._apply_gate in float64 (gate and up already split)."""
    g = np.minimum(gate.astype(np.float64), limit)
    u = np.clip(up.astype(np.float64), -limit, limit)
    return (u + 1.0) * g / (1.0 + np.exp(-alpha * g))


@pytest.mark.parametrize("n,dim", [(1, 40), (5, 300), (9, 33)])
def test_swiglu_oai_matches_numpy(ops, n, dim):
    """Values spread over +-20 so that both clamps act (gate above 7, up outside +-7)."""
    rng = rng_for("swiglu_oai", n, dim)
    gate = rng.uniform(-20.0, 20.0, (n, dim)).astype(np.float32)
    up = rng.uniform(-20.0, 20.0, (n, dim)).astype(np.float32)
    out = ops.swiglu_oai(gate, up, 1.702, 7.0)
    ref = swiglu_oai_reference(gate, up, 1.702, 7.0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)   # float32 exp: measured <= 2.3e-6 rel, 5.9e-6 abs
    # the clamps matter: the unclamped form differs
    assert np.abs(ref - swiglu_oai_reference(gate, up, 1.702, 1e9)).max() > 1.0


def test_swiglu_oai_rejects_bad_limit(ops):
    x = np.ones((1, 8), np.float32)
    with pytest.raises(ValueError, match="positive"):
        ops.swiglu_oai(x, x, 1.702, 0.0)


# ----------------------------------------------------------------------------- expert biases

@pytest.mark.parametrize("n,k,n_expert,dim", [(1, 4, 8, 40), (6, 2, 4, 300), (5, 4, 8, 17)])
def test_add_bias_id_matches_numpy(ops, n, k, n_expert, dim):
    """Each slot i*k + j gets the bias row of its expert ids[i, j]; skewed routings: every token
    picks expert 0 first, experts past k + 1 are never chosen."""
    rng = rng_for("add_bias_id", n, k, n_expert, dim)
    x = randn(rng, n * k, dim)
    b = randn(rng, n_expert, dim)
    ids = np.stack([np.concatenate([[0], rng.permutation(np.arange(1, k + 1))[:k - 1]]) for _ in range(n)])
    ids = ids.astype(np.int32)
    out = ops.add_bias_id(x, b, ids)
    ref = x.astype(np.float64) + b.astype(np.float64)[ids.reshape(-1)]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)   # one float32 add: exact up to rounding


def test_add_bias_id_rejects_bad_id(ops):
    with pytest.raises(ValueError, match="out of range"):
        ops.add_bias_id(np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32), np.array([[0, 3]], np.int32))
