"""Check a model's tensors against its config and build the `_core` tensor dict."""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .errors import ModelFormatError
from .ggml_types import BF16, F16, F32, SUPPORTED, type_name
from .weights import WeightTensor, to_f32_tensor

_SUPPORTED_NAMES = ", ".join(type_name(t) for t in SUPPORTED)


def expected_shapes(cfg: ModelConfig, has_output: bool, has_qkv_bias: bool) -> dict:
    """canonical name -> (rows, cols) every tensor must have."""
    q_dim = cfg.n_heads * cfg.head_dim
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    shapes = {
        "token_embd.weight": (cfg.vocab, cfg.dim),
        "output_norm.weight": (1, cfg.dim),
    }
    if has_output:
        shapes["output.weight"] = (cfg.vocab, cfg.dim)
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (1, cfg.dim),
            b + "attn_q.weight": (q_dim, cfg.dim),
            b + "attn_k.weight": (kv_dim, cfg.dim),
            b + "attn_v.weight": (kv_dim, cfg.dim),
            b + "attn_output.weight": (cfg.dim, q_dim),
            b + "ffn_norm.weight": (1, cfg.dim),
            b + "ffn_gate.weight": (cfg.ffn_dim, cfg.dim),
            b + "ffn_up.weight": (cfg.ffn_dim, cfg.dim),
            b + "ffn_down.weight": (cfg.dim, cfg.ffn_dim),
        })
        if has_qkv_bias:
            shapes.update({b + "attn_q.bias": (1, q_dim), b + "attn_k.bias": (1, kv_dim),
                           b + "attn_v.bias": (1, kv_dim)})
    return shapes


def _as_f32(t: WeightTensor) -> WeightTensor:
    """Norms and biases go to the core as F32 (tiny copies when the file stores them as F16/BF16)."""
    if t.type_id == F32:
        return t
    if t.type_id == F16:
        return to_f32_tensor(t, t.data.view(np.float16))
    if t.type_id == BF16:
        return to_f32_tensor(t, (t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32))
    raise ModelFormatError(f"{t.source}: tensor '{t.name}' is {t.type_name}; 1-D tensors must be F32, F16 or BF16")


def core_tensors(cfg: ModelConfig, tensors: dict, source: str, ignore=()) -> dict:
    """Validate `tensors` (canonical name -> WeightTensor) and return the `_core` dict
    name -> (uint8 buffer, dtype id, (rows, cols)). Tensors named in `ignore` are skipped."""
    has_output = "output.weight" in tensors and not cfg.tied_embeddings
    has_bias = cfg.arch == "qwen2" or any(n.endswith("attn_q.bias") for n in tensors)
    expected = expected_shapes(cfg, has_output, has_bias)
    for name in tensors:
        if name not in expected and name not in ignore and name != "output.weight":
            raise ModelFormatError(f"{source}: unexpected tensor '{name}' for a {cfg.n_layers}-layer {cfg.arch} model")
    out = {}
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is None:
            raise ModelFormatError(f"{source}: missing tensor '{name}'")
        if tuple(t.shape) != shape:
            raise ModelFormatError(f"{t.source}: tensor '{name}' has shape {tuple(t.shape)}, expected {shape} "
                                   f"(rows, cols) from the model config")
        if t.type_id not in SUPPORTED:
            raise ModelFormatError(f"{t.source}: tensor '{name}' has type {t.type_name}, which forgert does not "
                                   f"support (supported: {_SUPPORTED_NAMES})")
        if shape[0] == 1:
            t = _as_f32(t)
        out[name] = t.as_core_entry()
    return out
