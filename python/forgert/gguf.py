"""A strict, read-only GGUF (v2/v3) reader over mmap.

Every count, length and offset is checked against the file size before it is used, so a damaged
or hostile file gives a ModelFormatError naming the file and the problem instead of a crash or a
huge allocation. Tensor data is exposed zero-copy as uint8 NumPy views of the mapping.

GGUF lists dims innermost first: ne = (ne0, ne1, ...) where ne0 is the number of columns, so a
2-D weight of shape (rows, cols) is stored as ne = (cols, rows).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import ModelFormatError
from .ggml_types import GGML_TYPES, row_nbytes, type_name
from .weights import first_overlap

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 4

# GGUF metadata value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR_FORMATS = {
    UINT8: ("<B", 1), INT8: ("<b", 1), UINT16: ("<H", 2), INT16: ("<h", 2),
    UINT32: ("<I", 4), INT32: ("<i", 4), FLOAT32: ("<f", 4), BOOL: ("<?", 1),
    UINT64: ("<Q", 8), INT64: ("<q", 8), FLOAT64: ("<d", 8),
}
# Vectors (one dimension: norms, biases) up to this size are copied out of the mapping
# (GGUFFile.tensor_data); matrices always stay zero-copy views.
_SMALL_TENSOR_BYTES = 64 * 1024

_NUMPY_DTYPES = {
    UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
    FLOAT32: "<f4", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8", BOOL: "<u1",
}
VALUE_TYPE_NAMES = {
    UINT8: "uint8", INT8: "int8", UINT16: "uint16", INT16: "int16", UINT32: "uint32", INT32: "int32",
    FLOAT32: "float32", BOOL: "bool", STRING: "string", ARRAY: "array", UINT64: "uint64",
    INT64: "int64", FLOAT64: "float64",
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    type_id: int
    ne: tuple          # GGUF dims, innermost (columns) first
    offset: int        # absolute byte offset of the data in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def shape(self) -> tuple:
        """Row-major shape, outermost first: (rows, cols) for a 2-D weight."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf, name: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.name = name

    def fail(self, problem: str):
        raise ModelFormatError(f"{self.name}: {problem}")

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.size:
            self.fail(f"truncated: {what} needs bytes {self.pos}..{self.pos + n} but the file has {self.size}")

    def scalar(self, vtype: int, what: str):
        fmt, n = _SCALAR_FORMATS[vtype]
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what):
        return self.scalar(UINT32, what)

    def u64(self, what):
        return self.scalar(UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.size - self.pos:
            self.fail(f"truncated or corrupt: {what} claims {n} bytes but only "
                      f"{self.size - self.pos} remain in the file")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})")


def _min_value_size(vtype: int) -> int:
    if vtype in _SCALAR_FORMATS:
        return _SCALAR_FORMATS[vtype][1]
    if vtype == STRING:
        return 8
    return 12  # nested array: element type + count


def _read_value(cur: _Cursor, vtype: int, what: str, depth: int = 0):
    if vtype in _SCALAR_FORMATS:
        return cur.scalar(vtype, what)
    if vtype == STRING:
        return cur.string(what)
    if vtype != ARRAY:
        cur.fail(f"{what} has unknown value type {vtype}")
    if depth >= MAX_ARRAY_NESTING:
        cur.fail(f"{what} nests arrays more than {MAX_ARRAY_NESTING} deep")
    elem_type = cur.u32(f"element type of {what}")
    if elem_type not in VALUE_TYPE_NAMES:
        cur.fail(f"{what} has unknown array element type {elem_type}")
    count = cur.u64(f"length of {what}")
    remaining = cur.size - cur.pos
    if count * _min_value_size(elem_type) > remaining:
        cur.fail(f"truncated or corrupt: {what} claims {count} elements but only "
                 f"{remaining} bytes remain in the file")
    if elem_type in _NUMPY_DTYPES:
        n = count * _SCALAR_FORMATS[elem_type][1]
        arr = np.frombuffer(cur.buf, dtype=_NUMPY_DTYPES[elem_type], count=count, offset=cur.pos).copy()
        cur.pos += n
        return arr.astype(bool) if elem_type == BOOL else arr
    return [_read_value(cur, elem_type, f"{what}[{i}]", depth + 1) for i in range(count)]


class GGUFFile:
    """An open GGUF file: metadata, tensor infos and zero-copy tensor data.

    metadata: key -> value (int/float/bool/str; numeric arrays as NumPy arrays; string arrays as lists)
    metadata_types: key -> GGUF value type (for arrays: (ARRAY, element type))
    tensors: name -> GGUFTensorInfo, in file order
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise ModelFormatError(f"{self.name}: the file is empty")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise FileNotFoundError(f"model file not found: {self.path}") from None
        self.file_size = size
        try:
            self._parse()
        except Exception:
            self._mm.close()
            raise

    def _parse(self):
        cur = _Cursor(self._mm, self.name)
        cur.need(4, "magic")
        magic = bytes(self._mm[0:4])
        if magic != GGUF_MAGIC:
            cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        version = cur.u32("version")
        if version not in (2, 3):
            if version & 0xFFFF == 0 and (version >> 24) in (2, 3):
                cur.fail("big-endian GGUF files are not supported")
            cur.fail(f"unsupported GGUF version {version} (forgert reads versions 2 and 3)")
        self.version = version
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Smallest possible entries: a KV is key length + type + 1 byte; a tensor info is
        # name length + n_dims + one dim + type + offset.
        for count, what, min_size in ((n_kv, "metadata", 13), (n_tensors, "tensor", 32)):
            if count * min_size > self.file_size:
                cur.fail(f"truncated or corrupt: absurd {what} count {count} (needs at least "
                         f"{count * min_size} bytes) for a file of {self.file_size} bytes")

        self.metadata = {}
        self.metadata_types = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.u32(f"value type of metadata '{key}'")
            if vtype not in VALUE_TYPE_NAMES:
                cur.fail(f"metadata '{key}' has unknown value type {vtype}")
            if key in self.metadata:
                cur.fail(f"metadata key '{key}' appears twice")
            pos = cur.pos
            self.metadata[key] = _read_value(cur, vtype, f"metadata '{key}'")
            if vtype == ARRAY:
                (elem,) = struct.unpack_from("<I", self._mm, pos)
                self.metadata_types[key] = (ARRAY, elem)
            else:
                self.metadata_types[key] = vtype

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
                or alignment & (alignment - 1)):
            cur.fail(f"general.alignment must be a power of two, got {alignment!r}")
        self.alignment = alignment

        infos = []
        names = set()
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            if name in names:
                cur.fail(f"tensor '{name}' appears twice")
            names.add(name)
            n_dims = cur.u32(f"dimension count of tensor '{name}'")
            if not 1 <= n_dims <= MAX_DIMS:
                cur.fail(f"tensor '{name}' has {n_dims} dimensions (expected 1..{MAX_DIMS})")
            ne = tuple(cur.u64(f"dimension {d} of tensor '{name}'") for d in range(n_dims))
            type_id = cur.u32(f"type of tensor '{name}'")
            offset = cur.u64(f"data offset of tensor '{name}'")
            infos.append((name, ne, type_id, offset))

        self.data_offset = -(-cur.pos // alignment) * alignment
        self.tensors = {}
        for name, ne, type_id, offset in infos:
            self.tensors[name] = self._check_tensor(cur, name, ne, type_id, offset)
        overlap = first_overlap((t.offset, t.nbytes, t.name) for t in self.tensors.values())
        if overlap:   # (llama.cpp wants them packed in order)
            cur.fail(f"tensors '{overlap[0]}' and '{overlap[1]}' overlap: their data offsets share bytes")

    def _check_tensor(self, cur, name, ne, type_id, offset) -> GGUFTensorInfo:
        if type_id not in GGML_TYPES:
            cur.fail(f"tensor '{name}' has unknown ggml type id {type_id}")
        tname, block_weights, _ = GGML_TYPES[type_id]
        if any(d == 0 for d in ne):
            cur.fail(f"tensor '{name}' has a zero dimension {list(ne)}")
        if any(d > self.file_size * 8 for d in ne):
            cur.fail(f"tensor '{name}' has absurd dimensions {list(ne)} for a file of {self.file_size} bytes")
        if ne[0] % block_weights:
            cur.fail(f"tensor '{name}' of type {tname} has {ne[0]} columns, "
                     f"not a multiple of its block size {block_weights}")
        if offset % self.alignment:
            cur.fail(f"tensor '{name}' data offset {offset} is not a multiple of the alignment {self.alignment}")
        n_rows = 1
        for d in ne[1:]:
            n_rows *= d
        nbytes = row_nbytes(type_id, ne[0]) * n_rows
        start = self.data_offset + offset
        end = start + nbytes
        if end > self.file_size:
            cur.fail(f"truncated: tensor '{name}' needs bytes {start}..{end} but the file has {self.file_size}")
        return GGUFTensorInfo(name, type_id, ne, start, nbytes)

    def tensor_data(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 array: a view of the mapping (no copy), or for a
        small vector (norms, biases) a copy, its pages in the mapping dropped. A kernel that maps a
        whole large folio of the page cache per fault (Linux 6.x) mapped ~230 KB of the repacked
        matrices' released pages back for every 2 KB norm read between them: 14 MB of the
        process's RSS for SmolLM2 Q4_1's 61 norms (issue 9's peak-RSS rule)."""
        info = self.tensors[name]
        view = np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        if len(info.ne) > 1 or info.nbytes > _SMALL_TENSOR_BYTES:
            return view
        data = view.copy()
        data.setflags(write=False)
        del view
        page = mmap.PAGESIZE
        start = info.offset // page * page
        if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:  # advice on a shared read-only mapping: the pages stay in the file, only unmapped here
                self._mm.madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)
            except OSError:
                pass
        return data

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    def close(self):
        """Unmap the file. Fails with BufferError while tensor views are still alive."""
        self._mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        except BufferError:
            pass

    def __repr__(self):
        return f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"
