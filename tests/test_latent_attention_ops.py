"""The ops absorbed latent attention (DeepSeek V2 / V3, llama_model.cpp latent_attention) runs, on
the CPU and the emulated Metal device under its three thread orders, against NumPy:

- attention on the cached latent rows: one KV head of 576 dims (DeepSeek's 512 latent + 64 rope)
  shared by every query head, V read from the same rows (the op given the K cache twice);
- rope_kv_write with v_from_k: the key row rotated and cached, nothing written for V;
- the per-head matmuls (the query's absorption through k_b_h^T, the output's expansion through
  v_b_h) as matmul_id with one "expert" per head: x [n * H, cols], ids [n, H] = 0..H-1 per row.

Bounds, nmse against float64 NumPy: attention 1e-11 (measured worst 2.4e-12 CPU, 1.4e-13 Metal);
a batch of sequences through a row table the same (measured 1.5e-12 CPU, 2.0e-13 Metal, its first row);
the matmuls test_cpu_ops' matmul_bound for F32 / F16 weights (F32_EXACT_NMSE 3e-12; measured
1.7e-13 on both backends), the loader's types for these matrices.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cpu_ops import F16, F32, attention_reference, encode_weights, decode_weights, matmul_bound, nmse, randn
from test_metal_ops import OPS_BACKENDS, ops_in_order

LATENT, ROPE = 512, 64      # DeepSeek's (and GLM-4.7-Flash's, Kimi K2's) latent row
ROW = LATENT + ROPE


@pytest.fixture(params=OPS_BACKENDS)
def ops(request, core):
    """An Ops of the CPU, or of the (emulated) Metal device running threads in one order."""
    yield from ops_in_order(core, request.param)


def cache_arg(ops, a: np.ndarray):
    """f16 cache rows in the form _core's binding takes (float16, or their uint16 bits)."""
    one = np.zeros((1, 2), np.float32)
    probe = ops.rope_kv_write(one, one, one, np.zeros((1, 2), np.float16), np.zeros((1, 2), np.float16),
                              np.zeros(1, np.float32), 0, 1, 1, 2, False)[2]
    a16 = np.asarray(a, np.float16)
    return a16 if probe.dtype == np.float16 else a16.view(np.uint16)


@pytest.mark.parametrize("n,pos0,n_heads", [
    (1, 0, 16),     # first token
    (1, 300, 16),   # decode deep into the cache (Metal: attention_latent_f16, one block of 16 heads)
    (1, 40, 128),   # DeepSeek V3's 128 heads: four blocks of 32
    (3, 40, 8),     # a few queries
    (20, 10, 4),    # prefill (Metal's tiled prefill kernel at 576: 7-key tiles)
])
def test_attention_on_latent_rows(ops, n, pos0, n_heads):
    """Every head attends to the 576-wide cached rows (one KV head), V the same rows: the op
    against float64 NumPy (bound in the module docstring)."""
    rng = np.random.default_rng([n, pos0, n_heads])
    n_ctx = pos0 + n + 3
    q = randn(rng, n, n_heads * ROW)
    rows = randn(rng, n_ctx, ROW).astype(np.float16)
    rows[pos0 + n:] = np.float16(60000.0)   # past the last query: never read
    scale = 1.0 / np.sqrt(192)              # DeepSeek's: the head's nope + rope width, not the row's
    kc = cache_arg(ops, rows)
    got = ops.attention(q, kc, kc, pos0, n_heads, 1, ROW, scale)
    want = attention_reference(q, rows, rows, pos0, n_heads, 1, ROW, scale)
    assert got.shape == (n, n_heads * ROW)
    assert nmse(got, want) < 1e-11


def test_attention_on_latent_rows_of_a_batch(ops):
    """Decode rows of three sequences in one call (a row table: each row's position and its
    sequence's first cache row), at 9, 700 and 1000 keys: each row against NumPy over its own
    sequence's rows alone (Metal: the latent kernel's splits sized by the longest)."""
    n_ctx, n_heads = 1024, 16
    rng = np.random.default_rng(7)
    table = np.array([[700, n_ctx], [9, 0], [1000, 2 * n_ctx]], np.int32)   # (position, first cache row)
    rows = randn(rng, 3 * n_ctx, ROW).astype(np.float16)
    q = randn(rng, 3, n_heads * ROW)
    scale = 1.0 / np.sqrt(192)
    kc = cache_arg(ops, rows)
    got = ops.attention(q, kc, kc, 0, n_heads, 1, ROW, scale, rows=table)
    for i, (pos, base) in enumerate(table):
        seq = rows[base:base + pos + 1]
        want = attention_reference(q[i:i + 1], seq, seq, pos, n_heads, 1, ROW, scale)
        assert nmse(got[i:i + 1], want) < 1e-11, i


@pytest.mark.parametrize("n,pos0", [(1, 77), (6, 5)])
def test_rope_kv_write_v_from_k(ops, n, pos0):
    """v_from_k: the queries and the key row rotate on their first 64 dims as without it (NumPy's
    interleaved pairs), the key row is cached, and nothing is written for V."""
    rng = np.random.default_rng([n, pos0, 576])
    n_heads = 4
    q = randn(rng, n, n_heads * ROW)
    k = randn(rng, n, ROW) * 4
    n_ctx = pos0 + n + 2
    k_cache = cache_arg(ops, randn(rng, n_ctx, ROW))
    v_cache = cache_arg(ops, randn(rng, n_ctx, ROW))
    freqs = (10000.0 ** (-np.arange(0, ROPE, 2) / ROPE)).astype(np.float32)
    q_out, k_out, kc_out, vc_out = ops.rope_kv_write(q, k, np.zeros_like(k), k_cache, v_cache.copy(), freqs, pos0,
                                                     n_heads, 1, ROW, False, rope_dim=ROPE, v_from_k=True)

    def rotate(x, heads):
        h = np.asarray(x, np.float64).reshape(n, heads, ROW).copy()
        ang = (pos0 + np.arange(n))[:, None] * freqs.astype(np.float64)[None, :]   # [n, 32]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = h[..., 0:ROPE:2].copy(), h[..., 1:ROPE:2].copy()
        h[..., 0:ROPE:2], h[..., 1:ROPE:2] = a * c - b * s, a * s + b * c
        return h.reshape(n, -1)

    assert nmse(q_out, rotate(q, n_heads)) < 1e-12
    k_want = rotate(k, 1)
    assert nmse(k_out, k_want) < 1e-12
    cached = np.asarray(kc_out).view(np.float16) if np.asarray(kc_out).dtype == np.uint16 else np.asarray(kc_out)
    np.testing.assert_allclose(cached[pos0:pos0 + n].astype(np.float64), k_want, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(vc_out, v_cache)   # V: untouched


@pytest.mark.parametrize("dtype_id", [F32, F16], ids=["F32", "F16"])
@pytest.mark.parametrize("n", [1, 5, 40])
@pytest.mark.parametrize("rows,cols", [(LATENT, 128), (128, LATENT)], ids=["absorb-q", "expand-v"])
def test_per_head_matmul(ops, dtype_id, n, rows, cols):
    """out[i * H + h] = W_h x[i * H + h]: matmul_id with one expert per head and every row of ids
    0..H-1 (DeepSeek's shapes at 16 heads: k_b_h^T [512, 128], v_b_h [128, 512]) against NumPy.
    Bound: matmul's for the weight type (test_cpu_ops.matmul_bound, exact-f32 class)."""
    heads = 16
    rng = np.random.default_rng([n, rows, cols, dtype_id])
    raws = [encode_weights(randn(rng, rows, cols), dtype_id) for _ in range(heads)]
    w = np.stack([decode_weights(r, dtype_id, rows, cols) for r in raws]).astype(np.float64)
    x = randn(rng, n * heads, cols)
    ids = np.tile(np.arange(heads, dtype=np.int32), (n, 1))
    out = ops.matmul_id(np.concatenate(raws), dtype_id, heads, rows, cols, x, ids)
    want = np.einsum("hrc,nhc->nhr", w, np.asarray(x, np.float64).reshape(n, heads, cols)).reshape(n * heads, rows)
    backend = "metal" if ops.name == "metal" else "cpu"
    assert nmse(out, want) < matmul_bound(backend, dtype_id, n)


# More shapes for Metal's latent decode kernel (attention_latent_f16: a block of up to 32 query
# heads per threadgroup, each staged tile of rows shared by the block): head counts below, at and
# above a block; contexts within one tile, across tiles and across several key splits (+
# attention_reduce); two queries of differing split counts. Bound nmse 1e-11 as above
# (measured worst 2.6e-12 CPU, 3.9e-13 Metal, over these and the batch cases below).
@pytest.mark.parametrize("n,pos0,n_heads", [
    (1, 5, 3),       # fewer heads than a block, a partial tile
    (1, 1100, 16),   # one block of 16 heads, several splits
    (1, 700, 20),    # GLM-4.7-Flash's 20 heads: one block
    (2, 260, 40),    # 40 heads, two queries
    (1, 2047, 64),   # DeepSeek V3's 128 heads halved, 2048 keys
])
def test_attention_on_latent_rows_head_blocks(ops, n, pos0, n_heads):
    rng = np.random.default_rng([n, pos0, n_heads, 1])
    n_ctx = pos0 + n + 1
    q = randn(rng, n, n_heads * ROW)
    rows = randn(rng, n_ctx, ROW).astype(np.float16)
    rows[pos0 + n:] = np.float16(60000.0)
    scale = 1.0 / np.sqrt(192)
    kc = cache_arg(ops, rows)
    got = ops.attention(q, kc, kc, pos0, n_heads, 1, ROW, scale)
    want = attention_reference(q, rows, rows, pos0, n_heads, 1, ROW, scale)
    assert nmse(got, want) < 1e-11


@pytest.mark.parametrize("window,softcap,with_sinks", [(0, 0.0, False), (100, 30.0, True)])
def test_attention_on_latent_rows_batch(ops, window, softcap, with_sinks):
    """A batch of decode rows of three sequences (the RowPositions table: position, first cache row)
    over latent rows at 20 heads, with and without window, soft-capping and sinks, against NumPy
    one sequence at a time. Bound 1e-11 (measured: above)."""
    n_heads, n_ctx = 20, 400
    entries = [(1, 350), (0, 4), (2, 130)]  # (sequence slot, position)
    rng = np.random.default_rng([n_heads, window, 7])
    cache = randn(rng, 3 * n_ctx, ROW).astype(np.float16)
    table = np.array([[pos, slot * n_ctx] for slot, pos in entries], np.int32)
    q = randn(rng, len(entries), n_heads * ROW)
    sinks = rng.uniform(-2.0, 3.0, n_heads).astype(np.float32) if with_sinks else None
    scale = 1.0 / np.sqrt(192)
    kc = cache_arg(ops, cache)
    got = ops.attention(q, kc, kc, 0, n_heads, 1, ROW, scale, window, softcap, sinks=sinks, rows=table)
    for i, (slot, pos) in enumerate(entries):
        seq = cache[slot * n_ctx:(slot + 1) * n_ctx]
        want = attention_reference(q[i:i + 1], seq, seq, pos, n_heads, 1, ROW, scale, window, softcap, sinks=sinks)
        assert nmse(got[i:i + 1], want) < 1e-11, i
