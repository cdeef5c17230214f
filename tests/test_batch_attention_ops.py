"""The batched RoPE + cache write and attention of _core.Ops (one call for the rows of several
sequences, each row's position and its sequence's first cache row in a row table) against
float64 NumPy, on the CPU and on the emulated Metal device under its three thread orders.

A batch step of the engine lays its sequences' KV slots one after another in one cache
(slot s at rows s * n_ctx ..); each query must see only its own sequence's rows, causally.
The cache rows no query may read are poisoned (huge keys, NaN values): a leak shows.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cpu_ops import batch_attention_reference, nmse, randn, rng_for
from test_moe_ops import ops  # noqa: F401  (the fixture: CPU and Metal under three orders)

N_CTX = 48  # cache rows per slot


def row_table(entries, n_ctx=N_CTX):
    """entries: (slot, pos, n) per sequence, in batch order -> i32 [rows, 2] of (position, base)."""
    rows = [(pos + i, slot * n_ctx) for slot, pos, n in entries for i in range(n)]
    return np.array(rows, dtype=np.int32).reshape(-1, 2)


def poisoned_caches(rng, n_slots, kv_dim, readable):
    """f16 caches of n_slots slots, random on the rows in `readable`, poisoned elsewhere."""
    k_cache = np.full((n_slots * N_CTX, kv_dim), 60000.0, np.float16)
    v_cache = np.full((n_slots * N_CTX, kv_dim), np.nan, np.float16)
    for r in sorted(readable):
        k_cache[r] = randn(rng, kv_dim)
        v_cache[r] = randn(rng, kv_dim)
    return k_cache, v_cache


# Mixed batches (slot, pos, n): decode rows of several slots at different positions, a prefill
# chunk after a cached prefix, a fresh prompt; slots in any order, some idle.
BATCHES = {
    "decode4": [(2, 30, 1), (0, 5, 1), (3, 47, 1), (1, 0, 1)],
    "mixed": [(3, 0, 9), (0, 40, 1), (2, 7, 1), (1, 12, 4)],
    "prefill2": [(1, 3, 12), (0, 20, 10)],
}


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim,window,softcap,with_sinks", [
    (8, 2, 64, 0, 0.0, False),     # GQA, full causal attention
    (4, 4, 32, 8, 0.0, False),     # sliding window of 8 (Mistral / Gemma's local layers)
    (8, 2, 64, 16, 30.0, True),    # window, score soft-capping (Gemma 2) and sinks (gpt-oss)
])
def test_batch_attention_matches_numpy(ops, batch, n_heads, n_kv_heads, head_dim, window, softcap, with_sinks):
    entries = BATCHES[batch]
    rng = rng_for("batch_attention", batch, n_heads, head_dim, window, softcap, with_sinks)
    rows = row_table(entries)
    kv_dim = n_kv_heads * head_dim
    n_slots = 1 + max(s for s, _, _ in entries)
    readable = {base + p for pos, base in rows for p in range(pos + 1)}
    k_cache, v_cache = poisoned_caches(rng, n_slots, kv_dim, readable)
    q = randn(rng, len(rows), n_heads * head_dim)
    sinks = rng.uniform(-2.0, 3.0, n_heads).astype(np.float32) if with_sinks else None
    scale = 1.0 / np.sqrt(head_dim)
    out = ops.attention(q, k_cache, v_cache, 0, n_heads, n_kv_heads, head_dim, scale, window, softcap, sinks=sinks,
                        rows=rows)
    ref = batch_attention_reference(q, k_cache, v_cache, rows, n_heads, n_kv_heads, head_dim, scale, window, softcap,
                                    sinks)
    err = nmse(out, ref)
    assert err < 1e-6, err   # f32 dot products and online softmax over f16 keys: as test_attention's bound


def test_batch_attention_long_positions_split_keys(ops):
    """Decode rows of 600+ keys: the CPU's per-row items, Metal's keys split across threadgroups
    (the table's longest key range sizes the splits; shorter rows leave splits empty)."""
    n_ctx = 1024
    rows = row_table([(1, 700, 1), (0, 9, 1), (2, 1000, 1)], n_ctx)
    rng = rng_for("batch_attention_long")
    n_heads, n_kv_heads, head_dim = 4, 2, 64
    k_cache = randn(rng, 3 * n_ctx, n_kv_heads * head_dim).astype(np.float16)
    v_cache = randn(rng, 3 * n_ctx, n_kv_heads * head_dim).astype(np.float16)
    q = randn(rng, len(rows), n_heads * head_dim)
    out = ops.attention(q, k_cache, v_cache, 0, n_heads, n_kv_heads, head_dim, 0.125, rows=rows)
    ref = batch_attention_reference(q, k_cache, v_cache, rows, n_heads, n_kv_heads, head_dim, 0.125)
    assert nmse(out, ref) < 1e-6


def rope_rows_reference(x, positions, freqs, n_heads, head_dim, neox):
    """float64 RoPE of row i at positions[i]: pairs (2j, 2j+1), or (j, j + head_dim/2) with neox."""
    n = x.shape[0]
    xh = x.astype(np.float64).reshape(n, n_heads, head_dim).copy()
    ang = np.asarray(positions, np.float64)[:, None, None] * freqs.astype(np.float64)[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    if neox:
        a, b = xh[..., : head_dim // 2].copy(), xh[..., head_dim // 2:].copy()
        xh[..., : head_dim // 2], xh[..., head_dim // 2:] = a * c - b * s, a * s + b * c
    else:
        a, b = xh[..., 0::2].copy(), xh[..., 1::2].copy()
        xh[..., 0::2], xh[..., 1::2] = a * c - b * s, a * s + b * c
    return xh.reshape(n, n_heads * head_dim)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("neox", [False, True])
def test_batch_rope_kv_write_matches_numpy(ops, batch, neox):
    """Row i rotates by its own position and lands at cache row base_i + pos_i; no other cache
    row changes."""
    entries = BATCHES[batch]
    rng = rng_for("batch_rope", batch, neox)
    rows = row_table(entries)
    n, n_heads, n_kv_heads, head_dim = len(rows), 4, 2, 32
    kv_dim = n_kv_heads * head_dim
    n_slots = 1 + max(s for s, _, _ in entries)
    q, k, v = randn(rng, n, n_heads * head_dim), randn(rng, n, kv_dim), randn(rng, n, kv_dim)
    k_cache = randn(rng, n_slots * N_CTX, kv_dim).astype(np.float16)
    v_cache = randn(rng, n_slots * N_CTX, kv_dim).astype(np.float16)
    freqs = (10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
    q_out, k_out, kc_out, vc_out = ops.rope_kv_write(q, k, v, k_cache, v_cache, freqs, 0, n_heads, n_kv_heads,
                                                     head_dim, neox, rows=rows)
    positions = rows[:, 0]
    q_ref = rope_rows_reference(q, positions, freqs, n_heads, head_dim, neox)
    k_ref = rope_rows_reference(k, positions, freqs, n_kv_heads, head_dim, neox)
    assert nmse(q_out, q_ref) < 1e-12   # f64 angles, f32 rotation: measured ~1e-15
    assert nmse(k_out, k_ref) < 1e-12
    kc_ref, vc_ref = k_cache.copy(), v_cache.copy()
    dest = rows[:, 0] + rows[:, 1]
    kc_ref[dest] = k_ref.astype(np.float16)
    vc_ref[dest] = v.astype(np.float16)
    # One f16 rounding of the rotated key (the rotation's f32 error can flip its last bit).
    np.testing.assert_allclose(kc_out.astype(np.float32), kc_ref.astype(np.float32), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(vc_out, vc_ref)


def test_batch_rows_past_the_cache_rejected(ops):
    q = np.ones((2, 4 * 16), np.float32)
    cache = np.zeros((2 * N_CTX, 2 * 16), np.float16)
    bad = np.array([[3, 0], [N_CTX, N_CTX]], np.int32)   # the second row's key lies past the cache
    with pytest.raises(ValueError, match="past the cache"):
        ops.attention(q, cache, cache, 0, 4, 2, 16, 0.25, rows=bad)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        ops.attention(q, cache, cache, 0, 4, 2, 16, 0.25, rows=np.zeros((3, 2), np.int32))
    k = np.ones((2, 2 * 16), np.float32)
    freqs = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="past the cache"):
        ops.rope_kv_write(q, k, k, cache, cache, freqs, 0, 4, 2, 16, False, rows=bad)
