"""Gemma (1, CodeGemma), Gemma 2 and Gemma 3 (text) settings on top of the Llama-family config:
GeGLU, scaled embeddings, query_pre_attn_scalar, soft-capping, interleaved local/global layers and
(Gemma 3) a RoPE table per layer kind; Gemma 1 has only the first two. Read from GGUF the way llama.cpp reads it (src/models/gemma2.cpp,
gemma3.cpp) and from config.json the way transformers reads it.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ModelFormatError
from .rope import rope_freqs

GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")
HF_GEMMA_MODEL_TYPES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}
# HF checkpoints store RMSNorm weights w and compute x * (1 + w); llama.cpp's converter writes
# w + 1 into the GGUF. The loader adds this to every HF norm weight.
HF_NORM_SHIFT = 1.0
# llama.cpp's default pattern when the file has no sliding_window_pattern: every n-th layer global.
_GGUF_SWA_PATTERN = {"gemma2": 2, "gemma3": 6}
# The 27B models scale queries by 1/sqrt(dim / n_heads) instead of 1/sqrt(head_dim); llama.cpp
# recognises them by their layer count (gemma_pytorch's config), as GGUF has no key for it.
_GGUF_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _fail(source, problem):
    raise ModelFormatError(f"{source}: {problem}")


def _number(v, what, source, minimum=0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v < minimum:
        _fail(source, f"{what} must be a finite number >= {minimum}, got {v!r}")
    return float(v)


def swa_layers(pattern, n_layers: int, source) -> list[bool]:
    """Which layers are local: an int n (layers i with i % n < n - 1, as llama.cpp's
    set_swa_pattern; 1 would make every layer local, 0 none) or one bool per layer."""
    if isinstance(pattern, (list, tuple, np.ndarray)):
        if len(pattern) != n_layers:
            _fail(source, f"sliding_window_pattern lists {len(pattern)} layers for {n_layers}")
        return [bool(x) for x in pattern]
    if isinstance(pattern, bool) or not isinstance(pattern, (int, np.integer)) or pattern < 0:
        _fail(source, f"sliding_window_pattern must be a non-negative integer, got {pattern!r}")
    return [pattern == 0 or i % pattern < pattern - 1 for i in range(n_layers)]


def _set_layers(cfg, local: list[bool], window: int, local_freqs: np.ndarray, global_freqs: np.ndarray,
                local_theta: float) -> None:
    """Windows per layer, and RoPE table 0 (local) or 1 (global) when the two differ."""
    cfg.local_rope_theta = float(local_theta)
    cfg.layer_window = [window if is_local else 0 for is_local in local]
    cfg.sliding_window = window if any(local) else None
    if np.array_equal(local_freqs, global_freqs):
        cfg.rope_freqs, cfg.layer_rope = global_freqs, None
    else:
        cfg.rope_freqs = np.stack([local_freqs, global_freqs]).astype(np.float32)
        cfg.layer_rope = [0 if is_local else 1 for is_local in local]


def apply_gguf(meta: dict, cfg, source) -> None:
    """Gemma settings from GGUF metadata, as llama.cpp loads them (cfg already holds the
    Llama-family fields, its rope_freqs with the file's rope scaling: the global layers')."""
    arch, p = cfg.arch, cfg.arch + "."
    cfg.rope_neox = True        # llama.cpp's NEOX rope type; the converter does not permute Q/K
    cfg.ffn_act = "gelu_tanh"
    cfg.embed_scale = float(np.float32(math.sqrt(cfg.dim)))   # ggml_scale(inp, sqrtf(n_embd))
    head_scale = gguf_attention_head_scale(arch, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.head_dim)
    cfg.attn_scale = 1.0 / math.sqrt(head_scale)
    if arch == "gemma":   # Gemma 1: every layer global, one RoPE, no caps
        cfg.layer_window, cfg.sliding_window, cfg.layer_rope = [0] * cfg.n_layers, None, None
        return
    if arch == "gemma2":
        cfg.attn_softcap = _number(meta.get(p + "attn_logit_softcapping", 50.0), "attn_logit_softcapping", source)
        cfg.final_softcap = _number(meta.get(p + "final_logit_softcapping", 30.0), "final_logit_softcapping", source)
        window = meta.get(p + "attention.sliding_window", 4096)
        # local layers rotate as the global ones unless the file says otherwise
        local_base, local_scaling = meta.get(p + "rope.freq_base_swa", cfg.rope_theta), cfg.rope_scaling
    else:
        cfg.final_softcap = _number(meta.get(p + "final_logit_softcapping", 0.0), "final_logit_softcapping", source)
        window = meta.get(p + "attention.sliding_window", 0)
        # llama.cpp: local layers at freq_base_swa (default 10000), never scaled
        local_base, local_scaling = meta.get(p + "rope.freq_base_swa", 10000.0), None
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        _fail(source, f"metadata '{p}attention.sliding_window' must be a non-negative integer, got {window!r}")
    local_base = _number(local_base, f"metadata '{p}rope.freq_base_swa'", source, minimum=1e-30)
    if window == 0:   # Gemma 3 without sliding_window: every layer global (llama.cpp's non-iswa graph)
        local = [False] * cfg.n_layers
    else:
        local = swa_layers(meta.get(p + "attention.sliding_window_pattern", _GGUF_SWA_PATTERN[arch]),
                            cfg.n_layers, source)
    _set_layers(cfg, local, int(window), rope_freqs(local_base, cfg.head_dim, local_scaling), cfg.rope_freqs,
                local_base)


def gguf_attention_head_scale(arch: str, n_layers: int, dim: int, n_heads: int, head_dim: int) -> int:
    """The query scale's denominator llama.cpp fixes (GGUF has no key): dim / n_heads for the
    27B models, recognised by their layer count, else head_dim."""
    return dim // n_heads if n_layers == _GGUF_27B_LAYERS.get(arch) else head_dim


def gguf_metadata(cfg, source) -> dict:
    """The gemma2 / gemma3 keys of a GGUF holding cfg (without the arch prefix), as apply_gguf
    reads them back; a setting GGUF cannot hold (a query scale other than llama.cpp's rule, or
    Gemma 2's local layers rotated otherwise than its global ones) is a ModelFormatError."""
    arch = cfg.arch
    want = 1.0 / math.sqrt(gguf_attention_head_scale(arch, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.head_dim))
    if abs((cfg.attn_scale or want) - want) > 1e-6 * want:
        _fail(source, f"a query scale of {cfg.attn_scale:.6g} (query_pre_attn_scalar) has no GGUF form: llama.cpp "
                      f"fixes {want:.6g} for this geometry")
    windows = [int(w) for w in cfg.layer_window or [0] * cfg.n_layers]
    out = {}
    if any(windows):
        out["attention.sliding_window"] = max(windows)
        out["attention.sliding_window_pattern"] = [w > 0 for w in windows]
    elif arch == "gemma2":
        _fail(source, "Gemma 2 without local layers has no GGUF form (llama.cpp always windows every second layer)")
    if arch == "gemma":
        return out
    if arch == "gemma2":
        if cfg.layer_rope is not None:
            _fail(source, "Gemma 2 with local layers rotated otherwise than its global ones has no GGUF form")
        out["attn_logit_softcapping"] = float(cfg.attn_softcap)
        out["final_logit_softcapping"] = float(cfg.final_softcap)
    else:
        if cfg.final_softcap:
            out["final_logit_softcapping"] = float(cfg.final_softcap)
        out["rope.freq_base_swa"] = float(cfg.local_rope_theta or 10000.0)
    return out


def hf_rope_of(params: dict, hf: dict, source):
    """(theta, scaling) of one layer kind's rope parameters (transformers 5's per-kind dicts)."""
    from .config import _hf_rope
    return _hf_rope({"rope_parameters": params, "max_position_embeddings": hf.get("max_position_embeddings")}, source)


def apply_hf(hf: dict, cfg, source) -> None:
    """Gemma settings from config.json (transformers 4 or 5 spellings)."""
    # Gemma 1's configs say hidden_act "gelu" and leave hidden_activation out: transformers runs
    # the tanh approximation then too
    act = hf.get("hidden_activation") or (None if cfg.arch == "gemma" else hf.get("hidden_act")) or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        _fail(source, f"hidden_activation '{act}' is not supported (Gemma uses gelu_pytorch_tanh)")
    cfg.ffn_act = "gelu_tanh"
    cfg.tied_embeddings = bool(hf.get("tie_word_embeddings", True))
    cfg.norm_shift = HF_NORM_SHIFT
    cfg.embed_scale = math.sqrt(cfg.dim)   # rounded to the embedding dtype by the loader
    scalar = hf.get("query_pre_attn_scalar", cfg.head_dim)
    cfg.attn_scale = _number(scalar, "query_pre_attn_scalar", source, minimum=1e-30) ** -0.5
    cap = hf.get("attn_logit_softcapping")
    cfg.attn_softcap = 0.0 if cap is None else _number(cap, "attn_logit_softcapping", source)
    cap = hf.get("final_logit_softcapping")
    cfg.final_softcap = 0.0 if cap is None else _number(cap, "final_logit_softcapping", source)

    if cfg.arch == "gemma":   # Gemma 1: every layer global, one RoPE
        cfg.layer_window, cfg.sliding_window, cfg.local_rope_theta = [0] * cfg.n_layers, None, None
        return
    types = hf.get("layer_types")
    if types is None:   # transformers 4: Gemma 2 alternates, Gemma 3 has sliding_window_pattern
        n = 2 if cfg.arch == "gemma2" else hf.get("sliding_window_pattern", 6)
        local = swa_layers(n, cfg.n_layers, source)
    else:
        if not isinstance(types, list) or len(types) != cfg.n_layers or \
                set(types) - {"full_attention", "sliding_attention"}:
            _fail(source, f"layer_types must give full_attention or sliding_attention for each of the "
                          f"{cfg.n_layers} layers, got {types!r}")
        local = [t == "sliding_attention" for t in types]
    window = hf.get("sliding_window", 4096)
    if not any(local):
        window = 0
    elif isinstance(window, bool) or not isinstance(window, int) or window < 1:
        _fail(source, f"sliding_window must be a positive integer, got {window!r}")

    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:     # transformers 5, Gemma 3
        g_theta, g_scaling = hf_rope_of(params.get("full_attention", {}), hf, source)
        l_theta, l_scaling = hf_rope_of(params.get("sliding_attention", {}), hf, source)
    elif cfg.arch == "gemma3":   # transformers 4: rope_theta + rope_scaling global, rope_local_base_freq local
        g_theta, g_scaling = cfg.rope_theta, cfg.rope_scaling
        l_theta, l_scaling = _number(hf.get("rope_local_base_freq", 10000.0), "rope_local_base_freq", source,
                                     minimum=1e-30), None
    else:                        # Gemma 2: one RoPE for every layer
        g_theta, g_scaling = l_theta, l_scaling = cfg.rope_theta, cfg.rope_scaling
    cfg.rope_theta, cfg.rope_scaling = g_theta, g_scaling
    _set_layers(cfg, local, window, rope_freqs(l_theta, cfg.head_dim, l_scaling),
                rope_freqs(g_theta, cfg.head_dim, g_scaling), l_theta)


def embedding_scale(dim: int, embd_type_id: int) -> float:
    """sqrt(dim) as transformers multiplies it: a tensor of the embedding's dtype (Gemma 2's
    normalizer, Gemma 3's embed_scale.to(weight.dtype)), so BF16 checkpoints scale by the
    BF16-rounded value (sqrt(3072) = 55.43 -> 55.5)."""
    from .ggml_types import BF16, F16
    s = np.float32(math.sqrt(dim))
    if embd_type_id == F16:
        return float(np.float16(s))
    if embd_type_id == BF16:   # round to nearest even on the top 16 bits
        bits = int(s.view(np.uint32))
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return float(np.uint32(bits).view(np.float32))
    return float(s)
