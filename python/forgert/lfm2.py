"""LFM2 / LFM2.5 (Liquid AI; GGUF lfm2, HF lfm2): short-convolution layers beside attention layers.

A short-convolution layer replaces attention by in_proj -> (B, C, x), y = C * conv(B * x) with a
causal depthwise convolution of width L_cache (3) and no activation, then out_proj; it keeps its
last L_cache - 1 inputs per sequence (the core's short_conv layer kind). The attention layers have
a per-head QK-norm. Every layer ends in a SwiGLU MLP; the final norm is LFM2's embedding_norm.

Where the formats say it: GGUF marks the convolution layers by a head_count_kv of 0 in its per-layer
array and names the final norm token_embd_norm; HF lists layer_types ("conv" / "full_attention", or
full_attn_idxs) and sizes the MLP from intermediate_size by block_auto_adjust_ff_dim.
"""
from __future__ import annotations

import numpy as np

from .errors import ModelFormatError

GGUF_ARCH = "lfm2"
GGUF_MOE_ARCH = "lfm2moe"   # LFM2-8B-A1B: leading dense layers, then experts under a sigmoid router with a bias
GGUF_ARCHS = (GGUF_ARCH, GGUF_MOE_ARCH)
# HF names of a convolution layer's tensors (model.layers.N.*) and LFM2's own names for the rest
HF_LAYER_NAMES = {
    "operator_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "conv.in_proj.weight": "shortconv.in_proj.weight",
    "conv.conv.weight": "shortconv.conv.weight",
    "conv.out_proj.weight": "shortconv.out_proj.weight",
    "self_attn.q_layernorm.weight": "attn_q_norm.weight",
    "self_attn.k_layernorm.weight": "attn_k_norm.weight",
    "self_attn.out_proj.weight": "attn_output.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
}
# LFM2-MoE's router and its selection bias (a buffer, expert_bias)
HF_MOE_LAYER_NAMES = {"feed_forward.gate.weight": "ffn_gate_inp.weight", "feed_forward.expert_bias": "exp_probs_b.bias"}
HF_GLOBAL_NAMES = {"model.embedding_norm.weight": "output_norm.weight"}
GGUF_GLOBAL_RENAMES = {"token_embd_norm.weight": "output_norm.weight"}   # llama.cpp's name for the final norm


def _fail(source, problem):
    raise ModelFormatError(f"{source}: {problem}")


def gguf_kv_heads(meta: dict, p: str, source, n_layers_hint=None):
    """(KV heads of the attention layers, layer kinds) from head_count_kv: an array with 0 for each
    convolution layer (llama.cpp's rule), or one number (every layer attention)."""
    v = meta.get(p + "attention.head_count_kv")
    if v is None:
        _fail(source, f"missing metadata '{p}attention.head_count_kv'")
    values = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
    if not values or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0 for x in values):
        _fail(source, f"metadata '{p}attention.head_count_kv' must be integers >= 0, got {v!r}")
    heads = {int(x) for x in values if x > 0}
    if len(heads) != 1:
        _fail(source, f"the attention layers' KV heads {sorted(heads) or 'none'} must be one positive number")
    return heads.pop(), ["short_conv" if x == 0 else "attention" for x in values]


def apply_gguf(meta: dict, p: str, cfg, kinds: list, source) -> None:
    """shortconv.l_cache, and the layer kinds from head_count_kv (gguf_kv_heads)."""
    if len(kinds) != cfg.n_layers:
        if len(kinds) == 1:
            kinds = kinds * cfg.n_layers
        else:
            _fail(source, f"attention.head_count_kv lists {len(kinds)} layers for {cfg.n_layers}")
    width = meta.get(p + "shortconv.l_cache")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= 16:
        _fail(source, f"metadata '{p}shortconv.l_cache' must be an integer in 1..16, got {width!r}")
    if meta.get(p + "attention.sliding_window"):
        _fail(source, "lfm2 with a sliding window (attention.sliding_window) is not supported")
    cfg.layer_kinds, cfg.ssm_conv_kernel = kinds, int(width)


def hf_ffn_dim(hf: dict) -> int:
    """The MLP's width as transformers' Lfm2MLP computes it (block_auto_adjust_ff_dim: two thirds
    of intermediate_size, times block_ffn_dim_multiplier, rounded up to block_multiple_of)."""
    width = hf.get("block_ff_dim", hf.get("intermediate_size"))
    if not hf.get("block_auto_adjust_ff_dim", True):
        return int(width)
    width = int(2 * width / 3)
    multiplier = hf.get("block_ffn_dim_multiplier", 1.0)
    if multiplier is not None:
        multiple = int(hf.get("block_multiple_of", 256))
        width = int(multiplier * width)
        width = multiple * ((width + multiple - 1) // multiple)
    return width


def apply_hf_moe(hf: dict, cfg, source) -> None:
    """transformers' Lfm2MoeConfig: num_experts of moe_intermediate_size, num_experts_per_tok,
    num_dense_layers dense layers first (intermediate_size wide), Lfm2MoeTopKRouter's sigmoid
    scores with expert_bias choosing (use_expert_bias), norm_topk_prob, routed_scaling_factor."""
    cfg.n_dense_lead = hf.get("num_dense_layers", 2)
    if isinstance(cfg.n_dense_lead, bool) or not isinstance(cfg.n_dense_lead, int) or cfg.n_dense_lead < 0:
        _fail(source, f"num_dense_layers must be an integer >= 0, got {cfg.n_dense_lead!r}")
    cfg.router, cfg.router_select_bias = "sigmoid", bool(hf.get("use_expert_bias", True))
    cfg.expert_norm_topk = bool(hf.get("norm_topk_prob", True))
    scale = hf.get("routed_scaling_factor", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        _fail(source, f"routed_scaling_factor must be a positive number, got {scale!r}")
    cfg.expert_weights_scale = float(scale)
    cfg.shared_expert_gated = False


def apply_hf(hf: dict, cfg, source) -> None:
    """layer_types ("conv" / "full_attention") or full_attn_idxs; conv_L_cache; conv_bias refused."""
    if hf.get("conv_bias"):
        _fail(source, "conv_bias=true (biases on LFM2's convolution layers) is not supported")
    types = hf.get("layer_types")
    if types is None:
        attn = hf.get("full_attn_idxs")
        attn = range(cfg.n_layers) if attn is None else attn
        types = ["full_attention" if i in attn else "conv" for i in range(cfg.n_layers)]
    if not isinstance(types, list) or len(types) != cfg.n_layers or set(types) - {"conv", "full_attention"}:
        _fail(source, f"layer_types must list 'conv' or 'full_attention' for each of the {cfg.n_layers} layers, "
                      f"got {types!r}")
    width = hf.get("conv_L_cache", 3)
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 16:
        _fail(source, f"conv_L_cache must be an integer in 1..16, got {width!r}")
    cfg.layer_kinds = ["short_conv" if t == "conv" else "attention" for t in types]
    cfg.ssm_conv_kernel = width
