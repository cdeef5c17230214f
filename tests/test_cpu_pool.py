"""The CPU thread pool's work split (static and dynamic, FORGERT_CPU_SPLIT) and the ops that run on it.

The pool itself: every index of a parallel_for is handed out exactly once, in contiguous
whole grains, for odd sizes, more threads than rows, nested regions, and a share that throws.
The ops: with either split and any thread count, the row-parallel ops give the same bits as
one thread (their rows are independent), and agree with the NumPy references of
test_cpu_ops.py. No timings are asserted.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_cpu_ops import (BF16, F16, F32, Q4_0, Q4_1, Q8_0, attention_reference, decode_weights, encode_weights,
                          matmul_bound, nmse, randn, rng_for)

SPLITS = ("static", "dynamic")


def check_cover(ranges, n: int, grain: int, threads: int) -> None:
    """The ranges tile [0, n) exactly once, each starts on a grain, only the last is short."""
    spans = sorted((b, e) for _, b, e in ranges)
    assert spans, "no ranges"
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        assert e0 == b1, f"gap or overlap at {e0} / {b1}"
    for b, e in spans:
        assert b < e and b % grain == 0
        assert (e - b) % grain == 0 or e == n
    assert all(0 <= ith < threads for ith, _, _ in ranges)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("threads", [1, 2, 3, 5, 8, 17])
@pytest.mark.parametrize("n,grain", [(1, 1), (7, 1), (37, 2), (37, 16), (1001, 3), (4096, 16), (16, 16)])
def test_parallel_for_covers_every_index_once(core, split, threads, n, grain):
    check_cover(core._pool_ranges(threads, split, n, grain), n, grain, threads)


@pytest.mark.parametrize("split", SPLITS)
def test_more_threads_than_rows(core, split):
    ranges = core._pool_ranges(16, split, 3, 1)
    check_cover(ranges, 3, 1, 16)
    assert len(ranges) <= 3


@pytest.mark.parametrize("threads,units", [(2, 4), (4, 4), (8, 8), (16, 16)])
def test_dynamic_split_hands_out_several_units_per_thread(core, threads, units):
    """Dynamic: by default as many contiguous units per thread as threads, 4 to 16
    (default_units_per_thread), so a fast thread can take a slow one's share; static: one range
    per thread. 4096 rows in grains of 16 are 256 grains: `units` x `threads` equal ranges."""
    n = 4096
    dynamic = core._pool_ranges(threads, "dynamic", n, 16)
    static = core._pool_ranges(threads, "static", n, 16)
    check_cover(dynamic, n, 16, threads)
    assert len(dynamic) == units * threads
    assert {e - b for _, b, e in dynamic} == {n // (units * threads)}
    assert sorted((b, e) for _, b, e in static) == [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]


@pytest.mark.parametrize("units", [1, 8, 16])
def test_dynamic_split_takes_the_units_per_thread_it_is_given(core, units):
    """FORGERT_CPU_UNITS (the pool's units_per_thread): 4096 rows in grains of 16 are 256
    grains, so 4 threads get exactly `units` contiguous units each, covering every row once."""
    n, threads = 4096, 4
    ranges = core._pool_ranges(threads, "dynamic", n, 16, units=units)
    check_cover(ranges, n, 16, threads)
    assert len(ranges) == units * threads
    assert {e - b for _, b, e in ranges} == {n // (units * threads)}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("threads", [2, 5])
def test_nested_regions_run_inline(core, split, threads):
    """A parallel_for inside a region runs on the calling thread (the workers are busy with
    the outer one), whole, with that thread's share index: no deadlock, nothing skipped."""
    ranges = core._pool_ranges(threads, split, 50, 1, nested_n=5)
    outer = [r for r in ranges if r[0] >= 0]
    inner = [r for r in ranges if r[0] < 0]
    check_cover(outer, 50, 1, threads)
    assert len(inner) == len(outer)            # one inline [0, 5) per outer range
    assert all((b, e) == (0, 5) for _, b, e in inner)
    assert sorted(-1 - i for i, _, _ in inner) == sorted(i for i, _, _ in outer)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("threads", [1, 3])
def test_an_exception_in_a_share_reaches_the_caller(core, split, threads):
    with pytest.raises(RuntimeError, match="share failed at 29"):
        core._pool_ranges(threads, split, 40, 1, throw_at=29)
    # the pool's protocol is intact afterwards: a new region covers everything
    check_cover(core._pool_ranges(threads, split, 40, 1), 40, 1, threads)


def test_profiling_counts_regions_and_busyness(core):
    s = core._pool_stats(3, "dynamic", 50)
    assert s["regions"] == 50
    assert 0 < s["busy_s"] <= s["capacity_s"] * 1.0001 + 1e-6
    assert s["capacity_s"] == pytest.approx(3 * s["wall_s"])
    assert core._pool_stats(1, "dynamic", 5)["regions"] == 0    # one thread forks nothing


def test_bad_split_name_is_refused(core):
    with pytest.raises(ValueError, match="'static' or 'dynamic'.*'fast'"):
        core._pool_ranges(2, "fast", 10, 1)


@pytest.mark.parametrize("var,value,match", [("FORGERT_CPU_SPLIT", "guided", "FORGERT_CPU_SPLIT must be"),
                                              ("FORGERT_CPU_PROFILE", "yes", "FORGERT_CPU_PROFILE must be"),
                                              ("FORGERT_CPU_SPIN_US", "-5", "FORGERT_CPU_SPIN_US must be"),
                                              ("FORGERT_CPU_SPIN_US", "30us", "whole number of microseconds"),
                                              ("FORGERT_CPU_SPIN_US", "1000001", "from 0 to 1000000"),
                                              ("FORGERT_CPU_UNITS", "0", "FORGERT_CPU_UNITS must be .* from 1 to 64"),
                                              ("FORGERT_CPU_UNITS", "65", "from 1 to 64, got '65'"),
                                              ("FORGERT_CPU_UNITS", "eight", "FORGERT_CPU_UNITS must be")])
def test_bad_environment_values_are_refused(core, monkeypatch, var, value, match):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=match):
        core.Ops("cpu", threads=2)


# ----------------------------------------------------------------------------- ops on each split

# (threads, split): one thread is the reference path; more threads than chunks; odd counts.
CONFIGS = [(2, "static"), (2, "dynamic"), (3, "dynamic"), (7, "static"), (7, "dynamic"), (64, "dynamic")]


@pytest.fixture(scope="module")
def ops_with():
    cache = {}

    def get(threads: int, split: str):
        if (threads, split) not in cache:
            mp = pytest.MonkeyPatch()
            mp.setenv("FORGERT_CPU_SPLIT", split)
            try:
                from forgert import _core
                cache[threads, split] = _core.Ops("cpu", threads=threads)
            finally:
                mp.undo()
        return cache[threads, split]
    return get


# Decode (GEMV), a few tokens (GEMV), prefill (GEMM); odd row counts not a multiple of 16.
SHAPES = [(37, 64, 1), (1001, 96, 1), (99, 128, 3), (257, 160, 33)]


@pytest.mark.parametrize("dtype_id", [Q4_0, Q8_0, Q4_1, F16], ids=["Q4_0", "Q8_0", "Q4_1", "F16"])
@pytest.mark.parametrize("rows,cols,n", SHAPES)
def test_matmuls_equal_one_thread_on_every_split(ops_with, dtype_id, rows, cols, n):
    rng = rng_for("pool_matmul", dtype_id, rows, cols, n)
    raw_a, raw_b = encode_weights(randn(rng, rows, cols), dtype_id), encode_weights(randn(rng, rows, cols), dtype_id)
    x, residual = randn(rng, n, cols, scale=0.3), randn(rng, n, rows)

    def all_ops(ops):
        return [ops.matmul(raw_a, dtype_id, rows, cols, x),
                ops.matmul_add(raw_a, dtype_id, rows, cols, x, residual),
                ops.matmul_swiglu(raw_a, raw_b, dtype_id, rows, cols, x),
                ops.matmul_geglu(raw_a, raw_b, dtype_id, rows, cols, x)]

    one = all_ops(ops_with(1, "dynamic"))
    # the one-thread path against float64 NumPy (test_cpu_ops' bounds)
    g = np.asarray(x, np.float64) @ decode_weights(raw_a, dtype_id, rows, cols).T
    u = np.asarray(x, np.float64) @ decode_weights(raw_b, dtype_id, rows, cols).T
    assert nmse(one[0], g) < matmul_bound("cpu", dtype_id, n)
    assert nmse(one[1] - residual, g) < matmul_bound("cpu", dtype_id, n)
    assert nmse(one[2], g / (1 + np.exp(-g)) * u) < 4 * matmul_bound("cpu", dtype_id, n)
    for threads, split in CONFIGS:
        for name, a, b in zip(("matmul", "matmul_add", "matmul_swiglu", "matmul_geglu"), one,
                              all_ops(ops_with(threads, split))):
            np.testing.assert_array_equal(b, a, err_msg=f"{name} with {threads} threads, {split}")


@pytest.mark.parametrize("spin_us", ["0", "1000"])
def test_matmuls_equal_one_thread_whether_threads_sleep_or_spin(ops_with, monkeypatch, spin_us):
    """FORGERT_CPU_SPIN_US=0: every wait sleeps at once (the workers between regions, the caller
    for the workers' shares); 1000: the waits spin. Each region's every row is still computed
    once: the same bits as one thread, region after region."""
    from forgert import _core
    monkeypatch.setenv("FORGERT_CPU_SPIN_US", spin_us)
    ops = _core.Ops("cpu", threads=3)
    rng = rng_for("pool_spin", spin_us)
    rows, cols = 1001, 96
    raw = encode_weights(randn(rng, rows, cols), Q8_0)
    for n in (1, 1, 3, 1, 33):
        x = randn(rng, n, cols, scale=0.3)
        np.testing.assert_array_equal(ops.matmul(raw, Q8_0, rows, cols, x),
                                      ops_with(1, "dynamic").matmul(raw, Q8_0, rows, cols, x))


@pytest.mark.parametrize("n,dim", [(1, 2048), (5, 96), (40, 576), (101, 2048)])   # the last: 7 row chunks
def test_norms_and_elementwise_equal_one_thread(ops_with, n, dim):
    rng = rng_for("pool_elementwise", n, dim)
    x, w, g, u = randn(rng, n, dim), randn(rng, dim), randn(rng, n, dim), randn(rng, n, dim)

    def all_ops(ops):
        return [ops.rms_norm(x, w, 1e-5), ops.silu_mul(g, u), ops.gelu_mul(g, u), ops.add(g, u),
                ops.add_bias(g, w), ops.scale(g, 0.37)]

    ref = all_ops(ops_with(1, "dynamic"))
    np.testing.assert_array_equal(ref[3], g + u)            # f32 adds and products are exact IEEE ops
    np.testing.assert_array_equal(ref[4], g + w)
    np.testing.assert_array_equal(ref[5], g * np.float32(0.37))
    for threads, split in CONFIGS:
        for a, b in zip(ref, all_ops(ops_with(threads, split))):
            np.testing.assert_array_equal(b, a, err_msg=f"{threads} threads, {split}")


@pytest.mark.parametrize("n,vocab", [(1, 128256), (1, 49152), (2, 40000), (1, 100)])
def test_parallel_argmax_is_the_first_maximum(ops_with, n, vocab):
    """Argmax over blocks of the vocab, merged in order: NumPy's first maximum whatever the
    threads, including ties across blocks; a NaN or +inf in any block gives the sentinel."""
    rng = rng_for("pool_argmax", n, vocab)
    x = randn(rng, n, vocab)
    x[0, vocab // 2] = x[0, vocab - 1] = 9.0           # tie in two blocks: the first wins
    if n > 1:
        x[1, :] = -np.inf
        x[1, vocab - 3] = -1e30                           # the only finite value, in the last block
    for threads, split in [(1, "dynamic")] + CONFIGS:
        out = ops_with(threads, split).argmax(x)
        np.testing.assert_array_equal(out, np.argmax(x, axis=1), err_msg=f"{threads} threads, {split}")
    y = randn(rng, 3, vocab)
    y[0, 1] = np.nan                                    # a NaN in the first block, the max in the last
    y[0, vocab - 1] = 50.0
    y[1, vocab - 1] = np.nan                            # a NaN in the last block only
    y[2, vocab // 2] = np.inf
    for threads, split in CONFIGS:                      # whatever block holds it: core/backend.h's sentinel
        assert ops_with(threads, split).argmax(y).tolist() == [-1, -1, -2], f"{threads} threads, {split}"


@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,n_ctx", [
    (1, 700, 9, 3, 64, 1024),    # decode with the keys split across threads
    (1, 30, 8, 2, 32, 64),       # decode, too few keys to split
    (37, 11, 8, 2, 32, 64),      # prefill items handed out from the end
])
def test_attention_on_every_split(ops_with, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx):
    """The split of keys depends on the thread count (rounding differs), the work split does
    not: static and dynamic give the same bits at one thread count; all match float64."""
    rng = rng_for("pool_attn", n, pos0, n_heads)
    kv_dim = n_kv_heads * head_dim
    q = randn(rng, n, n_heads * head_dim, scale=1.5)
    k_cache = randn(rng, n_ctx, kv_dim, scale=1.5).astype(np.float16)
    v_cache = randn(rng, n_ctx, kv_dim).astype(np.float16)
    scale = 1.0 / np.sqrt(head_dim)
    ref = attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale)
    for threads in (2, 7):
        static, dynamic = (ops_with(threads, s).attention(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim,
                                                          scale) for s in SPLITS)
        np.testing.assert_array_equal(dynamic, static)
        assert nmse(dynamic, ref) < 1e-6    # test_cpu_ops' bound (f16 cache)


# ----------------------------------------------------------------------------- forgert bench --profile

def _bench(smollm2_gguf, split: str, *extra):
    import subprocess
    import sys

    from conftest import subprocess_env
    return subprocess.run([sys.executable, "-m", "forgert", "bench", "--model", str(smollm2_gguf), "--threads", "2",
                           "-p", "8", "-g", "3", "-r", "1", "--n-ctx", "32", *extra],
                          env=subprocess_env(FORGERT_CPU_SPLIT=split), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
def test_bench_profile_counts_ops_and_regions(smollm2_gguf, split):
    import json
    result = _bench(smollm2_gguf, split, "--profile", "--json")
    assert result.returncode == 0, result.stderr
    cpu = json.loads(result.stdout)["profile"]["cpu"]
    assert cpu["threads"] == 2 and cpu["split"] == split
    assert cpu["units_per_thread"] == 4  # default_units_per_thread: 4 for 2 threads
    # SmolLM2 (30 layers) per decoded token, from the layer's structure: 2 norms a layer + the
    # final one; one fused gate/up region a layer; wo and down each a fused projection + add.
    ops = cpu["ops"]
    assert ops["rms_norm"]["calls_per_token"] == 61
    assert ops["matmul_glu"]["calls_per_token"] == 30
    assert ops["matmul_add"]["calls_per_token"] == 60
    assert ops["matmul"]["calls_per_token"] == 31        # q/k/v (one call a layer) and the logits
    assert ops["argmax"]["calls_per_token"] == 1
    # Regions: q/k/v, attention, wo, gate/up, down a layer, then logits and argmax (49152 = 6
    # blocks); the one-row norms, RoPE and the embedding run inline.
    assert cpu["regions_per_token"] == 5 * 30 + 2
    # ... and per kind: each fused projection forks one region a call, argmax one a token
    for name in ("matmul", "matmul_add", "matmul_glu", "attention", "argmax"):
        assert ops[name]["regions_per_token"] == ops[name]["calls_per_token"], name
        assert 0 < ops[name]["busyness"] <= 1.0001
    assert ops["rms_norm"]["regions_per_token"] == 0 and ops["rms_norm"]["busyness"] is None
    assert 0 < cpu["busyness"] <= 1.0001
    assert sum(o["share"] for o in ops.values()) == pytest.approx(1.0)
    text = _bench(smollm2_gguf, split, "--profile")
    assert "152.0 parallel regions" in text.stdout and "matmul_glu" in text.stdout


@pytest.mark.slow
def test_bench_refuses_an_unknown_split(smollm2_gguf):
    result = _bench(smollm2_gguf, "round-robin")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "FORGERT_CPU_SPLIT must be 'static' or 'dynamic'" in result.stderr
