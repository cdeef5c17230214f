"""Text embeddings from a decoder model's final hidden states, as the embedding models built on a
decoder are used (Qwen3-Embedding, gte-Qwen2, e5-mistral, SFR-Embedding): the input's hidden
states after the model's output norm, pooled into one vector and L2-normalised.

Pooling, as the model's files say (else "last", what those models use):
- GGUF: `{arch}.pooling_type`, llama.cpp's enum (1 mean, 2 cls, 3 last; 0 none and 4 rank,
  a reranker's classification head, have no embedding to give).
- HF directory: sentence-transformers' `modules.json` and its Pooling module's config
  (`pooling_mode_lasttoken` / `pooling_mode_mean_tokens` / `pooling_mode_cls_token`).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .errors import ModelFormatError

POOLINGS = ("last", "mean", "cls")
GGUF_POOLING = {1: "mean", 2: "cls", 3: "last"}   # llama.cpp's LLAMA_POOLING_TYPE_*
_GGUF_NO_EMBEDDING = {0: "none (per-token outputs)", 4: "rank (a reranker's classification head)"}
_ST_MODES = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def model_pooling(fmt: str, metadata: dict, arch: str, path: str, name: str) -> str | None:
    """The pooling the model's files name, None where they name none. ModelFormatError for one
    forgert cannot apply (named)."""
    if fmt == "gguf":
        v = metadata.get(f"{arch}.pooling_type")
        if v is None:
            return None
        if v in GGUF_POOLING:
            return GGUF_POOLING[v]
        what = _GGUF_NO_EMBEDDING.get(v, f"{v!r}, not one of llama.cpp's pooling types")
        raise ModelFormatError(f"{name}: {arch}.pooling_type is {what}: no text embedding to pool "
                               f"(embed() pools with {', '.join(POOLINGS)})")
    return _sentence_transformers_pooling(path, name)


def _sentence_transformers_pooling(path: str, name: str) -> str | None:
    modules = _read_json(os.path.join(path, "modules.json"))
    if not isinstance(modules, list):
        return None
    for m in modules:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
            cfg = _read_json(os.path.join(path, str(m.get("path", "")), "config.json")) or {}
            on = [mode for key, mode in _ST_MODES.items() if cfg.get(key)]
            other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in _ST_MODES]
            if other or len(on) > 1:
                raise ModelFormatError(f"{name}: its sentence-transformers pooling ({', '.join(other + on)}) is not "
                                       f"one forgert applies: one of {', '.join(POOLINGS)}")
            return on[0] if on else None
    return None


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return pooling


def check_dimensions(dimensions, width: int) -> int:
    """dimensions: the leading components kept (Matryoshka-trained models: Qwen3-Embedding), or
    None for all of them."""
    if dimensions is None:
        return width
    if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)) or not 1 <= dimensions <= width:
        raise ValueError(f"dimensions must be an integer from 1 to the model's {width}, got {dimensions!r}")
    return int(dimensions)


def embedding_inputs(inputs) -> tuple[bool, list]:
    """(single, items): one input (a str, or a list / 1-D array of token ids) or a list of them,
    as OpenAI's `input` takes them."""
    if isinstance(inputs, str) or _is_ids(inputs):
        return True, [inputs]
    if isinstance(inputs, np.ndarray) and inputs.ndim == 2:
        return False, list(inputs)
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"inputs must be a str, a list of token ids, or a list of those, got {type(inputs).__name__}")
    if not inputs:
        raise ValueError("inputs is an empty list: nothing to embed")
    for i, item in enumerate(inputs):
        if not (isinstance(item, str) or _is_ids(item)):
            raise TypeError(f"inputs[{i}] must be a str or a list of token ids, got {type(item).__name__}")
    return False, list(inputs)


def _is_ids(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim == 1
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, (int, np.integer)) for t in x)


def finish(vector: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """The leading `dimensions` components, L2-normalised unless normalize is False (a zero
    vector stays zero)."""
    v = np.ascontiguousarray(vector[:dimensions], dtype=np.float32)
    if normalize:
        norm = float(np.linalg.norm(v.astype(np.float64)))
        if norm > 0:
            v = (v / norm).astype(np.float32)
    return v
