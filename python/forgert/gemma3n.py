"""Gemma 3n (text; E2B / E4B): Gemma 4's per-layer embeddings, KV sharing, per-head QK-norm with
weights, V-norm without one, no attention scaling and final soft-capping, plus AltUp (the residual
stream kept as altup_num_inputs parallel streams: each layer predicts them from a router's
modalities, runs on the active one and corrects them all with its output), LAuReL (a low-rank
residual beside attention) and activation sparsity on the first layers' gates (gaussian top-k).
RMSNorm weights are used as stored (x * w, not Gemma 3's 1 + w), in HF checkpoints and in
llama.cpp's GGUFs alike. Read from config.json as transformers' Gemma3nTextConfig reads it and from
GGUF as llama.cpp's gemma3n loader reads what its converter writes (altup_proj / altup_unembd_proj
stacked into one [N - 1, dim, dim] tensor each, split here into one view per stream).

The vision and audio towers of the multimodal checkpoints are not read (text only).
"""
from __future__ import annotations

import re
from statistics import NormalDist

import numpy as np

from .errors import ModelFormatError
from .gemma4 import _per_layer_inputs, _shape, kv_sources
from .rope import base_inv_freqs

GGUF_ARCH = "gemma3n"
HF_TEXT_TYPE = "gemma3n_text"
HF_MULTIMODAL_TYPE = "gemma3n"
# llama.cpp's gemma3n graph when the file names no sparsity: the first 10 layers at 0.95.
_GGUF_SPARSE_LAYERS, _GGUF_SPARSITY = 10, 0.95

HF_LAYER_NAMES = {
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "altup.correct_output_scale": "altup_correct_scale.weight",
    "altup.correction_coefs.weight": "altup_correct_coef.weight",
    "altup.prediction_coefs.weight": "altup_predict_coef.weight",
    "altup.modality_router.weight": "altup_router.weight",
    "altup.router_norm.weight": "altup_router_norm.weight",
    "laurel.linear_left.weight": "laurel_l.weight",
    "laurel.linear_right.weight": "laurel_r.weight",
    "laurel.post_laurel_norm.weight": "laurel_post_norm.weight",
    "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
}
# model.altup_projections.{i} / model.altup_unembed_projections.{i}: one tensor per stream past the first
HF_STREAM_RE = re.compile(r"^model\.altup_(projections|unembed_projections)\.(\d+)\.weight$")
_STREAM_NAMES = {"projections": "altup_proj", "unembed_projections": "altup_unembd_proj"}


def hf_stream_name(hf_name: str) -> str | None:
    m = HF_STREAM_RE.match(hf_name)
    return f"{_STREAM_NAMES[m.group(1)]}.{m.group(2)}.weight" if m else None


def _fail(source, problem):
    raise ModelFormatError(f"{source}: gemma3n: {problem}")


def std_multiplier(sparsity: float, source) -> float:
    """The normal quantile of a target sparsity (transformers computes it in float32), 0 for none."""
    if not 0.0 <= sparsity < 1.0:
        _fail(source, f"activation sparsity {sparsity} must be in [0, 1)")
    if 0.0 < sparsity <= 0.5:
        _fail(source, f"activation sparsity {sparsity} (a cut at or below the mean) is not supported")
    return float(np.float32(NormalDist().inv_cdf(sparsity))) if sparsity > 0 else 0.0


def _gguf_shared_kv_layers(meta, p: str, n_layers: int, source) -> int:
    """The KV-sharing layers at the end. The first converters wrote the count as a float (10.0),
    later ones as an integer; without the key llama.cpp shares from layer 20 on (its loader's
    fixed n_layer_kv_from_start, which is what E2B's 30 and E4B's 35 layers have)."""
    key = p + "attention.shared_kv_layers"
    v = meta.get(key)
    if v is None:
        return max(0, n_layers - 20)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) \
            or v != int(v) or not 0 <= v < n_layers:
        _fail(source, f"metadata '{key}' must be a whole number of layers in 0..{n_layers - 1}, got {v!r}")
    return int(v)


def _gguf_multiplier(v, source) -> float:
    """activation_sparsity_scale's value for one layer, as llama.cpp's converter writes it: the normal
    quantile of the layer's sparsity (-inf, the quantile of 0, for a dense layer)."""
    v = float(v)
    if v == float("-inf"):
        return 0.0
    if not np.isfinite(v) or v <= 0.0:
        _fail(source, f"activation_sparsity_scale {v} (a cut at or below the mean) is not supported")
    return v


def _altup(cfg, n_inputs: int, active: int, correct_scale: bool, laurel_rank: int, mults: list, source) -> None:
    """AltUp's and LAuReL's settings; mults: each layer's gate cut in standard deviations (the normal
    quantile of its sparsity; 0: a dense layer)."""
    if n_inputs < 2:
        _fail(source, f"altup_num_inputs {n_inputs}: AltUp needs at least 2 streams")
    if active != 0:
        _fail(source, f"altup_active_idx {active} is not supported yet (only 0, as every published checkpoint)")
    if laurel_rank < 1:
        _fail(source, "laurel_rank must be positive")
    if len(mults) != cfg.n_layers:
        _fail(source, f"activation sparsity lists {len(mults)} values for {cfg.n_layers} layers")
    cfg.altup_n, cfg.laurel_rank, cfg.altup_correct_scale = n_inputs, laurel_rank, bool(correct_scale)
    cfg.layer_sparsity = mults if any(m != 0.0 for m in mults) else None


def config_from_hf(hf: dict, source: str, census):
    """The ModelConfig of a gemma3n_text config.json (or Gemma3nForConditionalGeneration's text_config)."""
    from .config import ModelConfig, _check_bounds, _extent_bound, _get_float, _get_int, _layer_bound
    extent = _extent_bound(census)
    if hf.get("attention_bias"):
        _fail(source, "attention biases (attention_bias) are not supported")
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        _fail(source, f"hidden_activation '{act}' is not supported (Gemma 3n uses gelu_pytorch_tanh)")
    n_layers = _get_int(hf, "num_hidden_layers", source, **_layer_bound(census))
    n_heads = _get_int(hf, "num_attention_heads", source, **extent)
    hd = _get_int(hf, "head_dim", source, default=256, **extent)
    kv = _get_int(hf, "num_key_value_heads", source, default=n_heads, **extent)
    types = hf.get("layer_types")
    if types is None:   # Gemma3nTextConfig's default: four sliding layers to one full
        types = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers or set(types) - {"full_attention", "sliding_attention"}:
        _fail(source, f"layer_types must give full_attention or sliding_attention for each of the {n_layers} layers")
    swa = [t == "sliding_attention" for t in types]
    ffn = hf.get("intermediate_size", 16384)
    ffn = list(ffn) if isinstance(ffn, (list, tuple)) else [ffn] * n_layers
    if len(ffn) != n_layers:
        _fail(source, f"intermediate_size lists {len(ffn)} widths for {n_layers} layers")
    ffn = [_get_int({"f": f}, "f", source, **extent) for f in ffn]
    scaling = hf.get("rope_scaling")   # transformers 4's key; 5 writes rope_parameters
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        _fail(source, f"rope_scaling {scaling!r} is not supported")
    params = hf.get("rope_parameters") or {}
    for kind in ("sliding_attention", "full_attention"):
        if not isinstance(params, dict) or not isinstance(params.get(kind) or {}, dict):
            _fail(source, f"rope_parameters must map layer kinds to JSON objects, got {params!r}")
        rt = (params.get(kind) or {}).get("rope_type", "default")
        if rt != "default":
            _fail(source, f"rope_type '{rt}' on the {kind} layers is not supported")
    theta = _get_float(params.get("full_attention") or {}, "rope_theta", source,
                       default=hf.get("rope_theta", 1_000_000.0))
    theta_swa = _get_float(params.get("sliding_attention") or {}, "rope_theta", source,
                           default=hf.get("rope_local_base_freq", 10_000.0))
    window = hf.get("sliding_window", 512)
    if any(swa) and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        _fail(source, f"sliding_window must be a positive integer, got {window!r}")
    dim = _get_int(hf, "hidden_size", source, **extent)
    cfg = ModelConfig(
        arch=GGUF_ARCH, n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=kv, head_dim=hd, ffn_dim=ffn[0],
        vocab=_get_int(hf, "vocab_size", source, **extent),
        context_length=_get_int(hf, "max_position_embeddings", source),
        rms_eps=_get_float(hf, "rms_norm_eps", source, default=1e-6),
        rope_theta=theta, rope_neox=True, local_rope_theta=theta_swa,
        tied_embeddings=bool(hf.get("tie_word_embeddings", True)))
    cap = hf.get("final_logit_softcapping", 30.0)
    cfg.final_softcap = 0.0 if cap is None else _get_float({"c": cap}, "c", source)
    cfg.vision_language = hf.get("vision_language")
    _shape(cfg, swa, hd, hd, [kv] * n_layers, window if any(swa) else 0, base_inv_freqs(theta_swa, hd),
           base_inv_freqs(theta, hd), source)
    if len(set(ffn)) > 1:
        cfg.layer_ffn_dim = ffn
    ple_dim = _get_int(hf, "hidden_size_per_layer_input", source, default=256, **extent)
    ple_vocab = _get_int(hf, "vocab_size_per_layer_input", source, default=cfg.vocab, **extent)
    if ple_vocab > cfg.vocab:
        _fail(source, f"vocab_size_per_layer_input {ple_vocab} exceeds vocab_size {cfg.vocab}")
    cfg.ple_vocab = ple_vocab if ple_vocab < cfg.vocab else 0   # the published checkpoints: 262144 of 262400
    _per_layer_inputs(cfg, ple_dim, _get_int(hf, "num_kv_shared_layers", source, default=15, minimum=0), False, swa,
                      source)
    sparsity = hf.get("activation_sparsity_pattern")
    if sparsity is None:   # Gemma3nTextConfig's default
        sparsity = [0.95] * 10 + [0.0] * (n_layers - 10) if n_layers > 10 else [0.0] * n_layers
    elif not isinstance(sparsity, (list, tuple)):
        sparsity = [sparsity] * n_layers
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in sparsity):
        _fail(source, f"activation_sparsity_pattern must be a number or a list of numbers, "
                      f"got {hf.get('activation_sparsity_pattern')!r}")
    _altup(cfg, _get_int(hf, "altup_num_inputs", source, default=4),
           _get_int(hf, "altup_active_idx", source, default=0, minimum=0),
           bool(hf.get("altup_correct_scale", True)), _get_int(hf, "laurel_rank", source, default=64, **extent),
           [std_multiplier(float(s), source) for s in sparsity], source)
    _check_bounds(cfg, source)
    return cfg


def config_from_gguf(meta: dict, vocab: int, source: str, census):
    """The ModelConfig of a GGUF gemma3n file, as llama.cpp's gemma3n loader reads it."""
    from .config import ModelConfig, _check_bounds, _extent_bound, _get_float, _get_int, _layer_bound
    from .gemma4 import _per_layer
    p = GGUF_ARCH + "."
    extent = _extent_bound(census)
    n_layers = _get_int(meta, p + "block_count", source, **_layer_bound(census))
    ffn = _per_layer(meta.get(p + "feed_forward_length"), n_layers, "feed_forward_length", source)
    n_heads = _get_int(meta, p + "attention.head_count", source, **extent)
    dim = _get_int(meta, p + "embedding_length", source, **extent)
    hd = _get_int(meta, p + "attention.key_length", source, default=256, **extent)
    if _get_int(meta, p + "attention.value_length", source, default=hd) != hd:
        _fail(source, "value_length must equal key_length")
    kv = _get_int(meta, p + "attention.head_count_kv", source, default=n_heads, **extent)
    swa = meta.get(p + "attention.sliding_window_pattern")
    if swa is None:   # llama.cpp's default: every fifth layer full
        swa = [(i + 1) % 5 != 0 for i in range(n_layers)]
    if not isinstance(swa, (list, tuple, np.ndarray)) or len(swa) != n_layers:
        _fail(source, f"attention.sliding_window_pattern must list a bool for each of the {n_layers} layers")
    swa = [bool(s) for s in swa]
    theta = _get_float(meta, p + "rope.freq_base", source, default=1_000_000.0)
    theta_swa = _get_float(meta, p + "rope.freq_base_swa", source, default=10_000.0)
    if meta.get(p + "rope.scaling.type", "none") != "none":
        _fail(source, f"RoPE scaling '{meta.get(p + 'rope.scaling.type')}' is not supported")
    window = _get_int(meta, p + "attention.sliding_window", source, default=512) if any(swa) else 0
    cfg = ModelConfig(
        arch=GGUF_ARCH, n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=kv, head_dim=hd,
        ffn_dim=_get_int({"f": ffn[0]}, "f", source, **extent), vocab=vocab,
        context_length=_get_int(meta, p + "context_length", source),
        rms_eps=_get_float(meta, p + "attention.layer_norm_rms_epsilon", source),
        rope_theta=theta, rope_neox=True, local_rope_theta=theta_swa)
    cap = meta.get(p + "final_logit_softcapping")
    cfg.final_softcap = 0.0 if cap is None else _get_float(meta, p + "final_logit_softcapping", source)
    _shape(cfg, swa, hd, hd, [kv] * n_layers, window, base_inv_freqs(theta_swa, hd), base_inv_freqs(theta, hd), source)
    if len(set(ffn)) > 1:
        for w in ffn:
            _get_int({"f": w}, "f", source, **extent)
        cfg.layer_ffn_dim = ffn
    _per_layer_inputs(cfg, _get_int(meta, p + "embedding_length_per_layer_input", source, default=256, **extent),
                      _gguf_shared_kv_layers(meta, p, n_layers, source), False, swa, source)
    # Each layer's gate cut (activation_sparsity_scale: the converter's quantiles); absent, llama.cpp's
    # fixed first layers at 0.95.
    scale = meta.get(p + "activation_sparsity_scale")
    if scale is None:
        mults = [std_multiplier(_GGUF_SPARSITY, source) if l < _GGUF_SPARSE_LAYERS else 0.0 for l in range(n_layers)]
    else:
        if isinstance(scale, (str, bytes)) or not hasattr(scale, "__len__"):
            _fail(source, f"metadata '{p}activation_sparsity_scale' must be an array (one value a layer), got {scale!r}")
        mults = [_gguf_multiplier(v, source) for v in scale]
    _altup(cfg, _get_int(meta, p + "altup.num_inputs", source, default=4),
           _get_int(meta, p + "altup.active_idx", source, default=0, minimum=0), True,
           1, mults, source)   # LAuReL's rank: set_gguf_shapes, from its tensor
    _check_bounds(cfg, source)
    return cfg


def set_gguf_shapes(cfg, weights: dict, source: str) -> None:
    """LAuReL's rank, which GGUF has no key for: blk.0.laurel_l.weight's rows; the per-layer table's
    rows where fewer than the vocabulary's."""
    t = weights.get("blk.0.laurel_l.weight")
    if t is None:
        _fail(source, "no blk.0.laurel_l.weight to read LAuReL's rank from")
    cfg.laurel_rank = int(t.shape[0])
    table = weights.get("per_layer_token_embd.weight")
    if table is not None and 0 < table.shape[0] < cfg.vocab:   # a table of the text vocabulary only
        cfg.ple_vocab = int(table.shape[0])


def gguf_stream_views(weights: dict) -> dict:
    """weights with llama.cpp's stacked altup_proj / altup_unembd_proj [N - 1, dim, dim] split into
    one [dim, dim] view per stream (altup_proj.{i}.weight: zero-copy views of its rows)."""
    from .weights import WeightTensor
    out = {}
    for name, w in weights.items():
        stem = name[:-len(".weight")] if name in ("altup_proj.weight", "altup_unembd_proj.weight") else None
        if stem is None or len(w.shape) != 3:
            out[name] = w
            continue
        n, rows, cols = w.shape
        per = w.nbytes // n
        for i in range(n):
            part = f"{stem}.{i}.weight"
            out[part] = WeightTensor(part, w.data[i * per:(i + 1) * per], w.type_id, (rows, cols), w.source)
    return out
