"""NVIDIA Nemotron-H / Nemotron Nano 9B v2 (GGUF nemotron_h, HF nemotron_h): Mamba2 hybrids whose
blocks each hold one thing, a Mamba2 mixer ("M"), attention without RoPE ("*") or a ReLU-squared MLP
("-"), each behind its own RMSNorm and residual add (transformers' NemotronHBlock).

The core's layer is a mixer followed by a feed-forward, so each mixer block and the MLP block right
after it become one layer (the MLP block's norm as the layer's ffn_norm); a mixer followed by
another mixer becomes a layer without a feed-forward (ModelConfig's layer_ffn 0). An MLP block
that follows no mixer, and the MoE blocks of Nemotron 3 ("E", GGUF nemotron_h_moe), are refused by
name. The Mamba2 mixer is Granite 4.0-H's (mamba2.py: the scan, the grouped gated norm, the GGUF
layout of ssm_a / ssm_d / ssm_norm); transformers' chunked prefill clamps the step below at
time_step_min, its decode and llama.cpp do not, and neither does forgert (a step of softplus(dt +
dt_bias) < time_step_min needs dt + dt_bias < -6.9).

The file formats list blocks: GGUF's per-block head_count_kv (0 but for attention) and
feed_forward_length (0 but for an MLP) arrays, HF's hybrid_override_pattern ("M-M*-...") or
layers_block_type; layer_tensors renames the blocks' tensors to the layers'.
"""
from __future__ import annotations

import numpy as np

from .errors import ModelFormatError
from .weights import WeightTensor

GGUF_ARCH = "nemotron_h"
GGUF_ARCHS = (GGUF_ARCH,)
HF_MODEL_TYPES = {"nemotron_h": GGUF_ARCH}
REFUSED_GGUF_ARCHS = {"nemotron_h_moe": "nemotron_h_moe (Nemotron 3's mixture-of-experts blocks) is not supported"}
_KINDS = {"M": "mamba2", "mamba": "mamba2", "linear_attention": "mamba2", "*": "attention", "attention": "attention",
          "full_attention": "attention", "-": "mlp", "mlp": "mlp", "E": "moe", "moe": "moe"}
# HF names of a block's tensors (backbone.layers.N.*) -> the block's canonical (GGUF) names
HF_BLOCK_NAMES = {
    "norm.weight": "attn_norm.weight",
    "mixer.in_proj.weight": "ssm_in.weight", "mixer.conv1d.weight": "ssm_conv1d.weight",
    "mixer.conv1d.bias": "ssm_conv1d.bias", "mixer.dt_bias": "ssm_dt.bias", "mixer.A_log": "ssm_a_log",
    "mixer.D": "ssm_d", "mixer.norm.weight": "ssm_norm.weight", "mixer.out_proj.weight": "ssm_out.weight",
    "mixer.q_proj.weight": "attn_q.weight", "mixer.k_proj.weight": "attn_k.weight",
    "mixer.v_proj.weight": "attn_v.weight", "mixer.o_proj.weight": "attn_output.weight",
    "mixer.up_proj.weight": "ffn_up.weight", "mixer.down_proj.weight": "ffn_down.weight",
}
# (the checkpoints' prefix is backbone., transformers 5's in-memory one model.)
HF_GLOBAL_NAMES = {f"{root}.{name}": canonical for root in ("backbone", "model") for name, canonical in
                   (("embeddings.weight", "token_embd.weight"), ("norm_f.weight", "output_norm.weight"))}
HF_GLOBAL_NAMES["lm_head.weight"] = "output.weight"
HF_BLOCK_PREFIXES = ("backbone.layers.", "model.layers.")


def _fail(source, problem):
    raise ModelFormatError(f"{source}: {problem}")


def pair_blocks(kinds: list, source) -> list:
    """[(mixer block, its kind, MLP block or None)] per core layer from the blocks' kinds."""
    if "moe" in kinds:
        _fail(source, "nemotron_h with mixture-of-experts blocks (Nemotron 3, 'E' / moe) is not supported")
    layers = []
    for b, kind in enumerate(kinds):
        if kind == "mlp":
            if not layers or layers[-1][2] is not None or layers[-1][0] != b - 1:
                _fail(source, f"block {b} is an MLP that follows no mixer block; forgert runs a Nemotron-H MLP "
                              f"only right after a Mamba2 or attention block")
            layers[-1] = (layers[-1][0], layers[-1][1], b)
        else:
            layers.append((b, kind, None))
    return layers


def hf_blocks(hf: dict, source) -> list:
    """The blocks' kinds from hybrid_override_pattern or layers_block_type."""
    pattern = hf.get("hybrid_override_pattern") or hf.get("layers_block_type") or hf.get("layer_types")
    items = list(pattern) if isinstance(pattern, (str, list)) else None
    if not items or any(k not in _KINDS for k in items):
        _fail(source, f"hybrid_override_pattern / layers_block_type must name each block (M, *, -), got {pattern!r}")
    return [_KINDS[k] for k in items]


def prepare_hf(hf: dict, source) -> dict:
    """hf with the keys config_from_hf reads: num_hidden_layers the core's layers, rms_norm_eps."""
    layers = pair_blocks(hf_blocks(hf, source), source)
    return {**hf, "num_hidden_layers": len(layers), "rms_norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "tie_word_embeddings": hf.get("tie_word_embeddings", False)}


def _set(cfg, layers, conv, n_heads, head_dim, groups, d_state, source, extent) -> None:
    from .mamba2 import _set_mamba2   # (mamba2's bounds and fields)
    kinds = [k for _, k, _ in layers]
    _set_mamba2(cfg, kinds, conv, n_heads, head_dim, groups, d_state, source, extent)
    cfg.layer_ffn = [int(m is not None) for _, _, m in layers]
    cfg.layer_blocks = [(b, m) for b, _, m in layers]
    cfg.layer_rope = [-1] * cfg.n_layers   # no RoPE in any block


def apply_hf(hf: dict, cfg, source, extent: int) -> None:
    """transformers' NemotronHConfig: mamba_num_heads, mamba_head_dim, n_groups, ssm_state_size,
    conv_kernel; relu2 MLPs; biases and other activations refused by name."""
    for key in ("mlp_bias", "attention_bias", "use_bias", "mamba_proj_bias"):
        if hf.get(key):
            _fail(source, f"{key}=true is not supported for nemotron_h")
    if hf.get("mlp_hidden_act", "relu2") != "relu2" or hf.get("mamba_hidden_act", "silu") != "silu":
        _fail(source, f"activations {hf.get('mlp_hidden_act')!r} / {hf.get('mamba_hidden_act')!r} are not supported "
                      f"(nemotron_h uses relu2 and silu)")

    def get(key, default):
        v = hf.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _fail(source, f"'{key}' must be a positive integer, got {v!r}")
        return v
    _set(cfg, pair_blocks(hf_blocks(hf, source), source), get("conv_kernel", 4), get("mamba_num_heads", 128),
         get("mamba_head_dim", 64), get("n_groups", 8), get("ssm_state_size", 128), source, extent)


def _int_array(meta, key, source) -> list:
    v = meta.get(key)
    values = list(v) if isinstance(v, (list, tuple, np.ndarray)) else None
    if values is None or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0
                                 for x in values):
        _fail(source, f"metadata '{key}' must be a per-block array of integers >= 0, got {v!r}")
    return [int(x) for x in values]


def gguf_blocks(meta: dict, p: str, source) -> list:
    """The blocks' kinds as llama.cpp reads them: an MLP where feed_forward_length > 0, attention
    where head_count_kv > 0, Mamba2 otherwise."""
    ff, kv = _int_array(meta, p + "feed_forward_length", source), _int_array(meta, p + "attention.head_count_kv", source)
    if len(ff) != len(kv):
        _fail(source, f"feed_forward_length lists {len(ff)} blocks and head_count_kv {len(kv)}")
    return ["mlp" if f else "attention" if k else "mamba2" for f, k in zip(ff, kv)]


def prepare_gguf(meta: dict, p: str, source) -> dict:
    """meta with the scalars config_from_gguf reads: block_count the core's layers, the MLPs' width,
    the attention layers' KV heads, and the RMS eps (llama.cpp's converter writes layer_norm_epsilon)."""
    kinds = gguf_blocks(meta, p, source)
    layers = pair_blocks(kinds, source)
    widths = {f for f in _int_array(meta, p + "feed_forward_length", source) if f}
    heads = {k for k in _int_array(meta, p + "attention.head_count_kv", source) if k}
    if len(widths) > 1 or len(heads) != 1:
        _fail(source, f"the MLP widths {sorted(widths)} and attention KV heads {sorted(heads)} must each be one number")
    if meta.get(p + "block_count") != len(kinds):
        _fail(source, f"block_count {meta.get(p + 'block_count')!r} differs from the {len(kinds)} blocks listed")
    out = {**meta, p + "block_count": len(layers), p + "feed_forward_length": widths.pop() if widths else 1,
           p + "attention.head_count_kv": heads.pop()}
    if p + "attention.layer_norm_rms_epsilon" not in meta and p + "attention.layer_norm_epsilon" in meta:
        out[p + "attention.layer_norm_rms_epsilon"] = meta[p + "attention.layer_norm_epsilon"]
    return out


def apply_gguf(meta: dict, p: str, cfg, source, extent: int) -> None:
    """The ssm.* keys as Granite 4.0-H's (mamba2.apply_gguf), the blocks from the original arrays."""
    def get(key):
        v = meta.get(p + key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            _fail(source, f"metadata '{p + key}' must be a positive integer, got {v!r}")
        return int(v)
    n_heads, inner = get("ssm.time_step_rank"), get("ssm.inner_size")
    if inner % n_heads:
        _fail(source, f"ssm.inner_size {inner} is not a multiple of ssm.time_step_rank {n_heads}")
    _set(cfg, pair_blocks(gguf_blocks(meta, p, source), source), get("ssm.conv_kernel"), n_heads, inner // n_heads,
         get("ssm.group_count"), get("ssm.state_size"), source, extent)


def hf_name(name: str):
    """The block-level canonical name of an HF tensor (blk.B.*, B the block), or None if not this family's."""
    if name in HF_GLOBAL_NAMES:
        return HF_GLOBAL_NAMES[name]
    for prefix in HF_BLOCK_PREFIXES:
        if name.startswith(prefix):
            block, _, rest = name[len(prefix):].partition(".")
            if block.isdigit() and rest in HF_BLOCK_NAMES:
                return f"blk.{block}.{HF_BLOCK_NAMES[rest]}"
    return None


def layer_tensors(cfg, tensors: dict, source) -> dict:
    """tensors named per block (blk.B.*) renamed per core layer: a layer's mixer block's tensors, and
    its MLP block's norm as ffn_norm and its ffn_up / ffn_down; Mamba2's ssm_norm [1, d_inner] (HF)
    read as [n_groups, d_inner / n_groups]."""
    where = {}
    for layer, (b, m) in enumerate(cfg.layer_blocks):
        where[b] = (layer, {})
        if m is not None:
            where[m] = (layer, {"attn_norm.weight": "ffn_norm.weight"})
    out = {}
    for name, t in tensors.items():
        if name.startswith("blk."):
            _, block, part = name.split(".", 2)
            if int(block) not in where:
                _fail(source, f"tensor '{name}' belongs to no block of the pattern")
            layer, renames = where[int(block)]
            name = f"blk.{layer}.{renames.get(part, part)}"
            if part == "ssm_norm.weight" and tuple(t.shape) == (1, cfg.ssm_v_heads * cfg.ssm_v_dim):
                t = WeightTensor(name, t.data, t.type_id, (cfg.ssm_k_heads, t.shape[1] // cfg.ssm_k_heads), t.source)
        if name in out:
            _fail(source, f"tensor '{name}' given twice")
        out[name] = t if t.name == name else WeightTensor(name, t.data, t.type_id, t.shape, t.source)
    return out
