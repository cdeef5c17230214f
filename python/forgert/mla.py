"""Multi-head latent attention (DeepSeek V2 / V3): the tensors the core reads, from the file's.

A DeepSeek layer stores K and V compressed: attn_kv_a_mqa maps a token to a latent row
[kv_lora latent | rope shared key], and attn_kv_b ([n_heads * (nope + v), kv_lora]: per head its
K rows then its V rows; or, as newer converters split it, attn_k_b [n_heads, kv_lora, nope]
transposed and attn_v_b [n_heads, v, kv_lora]) expands the normed latent into each head's K and
V. The core runs K and V as ordinary per-head rows, so each is one matmul from the latent row:

  attn_k_from_latent  [n_heads * head_dim, kv_lora + rope]: head h's rows are [rope part: the
                      shared key copied (an identity on the rope columns); nope part: k_b_h]
  attn_v_from_latent  [n_heads * head_dim, kv_lora + rope]: head h's rows are v_b_h, then zero
                      rows up to head_dim (K and V share the cache's layout)

built from the stored weights (a quantized weight dequantized once; the identity and zeros are
exact) in F32 where kv_b is F32, else in F16: F16 holds an F16 or BF16 weight's values (BF16's
8-bit mantissas fit F16's 11 within its range) and rounds a quantized one's by at most 2^-11 of
each value, far inside the quantization's own error. The core rotates the first rope dims of each head, where DeepSeek
puts the rope part last: the query's rows are reordered per head to [rope, nope], a copy of whole
rows (quantized rows stay as stored). Memory: the two expansions cost 2 * n_heads * head_dim *
(kv_lora + rope) * 4 bytes a layer in F32 (DeepSeek-V2-Lite: 14 MB a layer, 380 MB in all; half
that in F16), and the cache holds full heads (2 * n_heads * head_dim halves per token and layer),
not the latent.
"""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .errors import ModelFormatError
from .ggml_types import F16, F32, row_nbytes
from .quants import dequantize
from .weights import WeightTensor


# The stored tensors latent_attention_tensors() turns into the core's (a file's, not the core's).
LATENT_SOURCE_TENSORS = (".attn_kv_b.weight", ".attn_k_b.weight", ".attn_v_b.weight")


def _f32_matrix(t: WeightTensor, rows: int, cols: int) -> np.ndarray:
    try:
        return dequantize(np.asarray(t.data).reshape(-1), t.type_id, rows, cols).astype(np.float32)
    except ValueError as e:   # a type forgert does not read
        raise ModelFormatError(f"{t.source}: tensor '{t.name}': {e}") from None


def _need(tensors: dict, name: str, source: str) -> WeightTensor:
    t = tensors.get(name)
    if t is None:
        raise ModelFormatError(f"{source}: missing tensor '{name}'")
    return t


def _rope_first(t: WeightTensor, heads: int, nope: int, rope: int) -> WeightTensor:
    """The query projection with each head's rows reordered from [nope, rope] to [rope, nope]."""
    rows, cols = t.shape
    if rows != heads * (nope + rope):
        raise ModelFormatError(f"{t.source}: tensor '{t.name}' has {rows} rows, expected {heads} heads x "
                               f"{nope + rope}")
    per_row = row_nbytes(t.type_id, cols)
    b = np.asarray(t.data).reshape(heads, nope + rope, per_row)
    out = np.ascontiguousarray(np.concatenate([b[:, nope:], b[:, :nope]], axis=1)).reshape(-1)
    return WeightTensor(t.name, out, t.type_id, t.shape, t.source)


def _kv_b(tensors: dict, p: str, heads: int, nope: int, v: int, lora: int, source: str):
    """(k_b [heads, nope, lora], v_b [heads, v, lora]) float32 from attn_kv_b or attn_k_b + attn_v_b,
    and whether they were stored as F32."""
    kv = tensors.pop(p + "attn_kv_b.weight", None)
    if kv is not None:
        if tuple(kv.shape) != (heads * (nope + v), lora):
            raise ModelFormatError(f"{kv.source}: tensor '{kv.name}' has shape {tuple(kv.shape)}, expected "
                                   f"{(heads * (nope + v), lora)}")
        w = _f32_matrix(kv, heads * (nope + v), lora).reshape(heads, nope + v, lora)
        return w[:, :nope], w[:, nope:], kv.type_id == F32
    kb, vb = _need(tensors, p + "attn_k_b.weight", source), _need(tensors, p + "attn_v_b.weight", source)
    tensors.pop(p + "attn_k_b.weight")
    tensors.pop(p + "attn_v_b.weight")
    for t, want in ((kb, (heads, lora, nope)), (vb, (heads, v, lora))):
        if tuple(t.shape) != want:
            raise ModelFormatError(f"{t.source}: tensor '{t.name}' has shape {tuple(t.shape)}, expected {want} "
                                   f"(heads, rows, cols)")
    k = _f32_matrix(kb, heads * lora, nope).reshape(heads, lora, nope).transpose(0, 2, 1)
    return k, _f32_matrix(vb, heads * v, lora).reshape(heads, v, lora), kb.type_id == F32 and vb.type_id == F32


def latent_attention_tensors(cfg: ModelConfig, tensors: dict, source: str) -> dict:
    """tensors (canonical name -> WeightTensor) with each layer's attn_kv_b (or attn_k_b and
    attn_v_b) replaced by attn_k_from_latent / attn_v_from_latent and its query rows put rope
    first; unchanged for a model without latent attention."""
    if not cfg.mla_kv_lora:
        return tensors
    out = dict(tensors)
    heads, hd, rope, lora, v = cfg.n_heads, cfg.head_dim, cfg.rotated_dims, cfg.mla_kv_lora, cfg.mla_v_head_dim
    nope = hd - rope
    for layer in range(cfg.n_layers):
        p = f"blk.{layer}."
        q = p + ("attn_q_b.weight" if cfg.mla_q_lora else "attn_q.weight")
        out[q] = _rope_first(_need(out, q, source), heads, nope, rope)
        k_b, v_b, exact = _kv_b(out, p, heads, nope, v, lora, source)
        dtype, type_id = (np.float32, F32) if exact else (np.float16, F16)
        wk = np.zeros((heads, hd, lora + rope), np.float32)
        wk[:, :rope, lora:] = np.eye(rope, dtype=np.float32)   # the shared rope key, into every head
        wk[:, rope:, :lora] = k_b
        wv = np.zeros((heads, hd, lora + rope), np.float32)
        wv[:, :v, :lora] = v_b
        for name, w in ((p + "attn_k_from_latent.weight", wk), (p + "attn_v_from_latent.weight", wv)):
            out[name] = WeightTensor(name, w.astype(dtype).reshape(-1).view(np.uint8), type_id, (heads * hd, lora + rope),
                                     source)
    return out
