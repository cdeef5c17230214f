"""Qwen3.5 / Qwen3.6's Gated DeltaNet hybrids (GGUF qwen35 / qwen35moe, HF qwen3_5 / qwen3_5_moe) and
their predecessor Qwen3-Next (GGUF qwen3next, HF qwen3_next; its fused projections: qwen3next.py):
their config keys, and the tensors the core reads built from an HF checkpoint's.

Three of every four layers replace attention by a linear-attention recurrence (the core's
Backend::gated_delta_rule over a causal convolution); the others are gated attention (each head's
query followed by a gate in attn_q, the output times sigmoid(gate)) with a per-head QK-norm and
partial rotary. A recurrent layer keeps a fixed-size state per sequence instead of K/V rows.

Where the two file formats differ (llama.cpp's converter, conversion/qwen.py):
- llama.cpp stores the value heads tiled (value head v of key head k at v * n_k + k), HF grouped
  (k * per_k + v): every per-value-head tensor follows its file's order, and the core is told which
  (ssm_v_tiled), so neither is reordered here;
- GGUF stores A = -exp(A_log) as ssm_a; HF's A_log becomes that F32 tensor at load;
- GGUF stores the zero-centred norms as 1 + w; HF's are shifted at load (not the output's gated
  norm, linear_attn.norm, which HF initialises at ones and uses as it is);
- HF's conv1d.weight is [C, 1, K]; GGUF's ssm_conv1d is [C, K].
"""
from __future__ import annotations

import numpy as np

from .errors import ModelFormatError
from .weights import WeightTensor, to_f32_tensor

GGUF_ARCHS = ("qwen35", "qwen35moe", "qwen3next")
HF_TEXT_TYPES = {"qwen3_5_text": "qwen35", "qwen3_5_moe_text": "qwen35moe", "qwen3_next": "qwen3next"}
# The GGUF archs whose value heads llama.cpp's converter tiles (Qwen3-Next's stay grouped, as in HF),
# and which carry Qwen3.5's multimodal RoPE sections.
TILED_GGUF_ARCHS = MROPE_ARCHS = ("qwen35", "qwen35moe")
# HF names of a recurrent layer's tensors (model.layers.N.linear_attn.*) -> canonical (GGUF) names;
# A_log goes through a name of its own until recurrent_tensors turns it into ssm_a.
HF_LAYER_NAMES = {
    "linear_attn.in_proj_qkv.weight": "attn_qkv.weight",
    "linear_attn.in_proj_z.weight": "attn_gate.weight",
    "linear_attn.in_proj_b.weight": "ssm_beta.weight",
    "linear_attn.in_proj_a.weight": "ssm_alpha.weight",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight",
    "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.A_log": "ssm_a_log",
    "linear_attn.norm.weight": "ssm_norm.weight",
    "linear_attn.out_proj.weight": "ssm_out.weight",
}
# The multi-token-prediction block HF checkpoints carry (mtp.*), which neither transformers nor forgert runs.
HF_SKIPPED_PREFIXES = ("mtp.",)
# Norms stored as HF's w for (1 + w) that the shift leaves alone: the gated output norm is plain.
UNSHIFTED_NORMS = ("ssm_norm.weight",)


def _fail(source, problem):
    raise ModelFormatError(f"{source}: {problem}")


def _positive(value, key, source) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        _fail(source, f"'{key}' must be a positive integer, got {value!r}")
    return int(value)


# What a family calls the recurrent fields (the ssm_* names are the gated delta net's), for messages.
DELTANET_FIELD_NAMES = {"k_heads": "key heads", "v_heads": "value heads", "k_dim": "key head width",
                        "v_dim": "value head width"}


def set_recurrent_layers(cfg, kinds: list, conv_kernel, k_heads, v_heads, k_dim, v_dim, source, extent: int, *,
                         family: str, names: dict, max_k_dim: int, max_v_dim: int) -> None:
    """The config's recurrent-layer fields and layer kinds, each bounded by the file's largest
    tensor dimension and by the ops' limits (max_k_dim / max_v_dim). The gated delta net and Mamba2
    share these fields: Mamba2's groups are k_heads, its heads v_heads, its state size k_dim and its
    head width v_dim; names says what the family calls them."""
    for key, v in (("convolution width", conv_kernel), (names["k_heads"], k_heads), (names["v_heads"], v_heads),
                   (names["k_dim"], k_dim), (names["v_dim"], v_dim)):
        if v > max(extent, 1):
            _fail(source, f"the {family} layers' {key} {v} exceeds the largest tensor dimension in the file ({extent})")
    if conv_kernel > 16:
        _fail(source, f"a convolution of width {conv_kernel} is not supported (at most 16)")
    if k_dim > max_k_dim or v_dim > max_v_dim:
        _fail(source, f"{family} layers with {names['k_dim']} {k_dim} and {names['v_dim']} {v_dim} are not "
                      f"supported (at most {max_k_dim} and {max_v_dim})")
    if v_heads % k_heads:
        _fail(source, f"{v_heads} {names['v_heads']} is not a multiple of {k_heads} {names['k_heads']}")
    if len(kinds) != cfg.n_layers:
        _fail(source, f"the layer pattern lists {len(kinds)} layers for {cfg.n_layers}")
    cfg.layer_kinds = kinds
    cfg.ssm_conv_kernel, cfg.ssm_k_heads, cfg.ssm_v_heads = conv_kernel, k_heads, v_heads
    cfg.ssm_k_dim, cfg.ssm_v_dim = k_dim, v_dim


def _set_recurrent(cfg, recurrent: list, conv_kernel, k_heads, v_heads, k_dim, v_dim, tiled: bool, source,
                   extent: int) -> None:
    """The gated delta net's fields (heads of at most 256 dims); recurrent: a bool per layer."""
    set_recurrent_layers(cfg, ["gated_delta_net" if r else "attention" for r in recurrent], conv_kernel, k_heads,
                         v_heads, k_dim, v_dim, source, extent, family="gated delta net",
                         names=DELTANET_FIELD_NAMES, max_k_dim=256, max_v_dim=256)
    cfg.ssm_v_tiled = tiled
    cfg.attn_output_gate = True


def apply_gguf(meta: dict, p: str, cfg, source, extent: int) -> None:
    """llama.cpp's qwen35 / qwen35moe / qwen3next keys (qwen3next's value heads grouped, not tiled):
    ssm.conv_kernel, ssm.state_size (the key heads' width), ssm.group_count (key heads),
    ssm.time_step_rank (value heads), ssm.inner_size (all value heads' width); attention.recurrent_layers, or full_attention_interval (every interval-th
    layer attention, the rest recurrent; 4 when absent); nextn_predict_layers after the model's own
    blocks (multi-token prediction, not run)."""
    def get(key, default=None):
        v = meta.get(p + key, default)
        if v is None:
            _fail(source, f"missing metadata '{p + key}'")
        return _positive(v, p + key, source)
    nextn = meta.get(p + "nextn_predict_layers", 0)
    if isinstance(nextn, bool) or not isinstance(nextn, (int, np.integer)) or not 0 <= nextn < cfg.n_layers:
        _fail(source, f"nextn_predict_layers {nextn!r} must be in 0..{cfg.n_layers - 1}")
    cfg.n_layers -= int(nextn)
    cfg.mtp_layers = int(nextn)
    v_heads, inner = get("ssm.time_step_rank"), get("ssm.inner_size")
    if inner % v_heads:
        _fail(source, f"ssm.inner_size {inner} is not a multiple of ssm.time_step_rank {v_heads}")
    pattern = meta.get(p + "attention.recurrent_layers")
    if pattern is not None:
        values = list(pattern) if isinstance(pattern, (list, tuple, np.ndarray)) else None
        if values is None or not all(isinstance(x, (bool, int, np.integer, np.bool_)) for x in values):
            _fail(source, f"metadata '{p}attention.recurrent_layers' must be an array of booleans")
        recurrent = [bool(x) for x in values[:cfg.n_layers]]
    else:
        interval = get("full_attention_interval", 4)
        recurrent = [(i + 1) % interval != 0 for i in range(cfg.n_layers)]
    _set_recurrent(cfg, recurrent, get("ssm.conv_kernel"), get("ssm.group_count"), v_heads, get("ssm.state_size"),
                   inner // v_heads, cfg.arch in TILED_GGUF_ARCHS, source, extent)


def apply_hf(hf: dict, cfg, source, extent: int) -> None:
    """transformers' Qwen3_5TextConfig / Qwen3_5MoeTextConfig: linear_conv_kernel_dim,
    linear_num_key_heads / linear_key_head_dim, linear_num_value_heads / linear_value_head_dim, and
    layer_types ("linear_attention" / "full_attention"; without them every
    full_attention_interval-th layer is attention)."""
    def get(key, default=None):
        v = hf.get(key, default)
        if v is None:
            _fail(source, f"missing '{key}'")
        return _positive(v, key, source)
    types = hf.get("layer_types")
    if types is None:
        interval = get("full_attention_interval", 4)
        types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(cfg.n_layers)]
    if not isinstance(types, list) or set(types) - {"linear_attention", "full_attention"}:
        _fail(source, f"layer_types must list 'linear_attention' or 'full_attention' per layer, got {types!r}")
    if hf.get("attn_output_gate", True) is not True:
        _fail(source, "attn_output_gate=false (attention without its output gate) is not supported")
    sections = (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("mrope_section")
    if isinstance(sections, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in sections):
        cfg.rope_sections = sections   # a vision model's multimodal RoPE split: 1-D on text, kept for export
    _set_recurrent(cfg, [t == "linear_attention" for t in types], get("linear_conv_kernel_dim", 4),
                   get("linear_num_key_heads"), get("linear_num_value_heads"), get("linear_key_head_dim"),
                   get("linear_value_head_dim"), False, source, extent)


def recurrent_tensors(tensors: dict, source) -> dict:
    """tensors with each recurrent layer's A_log (HF) replaced by ssm_a = -exp(A_log), F32."""
    from .tensor_check import _as_f32   # (tensor_check imports config, which imports this module)
    out = {}
    for name, t in tensors.items():
        if name.endswith(".ssm_a_log"):
            a = to_f32_tensor(t, -np.exp(_as_f32(t).data.view(np.float32)))
            name = name[: -len("ssm_a_log")] + "ssm_a"
            out[name] = WeightTensor(name, a.data, a.type_id, a.shape, a.source)
        else:
            out[name] = t
    return out


def tiled_order(cfg) -> np.ndarray:
    """Value head i of llama.cpp's tiled order is HF's head order[i] (HF groups each key head's
    value heads together; llama.cpp's converter tiles them: value head v of every key head, then v + 1)."""
    per_k = cfg.ssm_v_heads // cfg.ssm_k_heads
    return np.arange(cfg.ssm_v_heads).reshape(cfg.ssm_k_heads, per_k).T.reshape(-1)


def _blocks(order: np.ndarray, width: int) -> np.ndarray:
    return (order[:, None] * width + np.arange(width)[None, :]).reshape(-1)


def gguf_value_head_order(cfg, name: str):
    """For `forgert quantize` of an HF directory: the transform x -> x that puts GGUF tensor
    `name`'s value heads in llama.cpp's tiled order (x float32 [rows, cols] in HF's grouped order),
    or None for a tensor without value heads."""
    if cfg.ssm_v_tiled or cfg.arch not in TILED_GGUF_ARCHS or not name.startswith("blk."):
        return None
    part = name.split(".", 2)[2]
    order, vd, qk = tiled_order(cfg), cfg.ssm_v_dim, 2 * cfg.ssm_k_heads * cfg.ssm_k_dim
    v_rows = np.concatenate([np.arange(qk), qk + _blocks(order, vd)])
    return {
        "attn_qkv.weight": lambda x: x[v_rows],         # q and k rows as they are, then the value heads
        "ssm_conv1d.weight": lambda x: x[v_rows],
        "attn_gate.weight": lambda x: x[_blocks(order, vd)],
        "ssm_alpha.weight": lambda x: x[order],
        "ssm_beta.weight": lambda x: x[order],
        "ssm_dt.bias": lambda x: x[:, order],         # [1, n_v_heads]
        "ssm_a": lambda x: x[:, order],
        "ssm_out.weight": lambda x: x[:, _blocks(order, vd)],
    }.get(part)


def gguf_metadata(cfg) -> dict:
    """llama.cpp's qwen35 / qwen3next keys for the recurrent layers (apply_gguf reads them back);
    qwen3next has no multimodal RoPE sections."""
    rec = [int(k == "gated_delta_net") for k in cfg.layer_kinds]
    interval = next((k for k in range(1, cfg.n_layers + 1)
                     if rec == [int((i + 1) % k != 0) for i in range(cfg.n_layers)]), None)
    if interval is None:
        raise ModelFormatError(f"recurrent layers {rec} do not follow one attention layer every k layers, the "
                               f"only pattern llama.cpp's qwen35 reads (full_attention_interval)")
    if cfg.arch == "qwen3next" and not cfg.n_expert:
        raise ModelFormatError("qwen3next without experts (num_experts 0): llama.cpp's qwen3next requires them")
    keys = {"ssm.conv_kernel": cfg.ssm_conv_kernel, "ssm.state_size": cfg.ssm_k_dim,
            "ssm.group_count": cfg.ssm_k_heads, "ssm.time_step_rank": cfg.ssm_v_heads,
            "ssm.inner_size": cfg.ssm_v_heads * cfg.ssm_v_dim, "full_attention_interval": interval}
    if cfg.arch in MROPE_ARCHS:
        half = cfg.rotated_dims // 2
        sections = list(cfg.rope_sections) if cfg.rope_sections else [half - 2 * (half // 3), half // 3, half // 3]
        keys["rope.dimension_sections"] = (sections + [0, 0, 0, 0])[:4]
    return keys
