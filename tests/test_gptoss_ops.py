"""gpt-oss's ops of _core.Ops against NumPy, on the CPU and on the emulated Metal device under its
three thread orders (as tests/test_moe_ops.py): attention sinks (a learned logit per head that
joins the softmax denominator and weighs no value row; transformers' GptOssAttention /
eager_attention_forward concatenates it as an extra score column and drops that column after the
softmax).
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cpu_ops import attention_reference, nmse, randn, rng_for
from test_moe_ops import ops  # noqa: F401  (the fixture: CPU and Metal under three orders)


def attention_sinks_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window, sinks):
    """float64 causal GQA attention whose softmax over each query's keys has one more term,
    exp(sinks[h]), in its denominator: softmax([scores, sink])[:-1] @ V."""
    n = q.shape[0]
    group = n_heads // n_kv_heads
    qh = q.astype(np.float64).reshape(n, n_heads, head_dim)
    k = k_cache.astype(np.float64).reshape(-1, n_kv_heads, head_dim)
    v = v_cache.astype(np.float64).reshape(-1, n_kv_heads, head_dim)
    out = np.zeros((n, n_heads, head_dim))
    for i in range(n):
        t = pos0 + i + 1
        first = max(0, t - window) if window else 0
        for h in range(n_heads):
            s = np.append(k[first:t, h // group] @ qh[i, h] * scale, float(sinks[h]))
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, h] = p[:-1] @ v[first:t, h // group]
    return out.reshape(n, n_heads * head_dim)


@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,window,n_ctx", [
    (1, 0, 4, 2, 32, 0, 16),        # first decode step: one key against the sink
    (1, 700, 4, 2, 64, 0, 1024),    # decode with the keys split across threads / threadgroups (merged)
    (1, 40, 8, 2, 64, 16, 64),      # decode in a 16-key window (gpt-oss's sliding layers, shrunk)
    (7, 9, 8, 4, 64, 0, 32),        # short prefill after a prefix (Metal: one threadgroup per query)
    (20, 0, 4, 2, 64, 8, 32),       # prefill past an 8-key window (Metal: the tiled prefill kernel)
    (33, 5, 8, 2, 64, 0, 64),       # tiled prefill, full attention
])
def test_attention_sinks_match_numpy(ops, n, pos0, n_heads, n_kv_heads, head_dim, window, n_ctx):
    if ops.name == "metal" and n * (pos0 + n) > 2000 and pos0 < 500:
        pytest.skip("kept small on the emulator")
    rng = rng_for("attn_sinks", n, pos0, head_dim, window)
    kv_dim = n_kv_heads * head_dim
    q = randn(rng, n, n_heads * head_dim)
    k_cache = randn(rng, n_ctx, kv_dim).astype(np.float16)
    v_cache = randn(rng, n_ctx, kv_dim).astype(np.float16)
    k_cache[pos0 + n:] = np.float16(60000.0)   # rows past the queries are never read
    v_cache[pos0 + n:] = np.float16(np.nan)
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
