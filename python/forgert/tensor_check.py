"""Check a model's tensors against its config and build the `_core` tensor dict."""
from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .deltanet import UNSHIFTED_NORMS
from .errors import ModelFormatError
from .ggml_types import BF16, F16, F32, SUPPORTED, type_name
from .weights import WeightTensor, to_f32_tensor

_SUPPORTED_NAMES = ", ".join(type_name(t) for t in SUPPORTED)


def tensor_layout(cfg: ModelConfig, source: str) -> list:
    """[(name, shape, required, f32_only)] with shape (rows, cols), or (n_expert, rows, cols) for an
    expert stack: every tensor cfg's architecture knows, as the
    C++ core describes it (one description for both sides: a tensor the core uses is never one
    Python drops, nor the other way round). A config the core refuses is the file's problem."""
    from . import _core
    try:
        return _core.tensor_layout(cfg.core_dict(n_ctx=1))
    except ValueError as e:
        raise ModelFormatError(f"{source}: {e}") from None


def _as_f32(t: WeightTensor) -> WeightTensor:
    """Norms and biases go to the core as F32 (tiny copies when the file stores them as F16/BF16)."""
    if t.type_id == F32:
        return t
    if t.type_id == F16:
        return to_f32_tensor(t, t.data.view(np.float16))
    if t.type_id == BF16:
        return to_f32_tensor(t, (t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32))
    raise ModelFormatError(f"{t.source}: tensor '{t.name}' is {t.type_name}; 1-D tensors must be F32, F16 or BF16")


def core_tensors(cfg: ModelConfig, tensors: dict, source: str, ignore=()) -> dict:
    """Validate `tensors` (canonical name -> WeightTensor) and return the `_core` dict
    name -> (uint8 buffer, dtype id, (rows, cols)). Tensors named in `ignore` are skipped; a
    tied model's output.weight (a copy of token_embd) is dropped; any other tensor the
    architecture does not know is an error, as running without it would compute another model."""
    layout = tensor_layout(cfg, source)
    known = {name for name, _, _, _ in layout}
    for name in tensors:
        if name not in known and name not in ignore:
            raise ModelFormatError(f"{source}: unexpected tensor '{name}' for a {cfg.n_layers}-layer {cfg.arch} model")
    out = {}
    for name, shape, required, f32_only in layout:
        t = tensors.get(name)
        if name == "output.weight" and cfg.tied_embeddings:
            t = None
        if t is None:
            if required:
                raise ModelFormatError(f"{source}: missing tensor '{name}'")
            continue
        if tuple(t.shape) != tuple(shape):
            raise ModelFormatError(f"{t.source}: tensor '{name}' has shape {tuple(t.shape)}, expected {tuple(shape)} "
                                   f"(rows, cols) from the model config")
        if t.type_id not in SUPPORTED:
            raise ModelFormatError(f"{t.source}: tensor '{name}' has type {t.type_name}, which forgert does not "
                                   f"support (supported: {_SUPPORTED_NAMES})")
        if f32_only:
            t = _as_f32(t)
        out[name] = t.as_core_entry()
    return out


def shift_norms(tensors: dict, shift: float) -> dict:
    """tensors with shift added to every RMSNorm weight (as F32 copies): HF Gemma checkpoints
    store w and compute x * (1 + w), which the core computes as x * w'."""
    out = dict(tensors)
    for name, t in tensors.items():
        # Qwen3.5's gated output norm (ssm_norm) is used as it is stored, unlike its other norms
        if name.endswith("norm.weight") and not name.endswith(UNSHIFTED_NORMS):
            f = _as_f32(t)
            out[name] = to_f32_tensor(t, f.data.view(np.float32) + np.float32(shift))
    return out
