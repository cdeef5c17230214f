"""The lattice weight types (IQ3_S, IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M: codebook points
times signs and a scale, src/shaders/iq_lattice.h) on the Metal device, under the emulator's three
thread orders, against NumPy on the weights the gguf package dequantizes (random but valid blocks:
random bytes for indices, signs and scales, a sane f16 d; test_metal_ops.weight_bytes). Every path a
weight matrix takes: get_rows, the one-token GEMVs (staged at 32 and 256 rows a threadgroup, and the
direct kernels), the multi-token GEMV (decode rows), the GEMM (8 tokens or more), the fused gate/up
and argmax GEMVs and the mixture-of-experts kernels.

The weights are exact in f32 (small integers times d times a small odd factor over a power of two),
so the GEMVs are f32 sums of exact products, and the GEMM rounds weights to its half tiles.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_metal_ops import LATTICE_TYPES, core, dequantize, metal, nmse, rng, weight_bytes  # noqa: F401

pytestmark = pytest.mark.metal

TYPES = list(LATTICE_TYPES)   # IQ3_S, IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M
ROWS, COLS = 37, 1280          # 37 rows: partial simdgroups and threadgroups; 5 super-blocks: a partial window


def case(name, wtype, rows=ROWS, cols=COLS, n=3):
    dtype = LATTICE_TYPES[wtype]
    r = rng(name, wtype)
    w, u = weight_bytes(r, dtype, rows, cols), weight_bytes(r, dtype, rows, cols)
    x = r.standard_normal((n, cols), dtype=np.float32)
    return dtype, w, u, x, dequantize(w, dtype, rows, cols), dequantize(u, dtype, rows, cols)


@pytest.mark.parametrize("wtype", TYPES)
def test_get_rows_equals_gguf_dequantize(metal, wtype):
    """Rows of 2560 columns (two windows of 2048, get_rows.metal; the second partial) equal the gguf
    package's dequantization bit for bit."""
    dtype, rows, cols = LATTICE_TYPES[wtype], 9, 2560
    table = weight_bytes(rng("get_rows", wtype), dtype, rows, cols)
    ids = np.array([8, 0, 3, 3], dtype=np.int32)
    got = metal.get_rows(table, dtype, rows, cols, ids)
    # measured: equal (both f32 products of exact factors)
    np.testing.assert_array_equal(got, dequantize(table, dtype, rows, cols)[ids].astype(np.float32))


@pytest.mark.parametrize("gemv", ["staged", "staged-256", "direct"])
@pytest.mark.parametrize("wtype", TYPES)
def test_gemv(metal, monkeypatch, wtype, gemv):
    """One token and three (by row count: the GEMV), plain and fused gate/up (SiLU)."""
    monkeypatch.setenv("FORGERT_METAL_GEMV", gemv.split("-")[0])
    if "-" in gemv:
        monkeypatch.setenv("FORGERT_METAL_GEMV_TG_ROWS", gemv.split("-")[1])
    dtype, w, u, x, wd, ud = case("gemv", wtype)
    for n in (1, 3):
        exact = x[:n].astype(np.float64) @ wd.T
        # measured <= 4.4e-14 (iq3_xxs; every type, kernel and schedule): f32 sums of exact products
        assert nmse(metal.matmul(w, dtype, ROWS, COLS, x[:n]), exact) < 2e-13, n
        g, up = exact, x[:n].astype(np.float64) @ ud.T
        got = metal.matmul_swiglu(w, u, dtype, ROWS, COLS, x[:n])
        assert nmse(got, g / (1 + np.exp(-g)) * up) < 5e-13, n  # measured <= 1.2e-13 (iq2_xxs): the f32 SiLU on top


@pytest.mark.parametrize("wtype", TYPES)
def test_gemv_tokens(metal, wtype):
    """A batch's decode rows (mul_mv_tokens: up to 8 tokens a threadgroup; 9 take two groups): the
    exact product, and each row bit for bit the one-token kernel's (batch invariance)."""
    dtype, w, u, x, wd, ud = case("gemv_tokens", wtype, n=9)
    alone = np.concatenate([metal.matmul(w, dtype, ROWS, COLS, x[i:i + 1]) for i in range(len(x))])
    alone_glu = np.concatenate([metal.matmul_swiglu(w, u, dtype, ROWS, COLS, x[i:i + 1]) for i in range(len(x))])
    for n in (2, 9):
        got = metal.matmul(w, dtype, ROWS, COLS, x[:n], decode_rows=n)
        assert nmse(got, x[:n].astype(np.float64) @ wd.T) < 1e-13, n  # measured <= 2.4e-14 (iq2_xxs, iq2_xs)
        assert np.array_equal(got, alone[:n]), n
        got = metal.matmul_swiglu(w, u, dtype, ROWS, COLS, x[:n], decode_rows=n)
        assert np.array_equal(got, alone_glu[:n]), n


@pytest.mark.parametrize("n", [8, 33])   # the GEMM from 8 tokens (by row count); 33: two 32-token tiles
@pytest.mark.parametrize("wtype", TYPES)
def test_gemm(metal, wtype, n):
    """70 rows (a partial 64-row tile) x 512: weights rounded to the GEMM's half tiles."""
    rows, cols = 70, 512
    dtype, w, u, x, wd, ud = case("gemm", wtype, rows, cols, n)
    exact = x.astype(np.float64) @ wd.T
    # measured <= 5.5e-8 (iq3_s; others 3.9e-8 .. 4.7e-8): half tiles, each weight rounded by <= 2^-11 relative
    assert nmse(metal.matmul(w, dtype, rows, cols, x), exact) < 2e-7


@pytest.mark.parametrize("wtype", TYPES)
def test_fused_argmax(metal, wtype):
    """A lone greedy decode row (mul_mv_argmax_staged_*): the argmax of the unfused logits."""
    dtype, w, u, x, wd, ud = case("argmax", wtype, rows=601, cols=256)
    logits = metal.matmul(w, dtype, 601, 256, x)
    got = np.concatenate([metal.matmul_argmax(w, dtype, 601, 256, x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(got, np.argmax(logits, axis=1))


@pytest.mark.parametrize("n", [1, 3, 9])   # one-token GEMV, multi-token GEMV, GEMM (by row count)
@pytest.mark.parametrize("wtype", TYPES)
def test_matmul_id(metal, wtype, n):
    """Mixture of experts: 3 experts of 37 x 512, each token's 2 slots picking two of them."""
    dtype, rows, cols, n_expert = LATTICE_TYPES[wtype], ROWS, 512, 3
    r = rng("matmul_id", wtype, n)
    w = weight_bytes(r, dtype, n_expert * rows, cols)
    x = r.standard_normal((n, cols), dtype=np.float32)
    ids = np.stack([r.permutation(n_expert)[:2] for _ in range(n)]).astype(np.int32)
    wd = dequantize(w, dtype, n_expert * rows, cols).reshape(n_expert, rows, cols)
    exact = np.stack([np.stack([wd[e] @ x[i].astype(np.float64) for e in ids[i]]) for i in range(n)])
    got = metal.matmul_id(w, dtype, n_expert, rows, cols, x, ids)
    # measured <= 2.1e-14 (GEMVs, iq3_xxs), <= 4.7e-8 (the GEMM's half tiles, iq2_xs)
    assert nmse(got.reshape(exact.shape), exact) < (2e-7 if n >= 8 else 1e-13)
