"""Mamba2 hybrids: IBM Granite 4.0-H (GGUF granitehybrid, HF granitemoehybrid: H-Micro dense, H-Tiny /
H-Small with experts), their config keys, and the tensors the core reads built from an HF checkpoint's.

Most layers replace attention by a Mamba2 mixer (the core's mamba2 layer kind): ssm_in gives
z | xBC | dt; xBC goes through a causal depthwise convolution with a bias and SiLU (conv1d_state),
then the selective state scan (Backend::mamba2_scan: per head a [head_dim, d_state] state, B and C
shared by each group's heads), y * silu(z) RMS-normed per group (transformers'
GraniteMoeHybridRMSNormGated, llama.cpp's grouped ssm_norm), into ssm_out. The other layers are
Granite's attention, without RoPE in Granite 4.0-H (position_embedding_type None / "nope";
llama.cpp's rope.scaling.finetuned false). Every layer ends in a SwiGLU feed-forward: the shared
MLP alone (dense), or experts plus the shared MLP added ungated. Granite's four multipliers apply
(embedding, attention scale, residual on every sub-layer's output, logits).

The core reuses the delta rule's size fields (config.h): ssm_k_heads = n_groups, ssm_k_dim =
d_state, ssm_v_heads = the heads, ssm_v_dim = head_dim.

Where the formats differ (llama.cpp's converter, GraniteHybridModel / Mamba2Model):
- GGUF marks the Mamba2 layers by a head_count_kv of 0 in its per-layer array; HF lists
  layer_types ("mamba" / "attention", transformers 5's "linear_attention" / "full_attention");
- GGUF stores A = -exp(A_log) as ssm_a and D as ssm_d, each [n_heads, 1]; HF's A_log becomes ssm_a at load;
- GGUF's ssm_norm is [n_groups, d_inner / n_groups]; HF's norm.weight [d_inner] is read as that;
- GGUF splits the shared MLP's input_linear [2 ffn, dim] into gate (first half) and up; the HF
  tensor is split here the same way, zero-copy (ffn_* for a dense model, ffn_*_shexp beside experts).

Nemotron-H (nemotron_h.py) runs the same Mamba2 mixer in blocks of its own.
"""
from __future__ import annotations

from .deltanet import _fail, _positive, set_recurrent_layers   # (the recurrent layers' shared checks)
from .weights import WeightTensor

GGUF_ARCH = "granitehybrid"
GGUF_ARCHS = (GGUF_ARCH,)
HF_MODEL_TYPES = {"granitemoehybrid": GGUF_ARCH}
# HF names of a layer's Mamba2 and shared-MLP tensors (model.layers.N.*) -> canonical (GGUF) names;
# A_log and the shared MLP go through names of their own until hf_tensors places them.
HF_LAYER_NAMES = {
    "mamba.in_proj.weight": "ssm_in.weight",
    "mamba.conv1d.weight": "ssm_conv1d.weight",
    "mamba.conv1d.bias": "ssm_conv1d.bias",
    "mamba.dt_bias": "ssm_dt.bias",
    "mamba.A_log": "ssm_a_log",
    "mamba.D": "ssm_d",
    "mamba.norm.weight": "ssm_norm.weight",
    "mamba.out_proj.weight": "ssm_out.weight",
    "shared_mlp.input_linear.weight": "shared_mlp_in",
    "shared_mlp.output_linear.weight": "shared_mlp_out",
}
_MAMBA_TYPES, _ATTENTION_TYPES = ("mamba", "linear_attention"), ("attention", "full_attention")


def _number(v) -> float:
    """A JSON number, or infinity as transformers 5 writes it ({"__float__": "Infinity"}); NaN otherwise."""
    if isinstance(v, dict) and set(v) == {"__float__"}:
        v = v["__float__"]
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


_MAMBA2_FIELD_NAMES = {"k_heads": "groups", "v_heads": "heads", "k_dim": "state size", "v_dim": "head width"}


def _set_mamba2(cfg, kinds: list, conv_kernel, n_heads, head_dim, n_groups, d_state, source, extent: int) -> None:
    """The config's Mamba2 fields (mamba2_scan takes states of up to 256 x 1024)."""
    set_recurrent_layers(cfg, kinds, conv_kernel, n_groups, n_heads, d_state, head_dim, source, extent,
                         family="Mamba2", names=_MAMBA2_FIELD_NAMES, max_k_dim=256, max_v_dim=1024)


def apply_gguf(meta: dict, p: str, cfg, kinds: list, source, extent: int) -> None:
    """llama.cpp's granitehybrid keys: ssm.conv_kernel, ssm.state_size, ssm.group_count,
    ssm.inner_size, ssm.time_step_rank (the heads); kinds from head_count_kv (lfm2.gguf_kv_heads:
    0 for a Mamba2 layer). Granite's multipliers and rope.scaling.finetuned are config.py's
    _granite_gguf; the shared expert (expert_shared_feed_forward_length) is added ungated."""
    def get(key):
        v = meta.get(p + key)
        if v is None:
            _fail(source, f"missing metadata '{p + key}'")
        return _positive(v, p + key, source)
    if len(kinds) == 1:
        kinds = kinds * cfg.n_layers
    n_heads, inner = get("ssm.time_step_rank"), get("ssm.inner_size")
    if inner % n_heads:
        _fail(source, f"ssm.inner_size {inner} is not a multiple of ssm.time_step_rank {n_heads}")
    _set_mamba2(cfg, ["mamba2" if k != "attention" else k for k in kinds], get("ssm.conv_kernel"), n_heads,
                inner // n_heads, get("ssm.group_count"), get("ssm.state_size"), source, extent)
    cfg.shared_expert_gated = False


def apply_hf(hf: dict, cfg, source, extent: int) -> None:
    """transformers' GraniteMoeHybridConfig: mamba_n_heads, mamba_d_head ("auto": mamba_expand *
    hidden_size / mamba_n_heads), mamba_n_groups, mamba_d_state, mamba_d_conv; layer_types; the
    feed-forward: shared_intermediate_size alone (num_local_experts 0) or beside the experts;
    Granite's multipliers; position_embedding_type None / "nope" (no RoPE) or "rope"."""
    def get(key, default=None):
        v = hf.get(key, default)
        if v is None:
            _fail(source, f"missing '{key}'")
        return _positive(v, key, source)
    if hf.get("mamba_proj_bias"):
        _fail(source, "mamba_proj_bias=true (biases on the Mamba2 projections) is not supported")
    if hf.get("attention_bias"):
        _fail(source, "attention_bias=true is not supported for granitemoehybrid")
    if hf.get("hidden_act", "silu") != "silu":
        _fail(source, f"hidden_act '{hf.get('hidden_act')}' is not supported (granitemoehybrid uses silu)")
    limit = hf.get("time_step_limit")
    if limit is not None and (not isinstance(limit, list) or len(limit) != 2 or _number(limit[0]) > 0.0 or
                              _number(limit[1]) != float("inf")):
        _fail(source, f"time_step_limit {limit!r} (a clamped Mamba2 step) is not supported")
    rope = hf.get("position_embedding_type")
    if rope not in (None, "nope", "rope"):
        _fail(source, f"position_embedding_type '{rope}' is not supported (None, 'nope' or 'rope')")
    types = hf.get("layer_types") or hf.get("layers_block_type")
    if not isinstance(types, list) or set(types) - set(_MAMBA_TYPES + _ATTENTION_TYPES):
        _fail(source, f"layer_types must list 'mamba' or 'attention' per layer, got {types!r}")
    n_heads = get("mamba_n_heads", 128)
    head_dim = hf.get("mamba_d_head", "auto")
    if head_dim == "auto":
        head_dim = get("mamba_expand", 2) * cfg.dim // n_heads
    head_dim = _positive(head_dim, "mamba_d_head", source)
    _set_mamba2(cfg, ["mamba2" if t in _MAMBA_TYPES else "attention" for t in types], get("mamba_d_conv", 4), n_heads,
                head_dim, get("mamba_n_groups", 1), get("mamba_d_state", 256), source, extent)
    if rope != "rope":
        cfg.layer_rope = [-1] * cfg.n_layers
    shared = get("shared_intermediate_size", 1024)
    if cfg.n_expert:
        cfg.shared_ffn_dim, cfg.shared_expert_gated = shared, False
    else:
        cfg.ffn_dim = shared


def hf_tensors(cfg, tensors: dict, source) -> dict:
    """tensors with each layer's shared MLP placed (input_linear's gate half, then its up half, and
    output_linear: ffn_gate / ffn_up / ffn_down, or ffn_*_shexp beside experts) and ssm_norm.weight
    [1, d_inner] read as [n_groups, d_inner / n_groups], both zero-copy. (A_log is deltanet's
    recurrent_tensors' to turn into ssm_a.)"""
    from .fused_tensors import split_rows   # (fused_tensors imports config, which imports this module)
    sfx = "_shexp" if cfg.n_expert else ""
    width = cfg.shared_ffn_dim if cfg.n_expert else cfg.ffn_dim
    out = {}
    for name, t in tensors.items():
        prefix, _, part = name.rpartition(".")
        if name.endswith(".shared_mlp_in"):
            out.update(split_rows(t, [(f"{prefix}.ffn_gate{sfx}.weight", width),
                                      (f"{prefix}.ffn_up{sfx}.weight", width)]))
        elif name.endswith(".shared_mlp_out"):
            out[f"{prefix}.ffn_down{sfx}.weight"] = WeightTensor(f"{prefix}.ffn_down{sfx}.weight", t.data, t.type_id,
                                                                t.shape, t.source)
        elif name.endswith(".ssm_norm.weight") and tuple(t.shape) == (1, cfg.ssm_v_heads * cfg.ssm_v_dim):
            ng = cfg.ssm_k_heads
            out[name] = WeightTensor(name, t.data, t.type_id, (ng, t.shape[1] // ng), t.source)
        else:
            out[name] = t
    return out



def gguf_tensors(weights: dict) -> dict:
    """weights (a GGUF's) with each layer's ssm_a and ssm_d, which llama.cpp's converter stores as
    [n_heads, 1] (Mamba-1's shape semantics), viewed as the [1, n_heads] rows the core reads."""
    out = {}
    for name, t in weights.items():
        if name.endswith((".ssm_a", ".ssm_d")) and len(t.shape) == 2 and t.shape[1] == 1:
            t = WeightTensor(name, t.data, t.type_id, (1, t.shape[0]), t.source)
        out[name] = t
    return out
