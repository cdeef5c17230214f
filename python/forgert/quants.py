"""NumPy quantizers and dequantizers for the block layouts in src/cpp/core/quant_blocks.h.

The quantizers follow ggml's reference (quantize_row_*_ref) in float32 so files match what
llama.cpp would write:
  Q8_0: d = amax / 127, q = round(x / d) (half away from zero)           w = d * q
  Q4_0: d = m / -8 where m is the value of largest magnitude,
        q = min(15, trunc(x / d + 8.5))                                     w = d * (q - 8)
  Q4_1: d = (max - min) / 15, q = min(15, trunc((x - min) / d + 0.5))       w = d * q + min
Nibbles: byte j holds q[j] (low) and q[j + 16] (high).
Q5_0 / Q5_1 (dequantized only): w = d * (q - 16) / d * q + m, q's fifth bit i in qh (little-endian
uint32).
Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (256-weight super-blocks, layouts in quant_blocks.h) are dequantized only.
IQ4_NL / IQ4_XS (dequantized only): w = d * IQ4_VALUES[q] / (d * (ls - 32)) * IQ4_VALUES[q] per
32-weight sub-block of a 256-weight super-block, nibbles as Q4_0's.
The IQ lattice types IQ1_S .. IQ3_S (dequantized only, by the native CPU code: their codebooks
live in src/cpp/core/iq_grids.h): bit for bit gguf.quants.dequantize (tests/test_cpu_iq_lattice.py).
MXFP4 (gpt-oss's experts; `forgert quantize --type mxfp4_moe`): a scale byte e, then 16 bytes of
E2M1 codes, nibbles as Q4_0's: w = 2^(e - 128) * MXFP4_VALUES[q] (the table holds twice the E2M1
values). Quantized as ggml's quantize_row_mxfp4_ref: e = floor(log2 amax) - 2 + 127 (0 for an
all-zero block), q the nearest level, the first in table order on a tie.
"""
from __future__ import annotations

import numpy as np

from .ggml_types import (BF16, F16, F32, IQ4_NL, IQ4_XS, IQ_LATTICE, MXFP4, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0,
                         type_name)

QK = 32
# IQ4_NL / IQ4_XS levels (ggml-common.h kvalues_iq4nl): a non-uniform 4-bit grid
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
MXFP4_VALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)


def blocks_of_32(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> [rows * cols/32, 32]"""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % QK:
        raise ValueError(f"quantizing needs a 2-D array with a multiple of {QK} columns, got {x.shape}")
    return x.reshape(-1, QK)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype("<f2").view(np.uint8).reshape(-1, 2)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.uint8)
    return q[:, :QK // 2] | (q[:, QK // 2:] << 4)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, cols/32 * 34]"""
    b = blocks_of_32(x)
    d = (np.abs(b).max(axis=1) / np.float32(127)).astype(np.float32)
    v = b * _inverse(d)[:, None]
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    out = np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)
    return out.reshape(x.shape[0], -1)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, cols/32 * 18]"""
    b = blocks_of_32(x)
    m = b[np.arange(len(b)), np.argmax(np.abs(b), axis=1)]   # first value of largest magnitude
    d = (m / np.float32(-8)).astype(np.float32)
    v = b * _inverse(d)[:, None] + np.float32(8.5)
    q = np.minimum(15, np.trunc(v)).astype(np.uint8)
    out = np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)
    return out.reshape(x.shape[0], -1)


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, cols/32 * 20]"""
    b = blocks_of_32(x)
    lo, hi = b.min(axis=1), b.max(axis=1)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    v = (b - lo[:, None]) * _inverse(d)[:, None] + np.float32(0.5)
    q = np.minimum(15, np.trunc(v)).astype(np.uint8)
    out = np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)
    return out.reshape(x.shape[0], -1)


def _e8m0_half(e: np.ndarray) -> np.ndarray:
    """MXFP4 scale byte -> 2^(e - 128) as float32 (ggml_e8m0_to_fp32_half; e < 2 are subnormal)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << np.uint32(23)).astype(np.uint32)
    return bits.view(np.float32)


def quantize_mxfp4(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, cols/32 * 17]"""
    b = blocks_of_32(x)
    amax = np.abs(b).max(axis=1)
    with np.errstate(divide="ignore"):
        e = np.where(amax > 0, np.floor(np.log2(amax)) - np.float32(2) + np.float32(127), 0)
    # C casts the float to uint8; a block below 2^-125 has no defined byte there, 0 here
    e = np.clip(e, 0, 255).astype(np.uint8)
    d = _e8m0_half(e)[:, None]                                         # [n, 1]
    # best_index_mxfp4: levels in table order, a later one taken only when strictly closer
    q = np.zeros(b.shape, np.uint8)
    best = np.abs(MXFP4_VALUES[0] * d - b)
    for i in range(1, len(MXFP4_VALUES)):
        err = np.abs(MXFP4_VALUES[i] * d - b)
        closer = err < best
        q[closer], best = i, np.where(closer, err, best)
    out = np.concatenate([e[:, None], _pack_nibbles(q)], axis=1)
    return out.reshape(x.shape[0], -1)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)


def dequantize(data: np.ndarray, type_id: int, rows: int, cols: int) -> np.ndarray:
    """uint8 bytes of a tensor -> float32 [rows, cols]"""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if type_id == F32:
        return data.view("<f4").reshape(rows, cols).astype(np.float32)
    if type_id == F16:
        return data.view("<f2").reshape(rows, cols).astype(np.float32)
    if type_id == BF16:
        return (data.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(rows, cols)
    if type_id == Q8_0:
        b = data.reshape(-1, 34)
        d = b[:, :2].copy().view("<f2").astype(np.float32)
        w = d * b[:, 2:].view(np.int8).astype(np.float32)
    elif type_id == Q4_0:
        b = data.reshape(-1, 18)
        d = b[:, :2].copy().view("<f2").astype(np.float32)
        w = d * (_unpack_nibbles(b[:, 2:]) - 8)
    elif type_id == Q4_1:
        b = data.reshape(-1, 20)
        d = b[:, :2].copy().view("<f2").astype(np.float32)
        m = b[:, 2:4].copy().view("<f2").astype(np.float32)
        w = d * _unpack_nibbles(b[:, 4:]) + m
    elif type_id == Q5_0:
        b = data.reshape(-1, 22)
        w = _f16(b[:, :2]) * (_q5_quants(b[:, 2:6], b[:, 6:]) - 16)
    elif type_id == Q5_1:
        b = data.reshape(-1, 24)
        w = _f16(b[:, :2]) * _q5_quants(b[:, 4:8], b[:, 8:]) + _f16(b[:, 2:4])
    elif type_id == Q4_K:
        w = _dequantize_q4_k(data.reshape(-1, 144))
    elif type_id == Q2_K:
        w = _dequantize_q2_k(data.reshape(-1, 84))
    elif type_id == Q3_K:
        w = _dequantize_q3_k(data.reshape(-1, 110))
    elif type_id == Q5_K:
        w = _dequantize_q4_k(data.reshape(-1, 176))
    elif type_id == Q6_K:
        w = _dequantize_q6_k(data.reshape(-1, 210))
    elif type_id == IQ4_NL:
        b = data.reshape(-1, 18)
        w = _f16(b[:, :2]) * IQ4_VALUES[_unpack_nibbles(b[:, 2:]).astype(np.int64)]
    elif type_id == IQ4_XS:
        w = _dequantize_iq4_xs(data.reshape(-1, 136))
    elif type_id in IQ_LATTICE:
        w = _dequantize_native(data, type_id, rows, cols)
    elif type_id == MXFP4:
        b = data.reshape(-1, 17)
        scale = np.ldexp(np.float32(1), b[:, :1].astype(np.int32) - 128).astype(np.float32)
        w = scale * MXFP4_VALUES[_unpack_nibbles(b[:, 1:]).astype(np.int64)]
    else:
        raise ValueError(f"cannot dequantize type {type_name(type_id)}")
    return w.reshape(rows, cols)


_native_ops = None


def _dequantize_native(data: np.ndarray, type_id: int, rows: int, cols: int) -> np.ndarray:
    """[rows, cols] f32 through the CPU backend's row dequantization (its embedding lookup)."""
    global _native_ops
    from . import _core
    if _native_ops is None:
        _native_ops = _core.Ops("cpu")
    return _native_ops.get_rows(data, type_id, rows, cols, np.arange(rows, dtype=np.int32))


def _f16(b: np.ndarray) -> np.ndarray:
    """uint8 [n, 2] -> float32 [n, 1]"""
    return b.copy().view("<f2").astype(np.float32)


def _q5_quants(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """uint8 qh [n, 4], qs [n, 16] -> float32 quants 0..31 [n, 32]"""
    high = (qh.copy().view("<u4") >> np.arange(QK, dtype=np.uint32)) & 1      # [n, 32]
    return (_unpack_nibbles(qs) + 16 * high).astype(np.float32)


def _dequantize_q4_k(b: np.ndarray) -> np.ndarray:
    """uint8 [n, 144] (Q4_K) or [n, 176] (Q5_K: qh [32] before qs) -> float32 [n, 256]"""
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    s = b[:, 4:16].astype(np.int32)                                      # [n, 12]
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)  # [n, 8]
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    qs = b[:, -128:].reshape(-1, 4, 32)                                  # [n, 4 chunks, 32]
    q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)  # [n, sub-block, 32]
    if b.shape[1] == 176:   # Q5_K: bit j of qh[l] is bit 4 of sub-block j's quant l
        qh = b[:, 16:48].astype(np.int32)                                # [n, 32]
        q += 16 * ((qh[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1).astype(np.float32)
    w = (d * sc)[:, :, None] * q - (dmin * m)[:, :, None]
    return w.reshape(-1, 256).astype(np.float32)


def _dequantize_q2_k(b: np.ndarray) -> np.ndarray:
    """uint8 [n, 84] -> float32 [n, 256]"""
    s = b[:, 0:16].astype(np.int32)                                      # [n, 16]
    qs = b[:, 16:80].reshape(-1, 2, 1, 32).astype(np.int32)             # [n, half, 1, l]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    q = ((qs >> (2 * np.arange(4).reshape(1, 1, 4, 1))) & 3).astype(np.float32).reshape(-1, 16, 16)
    w = (d * (s & 15).astype(np.float32))[:, :, None] * q - (dmin * (s >> 4).astype(np.float32))[:, :, None]
    return w.reshape(-1, 256).astype(np.float32)


def _dequantize_q3_k(b: np.ndarray) -> np.ndarray:
    """uint8 [n, 110] -> float32 [n, 256]"""
    hmask = b[:, 0:32].astype(np.int32)                                 # [n, 32]
    qs = b[:, 32:96].reshape(-1, 2, 1, 32).astype(np.int32)             # [n, half, 1, l]
    s = b[:, 96:108].astype(np.int32)                                    # [n, 12]
    low = np.concatenate([s[:, 0:8] & 15, s[:, 0:8] >> 4], axis=1)      # [n, 16]
    i = np.arange(16)
    sc = (low | (((s[:, 8 + i % 4] >> (2 * (i // 4))) & 3) << 4)) - 32
    d = _f16(b[:, 108:110])
    j = np.arange(4).reshape(1, 1, 4, 1)
    q = (qs >> (2 * j)) & 3                                              # [n, half, j, l]
    hb = (hmask[:, None, None, :] >> (4 * np.arange(2).reshape(1, 2, 1, 1) + j)) & 1
    q = (q - 4 * (1 - hb)).astype(np.float32).reshape(-1, 16, 16)
    w = (d * sc.astype(np.float32))[:, :, None] * q
    return w.reshape(-1, 256).astype(np.float32)


def _dequantize_q6_k(b: np.ndarray) -> np.ndarray:
    """uint8 [n, 210] -> float32 [n, 256]"""
    ql = b[:, :128].reshape(-1, 2, 2, 32).astype(np.int32)              # [n, half, ql + 32 * k, l]
    qh = b[:, 128:192].reshape(-1, 2, 1, 32).astype(np.int32)           # [n, half, 1, l]
    scales = b[:, 192:208].view(np.int8).astype(np.float32)             # [n, 16]
    d = _f16(b[:, 208:210])
    low = np.concatenate([ql & 15, ql >> 4], axis=2)                    # [n, half, 4 quarters, 32]
    high = (qh >> (2 * np.arange(4).reshape(1, 1, 4, 1))) & 3
    q = (low | (high << 4)).astype(np.float32) - 32
    w = (d * scales)[:, :, None] * q.reshape(-1, 16, 16)
    return w.reshape(-1, 256).astype(np.float32)


def _dequantize_iq4_xs(b: np.ndarray) -> np.ndarray:
    """uint8 [n, 136] -> float32 [n, 256]"""
    d = _f16(b[:, 0:2])                                                  # [n, 1]
    scales_h = b[:, 2:4].copy().view("<u2").astype(np.int32)             # [n, 1]
    scales_l = b[:, 4:8].astype(np.int32)                                # [n, 4]
    j = np.arange(8)
    ls = ((scales_l[:, j // 2] >> (4 * (j % 2))) & 15) | (((scales_h >> (2 * j)) & 3) << 4)  # [n, 8]
    q = _unpack_nibbles(b[:, 8:].reshape(-1, 16)).astype(np.int64).reshape(-1, 8, 32)    # [n, sub-block, 32]
    w = (d * (ls - 32).astype(np.float32))[:, :, None] * IQ4_VALUES[q]
    return w.reshape(-1, 256).astype(np.float32)


QUANTIZERS = {Q8_0: quantize_q8_0, Q4_0: quantize_q4_0, Q4_1: quantize_q4_1, MXFP4: quantize_mxfp4}
