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


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention factor for a context extended `factor` times: 0.1 * mscale * ln(factor) + 1
    (1 for factor <= 1), as transformers' get_mscale and llama.cpp compute it."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_correction_range(beta_fast: float, beta_slow: float, head_dim: int, theta: float,
                          original_max_pos: int, truncate: bool = True) -> tuple:
    """(low, high) pair indices between which YaRN blends interpolation into extrapolation: the
    pairs completing beta_fast and beta_slow rotations over the original context. Truncated to
    whole pairs as transformers (truncate=True, its default) and llama.cpp (always) do."""
    def pair_of(rotations):
        return head_dim * math.log(original_max_pos / (rotations * 2 * math.pi)) / (2 * math.log(theta))
    low, high = pair_of(beta_fast), pair_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def yarn_scaled(inv_freq: np.ndarray, theta: float, head_dim: int, factor: float, original_max_pos: int,
                beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = True,
                ext_factor: float = 1.0) -> np.ndarray:
    """YaRN ("NTK-by-parts"), transformers' _compute_yarn_parameters and ggml's rope_yarn: pairs
    below `low` keep their frequency (extrapolation), pairs above `high` are divided by `factor`
    (interpolation), and a linear ramp blends the two between them. ext_factor scales the
    extrapolated share (llama.cpp's yarn_ext_factor; 1 in transformers)."""
    low, high = yarn_correction_range(beta_fast, beta_slow, head_dim, theta, original_max_pos, truncate)
    if low == high:
        high += 0.001   # a one-pair ramp: avoid 0/0, as both references do
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolated = (1.0 - ramp) * ext_factor
    return inv_freq / factor * (1.0 - extrapolated) + inv_freq * extrapolated


def dynamic_ntk_theta(theta: float, head_dim: int, factor: float, max_pos: int, seq_len: int) -> float:
    """Dynamic NTK's base for a sequence of seq_len tokens (transformers'
    _compute_dynamic_ntk_parameters): theta unchanged up to max_pos, then grown with seq_len."""
    seq_len = max(seq_len, max_pos)
    return theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))


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
    (GGUF's rope_freqs.weight: each frequency is divided by its factor, as llama.cpp does),
    {"type": "yarn", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
    "truncate", "ext_factor", "attn_factor"} (attn_factor multiplies cos and sin: rope_attn_factor),
    {"type": "dynamic", "factor", "max_position_embeddings"}: dynamic NTK, whose base depends on
    the sequence length. transformers recomputes it as a sequence grows; forgert computes it once,
    for n_ctx (llama.cpp's way: its scaling is static), so the two agree on any sequence within
    max_position_embeddings and on one of exactly n_ctx tokens; or
    {"type": "longrope", "short_factor", "long_factor", "original_max_position_embeddings",
    "attn_factor"}: divisors picked by n_ctx (longrope_factors), which must then be given.
    """
    kind = (scaling or {}).get("type", "default")
    if kind == "dynamic":
        theta = dynamic_ntk_theta(theta, head_dim, scaling["factor"], scaling["max_position_embeddings"],
                                  n_ctx or scaling["max_position_embeddings"])
    inv = base_inv_freqs(theta, head_dim)
    if kind in ("default", "dynamic"):
        pass
    elif kind == "yarn":
        inv = yarn_scaled(inv, theta, head_dim, scaling["factor"], scaling["original_max_position_embeddings"],
                          scaling.get("beta_fast", 32.0), scaling.get("beta_slow", 1.0),
                          scaling.get("truncate", True), scaling.get("ext_factor", 1.0))
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
