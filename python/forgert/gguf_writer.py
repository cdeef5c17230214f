"""A small GGUF v3 writer: the counterpart of gguf.py, so `forgert quantize` needs no extra package.

Layout (as ggml's gguf.cpp writes it): magic, version, tensor count, metadata count; the metadata
key/values; the tensor infos (name, dims innermost first, type, data offset); padding to the
alignment; then each tensor's bytes, each padded to the alignment. Tensor sizes follow from their
dims and type, so the header is written first and tensor data is streamed in one at a time: a
whole model never has to sit in memory at once.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from .gguf import (ARRAY, BOOL, DEFAULT_ALIGNMENT, FLOAT32, GGUF_MAGIC, STRING, UINT32, _NUMPY_DTYPES,
                   _SCALAR_FORMATS)
from .ggml_types import row_nbytes, type_name

GGUF_VERSION = 3


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(vtype, value) -> bytes:
    """The bytes of one metadata value (without its type tag, which the caller writes).
    vtype: a GGUF value type, or (ARRAY, element type) for arrays."""
    if isinstance(vtype, tuple):
        _, elem = vtype
        values = list(value.tolist() if isinstance(value, np.ndarray) else value)
        head = struct.pack("<IQ", elem, len(values))
        if elem in _NUMPY_DTYPES:
            return head + np.asarray(values, dtype=_NUMPY_DTYPES[elem]).tobytes()
        if elem == STRING:
            return head + b"".join(_pack_string(v) for v in values)
        raise ValueError(f"nested array metadata (element type {elem}) is not supported")
    if vtype == STRING:
        return _pack_string(value)
    if vtype == BOOL:
        return struct.pack("<?", bool(value))
    if vtype in _SCALAR_FORMATS:
        return struct.pack(_SCALAR_FORMATS[vtype][0], value)
    raise ValueError(f"unknown GGUF value type {vtype}")


class GGUFWriter:
    """Collect metadata and tensor infos, then write(path, tensor_bytes) streams the file.

    add(key, vtype, value): vtype as in gguf.py (UINT32, STRING, ..., or (ARRAY, element type)).
    add_tensor(name, ne, type_id): ne innermost first, as GGUF stores it (a [rows, cols] weight
    is ne = (cols, rows)).
    """

    def __init__(self, arch: str, alignment: int = DEFAULT_ALIGNMENT):
        self.alignment = alignment
        self.metadata = {}    # key -> (vtype, value), in insertion order
        self.tensors = []     # (name, ne, type_id, nbytes)
        self.add("general.architecture", STRING, arch)

    def add(self, key: str, vtype, value) -> None:
        if key in self.metadata:
            raise ValueError(f"metadata key '{key}' added twice")
        self.metadata[key] = (vtype, value)

    def add_u32(self, key, value):
        self.add(key, UINT32, int(value))

    def add_f32(self, key, value):
        self.add(key, FLOAT32, float(value))

    def add_str(self, key, value):
        self.add(key, STRING, str(value))

    def add_tensor(self, name: str, ne, type_id: int) -> None:
        ne = tuple(int(d) for d in ne)
        n_rows = int(np.prod(ne[1:], dtype=np.int64)) if len(ne) > 1 else 1
        self.tensors.append((name, ne, type_id, row_nbytes(type_id, ne[0]) * n_rows))

    def _pad(self, n: int) -> int:
        return -n % self.alignment

    def _header(self) -> bytes:
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.metadata))]
        for key, (vtype, value) in self.metadata.items():
            tag = ARRAY if isinstance(vtype, tuple) else vtype
            parts += [_pack_string(key), struct.pack("<I", tag), _pack_value(vtype, value)]
        offset = 0
        for name, ne, type_id, nbytes in self.tensors:
            parts += [_pack_string(name), struct.pack("<I", len(ne)),
                      struct.pack(f"<{len(ne)}Q", *ne), struct.pack("<IQ", type_id, offset)]
            offset += nbytes + self._pad(nbytes)
        header = b"".join(parts)
        return header + b"\0" * self._pad(len(header))

    def write(self, path, tensor_bytes, progress=None) -> None:
        """tensor_bytes(i) -> the bytes (any contiguous array) of the i-th added tensor;
        progress(done, total) is called after each tensor."""
        with open(os.fspath(path), "wb") as f:
            f.write(self._header())
            for i, (name, ne, type_id, nbytes) in enumerate(self.tensors):
                data = np.ascontiguousarray(tensor_bytes(i)).view(np.uint8).reshape(-1)
                if data.nbytes != nbytes:
                    raise ValueError(f"tensor '{name}' ({type_name(type_id)}, ne {list(ne)}) needs "
                                     f"{nbytes} bytes, got {data.nbytes}")
                f.write(memoryview(data))
                f.write(b"\0" * self._pad(nbytes))
                if progress is not None:
                    progress(i + 1, len(self.tensors))
