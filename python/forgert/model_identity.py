"""A model's identity for its saved states (Model.save_state / load_state): a K/V cache is only
meaningful to the weights that wrote it, and another model of the same shapes would take it
silently and continue wrongly. The identity is a digest of what the cache depends on, cheap to
compute without reading the whole file: the core's architecture settings (with the rotary
frequencies for the context in use), every tensor's name, type and shape, and bytes sampled
from each tensor (small ones whole; of larger ones SAMPLE bytes at the start, the middle and
the end). It is content-based: the same weights in another file are the same model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SAMPLE = 4096          # bytes hashed at each of a large tensor's three places
WHOLE = 3 * SAMPLE     # tensors up to this size are hashed whole


@dataclass(frozen=True)
class ModelIdentity:
    name: str      # the model's name (its file's), for messages
    digest: str    # sha256 hex of the architecture, tensor table and sampled bytes

    def __str__(self) -> str:
        return f"{self.name} (identity {self.digest[:16]})"


def _feed(h, value) -> None:
    """Hashes a core-settings value unambiguously (arrays by dtype, shape and bytes)."""
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"array {a.dtype.str} {a.shape}:".encode())
        h.update(a.tobytes())
    elif isinstance(value, (list, tuple)):
        h.update(f"seq {len(value)}:".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, dict):
        h.update(f"dict {len(value)}:".encode())
        for k in sorted(value, key=str):
            h.update(f"{k!s}=".encode())
            _feed(h, value[k])
    else:
        h.update(f"{type(value).__name__} {value!r};".encode())


def _sampled_bytes(data: np.ndarray) -> list:
    flat = data.reshape(-1)
    if flat.dtype != np.uint8:
        flat = np.ascontiguousarray(flat).view(np.uint8)
    n = int(flat.nbytes)
    if n <= WHOLE:
        return [flat]
    mid = n // 2 - SAMPLE // 2
    return [flat[:SAMPLE], flat[mid:mid + SAMPLE], flat[n - SAMPLE:]]


def model_identity(loaded, n_ctx: int) -> ModelIdentity:
    """The identity of `loaded` (loader.LoadedModel) run with a context of n_ctx tokens."""
    h = hashlib.sha256(b"forgert model identity v1\n")
    core = dict(loaded.config.core_dict(n_ctx))
    core.pop("n_ctx", None)   # the engine checks a state's length against its context itself
    _feed(h, core)
    for name in sorted(loaded.weights):
        w = loaded.weights[name]
        h.update(f"\ntensor {name} type {int(w.type_id)} shape {tuple(int(s) for s in w.shape)} "
                 f"bytes {w.nbytes}:".encode())
        for part in _sampled_bytes(np.asarray(w.data)):
            h.update(np.ascontiguousarray(part).tobytes())
    return ModelIdentity(loaded.name, h.hexdigest())
