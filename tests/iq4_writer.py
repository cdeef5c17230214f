"""A test-side NumPy quantizer to IQ4_NL and IQ4_XS (the gguf package can only dequantize them),
and llama.cpp's IQ4_XS / IQ4_NL tensor mix for tiny models. Nearest-table-value rounding under a
scale set by each block's largest weight, not llama.cpp's scale search: any valid blocks do, as
the references run on the weights dequantized by gguf.quants.dequantize. Nothing here imports
forgert.

Layouts (ggml-common.h): IQ4_NL [d f16, qs 16 B]: w = d * VALUES[q], q 4-bit indices with
weight j in the low nibble of qs[j] and weight j + 16 in its high nibble. IQ4_XS [d f16,
scales_h u16, scales_l 4 B, qs 128 B]: sub-block j (32 weights, qs[16 j ..] as one IQ4_NL
block's) is d * (ls[j] - 32) * VALUES[q], ls 6 bits: low 4 in scales_l[j / 2] >> 4 (j % 2),
high 2 in scales_h >> 2 j.
"""
from __future__ import annotations

import numpy as np

VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def _nearest_index(v: np.ndarray) -> np.ndarray:
    """float [..., n] in table units -> uint8 indices of the nearest VALUES"""
    return np.abs(v[..., None] - VALUES).argmin(axis=-1).astype(np.uint8)


def _pack(q: np.ndarray) -> np.ndarray:
    """uint8 [..., 32] indices -> [..., 16] bytes: weight j low nibble, j + 16 high"""
    return q[..., :16] | (q[..., 16:] << 4)


def _signed_max(b: np.ndarray) -> np.ndarray:
    """[..., n] -> [...]: the value of largest magnitude, with its sign"""
    return np.take_along_axis(b, np.abs(b).argmax(axis=-1)[..., None], axis=-1)[..., 0]


def quantize_iq4_nl(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 32 == 0) -> uint8 [rows, cols / 32 * 18]"""
    rows = x.shape[0]
    b = np.asarray(x, np.float32).reshape(-1, 32)
    d = (_signed_max(b) / VALUES[0]).astype(np.float16)                 # the largest weight -> -127
    df = d.astype(np.float32)
    inv = np.where(df != 0, 1.0 / np.where(df != 0, df, 1.0), 0.0).astype(np.float32)
    q = _nearest_index(b * inv[:, None])
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), _pack(q)], axis=1)
    return out.reshape(rows, -1)


def quantize_iq4_xs(x: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols % 256 == 0) -> uint8 [rows, cols / 256 * 136]"""
    rows = x.shape[0]
    sb = np.asarray(x, np.float32).reshape(-1, 8, 32)                   # [super-blocks, sub-block, 32]
    scale = _signed_max(sb) / VALUES[0]                                 # [n, 8] wanted sub-block scales
    d = (np.abs(scale).max(axis=1) / 32.0).astype(np.float16)            # ls - 32 in -32..31
    df = d.astype(np.float32)
    inv_d = np.where(df != 0, 1.0 / np.where(df != 0, df, 1.0), 0.0).astype(np.float32)
    ls = np.clip(np.rint(scale * inv_d[:, None]), -32, 31).astype(np.int32) + 32   # [n, 8], 0..63
    dl = df[:, None] * (ls - 32).astype(np.float32)
    inv = np.where(dl != 0, 1.0 / np.where(dl != 0, dl, 1.0), 0.0).astype(np.float32)
    q = _nearest_index(sb * inv[:, :, None])                            # [n, 8, 32]
    scales_h = ((ls >> 4) << (2 * np.arange(8))).sum(axis=1).astype("<u2")       # [n]
    scales_l = ((ls[:, 0::2] & 15) | ((ls[:, 1::2] & 15) << 4)).astype(np.uint8)  # [n, 4]
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), scales_h.view(np.uint8).reshape(-1, 2), scales_l,
                          _pack(q).reshape(-1, 128)], axis=1)
    return out.reshape(rows, -1)


def mix_overrides(tensors: dict, mix: str, n_heads: int, n_kv_heads: int) -> dict:
    """{name: (raw bytes, GGMLQuantizationType)} in llama.cpp's IQ4_XS or IQ4_NL mix without an
    importance matrix (src/llama-quant.cpp): the output matrix (and tied token embeddings) Q6_K
    (Q8_0 for rows that are not whole super-blocks); attn_v Q5_K when 4+ query heads share a KV
    head; ffn_down of the first n_layer / 8 layers Q5_K; every other matrix the mix's type. Rows
    that are not whole super-blocks fall back as llama.cpp's do: Q5_K to Q5_1, IQ4_XS to IQ4_NL."""
    import gguf

    import kquant_writer as kw
    T = gguf.GGMLQuantizationType
    n_layers = 1 + max(int(name.split(".")[1]) for name in tensors if name.startswith("blk."))
    output_like = ("output.weight",) if "output.weight" in tensors else ("token_embd.weight",)   # tied
    out = {}
    for name, w in tensors.items():
        if w.ndim != 2:
            continue   # norms, biases stay F32
        w = np.ascontiguousarray(w, np.float32)
        whole = w.shape[1] % 256 == 0
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        if name in output_like:
            out[name] = (kw.quantize_q6_k(w), T.Q6_K) if whole else (gguf.quants.quantize(w, T.Q8_0), T.Q8_0)
        elif ((name.endswith("attn_v.weight") and n_heads // n_kv_heads >= 4)
              or (name.endswith("ffn_down.weight") and layer < n_layers // 8)):
            out[name] = (kw.quantize_q5_k(w), T.Q5_K) if whole else (gguf.quants.quantize(w, T.Q5_1), T.Q5_1)
        elif mix == "IQ4_XS" and whole:
            out[name] = (quantize_iq4_xs(w), T.IQ4_XS)
        else:
            out[name] = (quantize_iq4_nl(w), T.IQ4_NL)
    return out
