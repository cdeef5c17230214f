"""Multi-head latent attention (DeepSeek V2 / V3): the tensors the core reads, from the file's.

A DeepSeek layer stores K and V compressed: attn_kv_a_mqa maps a token to a latent row
[kv_lora latent | rope shared key], and attn_kv_b ([n_heads * (nope + v), kv_lora]: per head its
K rows then its V rows; or, as newer converters split it, attn_k_b [n_heads, kv_lora, nope]
transposed and attn_v_b [n_heads, v, kv_lora]) expands the normed latent into each head's K and
V. The core never expands it: it caches the latent row itself (kv_lora + rope f16 values per token
and layer) and absorbs the expansions into the query and the output (llama.cpp's deepseek2 graph
does the same):

  score_h = q_rope_h . k_rope + q_nope_h . (k_b_h latent) = [q_rope_h | k_b_h^T q_nope_h] . row
  out_h   = v_b_h (sum_t p_ht latent_t)

so attention runs on the cached rows as one KV head shared by all heads, and each head's output
latent goes through v_b_h. The core reads, per layer:

  attn_k_b_heads  [n_heads * kv_lora, nope]: head h's k_b_h^T (the query's absorption)
  attn_v_b_heads  [n_heads * v, kv_lora]:    head h's v_b_h (the output's expansion)

in F32 where the stored weight is F32, else in F16: F16 holds an F16 or BF16 weight's values
(BF16's 8-bit mantissas fit F16's 11 within its range) and rounds a quantized one's by at most
2^-11 of each value, far inside the quantization's own error. The core rotates the first rope
dims of each head and of the cached row, where DeepSeek puts the rope part last: the query's rows
are reordered per head to [rope, nope] and attn_kv_a_mqa's to [rope key, latent], copies of whole
rows (quantized rows stay as stored). Memory: the two matrices are the size of attn_kv_b, and the
cache holds (kv_lora + rope) halves per token and layer (GLM-4.7-Flash, 47 layers of 512 + 64:
54 KB a token), not the 2 * n_heads * head_dim of full heads.
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


def _reorder_rows(t: WeightTensor, blocks: int, first: int, second: int) -> WeightTensor:
    """t with each of its `blocks` row blocks [first rows, second rows] reordered to [second, first]."""
    rows, cols = t.shape
    if rows != blocks * (first + second):
        raise ModelFormatError(f"{t.source}: tensor '{t.name}' has {rows} rows, expected {blocks} x "
                               f"{first + second}")
    per_row = row_nbytes(t.type_id, cols)
    b = np.asarray(t.data).reshape(blocks, first + second, per_row)
    out = np.ascontiguousarray(np.concatenate([b[:, first:], b[:, :first]], axis=1)).reshape(-1)
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
    attn_v_b) replaced by attn_k_b_heads / attn_v_b_heads, its query rows put rope first and its
    latent rows [rope key, latent]; unchanged for a model without latent attention."""
    if not cfg.mla_kv_lora:
        return tensors
    out = dict(tensors)
    heads, hd, rope, lora, v = cfg.n_heads, cfg.head_dim, cfg.rotated_dims, cfg.mla_kv_lora, cfg.mla_v_head_dim
    nope = hd - rope
    for layer in range(cfg.n_layers):
        p = f"blk.{layer}."
        q = p + ("attn_q_b.weight" if cfg.mla_q_lora else "attn_q.weight")
        out[q] = _reorder_rows(_need(out, q, source), heads, nope, rope)
        kv_a = p + "attn_kv_a_mqa.weight"
        out[kv_a] = _reorder_rows(_need(out, kv_a, source), 1, lora, rope)
        k_b, v_b, exact = _kv_b(out, p, heads, nope, v, lora, source)
        dtype, type_id = (np.float32, F32) if exact else (np.float16, F16)
        for name, w in ((p + "attn_k_b_heads.weight", np.ascontiguousarray(k_b.transpose(0, 2, 1))),
                        (p + "attn_v_b_heads.weight", v_b)):
            rows = w.shape[0] * w.shape[1]
            out[name] = WeightTensor(name, w.astype(dtype).reshape(-1).view(np.uint8), type_id, (rows, w.shape[2]),
                                     source)
    return out
