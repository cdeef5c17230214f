"""NumPy quantizers for the types `forgert quantize` writes beyond quants.py's Q8_0 / Q4_0 / Q4_1:
Q5_0 / Q5_1 (ggml's reference rounding, no search), and the K-quants (Q2_K..Q6_K) and IQ4_NL /
IQ4_XS with llama.cpp's scale searches (ggml-quants.c, the paths `llama-quantize` takes without an
importance matrix), vectorized over every sub-block of a chunk of rows at once.

Each type quantizes in two steps:
  1. per sub-block, search the scale (and min) that minimise a weighted squared (Q2_K: absolute)
     error of the rounded block: try a few candidate scales around the one that maps the
     block's extreme value onto the last level, refit the scale (and min) by least squares
     for each candidate's rounding, keep the best;
  2. per 256-weight super-block, quantize those scales to 4/6/8 bits against one f16 factor
     (d = largest scale / levels), then round every weight again with its quantized scale.
Rounding is ties-to-even in float32, as ggml's nearest_int; sums run left to right and scales
are divided, not multiplied by an inverse, in ggml's order of float32 operations, so nearly every
block is byte for byte llama.cpp's (bench/results/llamacpp_quant_mixes.md). Layouts: ggml-common.h (and
src/cpp/core/quant_blocks.h); the gguf package's dequantizers read them back in the tests.
"""
from __future__ import annotations

import numpy as np

from .quants import IQ4_VALUES as IQ4_LEVELS
from .quants import QK, blocks_of_32

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)   # a sub-block whose largest |x| is below this is all zero
# Nearest level of v, a tie going to the upper level as ggml's best_index_int8 does. The
# midpoints between levels are multiples of 1/2, so the index is constant on each cell
# [k/2, (k+1)/2): a table over the cells (v clamped to +-136, past both end levels) replaces a
# search.
_IQ4_MIDPOINTS = (IQ4_LEVELS[1:] + IQ4_LEVELS[:-1]) / 2
_IQ4_CELLS = 272
_IQ4_INDEX_OF_CELL = np.searchsorted(_IQ4_MIDPOINTS, np.arange(-_IQ4_CELLS, _IQ4_CELLS) / 2, side="right")

F32 = np.float32


def _f16(v: np.ndarray) -> tuple:
    """The f16 rounding of v: (values as float32, bytes uint8 [n, 2])."""
    h = np.asarray(v, np.float32).astype("<f2")
    return h.astype(np.float32), h.view(np.uint8).reshape(-1, 2)


def _safe_inverse(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(v != 0, F32(1) / np.where(v != 0, v, F32(1)), F32(0)).astype(np.float32)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """[S, n] -> [S]: the first value of largest magnitude in each row (its sign kept)."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]


# ----------------------------------------------------------------------------- scale searches

def _sequential_sum(a: np.ndarray) -> np.ndarray:
    """[S, n] -> [S]: the float32 sum of each row taken left to right, as ggml's C loops add (NumPy's
    own sum adds pairwise, which rounds differently and flips a few blocks' choices)."""
    acc = a[:, 0].astype(np.float32)
    for j in range(1, a.shape[1]):
        acc = acc + a[:, j]
    return acc


def search_scale_min(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """Asymmetric search (ggml's make_qkx2_quants): x, w float32 [S, n] -> (scale [S], min [S]),
    x ~ scale * q - min with q in 0..nmax and min >= 0. Tries nstep + 1 scales
    (nmax + rmin + rdelta * i) / (max - lo), lo the best fit's offset so far (at first min(x, 0));
    for each rounding, the weighted least-squares scale and offset (clamped to <= 0); keeps the
    lowest weighted error (|e| if use_mad). Every float32 operation in ggml's order, sums left to
    right, so that the same blocks come out."""
    hi = x.max(axis=1)
    lo = np.minimum(x.min(axis=1), F32(0))
    flat = hi == lo
    sum_w = _sequential_sum(w)
    sum_x = _sequential_sum(w * x)

    def error(scale, offset, q):
        diff = scale[:, None] * q + offset[:, None] - x
        return _sequential_sum(w * (np.abs(diff) if use_mad else diff * diff))

    def rounded(iscale, offset):
        return np.clip(np.rint(iscale[:, None] * (x - offset[:, None])), 0, nmax)

    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(nmax) / (hi - lo)
        scale, offset = (F32(1) / iscale).astype(np.float32), lo
        best = error(scale, offset, rounded(iscale, offset))
        for i in range(nstep + 1):
            levels = F32(rmin) + F32(rdelta) * F32(i) + F32(nmax)
            q = rounded((levels / (hi - offset)).astype(np.float32), offset)
            wq = w * q
            sum_l, sum_l2, sum_xl = _sequential_sum(wq), _sequential_sum(wq * q), _sequential_sum(wq * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            ok = det > 0
            this_scale = ((sum_w * sum_xl - sum_x * sum_l) / det).astype(np.float32)
            this_offset = ((sum_l2 * sum_x - sum_l * sum_xl) / det).astype(np.float32)
            positive = this_offset > 0          # the offset would lift every weight: fit the scale alone
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale).astype(np.float32)
            this_offset = np.where(positive, F32(0), this_offset)
            cur = error(this_scale, this_offset, q)
            better = ok & (cur < best)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            offset = np.where(better, this_offset, offset)
    scale = np.where(flat, F32(0), scale)
    return scale.astype(np.float32), (-np.where(flat, lo, offset)).astype(np.float32)


def search_scale_symmetric(x, nmax: int):
    """Symmetric search (ggml's make_qx_quants, weights x^2): x float32 [S, n] -> scale [S],
    x ~ scale * q with q in -nmax..nmax-1. Tries 19 scales around -nmax / (signed absmax) and
    keeps the one whose least-squares fit explains most of x (largest sum(w q x)^2 / sum(w q^2)).
    ggml's float32 operations in its order, sums left to right."""
    mx = _signed_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    w = x * x

    def fit(levels):
        iscale = (-levels / mx).astype(np.float32)
        q = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)
        return _sequential_sum(w * x * q), _sequential_sum(w * q * q)

    with np.errstate(divide="ignore", invalid="ignore"):
        sumlx, suml2 = fit(F32(nmax))
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(np.float32)
        best = scale * sumlx
        for i in range(-9, 10):
            if i == 0:
                continue
            sumlx, suml2 = fit(F32(nmax) + F32(0.1) * F32(i))
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            scale = np.where(better, sumlx / suml2, scale).astype(np.float32)
            best = np.where(better, scale * sumlx, best)
    return np.where(zero, F32(0), scale).astype(np.float32)


def search_scale_q3(x, nmax: int = 4, passes: int = 5):
    """Q3_K's symmetric search (ggml's make_q3_quants with rmse): x float32 [S, n] -> scale [S].
    Starts from q = round(-nmax * x / signed absmax), then moves one weight at a time to its
    best level given the others (weights x^2), keeping a move only if it raises the
    least-squares fit; a pass with no move is final, so running all passes changes nothing."""
    mx = _signed_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    inv_mx = _safe_inverse(np.where(zero, F32(0), mx))
    q = np.clip(np.rint(F32(-nmax) * inv_mx[:, None] * x), -nmax, nmax - 1)
    w = x * x
    wx = w * x
    sumlx = (wx * q).sum(axis=1)
    suml2 = (w * q * q).sum(axis=1)
    for _ in range(passes):
        for i in range(x.shape[1]):
            qi, wi, xi, wxi = q[:, i], w[:, i], x[:, i], wx[:, i]
            slx = sumlx - wxi * qi
            sl2 = suml2 - wi * qi * qi
            can = slx > 0
            new = np.clip(np.rint(xi * sl2 * _safe_inverse(np.where(can, slx, F32(0)))), -nmax, nmax - 1)
            slx_new = slx + wxi * new
            sl2_new = sl2 + wi * new * new
            take = can & (new != qi) & (sl2_new > 0) & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new)
            q[:, i] = np.where(take, new, qi)
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
    return np.where(zero | (suml2 <= 0), F32(0), sumlx * _safe_inverse(suml2)).astype(np.float32)


def _iq4_index(v: np.ndarray) -> np.ndarray:
    """float32 [...] -> index of the nearest IQ4 level, int [...]"""
    cell = np.clip(np.floor(v * F32(2)), -_IQ4_CELLS, _IQ4_CELLS - 1).astype(np.int32)
    return _IQ4_INDEX_OF_CELL[cell + _IQ4_CELLS]


def search_scale_iq4(x, tries: int = 7):
    """IQ4's search (ggml's quantize_row_iq4_nl_impl, no importance matrix): x float32 [S, 32]
    -> scale [S], x ~ scale * IQ4_LEVELS[i]. Weights x^2; the scales that put the block's
    extreme value at level -127 + t (t = -tries..tries) each give a rounding whose
    least-squares scale is kept if it fits better."""
    mx = _signed_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    w = x * x

    def fit(inv_scale):
        lv = IQ4_LEVELS[_iq4_index(inv_scale[:, None] * x)]
        wl = w * lv
        return _sequential_sum(wl * x), _sequential_sum(wl * lv)

    with np.errstate(divide="ignore", invalid="ignore"):
        d = (-mx / IQ4_LEVELS[0]).astype(np.float32)                    # d = max / 127
        sumqx, sumq2 = fit((F32(1) / d).astype(np.float32))
        scale = np.where(sumq2 > 0, sumqx / sumq2, F32(0)).astype(np.float32)
        best = scale * sumqx
        for t in range(-tries, tries + 1):
            sumqx, sumq2 = fit((F32(t + IQ4_LEVELS[0]) / mx).astype(np.float32))
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            scale = np.where(better, sumqx / sumq2, scale).astype(np.float32)
            best = np.where(better, scale * sumqx, best)
    return np.where(zero, F32(0), scale).astype(np.float32)


# ----------------------------------------------------------------------------- packing helpers

def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """q int [n, 256] in 0..3 -> uint8 [n, 64]: byte 32h + l holds q[128h + 32j + l] at bits 2j."""
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _pack_nibbles_in_halves(q: np.ndarray, group: int) -> np.ndarray:
    """q int [n, k * group] in 0..15 -> uint8 [n, k * group / 2]: in each group, byte l holds
    q[l] (low) and q[l + group / 2] (high)."""
    q = q.astype(np.uint8).reshape(q.shape[0], -1, 2, group // 2)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(q.shape[0], -1)


def _super_blocks(x: np.ndarray, sub: int) -> np.ndarray:
    """float32 [rows, cols] -> [rows * cols / 256, 256 / sub, sub]"""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % QK_K:
        raise ValueError(f"K-quants need a 2-D array with a multiple of {QK_K} columns, got {x.shape}")
    return x.reshape(-1, QK_K // sub, sub)


# ----------------------------------------------------------------------------- the types

def _quantize_q4_k_q5_k(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> np.ndarray:
    sb = _super_blocks(x, 32)                                           # [n, 8, 32]
    flat = sb.reshape(-1, 32)
    weights = np.sqrt(_sequential_sum(flat * flat) / F32(32))[:, None] + np.abs(flat)   # rms + |x|
    scale, mn = search_scale_min(flat, weights, nmax, rmin, 0.1, nstep, use_mad=False)
    scale, mn = scale.reshape(-1, 8), mn.reshape(-1, 8)
    max_scale = np.maximum(scale.max(axis=1), F32(0))
    max_min = np.maximum(mn.max(axis=1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(np.float32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(np.float32)
        sc = np.clip(np.rint(scale * inv_scale[:, None]), 0, 63).astype(np.uint8)  # [n, 8]
        m = np.clip(np.rint(mn * inv_min[:, None]), 0, 63).astype(np.uint8)
        d, d_bytes = _f16(max_scale / F32(63))
        dmin, dmin_bytes = _f16(max_min / F32(63))
        eff_d = d[:, None] * sc                                             # [n, 8]
        eff_m = dmin[:, None] * m
        q = np.clip(np.rint((sb + eff_m[:, :, None]) / eff_d[:, :, None]), 0, nmax)
    q = np.where(eff_d[:, :, None] != 0, q, 0).astype(np.uint8)          # ggml leaves a zero-scale sub-block 0
    packed = np.empty((len(sb), 12), np.uint8)                          # 6-bit sc, m (get_scale_min_k4)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    parts = [d_bytes, dmin_bytes, packed]
    if nmax == 31:   # Q5_K: bit j of qh[l] is bit 4 of sub-block j's quant l
        parts.append(((q >> 4) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8))
    parts.append(_pack_nibbles_in_halves((q & 15).reshape(len(sb), -1), 64))
    return np.concatenate(parts, axis=1)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows * cols / 256, 144]"""
    return _quantize_q4_k_q5_k(x, 15, rmin=-1.0, nstep=20)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows * cols / 256, 176]"""
    return _quantize_q4_k_q5_k(x, 31, rmin=-0.5, nstep=15)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows * cols / 256, 84]:
    [scales 16 (sc | m << 4), qs 64, d f16, dmin f16]"""
    sb = _super_blocks(x, 16)                                           # [n, 16, 16]
    flat = sb.reshape(-1, 16)
    scale, mn = search_scale_min(flat, np.abs(flat), 3, -0.5, 0.1, 15, use_mad=True)
    scale, mn = scale.reshape(-1, 16), mn.reshape(-1, 16)
    max_scale = np.maximum(scale.max(axis=1), F32(0))
    max_min = np.maximum(mn.max(axis=1), F32(0))
    sc = np.clip(np.rint(scale * (F32(15) * _safe_inverse(max_scale))[:, None]), 0, 15).astype(np.uint8)
    m = np.clip(np.rint(mn * (F32(15) * _safe_inverse(max_min))[:, None]), 0, 15).astype(np.uint8)
    d, d_bytes = _f16(max_scale / F32(15))
    dmin, dmin_bytes = _f16(max_min / F32(15))
    eff_d, eff_m = d[:, None] * sc, dmin[:, None] * m
    q = np.clip(np.rint((sb + eff_m[:, :, None]) * _safe_inverse(eff_d)[:, :, None]), 0, 3)
    return np.concatenate([sc | (m << 4), _pack_2bit(q.reshape(len(sb), -1)), d_bytes, dmin_bytes], axis=1)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows * cols / 256, 110]:
    [hmask 32, qs 64 (low 2 bits), scales 12 (6-bit, + 32), d f16]"""
    sb = _super_blocks(x, 16)                                           # [n, 16, 16]
    scale = search_scale_q3(sb.reshape(-1, 16)).reshape(-1, 16)
    max_scale = _signed_absmax(scale)
    inv = F32(-32) * _safe_inverse(max_scale)                           # the largest scale -> -32
    sc = np.clip(np.rint(scale * inv[:, None]), -32, 31)                # [n, 16] signed
    d, d_bytes = _f16(_safe_inverse(inv))
    q = np.clip(np.rint(sb * _safe_inverse(d[:, None] * sc)[:, :, None]), -4, 3).astype(np.int32) + 4
    q = q.reshape(len(sb), 8, 32)                                       # [n, j, l]: weight 32j + l
    hmask = ((q >> 2) << np.arange(8)[None, :, None]).sum(axis=1).astype(np.uint8)   # bit j of hmask[l]
    u = np.where(max_scale[:, None] != 0, sc + 32, 0).astype(np.uint8)  # [n, 16] 0..63
    scales = np.empty((len(sb), 12), np.uint8)
    scales[:, 0:8] = (u[:, 0:8] & 15) | ((u[:, 8:16] & 15) << 4)
    hi = (u >> 4).reshape(-1, 4, 4)                                     # [n, j // 4, j % 4]
    scales[:, 8:12] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return np.concatenate([hmask, _pack_2bit((q & 3).reshape(len(sb), -1)), scales, d_bytes], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows * cols / 256, 210]:
    [ql 128, qh 64, scales 16 x int8, d f16]"""
    sb = _super_blocks(x, 16)                                           # [n, 16, 16]
    scale = search_scale_symmetric(sb.reshape(-1, 16), 32).reshape(-1, 16)
    max_scale = _signed_absmax(scale)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (F32(-128) / np.where(zero, F32(1), max_scale)).astype(np.float32)  # the largest scale -> -128
        sc = np.minimum(127, np.rint(scale * inv[:, None])).astype(np.int8)
        d, d_bytes = _f16(F32(1) / inv)
        eff_d = d[:, None] * sc                                             # [n, 16]
        q = np.clip(np.rint(sb / eff_d[:, :, None]), -32, 31)
    q = np.where(eff_d[:, :, None] != 0, q, -32).astype(np.int32) + 32    # a zero-scale sub-block: 0s, as ggml's all-zero one
    q = np.where(zero[:, None, None], 0, q).astype(np.uint8).reshape(-1, 2, 4, 32)   # [n, half, quarter, l]
    ql = np.concatenate([(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4),
                         (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)], axis=2).reshape(-1, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4)
          | ((q[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=1)


def quantize_iq4_nl(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 32 == 0) -> uint8 [rows * cols / 32, 18]: [d f16, qs 16]"""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % 32:
        raise ValueError(f"IQ4_NL needs a 2-D array with a multiple of 32 columns, got {x.shape}")
    b = x.reshape(-1, 32)
    scale = search_scale_iq4(b)
    _, d_bytes = _f16(scale)
    idx = _iq4_index(b * _safe_inverse(scale)[:, None])                # rounded with the f32 scale
    return np.concatenate([d_bytes, _pack_nibbles_in_halves(idx, 32)], axis=1)


def quantize_iq4_xs(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows * cols / 256, 136]:
    [d f16, scales_h u16 (2 bits per block), scales_l 4 (4 bits per block), qs 128]"""
    sb = _super_blocks(x, 32)                                           # [n, 8, 32]
    scale = search_scale_iq4(sb.reshape(-1, 32)).reshape(-1, 8)
    d = -_signed_absmax(scale) / F32(32)                                # 6-bit block scales, -32..31
    _, d_bytes = _f16(d)
    ls = np.clip(np.rint(scale * _safe_inverse(d)[:, None]), -32, 31)   # [n, 8]
    idx = _iq4_index(sb * _safe_inverse(d[:, None] * ls)[:, :, None])  # the f32 d, as ggml
    u = (ls + 32).astype(np.uint16)
    scales_h = ((u >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(axis=1, dtype=np.uint16)
    scales_l = ((u[:, 0::2] & 15) | ((u[:, 1::2] & 15) << 4)).astype(np.uint8)
    return np.concatenate([d_bytes, scales_h.astype("<u2").view(np.uint8).reshape(-1, 2), scales_l,
                           _pack_nibbles_in_halves(idx.reshape(len(sb), -1), 32)], axis=1)

# ----------------------------------------------------------------------------- Q5_0 / Q5_1

def _q5_bytes(q: np.ndarray) -> tuple:
    """q uint8 [n, 32] in 0..31 -> (qh uint8 [n, 4]: bit i of the little-endian uint32 is q[i]'s
    bit 4, qs uint8 [n, 16]: byte j holds q[j] & 15 (low) and q[j + 16] & 15 (high))"""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(QK, dtype=np.uint32)
    qh = bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)
    return qh, _pack_nibbles_in_halves(q & 15, QK)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows * cols / 32, 22]: [d f16, qh 4, qs 16];
    d = m / -16 (m the value of largest magnitude), q = min(31, trunc(x / d + 16.5)), w = d * (q - 16)"""
    b = blocks_of_32(x)
    d = (_signed_absmax(b) / F32(-16)).astype(np.float32)
    q = np.minimum(31, np.trunc(b * _safe_inverse(d)[:, None] + F32(16.5))).astype(np.uint8)
    return np.concatenate([_f16(d)[1], *_q5_bytes(q)], axis=1)


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows * cols / 32, 24]: [d f16, m f16, qh 4, qs 16];
    d = (max - min) / 31, q = trunc((x - min) / d + 0.5), w = d * q + min"""
    b = blocks_of_32(x)
    lo, hi = b.min(axis=1), b.max(axis=1)
    d = ((hi - lo) / F32(31)).astype(np.float32)
    q = np.minimum(31, np.trunc((b - lo[:, None]) * _safe_inverse(d)[:, None] + F32(0.5))).astype(np.uint8)
    return np.concatenate([_f16(d)[1], _f16(lo)[1], *_q5_bytes(q)], axis=1)


# ----------------------------------------------------------------------------- by chunks of rows

def by_row_chunks(quantize, max_weights: int = 1 << 16):
    """quantize(x [r, cols]) -> bytes, run on chunks of rows on every allowed CPU (NumPy releases
    the GIL; small chunks keep the searches' float32 temporaries in cache), returned as uint8
    [rows, row bytes]."""
    def run(x: np.ndarray) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor
        from .cpu_topology import allowed_cpus
        rows, cols = x.shape
        step = max(1, max_weights // max(cols, 1))
        starts = range(0, rows, step)
        one = lambda r: quantize(x[r:r + step]).reshape(min(step, rows - r), -1)   # noqa: E731
        if len(starts) == 1:
            return one(0)
        with ThreadPoolExecutor(max_workers=min(len(starts), len(allowed_cpus()))) as pool:
            return np.concatenate(list(pool.map(one, starts)), axis=0)
    return run


def _quantizers() -> dict:
    from .ggml_types import IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K
    return {Q5_0: by_row_chunks(quantize_q5_0, 1 << 20), Q5_1: by_row_chunks(quantize_q5_1, 1 << 20),
            **{qtype: by_row_chunks(fn) for qtype, fn in (
                (Q2_K, quantize_q2_k), (Q3_K, quantize_q3_k), (Q4_K, quantize_q4_k), (Q5_K, quantize_q5_k),
                (Q6_K, quantize_q6_k), (IQ4_NL, quantize_iq4_nl), (IQ4_XS, quantize_iq4_xs))}}


# ggml type id -> quantize(float32 [rows, cols]) -> uint8 [rows, row bytes]
QUANTIZERS = _quantizers()
