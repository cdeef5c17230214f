"""_core.Engine's memory safety on its own (no Python loader in front): weight buffers stay
exported for the engine's lifetime, strided buffers are refused, and header sizes are bounded
before any size is computed from them. Each case used to crash or misread memory."""
from __future__ import annotations

import mmap
import re

import numpy as np
import pytest

from forgert.loader import load_model

IDS = np.array([4, 8, 15, 16, 23, 42], dtype=np.int32)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_model(tiny_models("llama_tied").path("gguf-F32"))


def engine(core, loaded, tensors=None, **cfg_changes):
    cfg = dict(loaded.config.core_dict(16), **cfg_changes)
    return core.Engine(cfg, tensors if tensors is not None else loaded.core_tensors, backend="cpu", n_threads=1)


def copied_into_one_mmap(tensors: dict) -> tuple[mmap.mmap, dict]:
    """The same tensors with every buffer replaced by the whole of a private anonymous mmap
    (one per tensor): the design doc allows any buffer-protocol object."""
    out, maps = {}, []
    for name, (buf, dtype, shape) in tensors.items():
        raw = bytes(memoryview(buf).cast("B"))
        m = mmap.mmap(-1, len(raw))
        m[:] = raw
        maps.append(m)
        out[name] = (m, dtype, shape)
    return maps, out


def test_mmap_cannot_be_closed_under_the_engine(core, loaded):
    """Closing an mmap the engine reads used to succeed and the next forward segfaulted: the
    engine now holds a buffer export, so close() raises BufferError and forward still gives the
    logits of the loader's own buffers (bit-exact: the same bytes, the same kernels)."""
    expected = np.asarray(engine(core, loaded).forward(IDS, 0, all_logits=True))
    maps, tensors = copied_into_one_mmap(loaded.core_tensors)
    e = engine(core, loaded, tensors)
    for m in maps:
        with pytest.raises(BufferError):
            m.close()
    np.testing.assert_array_equal(np.asarray(e.forward(IDS, 0, all_logits=True)), expected)
    del e   # the exports go with the engine: now the maps close
    for m in maps:
        m.close()


def test_non_contiguous_buffer_is_refused(core, loaded):
    """A strided view used to be read as if contiguous (its size * itemsize matches the expected
    bytes, so nothing noticed): it is now a ValueError naming the tensor."""
    tensors = dict(loaded.core_tensors)
    buf, dtype, shape = tensors["output_norm.weight"]
    raw = np.frombuffer(bytes(memoryview(buf).cast("B")), dtype=np.uint8)
    doubled = np.repeat(raw, 2)               # every byte twice; [::2] is the original bytes, strided
    strided = doubled[::2]
    assert not strided.flags.c_contiguous and strided.nbytes == raw.nbytes
    tensors["output_norm.weight"] = (strided, dtype, shape)
    with pytest.raises(ValueError, match=r"'output_norm\.weight'.*C-contiguous"):
        engine(core, loaded, tensors)


def test_q_dim_overflow_is_refused(core, loaded):
    """n_heads = 2**22 + 1, head_dim = 1024 made the int q_dim wrap to 1024 (and forward
    segfault): validate() bounds every field and product before any size is computed."""
    freqs = np.ones(512, dtype=np.float32)
    with pytest.raises(ValueError, match=r"n_heads = 4194305 is outside 1\.\.4096"):
        engine(core, loaded, n_heads=2**22 + 1, n_kv_heads=1, head_dim=1024, rope_freqs=freqs)


@pytest.mark.parametrize("field,value", [
    ("n_layers", 1025), ("dim", 2**16 + 1), ("n_kv_heads", 2**12 + 1), ("head_dim", 1026),
    ("ffn_dim", 2**20 + 1), ("vocab", 2**24 + 1), ("n_ctx", 2**24 + 1), ("n_layers", -1),
])
def test_config_fields_are_bounded(core, loaded, field, value):
    with pytest.raises(ValueError, match=rf"{field} = {value} is outside"):
        engine(core, loaded, **{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("n_layers", 2**31, "'n_layers' = 2147483648 is out of range"),        # past int: was pybind's cast error
    ("vocab", 2**70, f"'vocab' = {2**70} is out of range"),
    ("dim", -2**40, f"'dim' = {-2**40} is out of range"),
    ("n_heads", 8.5, "'n_heads' must be an integer, got float"),         # not silently truncated
    ("n_ctx", "64", "'n_ctx' must be an integer, got str"),
])
def test_config_integers_out_of_int_range_are_named(core, loaded, field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        engine(core, loaded, **{field: value})


def test_q_dim_product_is_bounded(core, loaded):
    """Each field within its bound, the product past q_dim's (4096 * 512 = 2**21 > 2**20)."""
    with pytest.raises(ValueError, match=r"q_dim \(n_heads \* head_dim\) = 2097152 is outside"):
        engine(core, loaded, n_heads=4096, n_kv_heads=1, head_dim=512, rope_freqs=np.ones(256, np.float32))


def test_kv_cache_size_is_bounded(core, loaded):
    """1024 layers * 2 (K, V) * 2**24 positions * kv_dim 2**20 * 2 bytes = 2**56: each field in
    bounds, the cache far beyond any machine; refused by name."""
    with pytest.raises(ValueError, match=r"KV cache bytes \(.*\) = 72057594037927936 is outside"):
        engine(core, loaded, n_layers=1024, n_ctx=2**24, n_heads=1024, n_kv_heads=1024, head_dim=1024,
               rope_freqs=np.ones(512, np.float32))


def test_tensor_byte_size_overflow_is_refused(core, loaded):
    """A shape whose byte size overflows int64 used to wrap before the size comparison."""
    tensors = dict(loaded.core_tensors)
    buf, dtype, _ = tensors["output_norm.weight"]
    tensors["output_norm.weight"] = (buf, dtype, (2**40, 2**40))
    with pytest.raises(ValueError, match=r"'output_norm\.weight' byte size overflows"):
        engine(core, loaded, tensors)
    tensors["output_norm.weight"] = (buf, dtype, (1, 2**41))
    with pytest.raises(ValueError, match=r"'output_norm\.weight' has shape \[1, 2199023255552\], beyond"):
        engine(core, loaded, tensors)


def test_token_count_beyond_context_is_refused_before_allocation(core, loaded):
    e = engine(core, loaded)
    with pytest.raises(ValueError, match="context overflow: 17 new tokens exceed the context length 16"):
        e.forward(np.zeros(17, np.int32), 0, all_logits=True)
