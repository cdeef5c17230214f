"""Split fused projections (Phi-3's qkv_proj and gate_up_proj, GLM-4's gate_up_proj) into the
engine's separate tensors, zero-copy.

A weight's rows are stored one after another, and a quantized row is a whole number of blocks
(cols is a multiple of the block size), so a range of rows is a contiguous byte range: each part
is a slice of the same mapped bytes, never a copy.
"""
from __future__ import annotations

from .config import ModelConfig
from .errors import ModelFormatError
from .ggml_types import BF16, F16, F32, row_nbytes
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


def split_cols(t: WeightTensor, parts: list) -> dict:
    """A 1-D float tensor (shape (1, n): a bias) cut into parts [(name, n)] in order, zero-copy."""
    rows, cols = t.shape
    if rows != 1 or t.type_id not in (F32, F16, BF16):
        raise ModelFormatError(f"{t.source}: tensor '{t.name}' must be a 1-D F32, F16 or BF16 tensor, "
                               f"is {t.type_name} of shape {tuple(t.shape)}")
    if sum(n for _, n in parts) != cols:
        want = " + ".join(f"{n} ({name})" for name, n in parts)
        raise ModelFormatError(f"{t.source}: tensor '{t.name}' has {cols} values, expected {want}")
    size = t.data.nbytes // cols
    out, at = {}, 0
    for name, n in parts:
        out[name] = WeightTensor(name, t.data[at * size:(at + n) * size], t.type_id, (1, n), t.source)
        at += n
    return out


# The architectures whose files fuse projections (llama.cpp's converter keeps them fused).
FUSED_ARCHS = ("phi3", "glm4")


def _own_qkv_layout(arch: str) -> bool:
    """Architectures whose attn_qkv is not Q, K and V of uniform heads (Qwen3-Next / 3.5's
    recurrent layers, latent attention, the hybrids' own readers; Gemma 4's is cut before, by
    gemma4.split_fused_qkv, its V deciding how the layer reads)."""
    from . import deltanet, lfm2, mamba2, nemotron_h
    return arch in ("deepseek2", "gemma4") + deltanet.GGUF_ARCHS + lfm2.GGUF_ARCHS + mamba2.GGUF_ARCHS + \
        nemotron_h.GGUF_ARCHS


def split_fused(cfg: ModelConfig, tensors: dict) -> dict:
    """tensors (canonical name -> WeightTensor) with each fused tensor replaced by its parts:
    blk.N.attn_qkv.weight / .bias -> attn_{q,k,v} (rows / values q_dim, kv_dim, kv_dim; every
    architecture but _own_qkv_layout's) and, for FUSED_ARCHS, blk.N.ffn_up.weight
    (2 * ffn_dim rows; fused unless the layer also has an ffn_gate) -> ffn_gate (the first half:
    transformers' chunk(2), llama.cpp's swiglu gate) and ffn_up. A file holding both a fused tensor
    and one of its parts is refused. Other architectures' tensors pass through unchanged."""
    if cfg.arch == "qwen3next":   # its recurrent layers' fused projections (qwen3next.py)
        from .qwen3next import split_projections
        return split_projections(cfg, tensors)
    if _own_qkv_layout(cfg.arch):
        return tensors   # an attn_qkv there is refused as a tensor the architecture does not know
    ffn = cfg.ffn_dim
    out = dict(tensors)
    for name, t in tensors.items():
        if not name.startswith("blk."):
            continue
        split = split_rows
        if name.endswith((".attn_qkv.weight", ".attn_qkv.bias")):
            # every architecture llama.cpp loads through create_tensor_qkv: the converter's
            # --fuse-qkv (and scripts/fuse_qkv_gguf.py) write Q, K, V rows (and biases) one after another
            prefix, kind = name[:name.rindex("attn_qkv.")], name.rsplit(".", 1)[1]
            layer = int(name.split(".")[1])
            if layer >= cfg.n_layers:
                continue   # refused as a tensor the model does not have
            q = cfg.n_heads * (cfg.head_dim if cfg.layer_head_dim is None else cfg.layer_head_dim[layer])
            kv = cfg.kv_dim_of(layer)
            parts = [(f"{prefix}attn_q.{kind}", q), (f"{prefix}attn_k.{kind}", kv), (f"{prefix}attn_v.{kind}", kv)]
            if kind == "bias":
                split = split_cols
        elif cfg.arch not in FUSED_ARCHS:
            continue
        elif name.endswith(".ffn_up.weight") and name[:-len("up.weight")] + "gate.weight" not in tensors:
            prefix = name[:-len("ffn_up.weight")]
            parts = [(prefix + "ffn_gate.weight", ffn), (prefix + "ffn_up.weight", ffn)]
        else:
            continue
        for part, _ in parts:
            if part in tensors and part != name:
                raise ModelFormatError(f"{t.source}: tensor '{part}' given both on its own and inside '{name}'")
        del out[name]
        out.update(split(t, parts))
    return out
