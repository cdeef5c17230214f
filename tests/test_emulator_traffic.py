"""The emulator's traffic counters (src/emulator/runtime/traffic.h) against kernels counted by
hand (src/emulator/tests/traffic.metal): bytes requested and needed, 64/128-byte lines per
simdgroup access against the fewest possible, threadgroup-memory bank conflicts."""
import ctypes

import numpy as np
import pytest

from test_emulator import EmuError, KernelLibrary, emu_build, u32  # noqa: F401 (fixture)

FIELDS = ["read_requested", "read_needed", "write_requested", "write_needed", "loads", "stores",
          "load_lines64", "load_lines64_min", "load_lines128", "load_lines128_min",
          "store_lines64", "store_lines64_min", "store_lines128", "store_lines128_min",
          "tg_accesses", "tg_wavefronts", "tg_wavefronts_min", "lane_accesses", "threadgroup_memory"]


class Traffic(ctypes.Structure):
    _fields_ = [(f, ctypes.c_uint64) for f in FIELDS] + [("threads_per_threadgroup", ctypes.c_uint32),
                                                         ("threadgroups", ctypes.c_uint32),
                                                         ("slot_read_requested", ctypes.c_uint64 * 31),
                                                         ("slot_read_needed", ctypes.c_uint64 * 31)]


class TrafficLibrary(KernelLibrary):
    def __init__(self, path):
        super().__init__(path)
        self.lib.fg_emu_traffic_supported.restype = ctypes.c_int32
        self.lib.fg_emu_last_traffic.restype = ctypes.c_int32
        self.lib.fg_emu_last_traffic.argtypes = [ctypes.POINTER(Traffic)]

    def traffic(self, kernel, buffers, groups, threads, **kw):
        self.run(kernel, buffers, groups, threads, traffic=True, **kw)
        t = Traffic()
        assert self.lib.fg_emu_last_traffic(ctypes.byref(t)) == 0
        return {f: (list(getattr(t, f)) if f.startswith("slot_") else getattr(t, f)) for f, _ in Traffic._fields_}


def aligned(a):
    """A copy of `a` at a 4096-byte boundary (as a Metal buffer), so that line counts are exact."""
    raw = np.zeros(a.nbytes + 4096, np.uint8)
    start = -raw.ctypes.data % 4096
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.fixture(scope="module")
def tlib(emu_build):
    if not (emu_build / "libforgert_emu_test_kernels_traffic.so").exists():
        pytest.skip("clang cannot instrument loads (-fsanitize-coverage=trace-loads): no traffic build")
    lib = TrafficLibrary(emu_build / "libforgert_emu_test_kernels_traffic.so")
    assert lib.lib.fg_emu_traffic_supported() == 1
    return lib


def test_coalesced_copy(tlib):
    n = 1024
    x = aligned(np.arange(n, dtype=np.float32))
    out = aligned(np.zeros(n, np.float32))
    t = tlib.traffic("traffic_copy", [x, out], (n // 256,), (256,))
    np.testing.assert_array_equal(out, x)
    # 32 simdgroups, each one 128-byte load and one 128-byte store
    assert t["read_requested"] == t["read_needed"] == 4 * n
    assert t["write_requested"] == t["write_needed"] == 4 * n
    assert t["loads"] == t["stores"] == n // 32
    assert t["lane_accesses"] == 2 * n
    assert t["load_lines128"] == t["load_lines128_min"] == n // 32
    assert t["load_lines64"] == t["load_lines64_min"] == 2 * n // 32
    assert t["store_lines64"] == t["store_lines64_min"] == 2 * n // 32
    assert t["tg_accesses"] == 0 and t["threadgroup_memory"] == 0
    assert t["threads_per_threadgroup"] == 256 and t["threadgroups"] == n // 256


@pytest.mark.parametrize("stride,lines64,lines128", [(1, 2, 1), (2, 4, 2), (16, 32, 16), (32, 32, 32)])
def test_strided_copy(tlib, stride, lines64, lines128):
    n = 64
    x = aligned(np.arange(n * stride, dtype=np.float32))
    out = aligned(np.zeros(n, np.float32))
    t = tlib.traffic("traffic_strided_copy", [u32(stride), x, out], (1,), (n,))
    np.testing.assert_array_equal(out, x[::stride][:n])
    # per simdgroup: 32 floats, 4 * stride bytes apart
    assert t["loads"] == 2
    assert t["read_requested"] == t["read_needed"] == 4 * n  # the argument struct is not device memory
    assert t["slot_read_needed"][1] == 4 * n and t["slot_read_needed"][0] == 0
    assert t["load_lines64"] == 2 * lines64 and t["load_lines128"] == 2 * lines128
    assert t["load_lines64_min"] == 2 * 2 and t["load_lines128_min"] == 2 * 1
    assert t["store_lines64"] == t["store_lines64_min"] == 2 * 2


def test_broadcast_read(tlib):
    n = 128
    x = aligned(np.array([5.0], np.float32))
    out = aligned(np.zeros(n, np.float32))
    t = tlib.traffic("traffic_broadcast", [x, out], (1,), (n,))
    np.testing.assert_array_equal(out, 5.0 + np.arange(n))
    # 32 lanes reading one float make one 4-byte request per simdgroup; 4 bytes are needed once
    assert t["read_requested"] == 4 * 4 and t["read_needed"] == 4
    assert t["slot_read_requested"][0] == 16 and t["slot_read_needed"][0] == 4
    assert t["lane_accesses"] == 2 * n
    assert t["loads"] == 4 and t["load_lines64"] == t["load_lines64_min"] == 4


@pytest.mark.parametrize("stride,ways", [(1, 1), (2, 2), (4, 4), (32, 32), (33, 1)])
def test_bank_conflicts(tlib, stride, ways):
    n = 64
    out = np.zeros(n, np.float32)
    t = tlib.traffic("traffic_bank_conflict", [u32(stride), out], (1,), (n,))
    np.testing.assert_array_equal(out, np.arange(n))
    # one store and one load per simdgroup; words tid * stride mod 2048 fall in bank (tid * stride) % 32
    assert t["tg_accesses"] == 4
    assert t["tg_wavefronts_min"] == 4
    assert t["tg_wavefronts"] == 4 * ways
    assert t["threadgroup_memory"] == 8192


def test_traffic_needs_the_traffic_build(emu_build):
    plain = KernelLibrary(emu_build / "libforgert_emu_test_kernels.so")
    with pytest.raises(EmuError, match="traffic build"):
        plain.run("traffic_copy", [np.zeros(32, np.float32), np.zeros(32, np.float32)], (1,), (32,), traffic=True)
