"""Gemma 4 (text): Gemma 3's sandwich norms, GeGLU, per-head QK-norm and scaled embeddings, plus
per-layer attention shapes (the global layers' heads are global_head_dim wide, with their own KV
head count), V taken from K's projection on the global layers (attention_k_eq_v), V RMS-normed
without a weight, an attention scale of 1, "proportional" RoPE on the global layers (a quarter of
each head's pairs rotating at base^(-2i / head_dim), the rest not at all) and a scalar on each
layer's output. Read from GGUF the way llama.cpp's gemma4 loader reads what its converter
(Gemma4Model) writes, and from config.json the way transformers' Gemma4TextConfig reads it.

E2B / E4B add per-layer embeddings (a wide second embedding giving each layer a small input per
token) and KV sharing (the last num_kv_shared_layers layers compute no K/V and read the cache of
the last earlier layer of their kind), their MLPs twice as wide where use_double_wide_mlp says so.

26B-A4B's layers run a dense MLP and routed GeGLU experts side by side (ModelConfig's
moe_beside_dense): the router reads rms_norm(x) * router.scale / sqrt(dim), softmax, the top k
renormalised and times each expert's per_expert_scale (GGUF ffn_down_exps.scale).

The vision and audio towers of the multimodal checkpoints are not read (text only).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ModelFormatError
from .rope import base_inv_freqs

GGUF_ARCH = "gemma4"
HF_TEXT_TYPE = "gemma4_text"

# HF layer names beyond Gemma 3's (safetensors_dir maps those), as llama.cpp's converter names them:
# the layer's output scalar, the per-layer embeddings' gate, projection and norm, the MoE block's
# router (its input scale, each expert's output scale) and norms (the experts' 3-D tensors go
# through fused_experts).
HF_LAYER_NAMES = {
    "layer_scalar": "layer_output_scale.weight",
    "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
    "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
}
HF_GLOBAL_NAMES = {
    "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
}
LAYER_SCALE = "layer_output_scale.weight"   # [1] per layer: the config's layer_out_scale, not a core tensor
HF_SWA_THETA, HF_FULL_THETA, HF_FULL_PARTIAL = 10_000.0, 1_000_000.0, 0.25   # Gemma4TextConfig's defaults
HF_GLOBAL_HEAD_DIM = 512


def _fail(source, problem):
    raise ModelFormatError(f"{source}: gemma4: {problem}")


def _unsupported(source, what):
    _fail(source, f"{what} {'is' if not what.endswith('s') else 'are'} not supported yet")


def proportional_freqs(theta: float, head_dim: int, partial: float, factor: float = 1.0) -> np.ndarray:
    """transformers' "proportional" RoPE (_compute_proportional_rope_parameters): the first
    int(partial * head_dim // 2) pairs at theta^(-2i / head_dim) (the whole head's exponent), the
    other pairs not rotating (frequency 0), all divided by factor. float64 [head_dim // 2]."""
    rotated = int(partial * head_dim // 2)
    freqs = np.zeros(head_dim // 2)
    freqs[:rotated] = base_inv_freqs(theta, head_dim)[:rotated]
    return freqs / factor


def _per_layer(value, n_layers: int, what: str, source) -> list:
    """An int or one int per layer (GGUF arrays), as a list of n_layers ints."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != n_layers:
            _fail(source, f"{what} lists {len(value)} values for {n_layers} layers")
        out = list(value)
    else:
        out = [value] * n_layers
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            _fail(source, f"{what} must hold positive integers, got {v!r}")
    return [int(v) for v in out]


def kv_sources(swa: list, n_shared: int, source) -> list | None:
    """Each layer's K/V source under KV sharing (Gemma4TextConfig.kv_sharing_modes): the last
    n_shared layers read the cache of the last earlier layer of their kind (sliding or full);
    None without sharing."""
    n = len(swa)
    if not n_shared:
        return None
    first = n - n_shared
    if first < 1:
        _unsupported(source, f"KV sharing of all {n} layers (num_kv_shared_layers {n_shared})")
    out = list(range(n))
    for l in range(first, n):
        own = [i for i in range(first) if swa[i] == swa[l]]
        if not own:
            _fail(source, f"layer {l} shares the K/V of an earlier {'sliding' if swa[l] else 'full'} layer; there is none")
        out[l] = own[-1]
    return out


def _per_layer_inputs(cfg, ple_dim: int, n_shared: int, double_wide: bool, swa: list, source) -> None:
    """Per-layer embeddings (ple_dim > 0), KV sharing and the double-wide MLPs of the sharing layers."""
    cfg.ple_dim = ple_dim
    cfg.ple_embed_scale = float(np.float32(math.sqrt(ple_dim))) if ple_dim else 1.0
    cfg.layer_kv_source = kv_sources(swa, n_shared, source)
    if double_wide and n_shared:   # the sharing layers' MLPs twice as wide (Gemma4TextMLP)
        first = cfg.n_layers - n_shared
        cfg.layer_ffn_dim = [cfg.ffn_dim * (2 if l >= first else 1) for l in range(cfg.n_layers)]


def _experts(cfg, n_expert: int, used: int, width: int, source) -> None:
    """The MoE block's experts (26B-A4B): softmax routing, the top `used` renormalised, beside the dense MLP."""
    if not n_expert:
        return
    if cfg.ple_dim:
        _unsupported(source, "the mixture-of-experts block with per-layer embeddings")
    if not 1 <= used <= n_expert:
        _fail(source, f"{used} experts per token of {n_expert}")
    cfg.n_expert, cfg.n_expert_used, cfg.expert_ffn_dim = n_expert, used, width
    cfg.expert_norm_topk, cfg.router, cfg.moe_beside_dense = True, "softmax", True


def gguf_expert_stacks(weights: dict) -> dict:
    """weights with llama.cpp's fused ffn_gate_up_exps [E, 2 * ffn, dim] split into the gate and up
    stacks (zero-copy views of each expert's rows)."""
    from .fused_experts import split_gate_up
    out = {}
    for name, w in weights.items():
        if name.endswith(".ffn_gate_up_exps.weight") and len(w.shape) == 3:
            p = name[:-len("ffn_gate_up_exps.weight")]
            out[p + "ffn_gate_exps.weight"], out[p + "ffn_up_exps.weight"] = \
                split_gate_up(w, p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight")
        else:
            out[name] = w
    return out


def _shape(cfg, swa: list, head_dim_swa: int, head_dim_full: int, kv_heads: list, window: int,
           swa_freqs: np.ndarray, full_freqs: np.ndarray, source) -> None:
    """The per-layer fields shared by both readers: head widths and KV heads per layer, windows on
    the sliding layers, RoPE table 0 (sliding) or 1 (full), both as wide as the widest head."""
    n = cfg.n_layers
    cfg.head_dim = head_dim_swa
    cfg.layer_head_dim = [head_dim_swa if s else head_dim_full for s in swa]
    cfg.n_kv_heads = kv_heads[swa.index(True)] if any(swa) else kv_heads[0]
    cfg.layer_n_kv_heads = kv_heads
    for l in range(n):
        if cfg.n_heads % kv_heads[l]:
            _fail(source, f"{cfg.n_heads} attention heads is not a multiple of layer {l}'s {kv_heads[l]} KV heads")
    for hd in (head_dim_swa, head_dim_full):
        if hd % 2 or not 2 <= hd <= 512:
            _fail(source, f"head width {hd} must be even and at most 512")
    cfg.layer_window = [window if s else 0 for s in swa]
    cfg.sliding_window = window if any(swa) else None
    width = max(cfg.layer_head_dim) // 2
    tables = np.zeros((2, width), dtype=np.float32)
    tables[0, :len(swa_freqs)] = swa_freqs
    tables[1, :len(full_freqs)] = full_freqs
    cfg.rope_freqs, cfg.layer_rope = tables, [0 if s else 1 for s in swa]
    cfg.rope_neox = True
    cfg.ffn_act = "gelu_tanh"
    cfg.attn_scale = 1.0            # Gemma4TextAttention.scaling; llama.cpp's f_attention_scale
    cfg.v_norm = True
    cfg.embed_scale = float(np.float32(math.sqrt(cfg.dim)))   # the HF loader rounds it to the embedding dtype


def config_from_gguf(meta: dict, vocab: int, source: str, census, rope_factors):
    """The ModelConfig of a GGUF gemma4 file, as llama.cpp's gemma4 loader reads it (rope_factors:
    rope_freqs.weight, the global layers' frequency divisors)."""
    from .config import ModelConfig, _check_bounds, _extent_bound, _get_float, _get_int, _layer_bound
    p = GGUF_ARCH + "."
    extent = _extent_bound(census)
    n_layers = _get_int(meta, p + "block_count", source, **_layer_bound(census))
    ffn_widths = _per_layer(meta.get(p + "feed_forward_length"), n_layers, "feed_forward_length", source)
    n_heads = _get_int(meta, p + "attention.head_count", source, **extent)
    dim = _get_int(meta, p + "embedding_length", source, **extent)
    hd_full = _get_int(meta, p + "attention.key_length", source, **extent)
    hd_swa = _get_int(meta, p + "attention.key_length_swa", source, default=hd_full, **extent)
    if _get_int(meta, p + "attention.value_length", source, default=hd_full) != hd_full or \
            _get_int(meta, p + "attention.value_length_swa", source, default=hd_swa) != hd_swa:
        _fail(source, "value_length must equal key_length (and value_length_swa key_length_swa)")
    swa = meta.get(p + "attention.sliding_window_pattern")
    if not isinstance(swa, (list, tuple, np.ndarray)) or len(swa) != n_layers:
        _fail(source, f"attention.sliding_window_pattern must list a bool for each of the {n_layers} layers")
    swa = [bool(s) for s in swa]
    kv_heads = _per_layer(meta.get(p + "attention.head_count_kv", n_heads), n_layers, "attention.head_count_kv",
                          source)
    if _get_int(meta, p + "rope.dimension_count", source, default=hd_full) != hd_full or \
            _get_int(meta, p + "rope.dimension_count_swa", source, default=hd_swa) != hd_swa:
        _unsupported(source, "partial rotary other than the global layers' proportional RoPE (rope.dimension_count)")
    theta = _get_float(meta, p + "rope.freq_base", source, default=HF_FULL_THETA)
    theta_swa = _get_float(meta, p + "rope.freq_base_swa", source, default=theta)
    if meta.get(p + "rope.scaling.type", "none") != "none":
        _unsupported(source, f"RoPE scaling '{meta.get(p + 'rope.scaling.type')}'")
    # llama.cpp divides the global layers' frequencies by rope_freqs.weight (1 rotating, 1e30 not)
    factors = np.ones(hd_full // 2) if rope_factors is None else np.asarray(rope_factors, dtype=np.float64).reshape(-1)
    if factors.shape != (hd_full // 2,) or not np.all(factors > 0):
        _fail(source, f"rope_freqs.weight must hold {hd_full // 2} positive factors")
    window = _get_int(meta, p + "attention.sliding_window", source, default=0, minimum=0) if any(swa) else 0
    if any(swa) and window < 1:
        _fail(source, "sliding layers without attention.sliding_window")
    cfg = ModelConfig(
        arch=GGUF_ARCH, n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=kv_heads[0], head_dim=hd_swa,
        ffn_dim=_get_int({"f": ffn_widths[0]}, "f", source, **extent), vocab=vocab,
        context_length=_get_int(meta, p + "context_length", source),
        rms_eps=_get_float(meta, p + "attention.layer_norm_rms_epsilon", source),
        rope_theta=theta, rope_neox=True, local_rope_theta=theta_swa)
    cap = meta.get(p + "final_logit_softcapping")
    cfg.final_softcap = 0.0 if cap is None else _get_float(meta, p + "final_logit_softcapping", source)
    _shape(cfg, swa, hd_swa, hd_full, kv_heads, window, base_inv_freqs(theta_swa, hd_swa),
           base_inv_freqs(theta, hd_full) / factors, source)
    n_shared = _get_int(meta, p + "attention.shared_kv_layers", source, default=0, minimum=0)
    _per_layer_inputs(cfg, _get_int(meta, p + "embedding_length_per_layer_input", source, default=0, minimum=0,
                                    **extent), n_shared, False, swa, source)
    n_expert = _get_int(meta, p + "expert_count", source, default=0, minimum=0, **extent)
    if n_expert:
        _experts(cfg, n_expert, _get_int(meta, p + "expert_used_count", source, maximum=n_expert, held_by="expert_count"),
                 _get_int(meta, p + "expert_feed_forward_length", source, **extent), source)
    if len(set(ffn_widths)) > 1:   # llama.cpp's per-layer feed_forward_length (use_double_wide_mlp)
        for w in ffn_widths:
            _get_int({"f": w}, "f", source, **extent)
        cfg.layer_ffn_dim = ffn_widths
    _check_bounds(cfg, source)
    return cfg


def _hf_rope(params: dict, kind: str, source):
    """(theta, partial, factor) of one layer kind's rope_parameters."""
    p = params.get(kind) or {}
    rope_type = p.get("rope_type", "default")
    default = (HF_SWA_THETA, 1.0) if kind == "sliding_attention" else (HF_FULL_THETA, HF_FULL_PARTIAL)
    if rope_type == "default" and kind == "sliding_attention":
        return float(p.get("rope_theta", default[0])), 1.0, 1.0
    if rope_type != "proportional" and not (rope_type == "default" and kind == "full_attention"):
        _unsupported(source, f"rope_type '{rope_type}' on the {kind} layers")
    partial = float(p.get("partial_rotary_factor", default[1] if rope_type == "proportional" else 1.0))
    return float(p.get("rope_theta", default[0])), partial, float(p.get("factor", 1.0))


def config_from_hf(hf: dict, source: str, census):
    """The ModelConfig of a gemma4_text config.json (or Gemma4ForConditionalGeneration's text_config),
    as Gemma4TextConfig reads it: global_head_dim / num_global_key_value_heads (the published
    checkpoints), or per_layer_config (what transformers 5 saves)."""
    from .config import ModelConfig, _check_bounds, _extent_bound, _get_float, _get_int, _layer_bound
    extent = _extent_bound(census)
    if hf.get("use_bidirectional_attention") == "all":
        _unsupported(source, "bidirectional attention (use_bidirectional_attention='all')")
    if hf.get("attention_bias"):
        _unsupported(source, "attention biases (attention_bias)")
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        _fail(source, f"hidden_activation '{act}' is not supported (Gemma uses gelu_pytorch_tanh)")
    n_layers = _get_int(hf, "num_hidden_layers", source, **_layer_bound(census))
    n_heads = _get_int(hf, "num_attention_heads", source, **extent)
    hd_swa = _get_int(hf, "head_dim", source, default=256, **extent)
    kv_swa = _get_int(hf, "num_key_value_heads", source, default=n_heads, **extent)
    types = hf.get("layer_types")
    if types is None:   # Gemma4TextConfig's default: five sliding layers to one full
        types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers or set(types) - {"full_attention", "sliding_attention"}:
        _fail(source, f"layer_types must give full_attention or sliding_attention for each of the {n_layers} layers")
    types = list(types[:-1]) + ["full_attention"]   # transformers forces the last layer full
    swa = [t == "sliding_attention" for t in types]
    # The global layers' shapes: per_layer_config (transformers 5 saves it) or the published keys.
    overrides = hf.get("per_layer_config")
    hd_full = hf.get("global_head_dim", HF_GLOBAL_HEAD_DIM)
    kv_full = hf.get("num_global_key_value_heads") if hf.get("attention_k_eq_v", False) else None
    head_dims, kv_heads = [], []
    for l, s in enumerate(swa):
        if overrides is not None:
            o = overrides.get(str(l), overrides.get(l)) or {}
            head_dims.append(o.get("head_dim", hd_swa))
            kv_heads.append(o.get("num_key_value_heads", kv_swa))
        else:
            head_dims.append(hd_swa if s else hd_full)
            kv_heads.append(kv_swa if s or kv_full is None else kv_full)
    head_dims = _per_layer(head_dims, n_layers, "head_dim per layer", source)
    kv_heads = _per_layer(kv_heads, n_layers, "num_key_value_heads per layer", source)
    full = {head_dims[l] for l in range(n_layers) if not swa[l]}
    local = {head_dims[l] for l in range(n_layers) if swa[l]}
    if len(full) > 1 or len(local) > 1:
        _unsupported(source, "head widths varying within one layer kind (per_layer_config)")
    hd_full = full.pop() if full else hd_swa
    params = hf.get("rope_parameters") or {}
    theta_swa, _, _ = _hf_rope(params, "sliding_attention", source)
    theta, partial, factor = _hf_rope(params, "full_attention", source)
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        _unsupported(source, "partial rotary on the sliding layers (partial_rotary_factor)")
    window = hf.get("sliding_window", 512)
    if any(swa) and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        _fail(source, f"sliding_window must be a positive integer, got {window!r}")
    dim = _get_int(hf, "hidden_size", source, **extent)
    cfg = ModelConfig(
        arch=GGUF_ARCH, n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=kv_swa, head_dim=hd_swa,
        ffn_dim=_get_int(hf, "intermediate_size", source, **extent),
        vocab=_get_int(hf, "vocab_size", source, **extent),
        context_length=_get_int(hf, "max_position_embeddings", source),
        rms_eps=_get_float(hf, "rms_norm_eps", source, default=1e-6),
        rope_theta=theta, rope_neox=True, local_rope_theta=theta_swa,
        tied_embeddings=bool(hf.get("tie_word_embeddings", True)))
    cap = hf.get("final_logit_softcapping")
    cfg.final_softcap = 0.0 if cap is None else _get_float(hf, "final_logit_softcapping", source)
    cfg.vision_language = hf.get("vision_language")
    _shape(cfg, swa, hd_swa, hd_full, kv_heads, window if any(swa) else 0, base_inv_freqs(theta_swa, hd_swa),
           proportional_freqs(theta, hd_full, partial, factor), source)
    # attention_k_eq_v: the full layers have no v_proj (Gemma4TextAttention.use_alternative_attention)
    cfg.layer_v_is_k = [int(bool(hf.get("attention_k_eq_v", False)) and not s) for s in swa]
    ple_dim = _get_int(hf, "hidden_size_per_layer_input", source, default=0, minimum=0, **extent) \
        if hf.get("hidden_size_per_layer_input") else 0
    if ple_dim and hf.get("vocab_size_per_layer_input", cfg.vocab) != cfg.vocab:
        _unsupported(source, f"a per-layer embedding vocabulary (vocab_size_per_layer_input "
                             f"{hf.get('vocab_size_per_layer_input')}) other than the model's")
    n_shared = _get_int(hf, "num_kv_shared_layers", source, default=0, minimum=0)
    _per_layer_inputs(cfg, ple_dim, n_shared, bool(hf.get("use_double_wide_mlp")), swa, source)
    if hf.get("enable_moe_block"):
        n_expert = _get_int(hf, "num_experts", source, **extent)
        _experts(cfg, n_expert, _get_int(hf, "top_k_experts", source, maximum=n_expert, held_by="num_experts"),
                 _get_int(hf, "moe_intermediate_size", source, **extent), source)
    _check_bounds(cfg, source)
    return cfg


def split_fused_qkv(cfg, weights: dict) -> dict:
    """weights with each blk.N.attn_qkv.weight (convert_hf_to_gguf.py --fuse-qkv) cut zero-copy
    into attn_q, attn_k and attn_v as llama.cpp's gemma4 graph views it: Q's rows, then K's and V's
    of the layer's own widths (a K/V-sharing layer's K and V rows, which llama.cpp never reads,
    dropped). Before read_layer_tensors: a fused layer has its V."""
    from .fused_tensors import split_rows
    out = dict(weights)
    for l in range(cfg.n_layers):
        name = f"blk.{l}.attn_qkv.weight"
        t = weights.get(name)
        if t is None:
            continue
        for part in ("attn_q", "attn_k", "attn_v"):
            if f"blk.{l}.{part}.weight" in weights:
                raise ModelFormatError(f"{t.source}: tensor 'blk.{l}.{part}.weight' given both on its own and "
                                       f"inside '{name}'")
        kv = cfg.kv_dim_of(l)
        parts = split_rows(t, [(f"blk.{l}.attn_q.weight", cfg.n_heads * cfg.layer_head_dim[l]),
                               (f"blk.{l}.attn_k.weight", kv), (f"blk.{l}.attn_v.weight", kv)])
        del out[name]
        own_kv = cfg.layer_kv_source is None or cfg.layer_kv_source[l] == l
        out.update(parts if own_kv else {f"blk.{l}.attn_q.weight": parts[f"blk.{l}.attn_q.weight"]})
    return out


def read_layer_tensors(cfg, weights: dict, source: str) -> tuple:
    """Into the config: the per-layer output scalars (layer_output_scale.weight, [1] each:
    layer_out_scale) and, for a GGUF, V taken from K where the file has no attn_v (as llama.cpp
    decides it). Returns the scalars' names: the file's tensors, not the core's."""
    from .ggml_types import BF16, F16, F32
    scales = []
    for l in range(cfg.n_layers):
        t = weights.get(f"blk.{l}.{LAYER_SCALE}")
        if t is None:
            scales.append(1.0)   # llama.cpp: optional
            continue
        if tuple(t.shape) != (1, 1):
            _fail(source, f"blk.{l}.{LAYER_SCALE} has shape {tuple(t.shape)}, expected one value")
        dtype = {F32: np.float32, F16: np.float16}.get(t.type_id)
        if dtype is not None:
            v = float(t.data.view(dtype)[0])
        elif t.type_id == BF16:
            v = float((t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)[0])
        else:
            _fail(source, f"blk.{l}.{LAYER_SCALE} must be F32, F16 or BF16")
        if not math.isfinite(v):
            _fail(source, f"blk.{l}.{LAYER_SCALE} is {v}")
        scales.append(v)
    cfg.layer_out_scale = None if all(s == 1.0 for s in scales) else scales
    if cfg.layer_v_is_k is None:   # a GGUF: V from K wherever attn_k comes without attn_v (a sharing layer has neither)
        cfg.layer_v_is_k = [int(f"blk.{l}.attn_k.weight" in weights and f"blk.{l}.attn_v.weight" not in weights)
                            for l in range(cfg.n_layers)]
    return tuple(n for n in weights if n.endswith("." + LAYER_SCALE))
