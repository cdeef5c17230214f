"""GGUF models split over several files, as llama.cpp's gguf-split and the gguf package's writer
(convert_hf_to_gguf.py --split-max-size) write them: NAME-00001-of-00003.gguf, ... side by side.

Every shard is a GGUF of its own carrying split.no (0-based), split.count and split.tensors.count;
the first holds the model's metadata (and maybe no tensors), the others only tensors. open_gguf
opens any shard's whole model (a later shard's path leads to the first, which llama.cpp would
refuse) and checks the set: every shard present, numbered as its name says, each tensor in one
shard, as many tensors as the first shard announces. Each tensor stays a zero-copy view of its
own shard's mapping.
"""
from __future__ import annotations

import os
import re

import numpy as np

from .errors import ModelFormatError
from .gguf import GGUFFile, GGUFTensorInfo

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
# llama.cpp's llama_split_path: "%s-%05d-of-%05d.gguf" (the number 1-based).
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_names(prefix: str, count: int) -> list[str]:
    """The names of a split's `count` shards, in order (llama.cpp's llama_split_path)."""
    return [f"{prefix}-{i + 1:05d}-of-{count:05d}.gguf" for i in range(count)]


def shard_paths(path: str, count: int) -> list[str]:
    """The paths of all `count` shards of the split whose shard `path` is."""
    m = _SHARD_NAME.match(os.path.basename(path))
    if m is None or int(m["count"]) != count:
        raise ModelFormatError(f"{os.path.basename(path)}: metadata says it is one of {count} shards of a split "
                               f"GGUF, but its name is not PREFIX-NNNNN-of-{count:05d}.gguf, so the other "
                               f"shards cannot be found (keep the names gguf-split gave them)")
    return [os.path.join(os.path.dirname(path), name) for name in shard_names(m["prefix"], count)]


def split_name_parts(filename: str):
    """'dir/m-00002-of-00003.gguf' -> ('dir/m', 2, 3); None for a name that is no shard's."""
    m = _SHARD_NAME.match(filename)
    return None if m is None else (m["prefix"], int(m["no"]), int(m["count"]))


def _split_int(g: GGUFFile, key: str):
    v = g.metadata.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ModelFormatError(f"{g.name}: metadata '{key}' must be a non-negative integer, got {v!r}")
    return v


class GGUFSplit:
    """A split GGUF model, read as one GGUFFile: the first shard's metadata, every shard's tensors."""

    def __init__(self, shards: list[GGUFFile]):
        self.shards = shards
        first = shards[0]
        self.path, self.name, self.version = first.path, first.name, first.version
        self.metadata, self.metadata_types, self.alignment = first.metadata, first.metadata_types, first.alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        self._shard_of: dict[str, GGUFFile] = {}
        for shard in shards:
            for name, info in shard.tensors.items():
                if name in self.tensors:
                    raise ModelFormatError(f"{shard.name}: tensor '{name}' is also in {self._shard_of[name].name}")
                self.tensors[name] = info
                self._shard_of[name] = shard
        expected = _split_int(first, SPLIT_TENSORS)
        if expected is not None and expected != len(self.tensors):
            raise ModelFormatError(f"{first.name}: the split announces {expected} tensors ({SPLIT_TENSORS}), "
                                   f"its {len(shards)} shards hold {len(self.tensors)}")

    def tensor_data(self, name: str) -> np.ndarray:
        return self._shard_of[name].tensor_data(name)

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    def close(self):
        for shard in self.shards:
            shard.close()

    def __repr__(self):
        return f"GGUFSplit({self.path!r}, {len(self.shards)} shards, {len(self.tensors)} tensors)"


def open_gguf(path):
    """A GGUFFile, or for a shard of a split model the GGUFSplit of all its shards."""
    g = GGUFFile(path)
    try:
        count = _split_int(g, SPLIT_COUNT)
        if count is None or count <= 1:
            return g
        paths = shard_paths(g.path, count)
        shards: list[GGUFFile] = []
        try:
            for i, p in enumerate(paths):
                if os.path.abspath(p) == os.path.abspath(g.path):
                    shard = g
                elif not os.path.exists(p):
                    raise ModelFormatError(f"{os.path.basename(p)}: shard {i + 1} of the {count} of split GGUF "
                                           f"{os.path.basename(paths[0])} is missing (download every shard "
                                           f"into one folder)")
                else:
                    shard = GGUFFile(p)
                shards.append(shard)
                no, n = _split_int(shard, SPLIT_NO), _split_int(shard, SPLIT_COUNT)
                if no != i or n != count:
                    raise ModelFormatError(f"{shard.name}: its metadata says shard {no} of {n} (0-based "
                                           f"{SPLIT_NO}), its name shard {i} of {count}")
            return GGUFSplit(shards)
        except Exception:
            for shard in shards:
                if shard is not g:
                    shard.close()
            raise
    except Exception:
        g.close()
        raise
