"""Split fused projections (Phi-3's qkv_proj and gate_up_proj, GLM-4's gate_up_proj) into the
engine's separate tensors, zero-copy.

A weight's rows are stored one after another, and a quantized row is a whole number of blocks
(cols is a multiple of the block size), so a range of rows is a contiguous byte range: each part
is a slice of the same mapped bytes, never a copy.
"""
from __future__ import annotations

from .config import ModelConfig
from .errors import ModelFormatError
from .ggml_types import row_nbytes
from .weights import WeightTensor


def split_rows(t: WeightTensor, parts: list) -> dict:
    """parts: [(name, n_rows)] covering t's rows in order -> {name: WeightTensor}, each a view of
    t.data (no copy)."""
    rows, cols = t.shape
    if sum(n for _, n in parts) != rows:
        want = " + ".join(f"{n} ({name})" for name, n in parts)
        raise ModelFormatError(f"{t.source}: tensor '{t.name}' has {rows} rows, expected {want}")
    stride = row_nbytes(t.type_id, cols)
    out, row = {}, 0
    for name, n in parts:
        out[name] = WeightTensor(name, t.data[row * stride:(row + n) * stride], t.type_id, (n, cols), t.source)
        row += n
    return out


# The architectures whose files fuse projections (llama.cpp's converter keeps them fused).
FUSED_ARCHS = ("phi3", "glm4")


def split_fused(cfg: ModelConfig, tensors: dict) -> dict:
    """tensors (canonical name -> WeightTensor) with each fused tensor (FUSED_ARCHS) replaced by its parts:
    blk.N.attn_qkv.weight -> attn_{q,k,v} (rows q_dim, kv_dim, kv_dim) and blk.N.ffn_up.weight
    (2 * ffn_dim rows; fused unless the layer also has an ffn_gate) -> ffn_gate (the first half:
    transformers' chunk(2), llama.cpp's swiglu gate) and ffn_up. A file holding both a fused tensor
    and one of its parts is refused. Other architectures' tensors pass through unchanged."""
    if cfg.arch == "qwen3next":   # its recurrent layers' fused projections (qwen3next.py)
        from .qwen3next import split_projections
        return split_projections(cfg, tensors)
    if cfg.arch not in FUSED_ARCHS:
        return tensors
    q, kv, ffn = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_dim
    out = dict(tensors)
    for name, t in tensors.items():
        if not name.startswith("blk."):
            continue
        if name.endswith(".attn_qkv.weight"):
            prefix = name[:-len("attn_qkv.weight")]
            parts = [(prefix + "attn_q.weight", q), (prefix + "attn_k.weight", kv), (prefix + "attn_v.weight", kv)]
        elif name.endswith(".ffn_up.weight") and name[:-len("up.weight")] + "gate.weight" not in tensors:
            prefix = name[:-len("ffn_up.weight")]
            parts = [(prefix + "ffn_gate.weight", ffn), (prefix + "ffn_up.weight", ffn)]
        else:
            continue
        for part, _ in parts:
            if part in tensors and part != name:
                raise ModelFormatError(f"{t.source}: tensor '{part}' given both on its own and inside '{name}'")
        del out[name]
        out.update(split_rows(t, parts))
    return out
