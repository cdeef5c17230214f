"""NVIDIA Nemotron-H / Nemotron Nano 9B v2 (GGUF nemotron_h, HF nemotron_h) and Nemotron 3 (GGUF
nemotron_h_moe, HF nemotron_h with "E" blocks): Mamba2 hybrids whose blocks each hold one thing, a
Mamba2 mixer ("M"), attention without RoPE ("*"), a ReLU-squared MLP ("-") or Nemotron 3's experts
("E"), each behind its own RMSNorm and residual add (transformers' NemotronHBlock).

The core's layer is a mixer followed by a feed-forward, so each mixer block and the MLP or MoE
block right after it become one layer (that block's norm as the layer's ffn_norm); a mixer followed
by another mixer becomes a layer without a feed-forward (ModelConfig's layer_ffn: 0 none, 1 MLP,
2 experts). A feed-forward block that follows no mixer is refused by name. The Mamba2 mixer is
Granite 4.0-H's (mamba2.py: the scan, the grouped gated norm, the GGUF layout of ssm_a / ssm_d /
ssm_norm); transformers' chunked prefill clamps the step below at time_step_min, its decode and
llama.cpp do not, and neither does forgert (a step of softplus(dt + dt_bias) < time_step_min needs
dt + dt_bias < -6.9).

Nemotron 3's MoE block (transformers' NemotronHMoE, llama.cpp's nemotron_h_moe graph): a sigmoid
router whose e_score_correction_bias (exp_probs_b) steers the top-k choice only, n_group /
topk_group group-limited choice, the chosen weights renormalised (norm_topk_prob) and times
routed_scaling_factor; routed experts that are not gated, down(relu(up x)^2), beside an ungated
ReLU-squared shared expert added to them. Nemotron 3 Super's latent MoE (moe_latent_size) runs the
routed experts on fc1_latent_proj x (ffn_latent_down) and brings their weighted sum back with
fc2_latent_proj (ffn_latent_up); the router and the shared expert read x itself. Multi-token-
prediction blocks (HF mtp.*, GGUF's nextn_predict_layers blocks after the model's) are not run.

The file formats list blocks: GGUF's per-block head_count_kv (0 but for attention) and
feed_forward_length (0 but for an MLP or MoE block) arrays, HF's hybrid_override_pattern ("M-M*-...")
or layers_block_type; layer_tensors renames the blocks' tensors to the layers'.
"""
from __future__ import annotations

import re

import numpy as np

from .errors import ModelFormatError
from .weights import ExpertList, WeightTensor

GGUF_ARCH = "nemotron_h"
GGUF_MOE_ARCH = "nemotron_h_moe"
GGUF_ARCHS = (GGUF_ARCH, GGUF_MOE_ARCH)
HF_MODEL_TYPES = {"nemotron_h": GGUF_ARCH}
HF_MTP_PREFIX = "mtp."   # Nemotron 3's multi-token-prediction block (not run)
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
    # Nemotron 3's MoE block: the router and its selection bias, the shared expert, the latent projections
    "mixer.gate.weight": "ffn_gate_inp.weight", "mixer.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mixer.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mixer.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    "mixer.fc1_latent_proj.weight": "ffn_latent_down.weight", "mixer.fc2_latent_proj.weight": "ffn_latent_up.weight",
}
_HF_EXPERT = re.compile(r"^mixer\.experts\.(\d+)\.(up|down)_proj\.weight$")
# (the checkpoints' prefix is backbone., transformers 5's in-memory one model.)
HF_GLOBAL_NAMES = {f"{root}.{name}": canonical for root in ("backbone", "model") for name, canonical in
                   (("embeddings.weight", "token_embd.weight"), ("norm_f.weight", "output_norm.weight"))}
HF_GLOBAL_NAMES["lm_head.weight"] = "output.weight"
HF_BLOCK_PREFIXES = ("backbone.layers.", "model.layers.")


def _fail(source, problem):
    raise ModelFormatError(f"{source}: {problem}")


def pair_blocks(kinds: list, source) -> list:
    """[(mixer block, its kind, feed-forward block or None, its kind or None)] per core layer from
    the blocks' kinds (a feed-forward block: "mlp" or "moe")."""
    layers = []
    for b, kind in enumerate(kinds):
        if kind in ("mlp", "moe"):
            if not layers or layers[-1][2] is not None or layers[-1][0] != b - 1:
                _fail(source, f"block {b} is an {'MLP' if kind == 'mlp' else 'MoE block'} that follows no mixer block; "
                              f"forgert runs a Nemotron-H feed-forward only right after a Mamba2 or attention block")
            layers[-1] = (layers[-1][0], layers[-1][1], b, kind)
        else:
            layers.append((b, kind, None, None))
    return layers


def hf_blocks(hf: dict, source) -> list:
    """The blocks' kinds from hybrid_override_pattern or layers_block_type."""
    pattern = hf.get("hybrid_override_pattern") or hf.get("layers_block_type") or hf.get("layer_types")
    items = list(pattern) if isinstance(pattern, (str, list)) else None
    if not items or any(k not in _KINDS for k in items):
        _fail(source, f"hybrid_override_pattern / layers_block_type must name each block (M, *, -, E), got {pattern!r}")
    return [_KINDS[k] for k in items]


def prepare_hf(hf: dict, source) -> dict:
    """hf with the keys config_from_hf reads: num_hidden_layers the core's layers, rms_norm_eps."""
    layers = pair_blocks(hf_blocks(hf, source), source)
    return {**hf, "num_hidden_layers": len(layers), "rms_norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "tie_word_embeddings": hf.get("tie_word_embeddings", False)}


def _set(cfg, layers, conv, n_heads, head_dim, groups, d_state, source, extent) -> None:
    from .mamba2 import _set_mamba2   # (mamba2's bounds and fields)
    kinds = [k for _, k, _, _ in layers]
    _set_mamba2(cfg, kinds, conv, n_heads, head_dim, groups, d_state, source, extent)
    cfg.layer_ffn = [{None: 0, "mlp": 1, "moe": 2}[f] for _, _, _, f in layers]
    cfg.layer_blocks = [(b, m) for b, _, m, _ in layers]
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
    layers = pair_blocks(hf_blocks(hf, source), source)
    _set(cfg, layers, get("conv_kernel", 4), get("mamba_num_heads", 128),
         get("mamba_head_dim", 64), get("n_groups", 8), get("ssm_state_size", 128), source, extent)
    if any(f == "moe" for _, _, _, f in layers):   # Nemotron 3: run as llama.cpp's nemotron_h_moe
        cfg.arch = GGUF_MOE_ARCH
        latent = hf.get("moe_latent_size")
        _set_moe(cfg, source, n_expert=get("n_routed_experts", 8), used=get("num_experts_per_tok", 2),
                 width=get("moe_intermediate_size", 7688), shared=get("moe_shared_expert_intermediate_size", 7688),
                 groups=get("n_group", 1), groups_used=get("topk_group", 1), norm=hf.get("norm_topk_prob", True),
                 scale=hf.get("routed_scaling_factor", 1.0),
                 latent=0 if latent is None else get("moe_latent_size", None),
                 mtp=hf.get("num_nextn_predict_layers", 0) or 0)


def _set_moe(cfg, source, *, n_expert, used, width, shared, groups, groups_used, norm, scale, latent, mtp) -> None:
    """Nemotron 3's experts (NemotronHMoE / NemotronHTopkRouter; llama.cpp's nemotron_h_moe graph)."""
    from .config import _check_experts, _check_router
    if not isinstance(norm, (bool, np.bool_)):
        _fail(source, f"norm_topk_prob / expert_weights_norm must be a bool, got {norm!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not np.isfinite(scale) or scale <= 0:
        _fail(source, f"routed_scaling_factor / expert_weights_scale must be a positive number, got {scale!r}")
    cfg.n_expert, cfg.n_expert_used, cfg.expert_ffn_dim, cfg.shared_ffn_dim = n_expert, used, width, shared
    cfg.router, cfg.router_select_bias, cfg.shared_expert_gated = "sigmoid", True, False
    cfg.expert_groups, cfg.expert_groups_used = groups, groups_used
    cfg.expert_norm_topk, cfg.expert_weights_scale = bool(norm), float(scale)
    cfg.experts_relu_sq, cfg.moe_latent_dim, cfg.mtp_layers = True, int(latent), int(mtp)
    _check_experts(cfg, source)
    _check_router(cfg, source)


def _int_array(meta, key, source) -> list:
    v = meta.get(key)
    values = list(v) if isinstance(v, (list, tuple, np.ndarray)) else None
    if values is None or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0
                                 for x in values):
        _fail(source, f"metadata '{key}' must be a per-block array of integers >= 0, got {v!r}")
    return [int(x) for x in values]


def _main_blocks(meta: dict, p: str, source) -> int:
    """The blocks the model runs: block_count less the nextn_predict_layers (multi-token-prediction)
    blocks after them, which forgert skips as llama.cpp's main graph does."""
    count, nextn = meta.get(p + "block_count"), meta.get(p + "nextn_predict_layers", 0)
    for key, v in (("block_count", count), ("nextn_predict_layers", nextn)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            _fail(source, f"metadata '{p + key}' must be an integer >= 0, got {v!r}")
    if nextn >= count:
        _fail(source, f"nextn_predict_layers = {nextn} leaves none of the {count} blocks to run")
    return int(count - nextn)


def gguf_blocks(meta: dict, p: str, source) -> list:
    """The blocks' kinds as llama.cpp reads them (the model's own, not the multi-token-prediction
    ones): a feed-forward where feed_forward_length > 0 (experts in a file with expert_count, an
    MLP otherwise), attention where head_count_kv > 0, Mamba2 otherwise."""
    ff, kv = _int_array(meta, p + "feed_forward_length", source), _int_array(meta, p + "attention.head_count_kv", source)
    if len(ff) != len(kv):
        _fail(source, f"feed_forward_length lists {len(ff)} blocks and head_count_kv {len(kv)}")
    n = _main_blocks(meta, p, source)   # block_count and nextn_predict_layers are integers
    if meta[p + "block_count"] != len(ff):
        _fail(source, f"block_count {meta[p + 'block_count']!r} differs from the {len(ff)} blocks listed")
    n_expert = meta.get(p + "expert_count", 0)
    if isinstance(n_expert, bool) or not isinstance(n_expert, (int, np.integer)) or n_expert < 0:
        _fail(source, f"metadata '{p}expert_count' must be an integer >= 0, got {n_expert!r}")
    ffn = "moe" if n_expert else "mlp"
    return [ffn if f else "attention" if k else "mamba2" for f, k in zip(ff[:n], kv[:n])]


def _expert_width(meta: dict, p: str, source):
    """expert_feed_forward_length given per block (llama.cpp reads a scalar or an array): its one
    width; None for a scalar."""
    if not isinstance(meta.get(p + "expert_feed_forward_length"), (list, tuple, np.ndarray)):
        return None
    widths = {w for w in _int_array(meta, p + "expert_feed_forward_length", source) if w}
    if len(widths) != 1:
        _fail(source, f"expert_feed_forward_length per block {sorted(widths)}: experts of one width only are supported")
    return widths.pop()


def prepare_gguf(meta: dict, p: str, source) -> dict:
    """meta with the scalars config_from_gguf reads: block_count the core's layers, the MLPs' (or
    experts') width, the attention layers' KV heads, and the RMS eps (llama.cpp's converter writes
    layer_norm_epsilon); nextn_predict_layers taken out (its blocks are dropped here)."""
    kinds = gguf_blocks(meta, p, source)
    layers = pair_blocks(kinds, source)
    n = len(kinds)
    widths = {f for f in _int_array(meta, p + "feed_forward_length", source)[:n] if f}
    heads = {k for k in _int_array(meta, p + "attention.head_count_kv", source)[:n] if k}
    if len(widths) > 1 or len(heads) != 1:
        _fail(source, f"the MLP widths {sorted(widths)} and attention KV heads {sorted(heads)} must each be one number")
    out = {**meta, p + "block_count": len(layers), p + "feed_forward_length": widths.pop() if widths else 1,
           p + "attention.head_count_kv": heads.pop()}
    out.pop(p + "nextn_predict_layers", None)
    if _expert_width(meta, p, source) is not None:
        out[p + "expert_feed_forward_length"] = _expert_width(meta, p, source)
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
    layers = pair_blocks(gguf_blocks(meta, p, source), source)
    _set(cfg, layers, get("ssm.conv_kernel"), n_heads, inner // n_heads,
         get("ssm.group_count"), get("ssm.state_size"), source, extent)
    if any(f == "moe" for _, _, _, f in layers):
        # llama.cpp's converter writes expert_group_count (n_group) but not expert_group_used_count
        groups = meta.get(p + "expert_group_count", 1)
        if groups != 1 and p + "expert_group_used_count" not in meta:
            _fail(source, f"expert_group_count {groups} without expert_group_used_count (topk_group): the experts' "
                          f"groups cannot be chosen from")
        scale = meta.get(p + "expert_weights_scale", 1.0)
        width = (_expert_width(meta, p, source) or get("expert_feed_forward_length")
                 if p + "expert_feed_forward_length" in meta else cfg.ffn_dim)
        _set_moe(cfg, source, n_expert=get("expert_count"), used=get("expert_used_count"), width=width,
                 shared=get("expert_shared_feed_forward_length"), groups=get("expert_group_count") if groups != 1 else 1,
                 groups_used=get("expert_group_used_count") if groups != 1 else 1,
                 norm=meta.get(p + "expert_weights_norm", False),   # llama.cpp's default: off
                 scale=scale if not isinstance(scale, (int, float, np.floating)) or scale != 0 else 1.0,  # 0: none
                 latent=get("moe_latent_size") if p + "moe_latent_size" in meta else 0,
                 mtp=meta.get(p + "nextn_predict_layers", 0))


def hf_name(name: str):
    """The block-level canonical name of an HF tensor (blk.B.*, B the block), or None if not this family's."""
    if name in HF_GLOBAL_NAMES:
        return HF_GLOBAL_NAMES[name]
    for prefix in HF_BLOCK_PREFIXES:
        if name.startswith(prefix):
            block, _, rest = name[len(prefix):].partition(".")
            if block.isdigit() and rest in HF_BLOCK_NAMES:
                return f"blk.{block}.{HF_BLOCK_NAMES[rest]}"
            expert = _HF_EXPERT.match(rest) if block.isdigit() else None
            if expert:   # one routed expert's matrix: (its stack, the expert)
                return f"blk.{block}.ffn_{expert.group(2)}_exps.weight", int(expert.group(1))
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
    main = max(max(b, -1 if m is None else m) for b, m in cfg.layer_blocks) + 1
    out = {}
    for name, t in tensors.items():
        if name.startswith("blk."):
            _, block, part = name.split(".", 2)
            if int(block) >= main and cfg.mtp_layers:
                continue   # a multi-token-prediction block (GGUF nextn_predict_layers), not run
            if int(block) not in where:
                _fail(source, f"tensor '{name}' belongs to no block of the pattern")
            layer, renames = where[int(block)]
            name = f"blk.{layer}.{renames.get(part, part)}"
            if part == "ssm_norm.weight" and tuple(t.shape) == (1, cfg.ssm_v_heads * cfg.ssm_v_dim):
                t = WeightTensor(name, t.data, t.type_id, (cfg.ssm_k_heads, t.shape[1] // cfg.ssm_k_heads), t.source)
        if name in out:
            _fail(source, f"tensor '{name}' given twice")
        if t.name != name:
            t = ExpertList(name, t.experts, t.source) if isinstance(t, ExpertList) else \
                WeightTensor(name, t.data, t.type_id, t.shape, t.source)
        out[name] = t
    return out
