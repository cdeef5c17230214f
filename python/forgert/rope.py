"""RoPE inverse frequencies, with the context-extension scalings Llama-family models use."""
from __future__ import annotations

import math

import numpy as np


def base_inv_freqs(theta: float, head_dim: int) -> np.ndarray:
    """freq_j = theta^(-2j/head_dim) for j in [0, head_dim/2): float64 [head_dim // 2]."""
    j = np.arange(0, head_dim, 2, dtype=np.float64)
    return 1.0 / (theta ** (j / head_dim))


def llama3_scaled(inv_freq: np.ndarray, factor: float, low_freq_factor: float,
                  high_freq_factor: float, original_max_pos: int) -> np.ndarray:
    """Llama 3.1 scaling, the same formula as transformers' _compute_llama3_parameters:
    long wavelengths are divided by `factor`, short ones kept, the band between interpolated."""
    low_freq_wavelen = original_max_pos / low_freq_factor
    high_freq_wavelen = original_max_pos / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_pos / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def longrope_attn_factor(context_length: int, original_context_length: int) -> float:
    """LongRoPE's default cos/sin scale, sqrt(1 + ln(s) / ln(original)) for the extension
    s = context / original (1 when not extended): transformers' _compute_longrope_parameters and
    llama.cpp's converter (which stores it as rope.scaling.attn_factor) agree on it."""
    scale = context_length / original_context_length
    if scale <= 1.0:
        return 1.0
    return math.sqrt(1.0 + math.log(scale) / math.log(original_context_length))


def longrope_factors(scaling: dict, n_ctx: int) -> np.ndarray:
    """The LongRoPE divisors for a context of n_ctx tokens: the long ones when n_ctx exceeds the
    original (pre-extension) context, else the short ones. Decided once, by the configured
    context, as llama.cpp does (llama_model::get_rope_factors); transformers switches by the
    current sequence length instead, so the two agree when n_ctx <= original (short factors for
    every sequence that fits) and, with n_ctx > original, on sequences longer than the original."""
    key = "long_factor" if n_ctx > scaling["original_max_position_embeddings"] else "short_factor"
    return np.asarray(scaling[key], dtype=np.float64)


def rope_freqs(theta: float, head_dim: int, scaling: dict | None = None, n_ctx: int | None = None) -> np.ndarray:
    """float32 [head_dim // 2] inverse frequencies with `scaling` applied. head_dim is the rotated
    width (rope_dim: the whole head, or its first part under partial rotary).

    scaling: None, {"type": "linear", "factor": f}, {"type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}, {"type": "factors", "factors": arr}
    (GGUF's rope_freqs.weight: each frequency is divided by its factor, as llama.cpp does) or
    {"type": "longrope", "short_factor", "long_factor", "original_max_position_embeddings",
    "attn_factor"}: divisors picked by n_ctx (longrope_factors), which must then be given.
    """
    inv = base_inv_freqs(theta, head_dim)
    kind = (scaling or {}).get("type", "default")
    if kind == "default":
        pass
    elif kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        inv = llama3_scaled(inv, scaling["factor"], scaling["low_freq_factor"],
                            scaling["high_freq_factor"], scaling["original_max_position_embeddings"])
    elif kind == "factors":
        inv = inv / np.asarray(scaling["factors"], dtype=np.float64)
    elif kind == "longrope":
        if n_ctx is None:
            raise ValueError("longrope frequencies depend on the context length: pass n_ctx")
        inv = inv / longrope_factors(scaling, n_ctx)
    else:
        raise ValueError(f"unsupported RoPE scaling type {kind!r}")
    return inv.astype(np.float32)
