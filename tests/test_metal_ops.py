"""Every Metal kernel, through the ops layer (MetalBackend) and the Metal device, against the
CPU backend's op on the same inputs.

On Linux the device is the MSL emulator, and every case runs under the three thread schedules
it offers (FORGERT_EMU_SCHEDULE = forward, reverse, random): a kernel that relies on an order
of its threads that Metal does not promise (a missing barrier, a read of another lane's
unwritten value) gives different results under some schedule. On macOS the same tests run on
the GPU (one schedule: the hardware's).

Error measure: normalized MSE as in llama.cpp's test-backend-ops,
nmse = sum((metal - cpu)^2) / sum(cpu^2). Shapes are awkward on purpose: row counts that are
not multiples of the 4-row simdgroup or 64-row GEMM tiles, token counts around the
GEMV/GEMM switch (8) and the GEMM's 32-token tile, odd float widths, head sizes that do not
fill a simdgroup, contexts long enough to split attention over several threadgroups.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest


F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
WEIGHT_TYPES = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0, "q4_0": Q4_0, "q4_1": Q4_1, "q5_0": Q5_0,
                "q5_1": Q5_1, "q2_K": Q2_K, "q3_K": Q3_K, "q4_K": Q4_K, "q5_K": Q5_K, "q6_K": Q6_K,
                "iq4_nl": 20, "iq4_xs": 23}
IQ4_NL, IQ4_XS = 20, 23
K_QUANTS = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
# The lattice types (quant_blocks.h): in WEIGHT_TYPES' tests (Metal against the CPU backend) and,
# against NumPy on gguf's dequantization, in test_metal_iq_lattice.py.
LATTICE_TYPES = {"iq3_s": 21, "iq3_xxs": 18, "iq2_xxs": 16, "iq2_xs": 17, "iq2_s": 22, "iq1_s": 19, "iq1_m": 29}
WEIGHT_TYPES.update(LATTICE_TYPES)
LATTICE_BLOCK_BYTES = {21: 110, 18: 98, 16: 66, 17: 74, 22: 82, 19: 50, 29: 56}
IQ1_S, IQ1_M = 19, 29
SUPER_BLOCK_TYPES = K_QUANTS + (IQ4_XS,) + tuple(LATTICE_TYPES.values())   # rows of whole 256-weight super-blocks

SCHEDULES = ["forward"] if sys.platform == "darwin" else ["forward", "reverse", "random"]

pytestmark = pytest.mark.metal


def nmse(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != {ref.shape}"
    assert np.all(np.isfinite(out)), "non-finite values in the Metal output"
    return float(np.sum((out - ref) ** 2) / max(np.sum(ref ** 2), 1e-300))


@pytest.fixture(scope="module")
def core(metal_core):
    return metal_core


@pytest.fixture(scope="module")
def cpu(core):
    return core.Ops("cpu")


def select_schedule(core, name: str) -> bool:
    """Makes the emulator run threads in order `name`; False when this process cannot."""
    setter = getattr(core, "set_emulator_schedule", None)
    if setter is not None:
        setter(name, 7) if name == "random" else setter(name)
        return True
    # Without the setter the emulator keeps the order FORGERT_EMU_SCHEDULE gave at start-up.
    return os.environ.get("FORGERT_EMU_SCHEDULE", "forward").split(":")[0] == name


# The CPU, then the emulated Metal device under each thread order: the params of an `ops` fixture
# written `yield from ops_in_order(core, request.param)` (test_moe_ops, test_latent_attention_ops).
OPS_BACKENDS = ["cpu"] + [pytest.param(f"metal-{s}", marks=pytest.mark.metal) for s in SCHEDULES]


def ops_in_order(core, backend: str):
    """Yields an Ops of the CPU ("cpu"), or of the (emulated) Metal device running threads in one
    order ("metal-reverse"), skipping where Metal is missing or the order cannot be set; puts the
    order back to forward after."""
    if backend == "cpu":
        yield core.Ops("cpu")
        return
    from conftest import metal_skip_reason
    reason = metal_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    schedule = backend.split("-", 1)[1]
    if not select_schedule(core, schedule):
        pytest.skip(f"schedule {schedule}: this _core cannot switch schedules in-process")
    yield core.Ops("metal")
    select_schedule(core, "forward")


@pytest.fixture(params=SCHEDULES)
def metal(request, core):
    """A Metal Ops whose (emulated) device runs threads in the given order."""
    if not select_schedule(core, request.param):
        pytest.skip(f"schedule {request.param}: run by test_schedules_in_subprocesses "
                    "(this _core has no set_emulator_schedule)")
    yield core.Ops("metal")
    if request.param != "forward":
        select_schedule(core, "forward")


@pytest.mark.skipif(os.environ.get("FORGERT_TEST_CHILD") == "1", reason="inside the subprocess itself")
def test_schedules_in_subprocesses(core):
    """Where the emulator's schedule can only be chosen at start-up, run this module's
    reverse and random cases in child processes started with FORGERT_EMU_SCHEDULE."""
    if hasattr(core, "set_emulator_schedule") or len(SCHEDULES) == 1:
        pytest.skip("schedules are switched in-process")
    for schedule in SCHEDULES[1:]:
        env = dict(os.environ, FORGERT_EMU_SCHEDULE=schedule if schedule != "random" else "random:7",
                   FORGERT_TEST_CHILD="1")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                            "-k", schedule], env=env, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"schedule {schedule}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
        assert " passed" in r.stdout and " failed" not in r.stdout


@pytest.fixture(scope="module")
def as_cache(cpu):
    """f16 cache arrays in the form _core's binding takes: float16, or their raw uint16 bits."""
    one = np.zeros((1, 2), np.float32)
    cache = np.zeros((1, 2), np.float16)
    probe = cpu.rope_kv_write(one, one, one, cache, cache, np.zeros(1, np.float32), 0, 1, 1, 2, False)[2]
    if probe.dtype == np.float16:
        return lambda a: a.astype(np.float16)
    return lambda a: a.astype(np.float16).view(np.uint16)


def rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def weight_bytes(r: np.random.Generator, dtype: int, rows: int, cols: int) -> np.ndarray:
    """Raw weight bytes in the block layouts of src/cpp/core/quant_blocks.h, with random
    (but plausible: small scales, all nibble/int8 values) contents."""
    if dtype == F32:
        return r.standard_normal((rows, cols), dtype=np.float32).view(np.uint8).reshape(-1)
    if dtype == F16:
        return r.standard_normal((rows, cols)).astype(np.float16).view(np.uint8).reshape(-1)
    if dtype == BF16:
        bits = r.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8).reshape(-1)
    if dtype in K_QUANTS:   # random quants and sub-block scales; super-block scales for |w| ~ 1
        blocks = r.integers(0, 256, (rows * cols // 256, {Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210}[dtype])).astype(np.uint8)
        n = len(blocks)
        if dtype in (Q4_K, Q5_K):
            blocks[:, 0:4] = r.uniform(0.0005, 0.002, (n, 2)).astype(np.float16).view(np.uint8)
        elif dtype == Q2_K:
            blocks[:, 80:84] = r.uniform(0.002, 0.02, (n, 2)).astype(np.float16).view(np.uint8)
        elif dtype == Q3_K:
            blocks[:, 108:110] = r.uniform(0.002, 0.006, (n, 1)).astype(np.float16).view(np.uint8)
        else:
            blocks[:, 208:210] = r.uniform(0.0002, 0.0006, (n, 1)).astype(np.float16).view(np.uint8)
        return blocks.reshape(-1)
    if dtype == IQ4_XS:   # random indices and 6-bit scales; w = d * (ls - 32) * value, |w| ~ 1
        blocks = r.integers(0, 256, (rows * cols // 256, 136)).astype(np.uint8)
        blocks[:, 0:2] = r.uniform(0.0002, 0.0006, (len(blocks), 1)).astype(np.float16).view(np.uint8)
        return blocks.reshape(-1)
    if dtype in LATTICE_BLOCK_BYTES:   # random indices, signs and scales; d for |w| ~ 1 (IQ1: ~0.1-1)
        blocks = r.integers(0, 256, (rows * cols // 256, LATTICE_BLOCK_BYTES[dtype])).astype(np.uint8)
        d = r.uniform(0.02, 0.08, len(blocks)) if dtype in (IQ1_S, IQ1_M) else r.uniform(0.001, 0.004, len(blocks))
        d_bits = d.astype(np.float16).view(np.uint16).astype(np.uint16)
        if dtype == IQ1_M:   # d's nibbles in the top 4 bits of the four u16 scales (bytes 48..55)
            sc = blocks[:, 48:56].copy().view(np.uint16)
            for w in range(4):
                sc[:, w] = (sc[:, w] & 0x0FFF) | (((d_bits >> (4 * w)) & 0xF) << 12)
            blocks[:, 48:56] = sc.view(np.uint8)
        else:
            blocks[:, 0:2] = d_bits.reshape(-1, 1).view(np.uint8)
        return blocks.reshape(-1)
    nb = rows * cols // 32
    scale = r.uniform(0.002, 0.05, nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    if dtype == Q8_0:
        qs = r.integers(-127, 128, (nb, 32)).astype(np.int8).view(np.uint8)
        blocks = np.concatenate([scale, qs], axis=1)
    else:
        qs = r.integers(0, 256, (nb, 16)).astype(np.uint8)
        parts = [scale]
        if dtype in (Q4_1, Q5_1):
            parts.append((-8 * r.uniform(0.002, 0.05, nb)).astype(np.float16).view(np.uint8).reshape(nb, 2))
        if dtype in (Q5_0, Q5_1):   # the fifth bits
            parts.append(r.integers(0, 256, (nb, 4)).astype(np.uint8))
        blocks = np.concatenate(parts + [qs], axis=1)
    return np.ascontiguousarray(blocks).reshape(-1)


def dequantize(raw: np.ndarray, dtype: int, rows: int, cols: int) -> np.ndarray:
    """float64 [rows, cols] from raw weight bytes (layouts of quant_blocks.h), in NumPy."""
    if dtype == F32:
        return raw.view(np.float32).reshape(rows, cols).astype(np.float64)
    if dtype == F16:
        return raw.view(np.float16).reshape(rows, cols).astype(np.float64)
    if dtype == BF16:
        bits = raw.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(rows, cols).astype(np.float64)
    if dtype in SUPER_BLOCK_TYPES + (IQ4_NL,):   # the gguf package's decoder (checked against the layouts in test_cpu_ops.py)
        import gguf
        w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(dtype))
        return np.asarray(w, np.float64).reshape(rows, cols)
    nb = rows * cols // 32
    head = {Q4_1: 4, Q5_0: 6, Q5_1: 8}.get(dtype, 2)
    blocks = raw.reshape(nb, -1)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)          # [nb, 1]
    if dtype == Q8_0:
        q = blocks[:, 2:].view(np.int8).astype(np.float64)
        return (d * q).reshape(rows, cols)
    qs = blocks[:, head:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)   # weights 0..15, 16..31
    if dtype == Q4_0:
        return (d * (q - 8)).reshape(rows, cols)
    if dtype in (Q5_0, Q5_1):   # bit i of qh (little-endian uint32) is weight i's fifth bit
        qh = blocks[:, head - 4:head].copy().view("<u4").astype(np.int64)  # [nb, 1]
        q = q + 16 * ((qh >> np.arange(32)) & 1)
        if dtype == Q5_0:
            return (d * (q - 16)).reshape(rows, cols)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
    return (d * q + m).reshape(rows, cols)


# --------------------------------------------------------------------------- matmul

MATMUL_SHAPES = [(13, 64), (70, 96), (129, 160)]  # rows: partial 4-row groups, partial 64-row tiles
KQ_MATMUL_SHAPES = [(13, 256), (70, 512)]          # K-quant rows: whole 256-weight super-blocks


@pytest.mark.parametrize("n", [1, 3, 7, 8, 33])  # GEMV below 8 tokens, GEMM (32-token tiles) from 8
@pytest.mark.parametrize("wtype", list(WEIGHT_TYPES))
def test_matmul(metal, cpu, wtype, n):
    dtype = WEIGHT_TYPES[wtype]
    for rows, cols in KQ_MATMUL_SHAPES if dtype in SUPER_BLOCK_TYPES else MATMUL_SHAPES:
        if dtype in (F32, F16, BF16) and n in (3, 33):
            cols += 5  # float weights take any width: exercise the unaligned, scalar paths
        r = rng("matmul", wtype, n, rows, cols)
        w = weight_bytes(r, dtype, rows, cols)
        x = r.standard_normal((n, cols), dtype=np.float32)
        got = metal.matmul(w, dtype, rows, cols, x)
        want = cpu.matmul(w, dtype, rows, cols, x)
        # Bounds: a few times the largest nmse measured over every shape, n and thread schedule.
        # Metal dequantizes weights (into half tiles for the GEMM, n >= 8: each weight rounded by
        # <= 2^-11 relative); the CPU rounds activations for quantized weights below 16 tokens
        # into two int8 parts (~2^-16 of each block's max; one part, llama.cpp's Q8_0, would be
        # ~256x coarser, nmse ~3e-5, and fails here). Measured Metal vs CPU: quantized GEMV
        # <= 4.7e-9 (q4_1), GEMM <= 5.2e-8 (q4_1); float weights <= 6.5e-14. K-quants: GEMV
        # <= 9.8e-10 (q4_K), GEMM <= 6.2e-8 (q4_K). IQ4_NL / IQ4_XS: GEMV <= 1.0e-9 / 2.2e-9, GEMM <= 5.3e-8 /
        # 6.5e-8 (vs exact: GEMV <= 1.3e-14 / 2.6e-14, GEMM <= 5.2e-8 / 6.5e-8).
        half_tiles = n >= 8 and dtype not in (F32, F16, BF16)
        quantized = dtype not in (F32, F16, BF16)
        assert nmse(got, want) < (2e-7 if half_tiles else 2e-8 if quantized else 3e-13), (rows, cols)
        # ... and Metal is held to the exact product of the dequantized weights (f64 NumPy) on
        # its own. Measured: GEMM half tiles <= 5.1e-8 (q4_1), 6.0e-8 (q4_K); everything else
        # <= 6.8e-14 (q6_K GEMV).
        exact = x.astype(np.float64) @ dequantize(w, dtype, rows, cols).T
        assert nmse(got, exact) < (2e-7 if half_tiles else 3e-13), (rows, cols)


def gemv_case(wtype: str, name: str, n_tokens: int):
    """The GEMV tests' operands: 37 rows (not a multiple of the 32-256 a staged threadgroup owns,
    nor of the 8 rows of a simdgroup at 256) x several 512-column windows, the last partial (float
    weights also 1605 wide: "-unaligned"); weights w and w_up of wtype, x of n_tokens rows, and the
    weights dequantized. -> dtype, rows, cols, w, w_up, x [n_tokens, cols], wd, ud [rows, cols]"""
    dtype = WEIGHT_TYPES[wtype.split("-")[0]]
    rows, cols = (37, 1280) if dtype in SUPER_BLOCK_TYPES else (37, 1605 if "unaligned" in wtype else 1600)
    r = rng(name, wtype)
    w, w_up = weight_bytes(r, dtype, rows, cols), weight_bytes(r, dtype, rows, cols)
    x = r.standard_normal((n_tokens, cols), dtype=np.float32)
    return dtype, rows, cols, w, w_up, x, dequantize(w, dtype, rows, cols), dequantize(w_up, dtype, rows, cols)


# The staged GEMVs at each threadgroup size the host picks (metal_ops.cpp, gemv_tg_rows: 32 rows
# at these sizes, 64 / 128 / 256 for large matrices; 256 takes 8 rows per simdgroup), forced.
@pytest.mark.parametrize("gemv", ["staged", "staged-64", "staged-128", "staged-256", "direct"])
@pytest.mark.parametrize("wtype", list(WEIGHT_TYPES) + ["f32-unaligned", "f16-unaligned"])
def test_matmul_gemv_kernels(metal, monkeypatch, wtype, gemv):
    """Both decode GEMVs: mul_mv_staged_* (the default: x and quantized weights through
    threadgroup memory a 512-column window at a time, whole-line loads) and mul_mv_* (direct
    loads, FORGERT_METAL_GEMV=direct), against the exact product over several windows, the last
    one partial, 37 rows (not a multiple of the 32-256 a staged threadgroup owns, nor of the 8 rows
    of a simdgroup at 256), rows starting at many alignments mod 64; float weights also 1605 wide
    (the scalar paths)."""
    monkeypatch.setenv("FORGERT_METAL_GEMV", gemv.split("-")[0])
    if "-" in gemv:
        monkeypatch.setenv("FORGERT_METAL_GEMV_TG_ROWS", gemv.split("-")[1])
    dtype, rows, cols, w, w_up, x, wd, ud = gemv_case(wtype, "matmul_gemv_kernels", 3)
    for n in (1, 3):
        exact = x[:n].astype(np.float64) @ wd.T
        # measured <= 6.6e-14 (both kernels, every schedule): f32 sums of exact products
        assert nmse(metal.matmul(w, dtype, rows, cols, x[:n]), exact) < 3e-13, n
        g, u = exact, x[:n].astype(np.float64) @ ud.T
        got = metal.matmul_swiglu(w, w_up, dtype, rows, cols, x[:n])
        # measured <= 5.8e-13: the f32 SiLU on top
        assert nmse(got, g / (1 + np.exp(-g)) * u) < 3e-12, n


# The multi-token GEMVs (mul_mv_tokens.metal): a batch's decode rows (decode_rows=n, any number),
# up to 8 tokens per threadgroup sharing each weight window; 9 and 17 rows take two and three token
# groups, the last partial. Against the exact product, and each token's row bit for bit that of the
# one-token kernel on the token alone (the batch-invariance promise, docs/design.md).
@pytest.mark.parametrize("gemv", ["staged", "staged-256"])
@pytest.mark.parametrize("wtype", list(WEIGHT_TYPES) + ["f32-unaligned", "f16-unaligned"])
def test_matmul_gemv_tokens(metal, monkeypatch, wtype, gemv):
    if "-" in gemv:
        monkeypatch.setenv("FORGERT_METAL_GEMV_TG_ROWS", gemv.split("-")[1])
    dtype, rows, cols, w, w_up, x, wd, ud = gemv_case(wtype, "matmul_gemv_tokens", 17)
    alone = np.concatenate([metal.matmul(w, dtype, rows, cols, x[i:i + 1]) for i in range(len(x))])
    alone_glu = np.concatenate([metal.matmul_swiglu(w, w_up, dtype, rows, cols, x[i:i + 1]) for i in range(len(x))])
    for n in (2, 8, 9, 17):
        got = metal.matmul(w, dtype, rows, cols, x[:n], decode_rows=n)
        exact = x[:n].astype(np.float64) @ wd.T
        # measured <= 6.6e-14 (every type and schedule): f32 sums of exact products, as one token
        assert nmse(got, exact) < 3e-13, n
        assert np.array_equal(got, alone[:n]), (n, np.abs(got - alone[:n]).max())
        got = metal.matmul_swiglu(w, w_up, dtype, rows, cols, x[:n], decode_rows=n)
        g, u = exact, x[:n].astype(np.float64) @ ud.T
        assert nmse(got, g / (1 + np.exp(-g)) * u) < 3e-12, n  # measured <= 5.8e-13
        assert np.array_equal(got, alone_glu[:n]), n
    # the fused residual add (3 rows: by row count the GEMV): out + w x, the f32 add of the lone row's
    base = rng("matmul_gemv_tokens_base", wtype).standard_normal((3, rows), dtype=np.float32)
    assert np.array_equal(metal.matmul_add(w, dtype, rows, cols, x[:3], base), base + alone[:3])


def test_matmul_decode_rows_beside_prefix_rows(metal):
    """decode_rows=3 of 12: three rows through the multi-token GEMV, nine through the GEMM; the
    decode rows' bits are their lone GEMV's."""
    r = rng("decode_rows_beside_prefix")
    rows, cols = 70, 96
    w = weight_bytes(r, Q4_0, rows, cols)
    x = r.standard_normal((12, cols), dtype=np.float32)
    got = metal.matmul(w, Q4_0, rows, cols, x, decode_rows=3)
    exact = x.astype(np.float64) @ dequantize(w, Q4_0, rows, cols).T
    assert nmse(got, exact) < 2e-7  # the GEMM's half tiles, as test_matmul
    for i in range(3):
        assert np.array_equal(got[i], metal.matmul(w, Q4_0, rows, cols, x[i:i + 1])[0]), i
    with pytest.raises(ValueError, match="decode_rows 13 exceeds"):
        metal.matmul(w, Q4_0, rows, cols, x, decode_rows=13)


# --------------------------------------------------------------------------- get_rows

@pytest.mark.parametrize("wtype", list(WEIGHT_TYPES))
def test_get_rows(metal, cpu, wtype):
    dtype = WEIGHT_TYPES[wtype]
    rows, cols = 37, 256 if dtype in SUPER_BLOCK_TYPES else 96 if dtype in (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) else 99
    r = rng("get_rows", wtype)
    table = weight_bytes(r, dtype, rows, cols)
    ids = np.array([0, 36, 5, 5, 17], dtype=np.int32)
    np.testing.assert_array_equal(metal.get_rows(table, dtype, rows, cols, ids),
                                  cpu.get_rows(table, dtype, rows, cols, ids))


@pytest.mark.parametrize("wtype", list(WEIGHT_TYPES))
def test_get_rows_matches_numpy(metal, wtype):
    """Rows of 2560 columns: quantized tables go through two windows of 2048 (get_rows.metal),
    the second partial; every row equals NumPy's (gguf's) dequantization."""
    dtype = WEIGHT_TYPES[wtype]
    rows, cols = 9, 2560
    table = weight_bytes(rng("get_rows_numpy", wtype), dtype, rows, cols)
    ids = np.array([8, 0, 3, 3], dtype=np.int32)
    # measured: equal, as NumPy also decodes in f32 (f64 here, then exact in f32)
    np.testing.assert_array_equal(metal.get_rows(table, dtype, rows, cols, ids),
                                  dequantize(table, dtype, rows, cols)[ids].astype(np.float32))


# --------------------------------------------------------------------------- norms, rope, elementwise

@pytest.mark.parametrize("dim", [7, 64, 576, 1100, 9000])  # as test_rms_norm
def test_layer_norm(metal, cpu, dim):
    """Cohere's LayerNorm (the rms_norm kernel with its mean pass), rows offset by 3."""
    r = rng("layer_norm", dim)
    x = r.standard_normal((3, dim), dtype=np.float32) * 4 + 3
    w = r.standard_normal(dim, dtype=np.float32)
    assert nmse(metal.layer_norm(x, w, 1e-5), cpu.layer_norm(x, w, 1e-5)) < 1e-10


@pytest.mark.parametrize("dim", [7, 64, 576, 1100, 9000])  # 1100: > 1024 threads; 9000: past the registers (8 x 1024)
def test_rms_norm(metal, cpu, dim):
    r = rng("rms_norm", dim)
    x = r.standard_normal((3, dim), dtype=np.float32) * 4
    w = r.standard_normal(dim, dtype=np.float32)
    assert nmse(metal.rms_norm(x, w, 1e-5), cpu.rms_norm(x, w, 1e-5)) < 1e-10


@pytest.mark.parametrize("n,heads,head_dim", [(1, 16, 128), (9, 4, 64), (3, 2, 256), (2, 3, 512)])
def test_head_rms_norm(metal, cpu, n, heads, head_dim):
    """Qwen3's QK-norm in place on the device (rms_norm over [n * heads, head_dim] rows)."""
    r = rng("head_rms_norm", n, heads, head_dim)
    x = (r.standard_normal((n, heads * head_dim)) * 3).astype(np.float32)
    w = (1 + 0.3 * r.standard_normal(head_dim)).astype(np.float32)
    h = x.astype(np.float64).reshape(n, heads, head_dim)
    ref = (h / np.sqrt((h ** 2).mean(2, keepdims=True) + 1e-6) * w).reshape(n, -1)
    assert nmse(metal.head_rms_norm(x, w, 1e-6), ref) < 1e-10
    assert nmse(metal.head_rms_norm(x, w, 1e-6), cpu.head_rms_norm(x, w, 1e-6)) < 1e-10


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim", [
    (1, 131000, 9, 3, 64), (5, 4093, 3, 3, 64), (6, 3, 4, 4, 128), (3, 0, 2, 1, 8),
    (3, 900, 2, 1, 512),   # Gemma 4's global heads: 256 lanes per head
])
def test_rope_kv_write(metal, cpu, as_cache, neox, n, pos0, n_heads, n_kv_heads, head_dim):
    r = rng("rope_kv_write", neox, n, pos0, head_dim)
    kv_dim = n_kv_heads * head_dim
    q = r.standard_normal((n, n_heads * head_dim), dtype=np.float32)
    k = r.standard_normal((n, kv_dim), dtype=np.float32) * 4
    v = r.standard_normal((n, kv_dim), dtype=np.float32) * 100
    v[0, :4] = [1e-8, 70000.0, -0.0, 2049.0]   # f16 rounding: to zero, overflow to inf, sign, tie to even
    k_cache = as_cache(r.standard_normal((pos0 + n + 2, kv_dim)))
    v_cache = as_cache(r.standard_normal((pos0 + n + 2, kv_dim)))
    freqs = (10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
    args = (q, k, v, k_cache, v_cache, freqs, pos0, n_heads, n_kv_heads, head_dim, neox)
    got, want = metal.rope_kv_write(*args), cpu.rope_kv_write(*args)
    assert nmse(got[0], want[0]) < 1e-10 and nmse(got[1], want[1]) < 1e-10
    # Cached keys agree to f16 rounding of rotations that agree to f32 precision.
    np.testing.assert_allclose(got[2].astype(np.float32), want[2].astype(np.float32), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got[3], want[3])


@pytest.mark.parametrize("n,pos0,head_dim", [(1, 300, 512), (5, 40, 64)])
def test_rope_queries_only(metal, cpu, as_cache, n, pos0, head_dim):
    """n_kv_heads 0 (a Gemma 4 layer reading another layer's K/V): q rotates exactly as the full op
    rotates it (CPU, checked against NumPy in test_cpu_ops), and nothing else is touched."""
    r = rng("rope_q_only", n, pos0, head_dim)
    n_heads = 4
    q = r.standard_normal((n, n_heads * head_dim), dtype=np.float32)
    k = r.standard_normal((n, head_dim), dtype=np.float32)
    cache = as_cache(r.standard_normal((pos0 + n, head_dim)))
    freqs = np.zeros(head_dim // 2, dtype=np.float32)
    freqs[:head_dim // 8] = 1e6 ** (-np.arange(0, head_dim // 4, 2) / head_dim)   # proportional: a quarter rotates
    want = cpu.rope_kv_write(q, k, k, cache, cache.copy(), freqs, pos0, n_heads, 1, head_dim, True)[0]
    none = np.zeros((n, 0), np.float32)
    no_cache = as_cache(np.zeros((1, 0)))
    cpu_q = cpu.rope_kv_write(q, none, none, no_cache, no_cache, freqs, pos0, n_heads, 0, head_dim, True)[0]
    metal_q = metal.rope_kv_write(q, none, none, no_cache, no_cache, freqs, pos0, n_heads, 0, head_dim, True)[0]
    np.testing.assert_array_equal(cpu_q, want)
    assert nmse(metal_q, want) < 1e-10


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("rope_dim,factor", [(24, 1.2), (0, 1.0)], ids=["partial_factor", "nope"])
def test_rope_kv_write_partial_and_scaled(metal, cpu, as_cache, neox, rope_dim, factor):
    """Partial rotary with an attention factor, and a NoPE layer, against the CPU backend
    (which test_cpu_ops checks against NumPy)."""
    n, pos0, n_heads, n_kv_heads, head_dim = 4, 77, 3, 1, 32
    r = rng("rope_partial", neox, rope_dim)
    q = r.standard_normal((n, n_heads * head_dim), dtype=np.float32)
    k = r.standard_normal((n, n_kv_heads * head_dim), dtype=np.float32)
    v = r.standard_normal((n, n_kv_heads * head_dim), dtype=np.float32)
    cache = as_cache(r.standard_normal((pos0 + n, n_kv_heads * head_dim)))
    freqs = (10000.0 ** (-np.arange(0, max(rope_dim, 2), 2) / max(rope_dim, 2))).astype(np.float32)
    args = (q, k, v, cache, cache.copy(), freqs, pos0, n_heads, n_kv_heads, head_dim, neox)
    got = metal.rope_kv_write(*args, rope_dim=rope_dim, attn_factor=factor)
    want = cpu.rope_kv_write(*args, rope_dim=rope_dim, attn_factor=factor)
    assert nmse(got[0], want[0]) < 1e-10 and nmse(got[1], want[1]) < 1e-10
    np.testing.assert_allclose(got[2].astype(np.float32), want[2].astype(np.float32), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got[3], want[3])


@pytest.mark.parametrize("dim", [5, 300])
def test_elementwise(metal, cpu, dim):
    r = rng("elementwise", dim)
    a = r.standard_normal((3, dim), dtype=np.float32) * 3
    b = r.standard_normal((3, dim), dtype=np.float32)
    bias = r.standard_normal(dim, dtype=np.float32)
    assert nmse(metal.silu_mul(a, b), cpu.silu_mul(a, b)) < 1e-12
    np.testing.assert_array_equal(metal.add(a, b), cpu.add(a, b))
    np.testing.assert_array_equal(metal.add_bias(a, bias), cpu.add_bias(a, bias))


@pytest.mark.parametrize("cols", [1, 31, 1000, 5000])
def test_argmax(metal, cpu, cols):
    r = rng("argmax", cols)
    x = r.standard_normal((4, cols), dtype=np.float32)
    if cols > 40:
        x[1, [17, 900]] = 50.0          # tie: the first index wins
        x[2, :] = -np.inf
        x[2, cols - 1] = -1e30          # the only finite value, at the very end
        x[3, :] = 3.0                   # all equal: index 0
    np.testing.assert_array_equal(metal.argmax(x), cpu.argmax(x))


@pytest.mark.parametrize("cols", [31, 1000, 5000])
def test_argmax_sentinels(metal, cpu, cols):
    """One NaN, then one +inf, in each place argmax_f32's reduction treats differently (a simdgroup's
    first and last lanes, the next simdgroup, the 1024-thread threadgroup's last thread, a thread's
    second value, the last column), a +inf and a NaN in different simdgroups (NaN wins), all NaN, all
    -inf and clean rows: NumPy's rule with core/backend.h's sentinels (tests/argmax_reference.py)."""
    from argmax_reference import argmax_reference
    places = sorted({0, 1, 31, 32, 63, 64, 511, 992, 1023, 1024, 1055, cols // 2, cols - 1} & set(range(cols)))
    x = rng("argmax_sentinels", cols).standard_normal((2 * len(places) + 5, cols), dtype=np.float32)
    for i, p in enumerate(places):
        x[i, p] = np.nan
        x[len(places) + i, p] = np.inf
    x[-5, 0], x[-5, cols - 1] = np.inf, np.nan
    x[-4, :] = np.nan
    x[-3, :] = -np.inf
    x[-2, cols // 3] = 40.0                                       # clean rows keep their argmax
    want = argmax_reference(x)
    assert (want[:len(places)] == -1).all() and (want[len(places):-5] == -2).all()
    assert want[-5:].tolist() == [-1, -1, -3, cols // 3, int(np.argmax(x[-1]))]
    np.testing.assert_array_equal(metal.argmax(x), want)
    np.testing.assert_array_equal(cpu.argmax(x), want)


# --------------------------------------------------------------------------- attention

ATTENTION_CASES = [
    # (n_queries, pos0, n_heads, n_kv_heads, head_dim)
    (1, 0, 4, 2, 64),      # first token
    (1, 300, 4, 2, 64),    # decode, long context: split over threadgroups + reduce
    (1, 300, 6, 1, 80),    # multi-query, head_dim not a multiple of 32
    (5, 300, 4, 2, 8),     # small prefill chunk after a long context (splits, per-query lengths)
    (20, 0, 2, 2, 128),    # prefill from the start, causal
    (9, 3, 8, 2, 32),      # GQA 4:1, prefill kernel (query blocks of 8, partial last block)
    (12, 150, 16, 4, 64),  # prefill kernel over several K/V tiles
    (10, 20, 2, 1, 256),   # prefill kernel, head_dim 256: 16-key tiles
    (10, 20, 2, 1, 512),   # prefill kernel's 512 class (Gemma 4's global heads): 8-key tiles
    (1, 300, 4, 1, 512),   # decode at head_dim 512: one head per block, splits + reduce
    (8, 200, 2, 1, 16),    # few heads, long context: split kernel with several queries
]


@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim", ATTENTION_CASES)
def test_attention(metal, cpu, as_cache, n, pos0, n_heads, n_kv_heads, head_dim):
    r = rng("attention", n, pos0, n_heads, n_kv_heads, head_dim)
    n_ctx = pos0 + n + 3
    kv_dim = n_kv_heads * head_dim
    q = r.standard_normal((n, n_heads * head_dim), dtype=np.float32)
    k = r.standard_normal((n_ctx, kv_dim)) * 2
    v = r.standard_normal((n_ctx, kv_dim))
    k[pos0 + n:] = 60000.0  # rows past the last query's position must not be read
    v[pos0 + n:] = np.nan
    k, v = as_cache(k), as_cache(v)
    scale = 1.0 / np.sqrt(head_dim)
    got = metal.attention(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale)
    want = cpu.attention(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale)
    assert nmse(got, want) < 1e-7


@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,window,softcap", [
    (1, 300, 16, 2, 256, 0, 0.0),    # GQA 8:1 at head_dim 256: four blocks of 2 heads per KV head, splits
    (2, 140, 8, 1, 512, 100, 0.0),   # GQA 8:1 at head_dim 512 (Gemma 4): blocks of 1 head, windowed
    (1, 5, 8, 1, 64, 0, 0.0),        # GQA 8:1, one block of 8 heads, one split
    (1, 200, 10, 2, 48, 0, 0.0),     # a block of 5 heads (prime group), head_dim 48
    (1, 90, 10, 2, 96, 0, 0.0),      # the same group at head_dim 96: 5 blocks of 1 head (at most 4 fit)
    (2, 130, 12, 4, 128, 100, 2.0),  # GQA 3:1 at head_dim 128, two queries, windowed and soft-capped
])
def test_attention_gqa_blocks(metal, as_cache, n, pos0, n_heads, n_kv_heads, head_dim, window, softcap):
    """Decode attention serving a block of query heads from each K/V row it loads, against the
    float64 NumPy reference."""
    from test_cpu_ops import attention_reference
    r = rng("attention_gqa", n, pos0, n_heads, n_kv_heads, head_dim)
    kv_dim = n_kv_heads * head_dim
    q = r.standard_normal((n, n_heads * head_dim), dtype=np.float32)
    k = (r.standard_normal((pos0 + n + 3, kv_dim)) * 2).astype(np.float16)
    v = r.standard_normal((pos0 + n + 3, kv_dim)).astype(np.float16)
    scale = 1.0 / np.sqrt(head_dim)
    got = metal.attention(q, as_cache(k), as_cache(v), pos0, n_heads, n_kv_heads, head_dim, scale, window,
                          softcap=softcap)
    want = attention_reference(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap)
    assert nmse(got, want) < 1e-7    # as test_attention


@pytest.mark.parametrize("n,pos0,window", [
    (1, 400, 300),   # decode: flash-decoding splits of a window that has left key 0
    (2, 50, 20),     # two queries, windows starting at different keys
    (16, 40, 24),    # the tiled prefill kernel, windowed
    (12, 0, 5),      # prefill from empty, the window moves inside the chunk
])
def test_attention_sliding_window(metal, cpu, as_cache, n, pos0, window):
    n_heads, n_kv_heads, head_dim = 4, 2, 64
    r = rng("attention_window", n, pos0, window)
    n_ctx = pos0 + n + 3
    kv_dim = n_kv_heads * head_dim
    q = r.standard_normal((n, n_heads * head_dim), dtype=np.float32)
    k = r.standard_normal((n_ctx, kv_dim)) * 2
    v = r.standard_normal((n_ctx, kv_dim))
    first = max(0, pos0 + 1 - window)
    k[:first] = 60000.0  # keys before the first query's window must not be read
    v[:first] = np.nan
    k[pos0 + n:] = 60000.0
    v[pos0 + n:] = np.nan
    k, v = as_cache(k), as_cache(v)
    scale = 1.0 / np.sqrt(head_dim)
    got = metal.attention(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale, window)
    want = cpu.attention(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale, window)
    assert nmse(got, want) < 1e-7


@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,window", [
    (1, 300, 4, 2, 64, 0),     # decode: flash-decoding splits + reduce, capped scores
    (1, 2, 4, 2, 256, 0),      # decode, Gemma's head_dim 256: the second key of a step past the end
    (10, 20, 2, 1, 256, 0),    # the tiled prefill kernel at head_dim 256
    (16, 40, 4, 2, 64, 24),    # tiled prefill, windowed (Gemma 2's local layers)
])
def test_attention_softcap(metal, cpu, as_cache, n, pos0, n_heads, n_kv_heads, head_dim, window):
    r = rng("attention_softcap", n, pos0, head_dim, window)
    n_ctx = pos0 + n + 3
    kv_dim = n_kv_heads * head_dim
    q = r.standard_normal((n, n_heads * head_dim), dtype=np.float32) * 2
    k = r.standard_normal((n_ctx, kv_dim)) * 2
    v = r.standard_normal((n_ctx, kv_dim))
    k[pos0 + n:] = 60000.0
    v[pos0 + n:] = np.nan
    k, v = as_cache(k), as_cache(v)
    scale = 1.0 / np.sqrt(head_dim)
    got = metal.attention(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap=2.0)
    want = cpu.attention(q, k, v, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap=2.0)
    assert nmse(got, want) < 1e-7    # as test_attention


@pytest.mark.parametrize("wtype", ["f32", "f16", "q8_0", "q4_K"])
@pytest.mark.parametrize("n", [1, 3, 9])
def test_matmul_geglu(metal, cpu, wtype, n):
    """GeGLU's gate and up projections: the fused decode kernel (n < 8) and the GEMM path."""
    dtype = WEIGHT_TYPES[wtype]
    r = rng("matmul_geglu", wtype, n)
    rows, cols = 40, 256
    g, u = weight_bytes(r, dtype, rows, cols), weight_bytes(r, dtype, rows, cols)
    x = r.standard_normal((n, cols), dtype=np.float32) * 0.3
    got = metal.matmul_geglu(g, u, dtype, rows, cols, x)
    want = cpu.matmul_geglu(g, u, dtype, rows, cols, x)
    gx = x.astype(np.float64) @ dequantize(g, dtype, rows, cols).T
    ux = x.astype(np.float64) @ dequantize(u, dtype, rows, cols).T
    exact = 0.5 * gx * (1 + np.tanh(np.sqrt(2 / np.pi) * (gx + 0.044715 * gx ** 3))) * ux
    # Measured over the three schedules, vs CPU / vs exact: GEMM half tiles 2.3e-7 / 2.2e-7;
    # quantized GEMV 1.7e-9 (the CPU's two-part int8 activations) / 6.5e-14; float 1.8e-13 / 1.5e-13.
    half_tiles = n >= 8 and dtype not in (F32, F16, BF16)
    quantized = dtype not in (F32, F16, BF16)
    assert nmse(got, want) < (8e-7 if half_tiles else 8e-9 if quantized else 1.2e-12)
    assert nmse(got, exact) < (8e-7 if half_tiles else 1.2e-12)


@pytest.mark.parametrize("dim", [5, 300, 49153])
def test_gemma_elementwise(metal, cpu, dim):
    """GeGLU's gelu_mul, the embedding scale and the final-logit soft-cap."""
    r = rng("gemma_elementwise", dim)
    a = r.standard_normal((3, dim), dtype=np.float32) * 4
    b = r.standard_normal((3, dim), dtype=np.float32)
    assert nmse(metal.gelu_mul(a, b), cpu.gelu_mul(a, b)) < 1e-12
    assert nmse(metal.gelu(a), cpu.gelu(a)) < 1e-12   # StarCoder2's plain GELU
    np.testing.assert_array_equal(metal.relu_sq(a), cpu.relu_sq(a))   # Arcee's ReLU squared
    np.testing.assert_array_equal(metal.scale(a, 8.0), cpu.scale(a, 8.0))
    x = a * 20
    x[0, 0] = 1e30
    np.testing.assert_allclose(metal.softcap(x, 30.0), cpu.softcap(x, 30.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dim", [7, 1152, 2304])   # 2304 > 1024 threads: each thread loops
def test_add_rms_norm(metal, cpu, dim):
    """x += rms_norm(y) * w in one pass (Gemma's post-norms with their residual adds)."""
    r = rng("add_rms_norm", dim)
    x = r.standard_normal((3, dim), dtype=np.float32) * 10
    y = r.standard_normal((3, dim), dtype=np.float32) * 4
    w = r.standard_normal(dim, dtype=np.float32)
    assert nmse(metal.add_rms_norm(x, y, w, 1e-6), cpu.add_rms_norm(x, y, w, 1e-6)) < 1e-12   # as test_rms_norm


def test_head_rms_norm_head_dim_256(metal, cpu):
    r = rng("head_rms_norm")
    x = r.standard_normal((5, 8 * 256), dtype=np.float32) * 3
    w = r.standard_normal(256, dtype=np.float32)
    assert nmse(metal.head_rms_norm(x, w, 1e-6), cpu.head_rms_norm(x, w, 1e-6)) < 1e-10


# --------------------------------------------------------------------------- errors

def test_attention_rejects_head_dim_above_limit(metal, as_cache):
    q = np.zeros((1, 1024), dtype=np.float32)
    kv = as_cache(np.zeros((4, 1024)))
    with pytest.raises(ValueError, match="head_dim"):
        metal.attention(q, kv, kv, 0, 1, 1, 1024, 1.0)


@pytest.mark.parametrize("value", ["48", "512", "many"])
def test_gemv_threadgroup_rows_override_rejects_bad_values(metal, monkeypatch, value):
    """FORGERT_METAL_GEMV_TG_ROWS takes the staged GEMVs' threadgroup sizes only, and says so."""
    monkeypatch.setenv("FORGERT_METAL_GEMV_TG_ROWS", value)
    with pytest.raises(ValueError, match="FORGERT_METAL_GEMV_TG_ROWS must be 32, 64, 128 or 256"):
        metal.matmul(np.zeros(64 * 64, dtype=np.float32).view(np.uint8), F32, 64, 64, np.ones((1, 64), np.float32))


def test_matmul_rejects_quantized_width_not_multiple_of_32(metal):
    with pytest.raises(ValueError):
        metal.matmul(np.zeros(18 * 3, dtype=np.uint8), Q4_0, 3, 48, np.zeros((1, 48), dtype=np.float32))
