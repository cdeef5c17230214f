"""Gemma 3n's ops (gaussian_topk, rms_match, altup_mix, clamp_ids) on the CPU and on the Metal device (the
emulated one on Linux, under its three thread schedules) against float64 NumPy references of
transformers' definitions (Gemma3nTextMLP._gaussian_topk, the AltUp magnitude matching of
Gemma3nTextModel.forward, Gemma3nTextAltUp.predict / correct, get_per_layer_inputs' ids).

Shapes: rows that are not multiples of a simdgroup, widths below one simdgroup, past one
1024-thread threadgroup (a thread loops over several elements), and Gemma 3n E2B's 2048 / 8192.
Measured max relative errors (max |got - want| / max |want|, worst over the shapes and schedules):
gaussian_topk CPU 2.4e-7, Metal 3.9e-7; rms_match CPU 8.8e-8, Metal 2.2e-7; altup_mix 1.1e-7 on both
(bound 2e-6); gaussian_topk's zeros agree exactly away from the cut.
"""
from __future__ import annotations

import zlib
from statistics import NormalDist

import numpy as np
import pytest

from test_metal_ops import OPS_BACKENDS, ops_in_order

SHAPES = [(1, 7), (3, 64), (5, 2048), (2, 3000), (1, 8192)]


def rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape and np.all(np.isfinite(got))
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.fixture(params=OPS_BACKENDS)
def ops(request, core):
    """An Ops of the CPU, or of the (emulated) Metal device running threads in one order."""
    yield from ops_in_order(core, request.param)


def gaussian_topk_reference(x, sparsity):
    x = x.astype(np.float64)
    mult = np.float32(NormalDist().inv_cdf(sparsity))
    cut = x.mean(-1, keepdims=True) + x.std(-1, keepdims=True) * mult
    return np.maximum(x - cut, 0.0)


@pytest.mark.parametrize("n,dim", SHAPES)
def test_gaussian_topk(ops, n, dim):
    x = (rng("topk", n, dim).standard_normal((n, dim)) * 2 + 0.5).astype(np.float32)
    sparsity = 0.95
    got = ops.gaussian_topk(x, float(np.float32(NormalDist().inv_cdf(sparsity))))
    want = gaussian_topk_reference(x, sparsity)
    assert rel(got, want) < 2e-6
    # away from the cut (where a rounding may tip an element either way) the zeros agree
    x64 = x.astype(np.float64)
    cut = x64.mean(-1, keepdims=True) + x64.std(-1, keepdims=True) * float(np.float32(NormalDist().inv_cdf(sparsity)))
    clear = np.abs(x64 - cut) > 1e-4 * np.abs(cut).max()
    assert np.array_equal(got[clear] == 0, want[clear] == 0)


@pytest.mark.parametrize("n,dim", SHAPES)
def test_rms_match(ops, n, dim):
    r = rng("rms_match", n, dim)
    x = r.standard_normal((n, dim)).astype(np.float32) * 3
    target = r.standard_normal((n, dim)).astype(np.float32) * 0.2
    x[0] *= 1e-4   # a row under the floor: sqrt(max(mean(x^2), 1e-5)) takes 1e-5
    got = ops.rms_match(x, target)
    x64, t64 = x.astype(np.float64), target.astype(np.float64)
    want = x64 * np.sqrt((t64 ** 2).mean(-1, keepdims=True)) / np.sqrt(np.maximum((x64 ** 2).mean(-1, keepdims=True),
                                                                                  1e-5))
    assert rel(got, want) < 2e-6


@pytest.mark.parametrize("n,dim,k", [(1, 7, 1), (3, 64, 4), (5, 2048, 4), (2, 300, 2)])
def test_altup_mix(ops, n, dim, k):
    r = rng("altup_mix", n, dim, k)
    xs = r.standard_normal((n, k * dim)).astype(np.float32)
    coefs = r.standard_normal((n, k)).astype(np.float32)
    base = r.standard_normal((n, dim)).astype(np.float32)
    got = ops.altup_mix(xs, coefs, base)
    want = base.astype(np.float64) + np.einsum("nk,nkd->nd", coefs.astype(np.float64),
                                               xs.astype(np.float64).reshape(n, k, dim))
    assert rel(got, want) < 2e-6


def test_bad_shapes_refused():
    from forgert import _core
    ops = _core.Ops("cpu")
    with pytest.raises(Exception, match="xs must be"):
        ops.altup_mix(np.zeros((2, 10), np.float32), np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(Exception, match="same shape"):
        ops.rms_match(np.zeros((2, 10), np.float32), np.zeros((2, 9), np.float32))
    with pytest.raises(Exception, match="finite"):
        ops.gaussian_topk(np.zeros((2, 10), np.float32), float("nan"))


@pytest.mark.parametrize("n", [1, 7, 300])
def test_clamp_ids(ops, n):
    """Ids past a table of `limit` rows (and negative ones) become 0, the others stay."""
    ids = rng("clamp_ids", n).integers(-5, 120, n).astype(np.int32)
    got = ops.clamp_ids(ids, 100)
    np.testing.assert_array_equal(np.asarray(got).reshape(-1), np.where((ids >= 0) & (ids < 100), ids, 0))
