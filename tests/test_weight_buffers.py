"""How the engine wraps the weights' host memory zero-copy (src/cpp/model/weights.cpp) and how a
Metal device reads them through buffer views (src/cpp/backends/metal/buffer_views.h).

- Tensors of different allocations (two mmap'd shard files) are never wrapped together, however
  close the allocations lie: the pages between them may be unmapped or another file's.
- Past the device's maxBufferLength, a Metal buffer is split into views that overlap by the
  largest tensor. The emulated device plans the same views as a Mac when told a tiny
  maxBufferLength; the logits must then be exactly those of the unsplit buffer, and a tensor
  too large for any view must be refused with a message naming it.

The models here are built by hand from random F32 tensors (no transformers needed): the
property under test is where the bytes are read from, not the arithmetic.
"""
from __future__ import annotations

import ctypes
import mmap

import numpy as np
import pytest

from conftest import require_backend

CFG = dict(arch="llama", n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128, vocab=256,
           n_ctx=32, rms_eps=1e-5, rope_neox=False,
           rope_freqs=(10000.0 ** (-np.arange(0, 16, 2) / 16)).astype(np.float32))
PAGE = mmap.PAGESIZE


def tensor_shapes(cfg=CFG) -> dict:
    d, q, kv, f = cfg["dim"], cfg["n_heads"] * cfg["head_dim"], cfg["n_kv_heads"] * cfg["head_dim"], cfg["ffn_dim"]
    shapes = {"token_embd.weight": (cfg["vocab"], d), "output_norm.weight": (1, d), "output.weight": (cfg["vocab"], d)}
    for i in range(cfg["n_layers"]):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (1, d), b + "attn_q.weight": (q, d), b + "attn_k.weight": (kv, d),
                       b + "attn_v.weight": (kv, d), b + "attn_output.weight": (d, q), b + "ffn_norm.weight": (1, d),
                       b + "ffn_gate.weight": (f, d), b + "ffn_up.weight": (f, d), b + "ffn_down.weight": (d, f)})
    return shapes


class Mappings(dict):
    """key -> a page-aligned buffer object of its own. They lie back to back in one anonymous
    mmap (kept here), as two shard files mapped one after the other would: adjacent, and still
    two allocations."""

    def __init__(self, sizes: dict):
        super().__init__()
        pages = {k: (n + PAGE - 1) // PAGE * PAGE for k, n in sizes.items()}
        self.backing = mmap.mmap(-1, sum(pages.values()))
        addr = np.frombuffer(self.backing, dtype=np.uint8).ctypes.data
        for k, n in pages.items():
            self[k] = (ctypes.c_uint8 * n).from_address(addr)
            addr += n


def place(shapes: dict, mapping_of) -> tuple:
    """Random F32 tensors written into one allocation per value of mapping_of(name), each
    tensor 64-byte aligned; returns (core tensors dict, Mappings)."""
    rng = np.random.default_rng(7)
    sizes = {}
    for name, (r, c) in shapes.items():
        key = mapping_of(name)
        sizes[key] = sizes.get(key, 0) + (r * c * 4 + 63) // 64 * 64
    maps = Mappings(sizes)
    views = {key: np.frombuffer(m, dtype=np.uint8) for key, m in maps.items()}
    used = dict.fromkeys(maps, 0)
    tensors = {}
    for name, (r, c) in shapes.items():
        key = mapping_of(name)
        vals = rng.standard_normal((r, c)).astype(np.float32) * (1.0 if "norm" in name else 0.2)
        off, n = used[key], r * c * 4
        views[key][off:off + n] = vals.reshape(-1).view(np.uint8)
        tensors[name] = (views[key][off:off + n], 0, (r, c))
        used[key] = off + (n + 63) // 64 * 64
    return tensors, maps


def extent(m) -> tuple:
    a = np.frombuffer(m, dtype=np.uint8)
    return a.ctypes.data, a.ctypes.data + a.size


def test_wraps_never_span_two_mappings(core):
    # Layer 0 in one "shard", everything else in another: two allocations back to back.
    tensors, maps = place(tensor_shapes(), lambda name: "a" if name.startswith("blk.0.") else "b")
    ext = {k: extent(m) for k, m in maps.items()}
    (a0, a1), (b0, b1) = ext["a"], ext["b"]
    assert min(a1, b1) == max(a0, b0), "the two allocations must touch"
    eng = core.Engine(CFG, tensors, backend="cpu", n_threads=1)
    wraps = eng._weight_buffers()
    for addr, n in wraps:
        inside = [k for k, (lo, hi) in ext.items() if lo <= addr and addr + n <= hi]
        assert inside, f"a zero-copy buffer [{addr:#x}, {addr + n:#x}) spans more than one mapping: {ext}"
    assert len(wraps) == 2, f"expected one buffer per mapping, got {len(wraps)}"
    del eng


def test_one_wrap_per_mapping(core):
    tensors, maps = place(tensor_shapes(), lambda name: "all")
    eng = core.Engine(CFG, tensors, backend="cpu", n_threads=1)
    lo, hi = extent(maps["all"])
    ((addr, n),) = eng._weight_buffers()
    assert lo <= addr and addr + n <= hi
    del eng


@pytest.fixture
def tiny_max_buffer_length(core, metal_reason):
    require_backend("metal", metal_reason)
    if not hasattr(core, "set_emulator_max_buffer_length"):
        pytest.skip("a real Metal device's maxBufferLength cannot be changed")
    yield lambda n: core.set_emulator_max_buffer_length(n)
    core.set_emulator_max_buffer_length(0)


@pytest.mark.metal
def test_metal_views_smaller_than_the_weights_give_the_same_logits(core, tiny_max_buffer_length):
    tensors, maps = place(tensor_shapes(), lambda name: "all")
    ((lo, hi),) = [extent(m) for m in maps.values()]
    largest = max(v[0].size for v in tensors.values())    # token_embd / output: 64 KB
    view = largest + 8 * PAGE                              # views of 24 pages (4 KB pages), stepping by 8
    assert (hi - lo) > 4 * view, "the weights must span several views"
    tokens = np.array([3, 141, 59, 26, 5], dtype=np.int32)
    whole = core.Engine(CFG, tensors, backend="metal").forward(tokens, 0, all_logits=True)
    tiny_max_buffer_length(view)
    split = core.Engine(CFG, tensors, backend="metal").forward(tokens, 0, all_logits=True)
    # Same kernels reading the same bytes: identical, not merely close.
    np.testing.assert_array_equal(split, whole)
    cpu = core.Engine(CFG, tensors, backend="cpu", n_threads=1).forward(tokens, 0, all_logits=True)
    rel = float(np.linalg.norm(split - cpu) / np.linalg.norm(cpu))
    assert rel < 1e-5, rel   # F32 weights: summation order only (measured 2.7e-6)


@pytest.mark.metal
def test_metal_refuses_a_tensor_larger_than_any_view(core, tiny_max_buffer_length):
    tensors, _ = place(tensor_shapes(), lambda name: "all")
    largest = max(v[0].size for v in tensors.values())
    tiny_max_buffer_length(largest)   # a view no longer than the largest tensor leaves no overlap
    with pytest.raises(ValueError, match=r"tensor '(token_embd|output)\.weight'.*maxBufferLength"):
        core.Engine(CFG, tensors, backend="metal")


@pytest.mark.metal
@pytest.mark.parametrize("fmt,view_pages", [("gguf-Q4_1", 12), ("hf-F16", 28)])
def test_metal_views_of_a_model_file(forgert, tiny_models, tiny_max_buffer_length, fmt, view_pages):
    """A real model file: tensors at offsets that are not page multiples (GGUF) or in a
    safetensors mmap. Views a few pages longer than the largest tensor (Q4_1 output.weight 25.6
    KB, F16 81.9 KB) give the logits of unsplit buffers, bit for bit."""
    path = str(tiny_models("qwen2_untied").path(fmt))
    prompt = [1, 17, 42, 99, 7]
    whole = forgert.Model(path, backend="metal")
    assert max(n for _, n in whole._engine._weight_buffers()) > 4 * view_pages * PAGE, "too few views to test"
    tiny_max_buffer_length(view_pages * PAGE)
    split = forgert.Model(path, backend="metal")
    np.testing.assert_array_equal(split.logits(prompt), whole.logits(prompt))
