"""The one in-memory form of a model weight, whatever file it came from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ggml_types import F32, type_name


def first_overlap(spans):
    """(name a, name b) of two tensors whose bytes overlap, or None. spans: (offset, nbytes, name)
    of a file's tensors. Both file formats store each tensor's bytes apart: an overlap would have
    one tensor read another's weights."""
    ordered = sorted((offset, offset + nbytes, name) for offset, nbytes, name in spans)
    for (_, end, a), (begin, _, b) in zip(ordered, ordered[1:]):
        if begin < end:
            return a, b
    return None


@dataclass
class WeightTensor:
    name: str            # canonical GGUF-style name, e.g. "blk.0.attn_q.weight"
    data: np.ndarray     # uint8 view of the mapped file (or a small owned array), the tensor's bytes
    type_id: int         # ggml type id
    shape: tuple         # (rows, cols); 1-D tensors are (1, n)
    source: str          # where it came from, for error messages ("model.gguf", "model-00001.safetensors")
    # shape is (n_expert, rows, cols) for a GGUF expert stack (ffn_*_exps): n_expert blocks of rows

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def as_core_entry(self):
        """The (buffer, dtype_id, (rows, cols)) triple the _core contract expects."""
        return (self.data, self.type_id, self.shape)


def to_f32_tensor(t: WeightTensor, values: np.ndarray) -> WeightTensor:
    """A small F32 copy of a tensor (used for norms and biases, which the core wants in F32)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return WeightTensor(t.name, flat.view(np.uint8), F32, t.shape, t.source)


@dataclass
class ExpertList:
    """An expert stack stored one tensor per expert (HF's mlp.experts.E.*), kept as the list of
    those zero-copy tensors: the core takes it as n_expert matrices, as it takes a 3-D GGUF stack."""
    name: str            # canonical name of the stack, e.g. "blk.0.ffn_gate_exps.weight"
    experts: list        # [WeightTensor] in expert order, each (rows, cols)
    source: str

    @property
    def shape(self) -> tuple:
        return (len(self.experts),) + tuple(self.experts[0].shape)

    @property
    def type_id(self) -> int:
        return self.experts[0].type_id

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.experts)

    def as_core_entry(self):
        return [e.as_core_entry() for e in self.experts]
