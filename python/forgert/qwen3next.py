"""Qwen3-Next (Qwen3-Next-80B-A3B, Qwen3-Coder-Next; GGUF qwen3next, HF qwen3_next): Qwen3.5's
predecessor, the same Gated DeltaNet and gated-attention layers (deltanet.py reads its config
keys), with every layer's MLP a mixture of experts and a sigmoid-gated shared expert. Where its
files differ from Qwen3.5's:

- HF fuses a recurrent layer's input projections per key head: in_proj_qkvz's rows are, key head
  after key head, [q (kd), k (kd), v of its per_k value heads (per_k * vd), z of them (per_k * vd)];
  in_proj_ba's [b (per_k), a (per_k)]. llama.cpp's converter de-interleaves in_proj_qkvz into
  attn_qkv (every q, every k, every v) and attn_gate (z); older GGUFs keep it whole as ssm_in, in
  HF's order. It writes in_proj_ba unchanged as ssm_ba.
- The value heads stay in HF's grouped order in every format (llama.cpp's qwen3next graph repeats
  each key head over its own value heads), so ssm_v_tiled is off and nothing is reordered.
- RoPE is plain 1-D partial rotary (no multimodal sections).

The core's delta_net() reads q | k | v as one contiguous matmul output and beta, alpha as matrices
of their own: the interleaved tensors become those by a row gather (a row of any ggml type is a
whole number of blocks, so a permutation of rows is one of byte ranges, quantized or not). With a
single key head the parts are already contiguous row ranges and are views, no copy; otherwise each
layer's ssm_in / ssm_ba is copied once at load (ssm_in only in older GGUFs and HF checkpoints;
ssm_ba is 2 * n_v_heads rows).
"""
from __future__ import annotations

import numpy as np

from .errors import ModelFormatError
from .fused_tensors import split_rows
from .ggml_types import row_nbytes
from .weights import WeightTensor

GGUF_ARCH, HF_MODEL_TYPE = "qwen3next", "qwen3_next"
# HF names of the fused projections -> their canonical (GGUF) names; the rest are Qwen3.5's.
HF_LAYER_NAMES = {"linear_attn.in_proj_qkvz.weight": "ssm_in.weight", "linear_attn.in_proj_ba.weight": "ssm_ba.weight"}


def _gather_rows(t: WeightTensor, name: str, index: np.ndarray) -> WeightTensor:
    """A copy of t's rows `index`, in that order, whatever t's type."""
    rows, cols = t.shape
    stride = row_nbytes(t.type_id, cols)
    data = np.ascontiguousarray(np.asarray(t.data).reshape(rows, stride)[index]).reshape(-1)
    return WeightTensor(name, data, t.type_id, (len(index), cols), t.source)


def _check(t: WeightTensor, rows: int, what: str, cfg) -> None:
    if len(t.shape) != 2 or t.shape[0] != rows:
        raise ModelFormatError(f"{t.source}: tensor '{t.name}' has shape {list(t.shape)}, expected {rows} rows "
                               f"({what} for {cfg.ssm_k_heads} key heads of {cfg.ssm_k_dim} and "
                               f"{cfg.ssm_v_heads} value heads of {cfg.ssm_v_dim})")


def split_qkvz(cfg, t: WeightTensor, prefix: str) -> dict:
    """ssm_in / in_proj_qkvz [nk * (2 kd + 2 per_k vd), dim] -> attn_qkv [2 nk kd + nv vd, dim]
    (every q, every k, every v) and attn_gate [nv vd, dim] (z), as llama.cpp's converter writes them."""
    nk, kd, vd = cfg.ssm_k_heads, cfg.ssm_k_dim, cfg.ssm_v_dim
    per = cfg.ssm_v_heads // nk * vd                       # one key head's value (and z) rows
    group = 2 * kd + 2 * per
    _check(t, nk * group, "per key head q, k, v and z", cfg)
    qkv, gate = prefix + "attn_qkv.weight", prefix + "attn_gate.weight"
    if nk == 1:   # [q, k, v, z]: already in order
        parts = split_rows(t, [(qkv, group - per), (gate, per)])
        return {qkv: parts[qkv], gate: parts[gate]}
    start = np.arange(nk)[:, None] * group                # [nk, 1]: each key head's first row
    q = (start + np.arange(kd)).reshape(-1)
    k = (start + kd + np.arange(kd)).reshape(-1)
    v = (start + 2 * kd + np.arange(per)).reshape(-1)
    z = (start + 2 * kd + per + np.arange(per)).reshape(-1)
    return {qkv: _gather_rows(t, qkv, np.concatenate([q, k, v])), gate: _gather_rows(t, gate, z)}


def split_ba(cfg, t: WeightTensor, prefix: str) -> dict:
    """ssm_ba / in_proj_ba [nk * 2 per_k, dim] -> ssm_beta and ssm_alpha [nv, dim], value heads grouped."""
    nk, per = cfg.ssm_k_heads, cfg.ssm_v_heads // cfg.ssm_k_heads
    _check(t, 2 * cfg.ssm_v_heads, "per key head b and a", cfg)
    beta, alpha = prefix + "ssm_beta.weight", prefix + "ssm_alpha.weight"
    if nk == 1:   # [b, a]
        return split_rows(t, [(beta, per), (alpha, per)])
    start = np.arange(nk)[:, None] * 2 * per
    return {beta: _gather_rows(t, beta, (start + np.arange(per)).reshape(-1)),
            alpha: _gather_rows(t, alpha, (start + per + np.arange(per)).reshape(-1))}


def _split(cfg, tensors: dict, which: tuple) -> dict:
    out = dict(tensors)
    for name, t in tensors.items():
        head = name.split(".", 2)
        if len(head) != 3 or head[0] != "blk" or head[2] not in which:
            continue
        prefix, part = f"blk.{head[1]}.", head[2]
        parts = (split_qkvz if part == "ssm_in.weight" else split_ba)(cfg, t, prefix)
        for new in parts:
            if new in tensors:
                raise ModelFormatError(f"{t.source}: tensor '{new}' given both on its own and inside '{name}'")
        del out[name]
        out.update(parts)
    return out


def split_projections(cfg, tensors: dict) -> dict:
    """The core's tensors from the fused ones (fused_tensors.split_fused): ssm_in (older GGUFs)
    -> attn_qkv and attn_gate, ssm_ba -> ssm_beta and ssm_alpha."""
    return _split(cfg, tensors, ("ssm_in.weight", "ssm_ba.weight"))


def hf_tensors(cfg, tensors: dict) -> dict:
    """An HF checkpoint's tensors with in_proj_qkvz as the attn_qkv and attn_gate llama.cpp's
    converter writes (in_proj_ba stays whole, as ssm_ba: the same in both)."""
    return _split(cfg, tensors, ("ssm_in.weight",))
