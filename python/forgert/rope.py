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


def rope_freqs(theta: float, head_dim: int, scaling: dict | None = None) -> np.ndarray:
    """float32 [head_dim // 2] inverse frequencies with `scaling` applied.

    scaling: None, {"type": "linear", "factor": f}, {"type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"} or {"type": "factors", "factors": arr}
    (GGUF's rope_freqs.weight: each frequency is divided by its factor, as llama.cpp does).
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
    else:
        raise ValueError(f"unsupported RoPE scaling type {kind!r}")
    return inv.astype(np.float32)
