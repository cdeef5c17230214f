"""A test-side NumPy quantizer to Q4_K and Q6_K (the gguf package can only dequantize them),
and a tiny Llama in llama.cpp's Q4_K_M mix. Simple per-sub-block min/max rounding, not
llama.cpp's scale search: any valid blocks do, as the references run on the weights
dequantized by gguf.quants.dequantize. Nothing here imports forgert.

Layouts (ggml-common.h): Q4_K [d f16, dmin f16, scales 12 B, qs 128 B]: sub-block j (32
weights) is d * sc[j] * q - dmin * m[j] with 6-bit sc, m packed in `scales`; Q6_K [ql 128 B,
qh 64 B, scales 16 x int8, d f16]: sub-block j (16 weights) is d * scales[j] * (q - 32).
"""
from __future__ import annotations

import numpy as np


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows, cols / 256 * 144]"""
    return _quantize_q4_k_q5_k(x, 15)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows, cols / 256 * 176]: Q4_K's scales
    and mins, quants 0..31 with bit 4 of sub-block j's quant l in bit j of qh[l]."""
    return _quantize_q4_k_q5_k(x, 31)


def _quantize_q4_k_q5_k(x: np.ndarray, qmax: int) -> np.ndarray:
    rows, cols = x.shape
    sb = np.asarray(x, np.float32).reshape(-1, 8, 32)                   # [super-blocks, sub-block, 32]
    lo = np.minimum(sb.min(axis=2), 0.0)                                # w = scale * q - mn, q in 0..qmax
    scale = (sb.max(axis=2) - lo) / float(qmax)
    mn = -lo
    d = _f16(scale.max(axis=1) / 63.0)                                  # [n]
    dmin = _f16(mn.max(axis=1) / 63.0)
    inv = lambda v: np.where(v > 0, 1.0 / np.maximum(v.astype(np.float32), 1e-30), 0.0)
    sc = np.clip(np.rint(scale * inv(d)[:, None]), 0, 63).astype(np.uint8)    # [n, 8]
    m = np.clip(np.rint(mn * inv(dmin)[:, None]), 0, 63).astype(np.uint8)
    eff_d = d.astype(np.float32)[:, None] * sc                          # [n, 8]
    eff_m = dmin.astype(np.float32)[:, None] * m
    q = np.clip(np.rint((sb + eff_m[:, :, None]) * inv(eff_d)[:, :, None]), 0, qmax).astype(np.uint8)
    packed = np.zeros((len(sb), 12), np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    qh = [] if qmax == 15 else [((q >> 4) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)]
    q = (q & 15).reshape(-1, 4, 2, 32)                                  # [n, chunk of 64, half, 32]
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, *qh, qs],
                         axis=1)
    return out.reshape(rows, -1)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows, cols / 256 * 84]: 16 sub-blocks of 16,
    w = d * sc * q - dmin * m with sc, m 4 bits (scales[i] = sc | m << 4), q 0..3 packed as Q3_K's
    low bits."""
    rows, cols = x.shape
    sb = np.asarray(x, np.float32).reshape(-1, 16, 16)                  # [n, sub-block, 16]
    lo = np.minimum(sb.min(axis=2), 0.0)
    scale = (sb.max(axis=2) - lo) / 3.0
    mn = -lo
    d = _f16(scale.max(axis=1) / 15.0)
    dmin = _f16(mn.max(axis=1) / 15.0)
    inv = lambda v: np.where(v > 0, 1.0 / np.maximum(v.astype(np.float32), 1e-30), 0.0)
    sc = np.clip(np.rint(scale * inv(d)[:, None]), 0, 15).astype(np.int32)     # [n, 16]
    m = np.clip(np.rint(mn * inv(dmin)[:, None]), 0, 15).astype(np.int32)
    eff_d = d.astype(np.float32)[:, None] * sc
    eff_m = dmin.astype(np.float32)[:, None] * m
    q = np.clip(np.rint((sb + eff_m[:, :, None]) * inv(eff_d)[:, :, None]), 0, 3).astype(np.int32)
    q = q.reshape(-1, 2, 4, 32)                                         # [n, half, j, l]
    qs = (q << (2 * np.arange(4).reshape(1, 1, 4, 1))).sum(axis=2).astype(np.uint8).reshape(-1, 64)
    scales = (sc | (m << 4)).astype(np.uint8)
    out = np.concatenate([scales, qs, d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2)], axis=1)
    return out.reshape(rows, cols // 256 * 84)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows, cols / 256 * 110]: 16 sub-blocks of 16,
    w = d * sc * q with sc 6-bit signed (stored + 32), q in -4..3 (stored + 4: 2 bits in qs, bit 2
    in hmask)."""
    rows, cols = x.shape
    sb = np.asarray(x, np.float32).reshape(-1, 16, 16)                  # [n, sub-block, 16]
    amax_i = np.abs(sb).argmax(axis=2)
    vmax = np.take_along_axis(sb, amax_i[:, :, None], axis=2)[:, :, 0]   # signed value of largest |x|
    scale = -vmax / 4.0                                                 # q = -4 at the extreme
    imax = np.abs(scale).argmax(axis=1)
    smax = np.take_along_axis(scale, imax[:, None], axis=1)[:, 0]
    d = _f16(-smax / 32.0)                                              # sc = -32 at the largest scale
    inv = lambda v: np.where(v != 0, 1.0 / np.where(v != 0, v, 1).astype(np.float32), 0.0)
    sc = np.clip(np.rint(scale * inv(d)[:, None]), -32, 31).astype(np.int32)   # [n, 16]
    eff = d.astype(np.float32)[:, None] * sc
    q = (np.clip(np.rint(sb * inv(eff)[:, :, None]), -4, 3) + 4).astype(np.int32).reshape(-1, 2, 4, 32)  # [n, h, j, l]
    qs = ((q & 3) << (2 * np.arange(4).reshape(1, 1, 4, 1))).sum(axis=2).astype(np.uint8).reshape(-1, 64)
    hmask = (((q >> 2) & 1) << (4 * np.arange(2).reshape(1, 2, 1, 1) + np.arange(4).reshape(1, 1, 4, 1)))
    hmask = hmask.sum(axis=(1, 2)).astype(np.uint8)                     # [n, 32]
    u = (sc + 32).astype(np.uint8)                                      # [n, 16], 0..63
    scales = np.zeros((len(sb), 12), np.uint8)
    scales[:, 0:8] = (u[:, 0:8] & 15) | ((u[:, 8:16] & 15) << 4)
    for k in range(4):
        scales[:, 8 + k] = sum(((u[:, k + 4 * g] >> 4) & 3) << (2 * g) for g in range(4))
    out = np.concatenate([hmask, qs, scales, d.view(np.uint8).reshape(-1, 2)], axis=1)
    return out.reshape(rows, cols // 256 * 110)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows, cols / 256 * 210]"""
    rows, cols = x.shape
    sb = np.asarray(x, np.float32).reshape(-1, 16, 16)                  # [super-blocks, sub-block, 16]
    scale = np.abs(sb).max(axis=2) / 31.0                               # q - 32 in -31..31
    d = _f16(scale.max(axis=1) / 127.0)
    inv = lambda v: np.where(v > 0, 1.0 / np.maximum(v.astype(np.float32), 1e-30), 0.0)
    sc = np.clip(np.rint(scale * inv(d)[:, None]), 0, 127).astype(np.int8)   # [n, 16]
    eff = d.astype(np.float32)[:, None] * sc
    q = (np.clip(np.rint(sb * inv(eff)[:, :, None]), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)
    # [n, half, quarter, l]: quarters 0/1 take the low nibbles of ql[l], ql[32 + l], quarters 2/3
    # their high nibbles; qh[l] holds the top 2 bits of quarter k at bits 2k..2k+1.
    ql = np.concatenate([(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4),
                         (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)], axis=2).reshape(-1, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4)
          | ((q[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    return out.reshape(rows, cols // 256 * 210)


# llama.cpp's Q4_K_M (llama-quant.cpp): Q6_K for output.weight and for attn_v / ffn_down in the
# layers its use_more_bits picks (here in every layer: both types in every layer's kernels);
# Q4_K for everything else 2-D, token embeddings included. A matrix whose rows are not whole
# 256-weight super-blocks (SmolLM2's 576 columns) falls back as llama.cpp's does: Q4_K to Q5_0,
# Q5_K to Q5_1, Q6_K to Q8_0 (gguf-py quantizes all three).
Q6_K_TENSORS = ("attn_v.weight", "ffn_down.weight", "output.weight")


def q4_k_m_overrides(tensors: dict) -> dict:
    """{name: (raw bytes, GGMLQuantizationType)} for model_factory.write_gguf's raw_overrides."""
    return mix_overrides(tensors, "Q4_K_M")


def mix_overrides(tensors: dict, mix: str) -> dict:
    """The Q4_K_M or Q5_K_M mix (Q5_K_M: Q5_K where Q4_K_M has Q4_K, falling back to Q5_1); "Q3_K" and
    "Q2_K": that base type where Q4_K_M has Q4_K (falling back to Q4_0), with Q4_K_M's Q6_K tensors (a
    simplification of llama.cpp's Q3_K_M / Q2_K mixes, which take Q4_K / Q5_K there)."""
    import gguf
    T = gguf.GGMLQuantizationType
    base, base_quantize, fallback = {"Q4_K_M": (T.Q4_K, quantize_q4_k, T.Q5_0),
                                     "Q5_K_M": (T.Q5_K, quantize_q5_k, T.Q5_1),
                                     "Q3_K": (T.Q3_K, quantize_q3_k, T.Q4_0),
                                     "Q2_K": (T.Q2_K, quantize_q2_k, T.Q4_0)}[mix]
    out = {}
    for name, w in tensors.items():
        if w.ndim != 2:
            continue   # norms, biases, rope factors stay F32
        q6 = name.endswith(Q6_K_TENSORS)
        if w.shape[1] % 256:
            qtype = T.Q8_0 if q6 else fallback
            out[name] = (gguf.quants.quantize(np.ascontiguousarray(w, np.float32), qtype), qtype)
        elif q6:
            out[name] = (quantize_q6_k(w), gguf.GGMLQuantizationType.Q6_K)
        else:
            out[name] = (base_quantize(w), base)
    return out
