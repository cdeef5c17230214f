"""Every backend op and weight dtype against NumPy references written here.

References dequantize from the raw block bytes (layouts in src/cpp/core/quant_blocks.h) and
compute in float64. Quantized block bytes come from the gguf package's quantizer, so neither
side of a comparison is forgert's own code.

Error measure: normalized MSE, nmse = sum((out - ref)^2) / sum(ref^2), as llama.cpp's
test-backend-ops uses; each bound says which rounding it allows for.

The same tests run on "cpu" and, when built, the emulated "metal" device (marked `metal`,
smaller shapes because the emulator runs every GPU thread as a fiber).
"""
from __future__ import annotations

import zlib

import gguf
import numpy as np
import pytest

from argmax_reference import INF, NAN, NONE, argmax_reference
from conftest import backend_params, cpu_uses_int8_activations, require_backend

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30
IQ4_NL, IQ4_XS = 20, 23
DTYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0", Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K",
               IQ4_NL: "IQ4_NL", IQ4_XS: "IQ4_XS", BF16: "BF16"}
K_QUANTS = (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
QUANTIZED = (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS) + K_QUANTS
BLOCK_BYTES = {Q8_0: 34, Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210,
               IQ4_NL: 18, IQ4_XS: 136}
# IQ4_NL / IQ4_XS quants index this table (ggml-common.h's kvalues_iq4nl).
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64)


def nmse(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(out)), "non-finite values in output"
    return float(np.sum((out - ref) ** 2) / max(np.sum(ref ** 2), 1e-300))


# ----------------------------------------------------------------------------- encode / decode

def encode_weights(w: np.ndarray, dtype_id: int) -> np.ndarray:
    """Raw bytes (flat uint8, rows * row_bytes) of an f32 matrix in a weight dtype. Quantized types
    use gguf.quants (llama.cpp's reference quantizer ported to NumPy); K-quants
    tests/kquant_writer.py (references decode the bytes, so any valid blocks do)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if dtype_id == F32:
        b = w
    elif dtype_id == F16:
        b = w.astype(np.float16)
    elif dtype_id in K_QUANTS:   # gguf-py has no K-quant quantizer: the test-side one
        import kquant_writer
        b = {Q2_K: kquant_writer.quantize_q2_k, Q3_K: kquant_writer.quantize_q3_k, Q4_K: kquant_writer.quantize_q4_k, Q5_K: kquant_writer.quantize_q5_k,
             Q6_K: kquant_writer.quantize_q6_k}[dtype_id](w)
    elif dtype_id in (IQ4_NL, IQ4_XS):   # gguf-py cannot quantize them either: the test-side one
        import iq4_writer
        b = (iq4_writer.quantize_iq4_nl if dtype_id == IQ4_NL else iq4_writer.quantize_iq4_xs)(w)
    elif dtype_id == BF16:
        # round to nearest even on the upper 16 bits (what torch / llama.cpp do); NaN-free inputs
        u = w.view(np.uint32).astype(np.uint64)
        b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    else:
        b = gguf.quants.quantize(w, gguf.GGMLQuantizationType(dtype_id))
    return np.ascontiguousarray(b).view(np.uint8).reshape(-1)


def random_kquant_weights(rng, dtype_id: int, rows: int, cols: int) -> np.ndarray:
    """Raw bytes of a [rows, cols] K-quant matrix of random super-blocks (gguf-py has no K-quant
    quantizer, and any bit pattern is a valid block): random quants and 6/8-bit scales, with
    the f16 super-block scales set so that weights are of order 1."""
    nbytes = BLOCK_BYTES[dtype_id]
    blocks = rng.integers(0, 256, size=(rows * cols // 256, nbytes), dtype=np.uint8)
    n = len(blocks)
    if dtype_id in (Q4_K, Q5_K):   # w = d * sc * q - dmin * m, sc, m < 64, q < 16 (Q5_K: 32)
        qmax = 15 if dtype_id == Q4_K else 31
        scales = np.stack([rng.uniform(0.5, 1.5, n) / (32 * qmax), rng.uniform(0.5, 1.5, n) / (32 * 2)], axis=1)
        blocks[:, 0:4] = scales.astype(np.float16).view(np.uint8)
    elif dtype_id == Q2_K:   # w = d * sc * q - dmin * m, sc, m < 16, q < 4
        scales = np.stack([rng.uniform(0.5, 1.5, n) / (16 * 3), rng.uniform(0.5, 1.5, n) / (16 * 2)], axis=1)
        blocks[:, 80:84] = scales.astype(np.float16).view(np.uint8)
    elif dtype_id == Q3_K:   # w = d * sc * q, |sc| <= 32, |q| <= 4
        blocks[:, 108:110] = (rng.uniform(0.5, 1.5, (n, 1)) / (16 * 4)).astype(np.float16).view(np.uint8)
    elif dtype_id == IQ4_XS:   # w = d * (ls - 32) * value, |ls - 32| <= 32, |value| <= 127
        blocks[:, 0:2] = (rng.uniform(0.5, 1.5, (n, 1)) / (16 * 64)).astype(np.float16).view(np.uint8)
    else:                  # w = d * sc * (q - 32), |sc| <= 128, |q - 32| <= 32
        blocks[:, 208:210] = (rng.uniform(0.5, 1.5, (n, 1)) / (64 * 32)).astype(np.float16).view(np.uint8)
    return blocks.reshape(-1)


# Types of 256-weight super-blocks: the K-quants and IQ4_XS.
SUPER_BLOCK_TYPES = K_QUANTS + (IQ4_XS,)


def decode_kquant(raw: np.ndarray, dtype_id: int) -> np.ndarray:
    """float64 [n_super_blocks, 256] straight from the K-quant and IQ4_XS layouts (quant_blocks.h)."""
    b = raw.reshape(-1, BLOCK_BYTES[dtype_id])
    w = np.zeros((len(b), 256))
    if dtype_id in (Q4_K, Q5_K):
        qs0 = 16 if dtype_id == Q4_K else 48                           # Q5_K: qh [32] before qs
        d, dmin = _f16_field(b, 0)[:, 0], _f16_field(b, 2)[:, 0]
        s = b[:, 4:16].astype(np.int64)
        for j in range(8):
            if j < 4:
                sc, m = s[:, j] & 63, s[:, j + 4] & 63
            else:
                sc = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
                m = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
            qs = b[:, qs0 + 32 * (j // 2): qs0 + 32 * (j // 2) + 32].astype(np.int64)
            q = qs & 0xF if j % 2 == 0 else qs >> 4       # even sub-blocks: low nibbles
            if dtype_id == Q5_K:                          # bit j of qh[l]: bit 4 of quant l
                q = q | (((b[:, 16:48].astype(np.int64) >> j) & 1) << 4)
            w[:, 32 * j: 32 * j + 32] = (d * sc)[:, None] * q - (dmin * m)[:, None]
        return w
    if dtype_id == Q2_K:
        d, dmin = _f16_field(b, 80)[:, 0], _f16_field(b, 82)[:, 0]
        for i in range(256):
            h, r = divmod(i, 128)
            j, l = divmod(r, 32)
            s = b[:, i // 16].astype(np.int64)
            q = (b[:, 16 + 32 * h + l].astype(np.int64) >> (2 * j)) & 3
            w[:, i] = d * (s & 15) * q - dmin * (s >> 4)
        return w
    if dtype_id == IQ4_XS:
        d = _f16_field(b, 0)[:, 0]
        scales_h = b[:, 2].astype(np.int64) | (b[:, 3].astype(np.int64) << 8)   # little-endian uint16
        for j in range(8):
            ls = ((b[:, 4 + j // 2].astype(np.int64) >> (4 * (j % 2))) & 0xF) | (((scales_h >> (2 * j)) & 3) << 4)
            qs = b[:, 8 + 16 * j: 8 + 16 * j + 16].astype(np.int64)
            q = np.concatenate([qs & 0xF, qs >> 4], axis=1)                  # weight l: low nibble, l + 16 high
            w[:, 32 * j: 32 * j + 32] = (d * (ls - 32))[:, None] * IQ4_VALUES[q]
        return w
    if dtype_id == Q3_K:
        d = _f16_field(b, 108)[:, 0]
        s = b[:, 96:108].astype(np.int64)
        for i in range(256):
            h, r = divmod(i, 128)
            j, l = divmod(r, 32)
            sub = i // 16
            low = s[:, sub] & 0xF if sub < 8 else s[:, sub - 8] >> 4
            sc = (low | (((s[:, 8 + sub % 4] >> (2 * (sub // 4))) & 3) << 4)) - 32
            q = (b[:, 32 + 32 * h + l].astype(np.int64) >> (2 * j)) & 3
            hb = (b[:, l].astype(np.int64) >> (4 * h + j)) & 1
            w[:, i] = d * sc * (q - 4 * (1 - hb))
        return w
    d = _f16_field(b, 208)[:, 0]
    scales = b[:, 192:208].view(np.int8).astype(np.float64)
    for i in range(256):
        h, r = divmod(i, 128)             # half, index within it
        quarter, l = divmod(r, 32)
        ql = b[:, 64 * h + l + 32 * (quarter % 2)].astype(np.int64)
        low = ql & 0xF if quarter < 2 else ql >> 4
        high = (b[:, 128 + 32 * h + l].astype(np.int64) >> (2 * quarter)) & 3
        w[:, i] = d * scales[:, i // 16] * ((low | (high << 4)) - 32)
    return w


def _f16_field(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float64)  # [nb, 1]


def decode_weights(raw: np.ndarray, dtype_id: int, rows: int, cols: int) -> np.ndarray:
    """float64 [rows, cols] from raw bytes, straight from the block layouts."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if dtype_id == F32:
        return raw.view(np.float32).astype(np.float64).reshape(rows, cols)
    if dtype_id == F16:
        return raw.view(np.float16).astype(np.float64).reshape(rows, cols)
    if dtype_id == BF16:
        bits = raw.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64).reshape(rows, cols)
    if dtype_id in SUPER_BLOCK_TYPES:
        return decode_kquant(raw, dtype_id).reshape(rows, cols)
    blocks = raw.reshape(-1, BLOCK_BYTES[dtype_id])                    # [rows * cols / 32, bytes]
    d = _f16_field(blocks, 0)
    if dtype_id == Q8_0:
        q = blocks[:, 2:].view(np.int8).astype(np.float64)             # [nb, 32]
        w = d * q
    elif dtype_id in (Q5_0, Q5_1):
        head = 2 if dtype_id == Q5_0 else 4                            # Q5_1: m after d
        qs = blocks[:, head + 4:].astype(np.int64)                     # [nb, 16]
        qh = blocks[:, head:head + 4].astype(np.int64) << np.array([0, 8, 16, 24])
        qh = qh.sum(axis=1)                                             # [nb], little-endian uint32
        # element j: low nibble of qs[j] (j < 16) or high nibble of qs[j - 16], bit 4 = bit j of qh
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=1)             # [nb, 32]
        high = (qh[:, None] >> np.arange(32)) & 1
        q = (low | (high << 4)).astype(np.float64)
        w = d * (q - 16.0) if dtype_id == Q5_0 else d * q + _f16_field(blocks, 2)
    elif dtype_id == IQ4_NL:
        qs = blocks[:, 2:].astype(np.int64)                            # [nb, 16]
        w = d * IQ4_VALUES[np.concatenate([qs & 0x0F, qs >> 4], axis=1)]  # element j: qs[j] low, j + 16 high
    else:
        qs = blocks[:, 4:] if dtype_id == Q4_1 else blocks[:, 2:]       # [nb, 16]
        # element j in the low nibble of qs[j], element j + 16 in the high nibble
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)  # [nb, 32]
        w = d * (q - 8.0) if dtype_id == Q4_0 else d * q + _f16_field(blocks, 2)
    return w.reshape(rows, cols)


@pytest.mark.parametrize("dtype_id", [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1], ids=DTYPE_NAMES.get)
def test_reference_decoder_matches_gguf_package(dtype_id):
    """The NumPy block decoder used as the reference agrees with gguf.quants.dequantize: the
    layouts in quant_blocks.h are the GGUF ones."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 96)).astype(np.float32)
    raw = encode_weights(w, dtype_id)
    mine = decode_weights(raw, dtype_id, 5, 96)
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(dtype_id)).reshape(5, 96)
    np.testing.assert_array_equal(mine.astype(np.float32), theirs.astype(np.float32))
    # and the encodings are faithful: ~1e-7 (f32), 2^-9 (f16), 2^-8 (bf16), coarse for 4-bit
    assert nmse(mine, w) < {F32: 1e-14, F16: 1e-6, BF16: 1e-4, Q8_0: 1e-4, Q4_0: 2e-2, Q4_1: 2e-2,
                            Q5_0: 5e-3, Q5_1: 5e-3}[dtype_id]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ops_for(core, metal_reason):
    cache = {}

    def get(backend: str):
        require_backend(backend, metal_reason)
        if backend not in cache:
            cache[backend] = core.Ops(backend)
        return cache[backend]

    return get


BACKENDS = backend_params()


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the test's parameters (crc32: stable across runs, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, *shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- matmul

# Bounds, per (backend, kernel path), each a few times the largest nmse measured over every
# dtype and shape below (every CPU kernel set this x86 host runs: avx512-vnni, avx2, generic;
# every emulator thread schedule for Metal):
# - f32-exact products (F32/F16/BF16 weights everywhere, quantized weights on the CPU's f32
#   prefill GEMM over dequantized panels): only the summation order differs from float64.
#   Measured <= 5.4e-13 (generic F32 576x1536) -> 3e-12.
# - CPU decode path (fewer than 16 tokens, or every count on the generic set, which has no
#   panel GEMM): activations rounded per 32-block in two int8 parts (design.md "Numerics"),
#   an error ~2^-16 of each block's max. Measured <= 5.5e-9 (Q4_0 1x32) -> 2e-8. One int8 part
#   (llama.cpp's Q8_0 activations) is ~256x coarser, nmse ~3e-5: it fails this on purpose.
# - Metal quantized GEMV (fewer than 8 tokens): dequantized weights times f32 activations.
#   Measured <= 3.9e-12 (Q4_1 1x32) -> 2e-11.
# - Metal quantized GEMM (8+ tokens): weights dequantized into half tiles, each rounded by
#   <= 2^-11 relative. Measured <= 4.3e-8 (Q8_0 45x160 x 33) -> 2e-7.
# Against the *dequantized* weights: weight quantization error is not in it.
# - CPU decode path with K-quant weights: the same rounding, but Q4_K's error scales with
#   d * sc * q before its min is subtracted, and one output of 0.74 (1x256; typical |ref| ~ 5)
#   makes nmse noisy. Measured 7.5e-8 (Q4_K 1x256 x 1, absolute error 2e-4), else <= 1.7e-9
#   (generic and avx512-vnni) -> 3e-7. Q6_K's int8 prefill GEMM (16+ tokens: each 32-weight
#   block dotted as its two 16-weight sub-blocks) measured <= 4.5e-10 (avx512-amx 257x1024 x 69);
#   Q2_K's (the 256-bit sets' int16 panels, each half's min by its own sum) <= 4.6e-10 (avx2).
# - CPU decode path with Q5_0 weights: its unsigned quants (0..31, the -16 offset through the
#   block sums) carry the activation rounding at twice Q4_0's scale. Measured <= 1.1e-8
#   (7x64 x 3; generic, avx2, avx512-vnni alike) -> 5e-8. Metal: GEMV <= 6.3e-12, GEMM <= 3.5e-8.
# - Q5_1 likewise (quants 0..31, the min through the sums), and as for Q4_K one small output
#   makes nmse noisy: measured 2.1e-7 (1x32 x 1: an output of -0.60 against sum |x| |w| = 14.7,
#   absolute error 2.7e-4), else <= 6.1e-9 -> 1e-6. Metal: GEMV <= 6.6e-14, GEMM <= 3.6e-8.
F32_EXACT_NMSE = 3e-12
CPU_INT8_ACT_NMSE = 2e-8
CPU_INT8_ACT_Q5_NMSE = 5e-8
CPU_INT8_ACT_Q5_1_NMSE = 1e-6
CPU_INT8_ACT_KQUANT_NMSE = 3e-7
METAL_GEMV_NMSE = 2e-11
METAL_HALF_TILE_NMSE = 2e-7


def matmul_bound(backend: str, dtype_id: int, n: int) -> float:
    """The nmse bound of an n-token product with dtype_id weights: the kernel path's rounding."""
    if dtype_id not in QUANTIZED:
        return F32_EXACT_NMSE
    if backend == "metal":
        return METAL_GEMV_NMSE if n < 8 else METAL_HALF_TILE_NMSE
    if not cpu_uses_int8_activations(n, DTYPE_NAMES[dtype_id]):
        return F32_EXACT_NMSE
    if dtype_id in K_QUANTS:
        return CPU_INT8_ACT_KQUANT_NMSE
    return {Q5_0: CPU_INT8_ACT_Q5_NMSE, Q5_1: CPU_INT8_ACT_Q5_1_NMSE}.get(dtype_id, CPU_INT8_ACT_NMSE)


# (rows, cols, n_tokens): rows/cols/n not multiples of any tile; 576 is SmolLM2's width,
# 1536 its FFN, 69 = 64 + 5 tokens, 1 token is the decode path; 15 / 16 tokens straddle the
# CPU's switch from the int8 decode kernels to the prefill GEMMs (int8 for the weight types
# cpu_info()["prefill_int8_types"] lists, f32 panels for the others).
MATMUL_SHAPES = [
    (1, 32, 1),
    (7, 64, 3),
    (33, 576, 7),
    (40, 96, 15),
    (40, 96, 16),
    (100, 160, 33),
    (257, 576, 69),
    (67, 1536, 5),
    (576, 1536, 1),
]
MATMUL_SHAPES_METAL = [(1, 32, 1), (7, 64, 3), (33, 576, 7), (45, 160, 33), (20, 96, 69)]


def _matmul_case(ops, dtype_id, rows, cols, n, backend):
    rng = rng_for("matmul", dtype_id, rows, cols, n, backend)
    w = randn(rng, rows, cols)
    raw = encode_weights(w, dtype_id)
    x = randn(rng, n, cols)
    ref = np.asarray(x, np.float64) @ decode_weights(raw, dtype_id, rows, cols).T   # [n, rows]
    out = ops.matmul(raw, dtype_id, rows, cols, x)
    assert out.dtype == np.float32 and out.shape == (n, rows)
    err = nmse(out, ref)
    bound = matmul_bound(backend, dtype_id, n)
    assert err < bound, f"{DTYPE_NAMES[dtype_id]} [{rows}x{cols}] x {n}: nmse {err:.3g}"


MATMUL_CASES = [pytest.param("cpu", *s, id=f"cpu-{s[0]}x{s[1]}-n{s[2]}") for s in MATMUL_SHAPES] + [
    pytest.param("metal", *s, id=f"metal-{s[0]}x{s[1]}-n{s[2]}", marks=pytest.mark.metal)
    for s in MATMUL_SHAPES_METAL]


@pytest.mark.parametrize("dtype_id", [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", MATMUL_CASES)
def test_matmul(ops_for, backend, dtype_id, rows, cols, n):
    _matmul_case(ops_for(backend), dtype_id, rows, cols, n, backend)


# The fused projections of a layer: decode (fused kernels on Metal) and prefill shapes.
FUSED_CASES = [pytest.param("cpu", 33, 576, 1, id="cpu-decode"), pytest.param("cpu", 100, 160, 33, id="cpu-prefill")] + [
    pytest.param("metal", *s, id=f"metal-{s[0]}x{s[1]}-n{s[2]}", marks=pytest.mark.metal)
    for s in [(45, 160, 1), (20, 96, 3), (45, 160, 9)]]


@pytest.mark.parametrize("dtype_id", [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", FUSED_CASES)
def test_matmul_add(ops_for, backend, dtype_id, rows, cols, n):
    # out += w x: the residual projection with the add fused in.
    rng = rng_for("matmul_add", dtype_id, rows, cols, n, backend)
    raw = encode_weights(randn(rng, rows, cols), dtype_id)
    x, residual = randn(rng, n, cols), randn(rng, n, rows, scale=5.0)
    product = np.asarray(x, np.float64) @ decode_weights(raw, dtype_id, rows, cols).T
    out = ops_for(backend).matmul_add(raw, dtype_id, rows, cols, x, residual)
    assert out.shape == (n, rows)
    bound = matmul_bound(backend, dtype_id, n)
    assert nmse(out - residual, product) < bound   # the product, measured on its own scale
    np.testing.assert_allclose(out, residual + product, rtol=1e-5, atol=1e-2 * float(np.abs(product).max()))


@pytest.mark.parametrize("dtype_id", [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", FUSED_CASES)
def test_matmul_swiglu(ops_for, backend, dtype_id, rows, cols, n):
    # silu(w_gate x) * (w_up x): SwiGLU's gate and up projections with SiLU * mul fused in.
    rng = rng_for("matmul_swiglu", dtype_id, rows, cols, n, backend)
    raw_g, raw_u = encode_weights(randn(rng, rows, cols), dtype_id), encode_weights(randn(rng, rows, cols), dtype_id)
    x = randn(rng, n, cols, scale=0.3)
    g = np.asarray(x, np.float64) @ decode_weights(raw_g, dtype_id, rows, cols).T
    u = np.asarray(x, np.float64) @ decode_weights(raw_u, dtype_id, rows, cols).T
    ref = g / (1.0 + np.exp(-g)) * u
    out = ops_for(backend).matmul_swiglu(raw_g, raw_u, dtype_id, rows, cols, x)
    assert out.shape == (n, rows)
    # Errors of g and u both reach the product (silu' <= 1.1): a few times the matmul bound.
    # Measured: <= 1.3e-8 (CPU Q4_1 decode), 8.6e-8 (Metal Q8_0 GEMM), 1.6e-13 (f32-exact).
    assert nmse(out, ref) < 4 * matmul_bound(backend, dtype_id, n)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype_id", [Q4_1, Q8_0], ids=DTYPE_NAMES.get)
def test_matmul_vocab_sized(ops_for, dtype_id, n):
    """SmolLM2's output projection: 49152 rows x 576 columns (decode: 1 token)."""
    _matmul_case(ops_for("cpu"), dtype_id, 49152, 576, n, "cpu")


def test_matmul_per_row_is_independent(ops_for):
    """Each output column uses its own weight row (catches row/stride mix-ups that a random
    nmse check could average away): one-hot weight rows select single input columns."""
    ops = ops_for("cpu")
    rows, cols = 37, 96
    w = np.zeros((rows, cols), np.float32)
    w[np.arange(rows), (np.arange(rows) * 7) % cols] = 1.0
    x = randn(rng_for("onehot"), 5, cols)
    for dtype_id in (F32, F16, BF16):
        out = ops.matmul(encode_weights(w, dtype_id), dtype_id, rows, cols, x)
        np.testing.assert_allclose(out, x[:, (np.arange(rows) * 7) % cols], rtol=1e-2 if dtype_id == BF16 else 1e-3)


@pytest.mark.parametrize("dtype_id", [F32, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1], ids=DTYPE_NAMES.get)
def test_matmul_rejects_bad_shapes(ops_for, dtype_id):
    ops = ops_for("cpu")
    w = encode_weights(np.ones((4, 64), np.float32), dtype_id)
    with pytest.raises(ValueError):
        ops.matmul(w, dtype_id, 4, 64, np.ones((2, 32), np.float32))       # x has the wrong width
    with pytest.raises(ValueError):
        ops.matmul(w[: w.size // 2], dtype_id, 4, 64, np.ones((2, 64), np.float32))  # too few bytes
    if dtype_id in QUANTIZED:
        with pytest.raises(ValueError):                                     # cols not a multiple of 32
            ops.matmul(np.zeros(4 * BLOCK_BYTES[dtype_id] * 2, np.uint8), dtype_id, 4, 48,
                       np.ones((1, 48), np.float32))


# ----------------------------------------------------------------------------- get_rows

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype_id", [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("rows,cols", [(300, 64), (1000, 576)])
def test_get_rows(ops_for, backend, dtype_id, rows, cols):
    rng = rng_for("get_rows", dtype_id, rows, cols)
    table = encode_weights(randn(rng, rows, cols), dtype_id)
    ids = np.array([0, rows - 1, 5, 5, rows // 2, 1, 7], dtype=np.int32)
    out = ops_for(backend).get_rows(table, dtype_id, rows, cols, ids)
    ref = decode_weights(table, dtype_id, rows, cols)[ids]
    # A row lookup is a pure decode: d * q (+ m) in f32 is exact for F32/F16/BF16/Q8_0/Q4_0/Q5_0
    # (an 11-bit mantissa times a <= 8-bit integer); Q4_1's "+ m" rounds once in f32.
    np.testing.assert_allclose(out, ref, rtol=2 ** -23, atol=1e-7 * float(np.abs(ref).max()))


@pytest.mark.parametrize("bad_id", [-1, 300, 2 ** 31 - 1])
def test_get_rows_rejects_out_of_range_ids(ops_for, bad_id):
    table = encode_weights(np.ones((300, 64), np.float32), Q8_0)
    with pytest.raises(ValueError, match=r"(?i)id|range|token"):
        ops_for("cpu").get_rows(table, Q8_0, 300, 64, np.array([3, bad_id], np.int32))


# ----------------------------------------------------------------------------- Q5_0, Q5_1

def extreme_q5_blocks(dtype_id: int) -> np.ndarray:
    """Q5_0 / Q5_1 (or IQ4_NL) blocks at the edges of the format [n, 22 / 24 / 18]: all-zero; all quant bits set
    or random, under f16 scales (and Q5_1 mins) at the largest finite / smallest normal /
    smallest subnormal / negative / zero values."""
    nbytes = BLOCK_BYTES[dtype_id]
    rng = np.random.default_rng(11)
    out = [np.zeros(nbytes, np.uint8)]
    for d, m in ((65504.0, -65504.0), (2 ** -14, 2 ** -14), (2 ** -24, -(2 ** -24)), (-3.5, 2.0), (0.0, 1.0)):
        for fill in ("max", "random"):
            b = np.full(nbytes, 0xFF, np.uint8) if fill == "max" else rng.integers(0, 256, nbytes, dtype=np.uint8)
            b[0:2] = _f16_bytes(d)
            if dtype_id == Q5_1:
                b[2:4] = _f16_bytes(m)
            out.append(b)
    return np.stack(out)


def assert_dequantizers_match_gguf(ops_for, raw, dtype_id, rows, cols):
    """The test's decoder, forgert.quants and the CPU's get_rows all give gguf's dequantization
    bit for bit (the CPU's f32 d * sc * q - dmin * m rounds as gguf's NumPy f32 does)."""
    import gguf
    from forgert import quants
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(dtype_id)).reshape(rows, cols)
    assert np.all(np.isfinite(theirs))
    np.testing.assert_array_equal(decode_weights(raw, dtype_id, rows, cols).astype(np.float32), theirs)
    np.testing.assert_array_equal(quants.dequantize(raw, dtype_id, rows, cols), theirs)
    out = ops_for("cpu").get_rows(raw, dtype_id, rows, cols, np.arange(rows, dtype=np.int32))
    np.testing.assert_array_equal(out, theirs)


@pytest.mark.parametrize("dtype_id", [Q5_0, Q5_1], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("blocks", ["random", "extreme"])
def test_q5_dequantization_matches_gguf_package(ops_for, dtype_id, blocks):
    """Q5_0 / Q5_1 decoded by the test's decoder, forgert.quants.dequantize and the CPU kernels
    (get_rows: the dequantize-row the prefill panel GEMM also uses) all agree bit for bit with
    gguf.quants.dequantize, on random bytes (every bit pattern with a finite d is a block)."""
    from forgert import quants
    if blocks == "random":
        rng = rng_for("q5-dequant", dtype_id)
        b = rng.integers(0, 256, (24 * 512 // 32, BLOCK_BYTES[dtype_id]), dtype=np.uint8)
        b[:, 0:2] = (rng.uniform(-2, 2, (len(b), 1)) / 16).astype(np.float16).view(np.uint8)
        if dtype_id == Q5_1:
            b[:, 2:4] = rng.uniform(-2, 2, (len(b), 1)).astype(np.float16).view(np.uint8)
        raw, rows, cols = b.reshape(-1), 24, 512
    else:
        raw = extreme_q5_blocks(dtype_id).reshape(-1)
        rows, cols = raw.size // BLOCK_BYTES[dtype_id], 32
    assert_dequantizers_match_gguf(ops_for, raw, dtype_id, rows, cols)


# ----------------------------------------------------------------------------- K-quants (Q4_K, Q6_K)

def _f16_bytes(*values) -> np.ndarray:
    return np.array(values, np.float16).view(np.uint8)


def extreme_kquant_blocks(dtype_id: int) -> np.ndarray:
    """Super-blocks at the edges of the format [n, block bytes]: all-zero; all quant and scale bits
    set (the largest quants, 6-bit scales and mins) or random, under f16 super-block scales at the
    largest finite / smallest normal / smallest subnormal / negative / zero values. (All bits set
    everywhere would make d a NaN.)"""
    nbytes = BLOCK_BYTES[dtype_id]
    rng = np.random.default_rng(7)
    out = [np.zeros(nbytes, np.uint8)]
    scale_sets = [(65504.0, 65504.0), (2 ** -14, 2 ** -14), (2 ** -24, 2 ** -24), (-3.5, 2.0), (1.0, 0.0)]
    for d, dmin in scale_sets:
        for fill in ("max", "random"):
            b = np.full(nbytes, 0xFF, np.uint8) if fill == "max" else rng.integers(0, 256, nbytes, dtype=np.uint8)
            if dtype_id in (Q4_K, Q5_K):
                b[0:4] = _f16_bytes(d, dmin)
            elif dtype_id == IQ4_XS:
                b[0:2] = _f16_bytes(d)
            elif dtype_id == Q3_K:
                b[108:110] = _f16_bytes(d)
            elif dtype_id == Q2_K:
                b[80:84] = _f16_bytes(d, dmin)
            else:
                b[208:210] = _f16_bytes(d)
            out.append(b)
    return np.stack(out)


@pytest.mark.parametrize("dtype_id", K_QUANTS, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("blocks", ["random", "extreme"])
def test_kquant_dequantization_matches_gguf_package(ops_for, dtype_id, blocks):
    """Q2_K / Q3_K / Q4_K / Q5_K / Q6_K decoded by the test's reference decoder, by forgert.quants.dequantize and by the
    CPU kernels (get_rows: the dequantize-row that the prefill panel GEMM also uses) all agree
    with gguf.quants.dequantize."""
    from forgert import quants
    if blocks == "random":
        raw = random_kquant_weights(rng_for("kq-dequant", dtype_id), dtype_id, 24, 512)
    else:
        raw = extreme_kquant_blocks(dtype_id).reshape(-1)
    rows, cols = (24, 512) if blocks == "random" else (raw.size // BLOCK_BYTES[dtype_id], 256)
    assert_dequantizers_match_gguf(ops_for, raw, dtype_id, rows, cols)


# (rows, cols, n_tokens): K-quant rows are whole 256-weight super-blocks; the token counts
# cover decode (1, 3, 5, 7), the 15 / 16 switch to the f32 panel GEMM, and prefill tiles.
KQ_MATMUL_SHAPES = [(1, 256, 1), (7, 512, 3), (33, 256, 7), (40, 512, 15), (40, 512, 16), (100, 256, 33),
                    (257, 1024, 69), (67, 1536, 5), (576, 1536, 1)]
KQ_MATMUL_SHAPES_METAL = [(1, 256, 1), (7, 512, 3), (33, 256, 7), (45, 256, 33), (20, 512, 69)]
KQ_MATMUL_CASES = [pytest.param("cpu", *s, id=f"cpu-{s[0]}x{s[1]}-n{s[2]}") for s in KQ_MATMUL_SHAPES] + [
    pytest.param("metal", *s, id=f"metal-{s[0]}x{s[1]}-n{s[2]}", marks=pytest.mark.metal)
    for s in KQ_MATMUL_SHAPES_METAL]


@pytest.mark.parametrize("dtype_id", K_QUANTS, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", KQ_MATMUL_CASES)
def test_matmul_kquant(ops_for, backend, dtype_id, rows, cols, n):
    ops = ops_for(backend)
    rng = rng_for("matmul-kq", dtype_id, rows, cols, n, backend)
    raw = random_kquant_weights(rng, dtype_id, rows, cols)
    x = randn(rng, n, cols)
    ref = np.asarray(x, np.float64) @ decode_weights(raw, dtype_id, rows, cols).T   # [n, rows]
    out = ops.matmul(raw, dtype_id, rows, cols, x)
    assert out.dtype == np.float32 and out.shape == (n, rows)
    err = nmse(out, ref)
    assert err < matmul_bound(backend, dtype_id, n), f"{DTYPE_NAMES[dtype_id]} [{rows}x{cols}] x {n}: nmse {err:.3g}"


# The fused projections (residual add; SwiGLU's gate and up: one fused GEMV on Metal) with
# K-quant weights, through the bodies of the tests above: decode and prefill shapes. Measured
# (generic, avx512-vnni; emulated Metal): add <= 1.2e-8 (CPU decode Q4_K), 4.0e-8 (Metal GEMM);
# swiglu <= 4.4e-9 (CPU), 1.4e-7 (Metal GEMM Q6_K, bound 4 x 2e-7), GEMV <= 2.4e-13.
KQ_FUSED_CASES = [pytest.param("cpu", 33, 512, 1, id="cpu-decode"),
                  pytest.param("cpu", 100, 256, 33, id="cpu-prefill")] + [
    pytest.param("metal", *s, id=f"metal-{s[0]}x{s[1]}-n{s[2]}", marks=pytest.mark.metal)
    for s in [(45, 256, 1), (20, 512, 3), (45, 256, 9)]]


@pytest.mark.parametrize("dtype_id", K_QUANTS, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", KQ_FUSED_CASES)
def test_matmul_add_kquant(ops_for, backend, dtype_id, rows, cols, n):
    test_matmul_add(ops_for, backend, dtype_id, rows, cols, n)


@pytest.mark.parametrize("dtype_id", K_QUANTS, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", KQ_FUSED_CASES)
def test_matmul_swiglu_kquant(ops_for, backend, dtype_id, rows, cols, n):
    test_matmul_swiglu(ops_for, backend, dtype_id, rows, cols, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype_id", K_QUANTS, ids=DTYPE_NAMES.get)
def test_get_rows_kquant(ops_for, backend, dtype_id):
    rows, cols = 300, 512
    table = random_kquant_weights(rng_for("get_rows-kq", dtype_id), dtype_id, rows, cols)
    ids = np.array([0, rows - 1, 5, 5, rows // 2, 1, 7], dtype=np.int32)
    out = ops_for(backend).get_rows(table, dtype_id, rows, cols, ids)
    ref = decode_weights(table, dtype_id, rows, cols)[ids]
    # d * sc in f32 is exact (11-bit x 8-bit), times q exact; Q4_K's "- dmin * m" rounds twice.
    np.testing.assert_allclose(out, ref, rtol=2 ** -22, atol=1e-7 * float(np.abs(ref).max()))


@pytest.mark.parametrize("dtype_id", K_QUANTS, ids=DTYPE_NAMES.get)
def test_kquant_rejects_partial_super_blocks(ops_for, dtype_id):
    ops = ops_for("cpu")
    with pytest.raises(ValueError, match="256"):     # 288 columns: not whole super-blocks
        ops.matmul(np.zeros(4 * 2 * BLOCK_BYTES[dtype_id], np.uint8), dtype_id, 4, 288, np.ones((1, 288), np.float32))


# ----------------------------------------------------------------------------- IQ4_NL, IQ4_XS

@pytest.mark.parametrize("dtype_id", [IQ4_NL, IQ4_XS], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("blocks", ["random", "extreme"])
def test_iq4_dequantization_matches_gguf_package(ops_for, dtype_id, blocks):
    """IQ4_NL / IQ4_XS decoded by the test's decoder, forgert.quants.dequantize and the CPU kernels
    (get_rows: the dequantize-row of the prefill panel GEMM) all agree bit for bit with
    gguf.quants.dequantize ((d * (ls - 32)) * value in f32: exact products, as ggml's), on random
    bytes (any bit pattern with a finite d is a block) and on blocks with extreme scales."""
    if blocks == "random":
        rng = rng_for("iq4-dequant", dtype_id)
        if dtype_id == IQ4_NL:
            b = rng.integers(0, 256, (24 * 512 // 32, BLOCK_BYTES[dtype_id]), dtype=np.uint8)
            b[:, 0:2] = (rng.uniform(-2, 2, (len(b), 1)) / 127).astype(np.float16).view(np.uint8)
            raw = b.reshape(-1)
        else:
            raw = random_kquant_weights(rng, dtype_id, 24, 512)
        rows, cols = 24, 512
    elif dtype_id == IQ4_NL:
        raw = extreme_q5_blocks(dtype_id).reshape(-1)
        rows, cols = raw.size // BLOCK_BYTES[dtype_id], 32
    else:
        raw = extreme_kquant_blocks(dtype_id).reshape(-1)
        rows, cols = raw.size // BLOCK_BYTES[dtype_id], 256
    assert_dequantizers_match_gguf(ops_for, raw, dtype_id, rows, cols)


# Measured nmse with IQ4_NL / IQ4_XS weights, all shapes (generic, avx2, avx512-vnni; emulated
# Metal, every schedule): CPU int8 decode <= 5.9e-10 / 2.2e-9 (IQ4_XS 1x256 x 1), f32 panel
# <= 1.9e-13 / 3.2e-13; Metal GEMV <= 1.9e-14 / 1.2e-14, GEMM <= 4.5e-8 / 4.6e-8: within the
# bounds of the kernel paths above (signed table values, no zero-point term: Q8_0's rounding).
@pytest.mark.parametrize("backend,rows,cols,n", MATMUL_CASES)
def test_matmul_iq4_nl(ops_for, backend, rows, cols, n):
    _matmul_case(ops_for(backend), IQ4_NL, rows, cols, n, backend)


@pytest.mark.parametrize("backend,rows,cols,n", KQ_MATMUL_CASES)
def test_matmul_iq4_xs(ops_for, backend, rows, cols, n):
    test_matmul_kquant(ops_for, backend, IQ4_XS, rows, cols, n)


@pytest.mark.parametrize("dtype_id", [IQ4_NL, IQ4_XS], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", KQ_FUSED_CASES)
def test_matmul_add_iq4(ops_for, backend, dtype_id, rows, cols, n):
    test_matmul_add(ops_for, backend, dtype_id, rows, cols, n)


@pytest.mark.parametrize("dtype_id", [IQ4_NL, IQ4_XS], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", KQ_FUSED_CASES)
def test_matmul_swiglu_iq4(ops_for, backend, dtype_id, rows, cols, n):
    test_matmul_swiglu(ops_for, backend, dtype_id, rows, cols, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype_id", [IQ4_NL, IQ4_XS], ids=DTYPE_NAMES.get)
def test_get_rows_iq4(ops_for, backend, dtype_id):
    rows, cols = 300, 512
    table = encode_weights(randn(rng_for("get_rows-iq4", dtype_id), rows, cols), dtype_id)
    ids = np.array([0, rows - 1, 5, 5, rows // 2, 1, 7], dtype=np.int32)
    out = ops_for(backend).get_rows(table, dtype_id, rows, cols, ids)
    # d * value (IQ4_XS: (d * (ls - 32)) * value) is exact in f32: 11 x 6 x 7 bits
    np.testing.assert_array_equal(out, decode_weights(table, dtype_id, rows, cols)[ids].astype(np.float32))


@pytest.mark.parametrize("dtype_id", [IQ4_NL, IQ4_XS], ids=DTYPE_NAMES.get)
def test_iq4_rejects_partial_blocks(ops_for, dtype_id):
    ops = ops_for("cpu")
    cols = {IQ4_NL: 48, IQ4_XS: 288}[dtype_id]          # not whole blocks / super-blocks
    with pytest.raises(ValueError, match=str({IQ4_NL: 32, IQ4_XS: 256}[dtype_id])):
        ops.matmul(np.zeros(4 * 2 * BLOCK_BYTES[dtype_id], np.uint8), dtype_id, 4, cols, np.ones((1, cols), np.float32))


# ----------------------------------------------------------------------------- rms_norm, elementwise

TOKENS = [1, 3, 7, 33, 69]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", TOKENS)
@pytest.mark.parametrize("dim", [64, 135, 576])
def test_rms_norm(ops_for, backend, n, dim):
    rng = rng_for("rms", n, dim)
    x = randn(rng, n, dim, scale=3.0)
    w = (1.0 + 0.3 * rng.standard_normal(dim)).astype(np.float32)
    eps = 1e-5
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64 ** 2, axis=1, keepdims=True) + eps) * w
    out = ops_for(backend).rms_norm(x, w, eps)
    # f32 sum of squares over <= 576 values then one rsqrt: relative error ~1e-6 -> nmse ~1e-12
    assert nmse(out, ref) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 7, 33])
@pytest.mark.parametrize("heads,head_dim", [(1, 64), (4, 16), (16, 128)])
def test_head_rms_norm(ops_for, backend, n, heads, head_dim):
    """Qwen3's QK-norm: each head of each row normalised on its own, against NumPy."""
    rng = rng_for("head_rms", n, heads, head_dim)
    # heads of very different scales: a norm over the whole row instead of each head fails
    x = randn(rng, n, heads * head_dim) * np.repeat(np.logspace(-2, 1, heads), head_dim).astype(np.float32)
    w = (1.0 + 0.3 * rng.standard_normal(head_dim)).astype(np.float32)
    eps = 1e-6
    h = x.astype(np.float64).reshape(n, heads, head_dim)
    ref = (h / np.sqrt(np.mean(h ** 2, axis=2, keepdims=True) + eps) * w).reshape(n, heads * head_dim)
    out = ops_for(backend).head_rms_norm(x, w, eps)
    # as rms_norm: one f32 sum of squares per head (<= 128 values), measured nmse ~1e-14
    assert nmse(out, ref) < 1e-10


def test_head_rms_norm_rejects_a_width_that_is_not_whole_heads(ops_for):
    with pytest.raises(ValueError, match="heads \\* head_dim"):
        ops_for("cpu").head_rms_norm(np.ones((2, 70), np.float32), np.ones(16, np.float32), 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 7, 33])
@pytest.mark.parametrize("dim", [64, 135, 576])
def test_layer_norm(ops_for, backend, n, dim):
    """LayerNorm without bias (Cohere) against NumPy in f64, on rows whose mean (5) is larger than
    their spread, so an RMSNorm in its place would be far off."""
    rng = rng_for("layer_norm", n, dim)
    x = randn(rng, n, dim, scale=3.0) + 5.0
    w = (1.0 + 0.3 * rng.standard_normal(dim)).astype(np.float32)
    eps = 1e-5
    x64 = x.astype(np.float64)
    c = x64 - x64.mean(axis=1, keepdims=True)
    ref = c / np.sqrt(np.mean(c ** 2, axis=1, keepdims=True) + eps) * w
    out = ops_for(backend).layer_norm(x, w, eps)
    # an f32 mean, then the centred sum of squares: measured nmse <= 8.5e-15 (CPU), 3.1e-14 (Metal)
    assert nmse(out, ref) < 3e-13
    assert nmse(ops_for(backend).rms_norm(x, w, eps), ref) > 1e-2   # the centring is what the test sees


def test_rms_norm_eps_is_used(ops_for):
    """eps matters for tiny rows: x = 1e-3 everywhere with eps 1e-5 gives 1e-3/sqrt(1e-6+1e-5)."""
    x = np.full((1, 64), 1e-3, np.float32)
    out = ops_for("cpu").rms_norm(x, np.ones(64, np.float32), 1e-5)
    np.testing.assert_allclose(out, np.full((1, 64), 1e-3 / np.sqrt(1e-6 + 1e-5)), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 64), (7, 135), (69, 576), (3, 1536)])
def test_elementwise(ops_for, backend, n, dim):
    ops = ops_for(backend)
    rng = rng_for("elementwise", n, dim)
    a, b = randn(rng, n, dim, scale=4.0), randn(rng, n, dim, scale=4.0)
    bias = randn(rng, dim)
    # additions are exact-rounded in f32 either way
    np.testing.assert_array_equal(ops.add(a, b), a + b)
    np.testing.assert_array_equal(ops.add_bias(a, bias), a + bias[None, :])
    g64, u64 = a.astype(np.float64), b.astype(np.float64)
    ref = g64 / (1.0 + np.exp(-g64)) * u64
    # silu via an f32 exp (possibly a vectorised approximation, ~1e-6 relative) -> nmse ~1e-12
    assert nmse(ops.silu_mul(a, b), ref) < 1e-10


def test_elementwise_rejects_shape_mismatch(ops_for):
    ops = ops_for("cpu")
    a = np.ones((3, 64), np.float32)
    with pytest.raises(ValueError):
        ops.add(a, np.ones((3, 32), np.float32))
    with pytest.raises(ValueError):
        ops.add_bias(a, np.ones(63, np.float32))
    with pytest.raises(ValueError):
        ops.silu_mul(a, np.ones((2, 64), np.float32))


# ----------------------------------------------------------------------------- rope

def rope_reference(x, freqs, pos0, n_heads, head_dim, neox, rope_dim=None, factor=1.0):
    """float64 rotation of the first rope_dim (default: all) dims of each head, cos and sin
    times `factor`. neox=False: pairs (2j, 2j+1); neox=True: pairs (j, j + rope_dim/2)."""
    rope_dim = head_dim if rope_dim is None else rope_dim
    n = x.shape[0]
    xh = x.astype(np.float64).reshape(n, n_heads, head_dim).copy()
    pos = (pos0 + np.arange(n, dtype=np.float64))[:, None, None]
    ang = pos * freqs.astype(np.float64)[None, None, :]                    # [n, 1, rope_dim/2]
    c, s = np.cos(ang) * factor, np.sin(ang) * factor
    xr = xh[..., :rope_dim]
    if neox:
        a, b = xr[..., : rope_dim // 2], xr[..., rope_dim // 2:]
        out = np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    else:
        a, b = xr[..., 0::2], xr[..., 1::2]
        out = np.empty_like(xr)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    xh[..., :rope_dim] = out
    return xh.reshape(n, n_heads * head_dim)


def rope_freqs(head_dim, theta=10000.0, scale_from=None):
    f = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scale_from is not None:   # llama3-like: low frequencies divided by 8
        f[scale_from:] /= 8.0
    return f.astype(np.float32)


# ----------------------------------------------------------------------------- rope_kv_write

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neox", [False, True], ids=["adjacent", "neox"])
@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,n_ctx", [
    (1, 0, 1, 1, 16, 4), (1, 37, 9, 3, 64, 40), (7, 5, 4, 2, 32, 16), (7, 9, 3, 3, 64, 16),
    (33, 1000, 8, 1, 128, 1040), (69, 1000, 2, 2, 64, 1100),
])
def test_rope_kv_write(ops_for, backend, neox, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx):
    # The fused step = rope on q and k, then k and v into the f16 cache rows pos0..pos0 + n.
    rng = rng_for("rope_kv", n, pos0, n_heads, n_kv_heads, head_dim)
    q = randn(rng, n, n_heads * head_dim)
    k = randn(rng, n, n_kv_heads * head_dim, scale=3.0)
    v = randn(rng, n, n_kv_heads * head_dim, scale=10.0)
    v[0, :4] = [1e-8, 70000.0, -0.0, 2049.0]   # f16 rounding: to zero, overflow to inf, sign, tie to even
    k_cache = randn(rng, n_ctx, n_kv_heads * head_dim).astype(np.float16)
    v_cache = randn(rng, n_ctx, n_kv_heads * head_dim).astype(np.float16)
    freqs = rope_freqs(head_dim, scale_from=head_dim // 4)
    q_out, k_out, kc, vc = ops_for(backend).rope_kv_write(q, k, v, k_cache, v_cache, freqs, pos0, n_heads,
                                                          n_kv_heads, head_dim, neox)
    q_ref = rope_reference(q, freqs, pos0, n_heads, head_dim, neox)
    k_ref = rope_reference(k, freqs, pos0, n_kv_heads, head_dim, neox)
    # An f32 angle pos * freq is off by up to |angle| * 2^-24 (~1e-4 rad at pos ~1000), so the
    # rotated values by ~1e-4 relative -> nmse up to ~1e-8.
    assert nmse(q_out, q_ref) < 3e-8 and nmse(k_out, k_ref) < 3e-8
    # the two layouts really differ (the test can tell them apart)
    if n * head_dim > 16 and pos0 + n > 1:
        assert nmse(q_out, rope_reference(q, freqs, pos0, n_heads, head_dim, not neox)) > 1e-3
    rows = slice(pos0, pos0 + n)
    # Cached keys: the rotated keys rounded to f16 (within f16's rounding of a ~1e-4 difference).
    np.testing.assert_allclose(kc[rows].astype(np.float32), k_ref, rtol=2e-3, atol=2e-3)
    # Cached values: IEEE round-to-nearest-even, bit for bit.
    with np.errstate(over="ignore"):   # 70000 -> inf on purpose
        v_f16 = v.astype(np.float16)
    np.testing.assert_array_equal(vc[rows].view(np.uint16), v_f16.view(np.uint16))
    # Every other row is untouched.
    for got, before in ((kc, k_cache), (vc, v_cache)):
        np.testing.assert_array_equal(np.delete(got, np.r_[rows], axis=0).view(np.uint16),
                                      np.delete(before, np.r_[rows], axis=0).view(np.uint16))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neox", [False, True], ids=["adjacent", "neox"])
@pytest.mark.parametrize("rope_dim,factor", [(48, 1.0), (16, 1.3), (64, 0.8), (0, 1.0)],
                         ids=["partial_0.75", "partial_0.25_factor", "factor", "nope"])
def test_rope_kv_write_partial_and_scaled(ops_for, backend, neox, rope_dim, factor):
    """Partial rotary (Phi-4-mini's 0.75: the first rope_dim dims turn, pairs taken within them),
    the attention factor on cos and sin (YaRN, LongRoPE), and NoPE layers (rope_dim 0: nothing
    turns, k and v are still cached)."""
    n, pos0, n_heads, n_kv_heads, head_dim, n_ctx = 5, 300, 4, 2, 64, 310
    rng = rng_for("rope_partial", neox, rope_dim, factor)
    q = randn(rng, n, n_heads * head_dim)
    k = randn(rng, n, n_kv_heads * head_dim, scale=3.0)
    v = randn(rng, n, n_kv_heads * head_dim)
    cache = np.zeros((n_ctx, n_kv_heads * head_dim), np.float16)
    freqs = rope_freqs(rope_dim) if rope_dim else np.zeros(1, np.float32)
    q_out, k_out, kc, vc = ops_for(backend).rope_kv_write(q, k, v, cache, cache.copy(), freqs, pos0, n_heads,
                                                          n_kv_heads, head_dim, neox, rope_dim=rope_dim,
                                                          attn_factor=factor)
    q_ref = rope_reference(q, freqs[:rope_dim // 2], pos0, n_heads, head_dim, neox, rope_dim, factor)
    k_ref = rope_reference(k, freqs[:rope_dim // 2], pos0, n_kv_heads, head_dim, neox, rope_dim, factor)
    # measured nmse ~1e-14 (pos ~300: the f32 angle's rounding); bound as test_rope_kv_write's
    assert nmse(q_out, q_ref) < 3e-8 and nmse(k_out, k_ref) < 3e-8
    if rope_dim < head_dim:   # the tail of each head passes through untouched, bit for bit
        tail = (np.arange(n_heads * head_dim) % head_dim) >= rope_dim
        np.testing.assert_array_equal(q_out[:, tail], q[:, tail])
    rows = slice(pos0, pos0 + n)
    np.testing.assert_allclose(kc[rows].astype(np.float32), k_ref, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(vc[rows], v.astype(np.float16))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neox,rope_dim", [(False, 64), (True, 48)], ids=["adjacent", "neox_partial"])
def test_rope_kv_write_query_temperature(ops_for, backend, neox, rope_dim):
    """Llama 4 / Mistral 3's query temperature: each query row (every dim, its unrotated tail too)
    times 1 + beta ln(floor(pos / floor) + 1) after the turn, as transformers'
    get_llama_4_attn_scale computes it (here in f64); keys and caches untouched by it. Positions
    12..35 with floor 16 take factors 1, 1 + 0.1 ln 2 and 1 + 0.1 ln 3; those below the floor
    keep the plain rotation's bits."""
    n, pos0, n_heads, n_kv_heads, head_dim, n_ctx, beta, floor = 24, 12, 4, 2, 64, 40, 0.1, 16
    rng = rng_for("rope_qtemp", neox, rope_dim)
    q = randn(rng, n, n_heads * head_dim)
    k = randn(rng, n, n_kv_heads * head_dim, scale=3.0)
    v = randn(rng, n, n_kv_heads * head_dim)
    cache = np.zeros((n_ctx, n_kv_heads * head_dim), np.float16)
    freqs = rope_freqs(rope_dim)
    ops = ops_for(backend)
    args = (q, k, v, cache, cache.copy(), freqs, pos0, n_heads, n_kv_heads, head_dim, neox)
    plain = ops.rope_kv_write(*args, rope_dim=rope_dim)
    q_out, k_out, kc, vc = ops.rope_kv_write(*args, rope_dim=rope_dim, q_temp_beta=beta, q_temp_floor=floor)
    pos = np.arange(pos0, pos0 + n)
    scale = 1 + beta * np.log(np.floor(pos / floor) + 1)             # 1 below 16, 1.069 at 16..31, 1.110 at 32..
    q_ref = rope_reference(q, freqs[:rope_dim // 2], pos0, n_heads, head_dim, neox, rope_dim) * scale[:, None]
    # measured nmse ~1e-15 (the f32 angle and the f32 factor); bound as test_rope_kv_write's
    assert nmse(q_out, q_ref) < 3e-8
    assert nmse(q_out, rope_reference(q, freqs[:rope_dim // 2], pos0, n_heads, head_dim, neox, rope_dim)) > 1e-3
    np.testing.assert_array_equal(q_out[pos < floor], plain[0][pos < floor])
    for got, want in zip((k_out, kc, vc), plain[1:]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="q_temp_floor > 0"):
        ops.rope_kv_write(*args, rope_dim=rope_dim, q_temp_beta=beta, q_temp_floor=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_kv_write_one_row_after_another(ops_for, backend):
    """A decode row's angles are kept for the next call at the same position (a token's layers
    share them, cpu_backend.h RopeAngleCache): one backend, one-row calls in turn at the same
    position with other frequencies, another attention factor, then the next position and the
    first frequencies again; each call must rotate by its own angles."""
    n_heads, n_kv_heads, head_dim, n_ctx = 3, 1, 32, 64
    ops = ops_for(backend)
    rng = rng_for("rope_one_row_after_another")
    f_a = rope_freqs(head_dim)
    f_b = (f_a * np.float32(1.5)).astype(np.float32)
    cache = np.zeros((n_ctx, n_kv_heads * head_dim), np.float16)
    for pos, freqs, factor in ((40, f_a, 1.0), (40, f_a, 1.0), (40, f_b, 1.0), (40, f_b, 0.5), (41, f_b, 0.5),
                               (41, f_a, 0.5), (40, f_a, 1.0)):
        q = randn(rng, 1, n_heads * head_dim)
        k = randn(rng, 1, n_kv_heads * head_dim)
        q_out, k_out, _, _ = ops.rope_kv_write(q, k, k.copy(), cache, cache.copy(), freqs, pos, n_heads, n_kv_heads,
                                               head_dim, True, rope_dim=head_dim, attn_factor=factor)
        q_ref = rope_reference(q, freqs, pos, n_heads, head_dim, True, head_dim, factor)
        k_ref = rope_reference(k, freqs, pos, n_kv_heads, head_dim, True, head_dim, factor)
        # bound as test_rope_kv_write's; stale angles (another frequency or factor) are off by far more
        assert nmse(q_out, q_ref) < 3e-8 and nmse(k_out, k_ref) < 3e-8, (pos, factor)


def test_rope_kv_write_rejects_bad_rope_dim(ops_for):
    ones, cache = np.ones((1, 32), np.float32), np.zeros((2, 32), np.float16)
    for rope_dim in (34, 7):
        with pytest.raises(ValueError, match="rope_dim"):
            ops_for("cpu").rope_kv_write(ones, ones, ones, cache, cache, rope_freqs(32), 0, 1, 1, 32, False,
                                         rope_dim=rope_dim)


def test_rope_kv_write_position_zero_is_identity(ops_for):
    q, k = randn(rng_for("rope0"), 1, 64), randn(rng_for("rope0k"), 1, 32)
    cache = np.zeros((2, 32), np.float16)
    q_out, k_out, _, _ = ops_for("cpu").rope_kv_write(q, k, k, cache, cache, rope_freqs(32), 0, 2, 1, 32, False)
    np.testing.assert_allclose(q_out, q, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(k_out, k, rtol=1e-6, atol=1e-7)


def test_rope_kv_write_rejects_overflow(ops_for):
    cache = np.zeros((8, 32), np.float16)
    ones = np.ones((3, 32), np.float32)
    with pytest.raises(ValueError, match="past the cache"):
        ops_for("cpu").rope_kv_write(ones, ones, ones, cache, cache, rope_freqs(32), 6, 1, 1, 32, False)


# ----------------------------------------------------------------------------- attention

def batch_attention_reference(q, k_cache, v_cache, rows, n_heads, n_kv_heads, head_dim, scale, window=0,
                              softcap=0.0, sinks=None):
    """float64 causal GQA attention, query i over cache rows base_i + first .. base_i + pos_i
    (first = pos_i + 1 - window with a window; rows: (pos_i, base_i) per query); query head h
    reads KV head h // (n_heads / n_kv_heads); softcap > 0 squashes scores s -> softcap *
    tanh(s / softcap); a sink joins each head's softmax denominator only."""
    n = q.shape[0]
    group = n_heads // n_kv_heads
    qh = q.astype(np.float64).reshape(n, n_heads, head_dim)
    k = k_cache.astype(np.float64).reshape(-1, n_kv_heads, head_dim)
    v = v_cache.astype(np.float64).reshape(-1, n_kv_heads, head_dim)
    out = np.zeros((n, n_heads, head_dim))
    for i, (pos, base) in enumerate(rows):
        first = max(0, pos + 1 - window) if window else 0
        keys = slice(base + first, base + pos + 1)
        for h in range(n_heads):
            s = k[keys, h // group] @ qh[i, h] * scale     # [pos + 1 - first]
            if softcap:
                s = softcap * np.tanh(s / softcap)
            if sinks is not None:
                s = np.append(s, float(sinks[h]))
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, h] = p[: pos + 1 - first] @ v[keys, h // group]
    return out.reshape(n, n_heads * head_dim)


def attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window=0, softcap=0.0,
                        sinks=None):
    """One sequence from cache row 0: query i at position pos0 + i sees cache rows 0..pos0 + i
    (only the last `window` of them if window > 0)."""
    rows = [(pos0 + i, 0) for i in range(q.shape[0])]
    return batch_attention_reference(q, k_cache, v_cache, rows, n_heads, n_kv_heads, head_dim, scale, window,
                                     softcap, sinks)


def attention_inputs(rng, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx, scale=1.0):
    """q [n, n_heads * head_dim] f32 and the K / V caches [n_ctx, n_kv_heads * head_dim] f16 (q and
    K scaled by `scale`), their rows past the last query (pos0 + n - 1) poisoned: no query may
    read them."""
    kv_dim = n_kv_heads * head_dim
    q = randn(rng, n, n_heads * head_dim, scale=scale)
    k_cache = randn(rng, n_ctx, kv_dim, scale=scale).astype(np.float16)
    v_cache = randn(rng, n_ctx, kv_dim).astype(np.float16)
    k_cache[pos0 + n:] = np.float16(60000.0)
    v_cache[pos0 + n:] = np.float16(np.nan)
    return q, k_cache, v_cache


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,n_ctx", [
    (1, 0, 4, 2, 16, 16),        # first decode step: one key
    (1, 40, 9, 3, 64, 64),       # SmolLM2 heads, decode deep into the cache
    (7, 0, 4, 4, 32, 16),        # prefill from empty, no GQA
    (7, 9, 8, 2, 32, 32),        # prefill continuing a cached prefix
    (33, 0, 2, 1, 128, 64),      # head_dim 128 (Llama), MQA
    (69, 50, 9, 3, 64, 128),     # 64 + 5 tokens after a 50-token prefix
    (1, 700, 9, 3, 64, 1024),    # decode, long context: each KV head's keys split across threads
    (1, 1000, 4, 1, 128, 1024),  # the same with one KV head (MQA)
    (9, 30, 4, 2, 512, 48),      # head_dim 512 (Gemma 4's global layers), prefill after a prefix
    (1, 40, 8, 1, 512, 48),      # and decode, GQA 8:1
])
def test_attention(ops_for, backend, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx):
    if backend == "metal" and n * (pos0 + n) > 2000:
        pytest.skip("kept small on the emulator")
    rng = rng_for("attn", n, pos0, n_heads, head_dim)
    q, k_cache, v_cache = attention_inputs(rng, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx, scale=1.5)
    scale = 1.0 / np.sqrt(head_dim)
    out = ops_for(backend).attention(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale)
    ref = attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale)
    # The cache is f16 on both sides. An engine may also round q or the probabilities to f16
    # for the dot products (llama.cpp's flash attention does): relative error ~2^-11 on scores
    # of magnitude ~5 -> probability errors ~1e-3 relative -> nmse ~1e-7; bound 1e-6.
    assert nmse(out, ref) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,pos0,window,n_ctx", [
    (1, 40, 16, 64),     # decode: the window has moved past key 0
    (1, 5, 16, 64),      # decode still inside the window
    (20, 0, 8, 32),      # prefill from empty, longer than the window
    (9, 30, 12, 48),     # prefill continuing a prefix, every query windowed
    (3, 300, 130, 320),  # long window: flash-decoding splits the windowed keys
    (1, 900, 500, 960),  # decode, a long window split across threads
])
def test_attention_sliding_window(ops_for, backend, n, pos0, window, n_ctx):
    n_heads, n_kv_heads, head_dim = 4, 2, 32
    rng = rng_for("attn_window", n, pos0, window)
    q, k_cache, v_cache = attention_inputs(rng, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx, scale=1.5)
    # Also poisoned: the rows before the first query's window (later queries' windows start later still).
    first = max(0, pos0 + 1 - window)
    k_cache[:first] = np.float16(60000.0)
    v_cache[:first] = np.float16(np.nan)
    scale = 1.0 / np.sqrt(head_dim)
    out = ops_for(backend).attention(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window)
    ref = attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window)
    assert nmse(out, ref) < 1e-6
    if pos0 + n > window:  # the window changes the answer (the test can tell)
        full = attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale)
        assert not np.allclose(out, full, atol=1e-3, equal_nan=True)


def test_attention_rejects_bad_heads(ops_for):
    q = np.ones((1, 6 * 16), np.float32)
    cache = np.zeros((8, 4 * 16), np.float16)
    with pytest.raises(ValueError):   # 6 query heads cannot share 4 KV heads
        ops_for("cpu").attention(q, cache, cache, 0, 6, 4, 16, 0.25)
    with pytest.raises(ValueError):   # position past the cache
        ops_for("cpu").attention(np.ones((1, 4 * 16), np.float32), cache, cache, 8, 4, 4, 16, 0.25)


# ----------------------------------------------------------------------------- argmax

@pytest.mark.parametrize("backend", BACKENDS)
# (4, 20000): several rows of three 8192-column blocks (the CPU scans every row's blocks in one region),
# row 2's tie across its first and last block
@pytest.mark.parametrize("n,vocab", [(1, 49152), (3, 1003), (7, 32), (33, 320), (4, 20000)])
def test_argmax(ops_for, backend, n, vocab):
    rng = rng_for("argmax", n, vocab)
    x = randn(rng, n, vocab)
    x[0, vocab - 1] = 50.0                # winner in the last column (tail handling)
    if n > 1:
        x[1, :] = -np.inf
        x[1, vocab // 3] = -1e30          # only finite value
    if n > 2:
        x[2, :] = 0.5                     # all tied: first index wins
        x[2, 5 % vocab] = 0.75
        x[2, (vocab - 2)] = 0.75
    out = ops_for(backend).argmax(x)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.argmax(x, axis=1))   # NumPy also takes the first maximum


def sentinel_rows(vocab: int) -> np.ndarray:
    """Rows with a NaN or an infinity in every place a reduction treats differently: the first,
    middle and last columns (the CPU's 16-value vector lanes and its scalar tail; its 8192-column
    blocks at 9000), beside rows without any, which keep their answers."""
    x = randn(rng_for("argmax_sentinels", vocab), 14, vocab)
    x[0, 0] = np.nan                          # NaN first: -1 (it used to lose to the rest)
    x[1, vocab // 2] = np.nan                 # middle
    x[2, vocab - 1] = np.nan                  # last (the scalar tail)
    x[3, :] = np.nan                          # all NaN: -1 (it used to give 0)
    x[4, :] = -np.inf
    x[4, [0, vocab // 2]] = np.nan            # NaN among -inf: -1
    x[5, vocab // 3] = np.inf                 # +inf: -2 (the samplers refuse it too)
    x[6, vocab - 1] = np.inf
    x[6, 1] = np.nan                          # NaN and +inf: NaN first, -1
    x[7, :] = -np.inf                         # nothing above -inf: -3 (it used to give 0)
    x[8, :] = -np.inf
    x[8, vocab - 2] = -1e30                   # the one finite value, near the end: its index
    x[9, vocab - 1] = 50.0                    # no NaN: the argmax, unchanged
    x[10, :] = 0.5                            # all tied: index 0
    x[11, 3 % vocab] = -np.inf                # a -inf among finite values: the argmax
    x[12, 15 % vocab] = np.nan                # the first vector's last lane
    x[13, min(8191, vocab - 1)] = np.nan      # the first 8192-column block's last column
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab", [3, 17, 40, 9000])   # 3: no whole 16-value vector; 9000: two blocks
def test_argmax_sentinels(ops_for, backend, vocab):
    """A row that holds a NaN or +inf, or nothing above -inf, gives core/backend.h's negative
    sentinel instead of a made-up token; other rows their first maximum (tests/argmax_reference.py)."""
    x = sentinel_rows(vocab)
    want = argmax_reference(x)
    assert want[:9].tolist() == [NAN, NAN, NAN, NAN, NAN, INF, NAN, NONE, vocab - 2]
    np.testing.assert_array_equal(ops_for(backend).argmax(x), want)


def test_argmax_sentinel_in_every_column(ops_for):
    """One NaN (then one +inf) in each column of a 2 x 16 + 3 row in turn, every other row clean: only
    that row reads -1 (-2); the CPU's lanes and tail each see one."""
    base = randn(rng_for("argmax_every_column"), 35, 35)
    for bad, code in ((np.nan, NAN), (np.inf, INF)):
        x = base.copy()
        x[np.arange(35), np.arange(35)] = bad    # row r: column r
        np.testing.assert_array_equal(ops_for("cpu").argmax(x), np.full(35, code, np.int32))
        np.testing.assert_array_equal(ops_for("cpu").argmax(base), argmax_reference(base))


# ----------------------------------------------------------------------------- the references themselves

def test_rope_reference_matches_transformers():
    """The neox reference is transformers' rotate_half RoPE, and the adjacent-pair reference is
    the same rotation seen through llama.cpp's GGUF Q/K row permutation."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from model_factory import permute_qk_for_gguf

    n, n_heads, head_dim, pos0 = 5, 3, 16, 11
    rng = rng_for("rope-ref")
    x = randn(rng, n, n_heads * head_dim)
    freqs = rope_freqs(head_dim)
    ang = (pos0 + np.arange(n))[:, None] * freqs.astype(np.float64)[None, :]
    emb = np.concatenate([ang, ang], axis=-1)                                   # [n, hd]
    cos, sin = torch.tensor(np.cos(emb))[None], torch.tensor(np.sin(emb))[None]
    xt = torch.tensor(x, dtype=torch.float64).reshape(1, n, n_heads, head_dim).transpose(1, 2)
    hf, _ = apply_rotary_pos_emb(xt, xt, cos, sin)
    hf = hf.transpose(1, 2).reshape(n, -1).numpy()
    np.testing.assert_allclose(rope_reference(x, freqs, pos0, n_heads, head_dim, True), hf, atol=1e-12)
    # permuting the features of each head the GGUF way turns half-split into adjacent pairs
    perm = permute_qk_for_gguf(np.arange(n_heads * head_dim)[:, None], n_heads)[:, 0]
    adj = rope_reference(x[:, perm], freqs, pos0, n_heads, head_dim, False)
    np.testing.assert_allclose(adj, hf[:, perm], atol=1e-12)


def test_attention_reference_matches_torch():
    import torch
    n, pos0, H, KV, hd = 6, 4, 6, 2, 8
    rng = rng_for("attn-ref")
    q = randn(rng, n, H * hd)
    k = randn(rng, pos0 + n, KV * hd).astype(np.float16)
    v = randn(rng, pos0 + n, KV * hd).astype(np.float16)
    ref = attention_reference(q, k, v, pos0, H, KV, hd, 0.3)
    qt = torch.tensor(q, dtype=torch.float64).reshape(n, H, hd).transpose(0, 1)                  # [H, n, hd]
    kt = torch.tensor(k.astype(np.float64)).reshape(-1, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
    vt = torch.tensor(v.astype(np.float64)).reshape(-1, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
    mask = torch.arange(pos0 + n)[None, :] <= (pos0 + torch.arange(n))[:, None]                 # [n, t]
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=0.3)
    np.testing.assert_allclose(ref, out.transpose(0, 1).reshape(n, -1).numpy(), atol=1e-10)


# ----------------------------------------------------------------------------- Gemma's ops

def gelu_tanh_reference(g):
    g = g.astype(np.float64)
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))


def test_gelu_tanh_reference_matches_torch():
    import torch
    g = np.linspace(-8, 8, 1001)
    want = torch.nn.functional.gelu(torch.tensor(g), approximate="tanh").numpy()
    np.testing.assert_allclose(gelu_tanh_reference(g), want, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 64), (1, 40000), (7, 135), (69, 576)])
def test_gelu(ops_for, backend, n, dim):
    """A plain GELU feed-forward's activation (StarCoder2), in place, against NumPy."""
    rng = rng_for("gelu", n, dim)
    x = randn(rng, n, dim, scale=4.0)
    out = ops_for(backend).gelu(x)
    # f32 tanh: relative error ~1e-7 per element (measured nmse 4.8e-16 on CPU and Metal)
    assert nmse(out, gelu_tanh_reference(x)) < 5e-15


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 64), (7, 135), (69, 576)])
def test_relu_sq(ops_for, backend, n, dim):
    """Arcee's plain feed-forward activation max(x, 0)^2, in place: exact in f32 (one rounding of a
    product), so equal to NumPy's f32 result bit for bit."""
    rng = rng_for("relu_sq", n, dim)
    x = randn(rng, n, dim, scale=4.0)
    np.testing.assert_array_equal(ops_for(backend).relu_sq(x), np.maximum(x, 0) ** 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 64), (1, 40000), (7, 135), (69, 576)])
def test_gelu_mul(ops_for, backend, n, dim):
    """GeGLU's second half: tanh-GELU of the gate times up (Gemma's feed-forward)."""
    rng = rng_for("gelu_mul", n, dim)
    g, u = randn(rng, n, dim, scale=4.0), randn(rng, n, dim, scale=4.0)
    out = ops_for(backend).gelu_mul(g, u)
    # f32 tanh, or a SIMD sigmoid(2a) on the CPU: relative error ~2e-7 per element -> nmse ~1e-14
    # (measured 1.4e-15 CPU avx512, 1.1e-15 Metal)
    assert nmse(out, gelu_tanh_reference(g) * u) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 64), (3, 49153), (9, 300)])
def test_scale_and_softcap(ops_for, backend, n, dim):
    """x * s (Gemma's embedding scale) and cap * tanh(x / cap) (its final-logit soft-capping),
    in place; logits far beyond the cap saturate at +-cap."""
    ops = ops_for(backend)
    rng = rng_for("softcap", n, dim)
    x = randn(rng, n, dim, scale=40.0)
    x[0, :2] = [1e4, -1e30]
    np.testing.assert_array_equal(ops.scale(x, 8.0), x * np.float32(8.0))   # exact: a power of two
    np.testing.assert_allclose(ops.scale(x[:, :64], 55.5), x[:, :64].astype(np.float64) * 55.5, rtol=1e-7)
    out = ops.softcap(x, 30.0)
    ref = 30.0 * np.tanh(x.astype(np.float64) / 30.0)
    # f32 tanh: a few ulp of 30 (measured 4.4e-6 absolute)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
    assert out[0, 0] == np.float32(30.0) and out[0, 1] == np.float32(-30.0)


def test_softcap_rejects_non_positive_cap(ops_for):
    with pytest.raises(ValueError, match="cap"):
        ops_for("cpu").softcap(np.ones((1, 4), np.float32), 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,heads,head_dim", [(1, 4, 32), (5, 8, 256), (17, 2, 64)])
def test_head_rms_norm_gemma_shapes(ops_for, backend, n, heads, head_dim):
    """RMSNorm of each head of q / k (Gemma 3's QK-norm): rows of [n * heads, head_dim]."""
    rng = rng_for("head_rms", n, heads, head_dim)
    x = randn(rng, n, heads * head_dim, scale=3.0)
    w = (1.0 + 0.3 * rng.standard_normal(head_dim)).astype(np.float32)
    x64 = x.astype(np.float64).reshape(n, heads, head_dim)
    ref = (x64 / np.sqrt(np.mean(x64 ** 2, axis=2, keepdims=True) + 1e-6) * w).reshape(n, -1)
    assert nmse(ops_for(backend).head_rms_norm(x, w, 1e-6), ref) < 1e-10   # as test_rms_norm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,pos0,n_heads,n_kv_heads,head_dim,window,n_ctx", [
    (1, 0, 4, 2, 32, 0, 16),        # first decode step
    (1, 700, 4, 2, 64, 0, 1024),    # decode split across threads (merged by log-sum-exp)
    (7, 9, 8, 4, 256, 0, 32),       # Gemma's head_dim 256, GQA 2:1
    (20, 0, 4, 2, 32, 8, 32),       # prefill past an 8-key window (Gemma's local layers, shrunk)
    (1, 40, 8, 4, 256, 16, 64),     # decode, windowed, head_dim 256
])
def test_attention_softcap(ops_for, backend, n, pos0, n_heads, n_kv_heads, head_dim, window, n_ctx):
    """Gemma 2's attention-logit soft-capping: scores squashed by cap * tanh(s / cap) before
    the softmax. Scores here reach ~10, well past the cap of 2, so capping changes the answer."""
    if backend == "metal" and n * (pos0 + n) > 2000:
        pytest.skip("kept small on the emulator")
    rng = rng_for("attn_softcap", n, pos0, head_dim, window)
    q, k_cache, v_cache = attention_inputs(rng, n, pos0, n_heads, n_kv_heads, head_dim, n_ctx, scale=2.0)
    scale, cap = 1.0 / np.sqrt(head_dim), 2.0
    out = ops_for(backend).attention(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window,
                                     softcap=cap)
    ref = attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window, softcap=cap)
    assert nmse(out, ref) < 1e-6     # as test_attention (measured 1.8e-13 CPU, 2.3e-14 Metal)
    plain = attention_reference(q, k_cache, v_cache, pos0, n_heads, n_kv_heads, head_dim, scale, window)
    if pos0 + n > 1:
        assert nmse(plain, ref) > 1e-3   # the cap matters in these cases


def test_attention_rejects_negative_softcap(ops_for):
    q = np.ones((1, 4 * 16), np.float32)
    cache = np.zeros((8, 4 * 16), np.float16)
    with pytest.raises(ValueError, match="softcap"):
        ops_for("cpu").attention(q, cache, cache, 0, 4, 4, 16, 0.25, 0, softcap=-1.0)


@pytest.mark.parametrize("dtype_id", [F32, F16, BF16, Q8_0, Q4_0, Q5_1], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("backend,rows,cols,n", FUSED_CASES)
def test_matmul_geglu(ops_for, backend, dtype_id, rows, cols, n):
    """gelu_tanh(w_gate x) * (w_up x): GeGLU's gate and up projections (Metal decode: one fused
    pass, as matmul_swiglu)."""
    rng = rng_for("matmul_geglu", dtype_id, rows, cols, n, backend)
    raw_g, raw_u = encode_weights(randn(rng, rows, cols), dtype_id), encode_weights(randn(rng, rows, cols), dtype_id)
    x = randn(rng, n, cols, scale=0.3)
    g = np.asarray(x, np.float64) @ decode_weights(raw_g, dtype_id, rows, cols).T
    u = np.asarray(x, np.float64) @ decode_weights(raw_u, dtype_id, rows, cols).T
    out = ops_for(backend).matmul_geglu(raw_g, raw_u, dtype_id, rows, cols, x)
    assert out.shape == (n, rows)
    # gelu' <= 1.13 as silu' <= 1.1: matmul_swiglu's bound
    assert nmse(out, gelu_tanh_reference(g) * u) < 4 * matmul_bound(backend, dtype_id, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim", [(1, 64), (7, 1152), (33, 2304)])
def test_add_rms_norm(ops_for, backend, n, dim):
    """x + rms_norm(y) * w: Gemma's post-attention / post-feed-forward norm with its residual add."""
    rng = rng_for("add_rms_norm", n, dim)
    x, y = randn(rng, n, dim, scale=10.0), randn(rng, n, dim, scale=3.0)
    w = (1.0 + 0.3 * rng.standard_normal(dim)).astype(np.float32)
    y64 = y.astype(np.float64)
    ref = x + y64 / np.sqrt(np.mean(y64 ** 2, axis=1, keepdims=True) + 1e-6) * w
    # f32 rounding of the norm and of the add (measured 7.0e-16 CPU, 8.1e-16 Metal)
    assert nmse(ops_for(backend).add_rms_norm(x, y, w, 1e-6), ref) < 5e-15


# ----------------------------------------------------------------------------- one-part activations

def one_part_activations(x: np.ndarray) -> np.ndarray:
    """x [n, cols] as the CPU's one-part (activations="int8", llama.cpp's Q8_0) activations, in
    float64: per 32-block d = max|x| / 127 (f32), q = rint(x * (1 / d)) (f32, ties to even),
    x ~= d q. Written from docs/design.md's definition, not from the kernels."""
    xb = np.asarray(x, np.float32).reshape(x.shape[0], -1, 32)
    d = np.abs(xb).max(-1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    q = np.rint(xb * inv)
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(x.shape)


@pytest.fixture(scope="module")
def ops_int8(core):
    return core.Ops("cpu", activations="int8")


# activations="int8": the decode kernels (fewer than 16 tokens) and the prefill int8 GEMM (the
# types cpu_info() lists) multiply the weights by x rounded to one int8 a value, so against
# NumPy's product of the dequantized weights and one_part_activations(x) only f32 summation and
# scaling remain. Measured nmse over every type and shape below, on the 2-vCPU EPYC Zen 4 VM:
# avx512-vnni <= 2.6e-14 (Q4_K 33x512 x 3), generic <= 4.9e-14, avx2 <= 1.5e-13 (Q5_1 33x512 x 3,
# its own float order) -> 1e-12. Against the f32 x the same outputs are 1.1e-5..5.8e-5 off (x's
# int8 rounding): the second assertion requires that, so a path left on two parts would fail.
ONE_PART_NMSE = 1e-12
ONE_PART_SHAPES = [(7, 256, 1), (33, 512, 3), (40, 256, 15), (40, 256, 16), (100, 512, 33)]  # K-quants: x256


@pytest.mark.parametrize("dtype_id", QUANTIZED, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("rows,cols,n", ONE_PART_SHAPES, ids=lambda v: str(v))
def test_matmul_one_part_activations(ops_int8, dtype_id, rows, cols, n):
    rng = rng_for("matmul-one-part", dtype_id, rows, cols, n)
    if dtype_id in K_QUANTS or dtype_id == IQ4_XS:
        raw = random_kquant_weights(rng, dtype_id, rows, cols)
    else:
        raw = encode_weights(randn(rng, rows, cols), dtype_id)
    x = randn(rng, n, cols)
    wd = decode_weights(raw, dtype_id, rows, cols)
    out = ops_int8.matmul(raw, dtype_id, rows, cols, x)
    exact = np.asarray(x, np.float64) @ wd.T
    if not cpu_uses_int8_activations(n, DTYPE_NAMES[dtype_id]):   # the f32 panel GEMM: x unrounded
        assert nmse(out, exact) < F32_EXACT_NMSE
        return
    err = nmse(out, one_part_activations(x) @ wd.T)
    print(f"{DTYPE_NAMES[dtype_id]} [{rows}x{cols}] x {n}: nmse {err:.3g} vs one part, {nmse(out, exact):.3g} vs f32")
    assert err < ONE_PART_NMSE, f"{DTYPE_NAMES[dtype_id]} [{rows}x{cols}] x {n}: nmse {err:.3g}"
    assert nmse(out, exact) > 1000 * err, "not one-part activations"


def test_ops_reject_bad_activations(core):
    with pytest.raises(ValueError, match="activations must be 'int16' or 'int8', got 'int4'"):
        core.Ops("cpu", activations="int4")
