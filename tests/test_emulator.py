"""The MSL emulator (src/emulator): its own test kernels (src/emulator/tests/*.metal) run
through the library's C interface (ctypes) and are checked against NumPy; the error
detectors must fire with messages that name the kernel; the emulated Device is driven
through metal_device.h by a small C++ program (src/emulator/tests/device_test.cpp).

Builds src/emulator as its own CMake project with clang into build/emulator-test (about a
minute the first time, incremental afterwards; FORGERT_EMU_CXX and FORGERT_EMU_TEST_BUILD
choose another compiler and build directory). Skipped where clang is not installed.
"""
import ctypes
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = pathlib.Path(os.environ.get("FORGERT_EMU_TEST_BUILD", ROOT / "build" / "emulator-test"))
SCHEDULES = ["forward", "reverse", "random"]
SCHEDULE_IDS = {"forward": 0, "reverse": 1, "random": 2}


def find_clang():
    if os.environ.get("FORGERT_EMU_CXX"):
        return os.environ["FORGERT_EMU_CXX"]
    for name in ("clang++-19", "clang++-18", "clang++-17", "clang++-16", "clang++-15", "clang++", "clang++-14"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def emu_build():
    clang = find_clang()
    if not clang:
        pytest.skip("clang is not installed (apt-get install clang)")
    configure = ["cmake", "-S", str(ROOT / "src" / "emulator"), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
                 "-DCMAKE_CXX_COMPILER=" + clang, "-DFORGERT_EMU_TESTS=ON",
                 "-DPython3_EXECUTABLE=" + sys.executable]
    for cmd in (configure, ["cmake", "--build", str(BUILD), "-j2"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, "%s failed:\n%s\n%s" % (" ".join(cmd), r.stdout[-4000:], r.stderr[-4000:])
    return BUILD


# ---- the library's C interface (src/emulator/runtime/emu_api.h) ----
class Size3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint32), ("y", ctypes.c_uint32), ("z", ctypes.c_uint32)]


class Bindings(ctypes.Structure):
    _fields_ = [("buffers", ctypes.c_void_p * 31), ("buffer_bytes", ctypes.c_size_t * 31),
                ("threadgroup_bytes", ctypes.c_size_t * 31)]


class Constant(ctypes.Structure):
    _fields_ = [("index", ctypes.c_int32), ("kind", ctypes.c_int32), ("i", ctypes.c_int32), ("f", ctypes.c_float)]


class Options(ctypes.Structure):
    _fields_ = [("schedule", ctypes.c_int32), ("workers", ctypes.c_int32), ("seed", ctypes.c_uint64),
                ("poison_threadgroup_memory", ctypes.c_int32), ("traffic", ctypes.c_int32)]


class EmuError(Exception):
    pass


class KernelLibrary:
    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.fg_emu_abi_version.restype = ctypes.c_uint32
        self.lib.fg_emu_kernel_count.restype = ctypes.c_int32
        self.lib.fg_emu_kernel_name.restype = ctypes.c_char_p
        self.lib.fg_emu_kernel_name.argtypes = [ctypes.c_int32]
        self.lib.fg_emu_find_kernel.restype = ctypes.c_void_p
        self.lib.fg_emu_find_kernel.argtypes = [ctypes.c_char_p]
        self.lib.fg_emu_library_error.restype = ctypes.c_char_p
        self.lib.fg_emu_dispatch.restype = ctypes.c_int32
        self.lib.fg_emu_dispatch.argtypes = [ctypes.c_void_p, ctypes.POINTER(Constant), ctypes.c_int32,
                                             ctypes.POINTER(Bindings), Size3, Size3, ctypes.POINTER(Options),
                                             ctypes.c_char_p, ctypes.c_size_t]

    def names(self):
        return {self.lib.fg_emu_kernel_name(i).decode() for i in range(self.lib.fg_emu_kernel_count())}

    def run(self, kernel, buffers, groups, threads, threadgroup=None, constants=(), schedule="forward", seed=1,
            workers=2, traffic=False):
        """Dispatch `kernel` with buffers[i] (NumPy arrays, updated in place) in slot i."""
        k = self.lib.fg_emu_find_kernel(kernel.encode())
        assert k, "no kernel %s" % kernel
        b = Bindings()
        keep = []
        for slot, arr in enumerate(buffers):
            if arr is None:
                continue
            assert arr.flags.c_contiguous
            keep.append(arr)
            b.buffers[slot] = arr.ctypes.data
            b.buffer_bytes[slot] = arr.nbytes
        for slot, nbytes in (threadgroup or {}).items():
            b.threadgroup_bytes[slot] = nbytes
        consts = (Constant * max(1, len(constants)))()
        for i, (index, kind, value) in enumerate(constants):
            consts[i].index = index
            consts[i].kind = {"bool": 0, "int": 1, "float": 2}[kind]
            if kind == "float":
                consts[i].f = value
            else:
                consts[i].i = int(value)
        opt = Options(SCHEDULE_IDS[schedule], workers, seed, 1, int(traffic))
        err = ctypes.create_string_buffer(4096)
        pad = lambda v: Size3(*(list(v) + [1, 1])[:3])
        rc = self.lib.fg_emu_dispatch(k, consts, len(constants), ctypes.byref(b), pad(groups), pad(threads),
                                      ctypes.byref(opt), err, len(err))
        if rc:
            raise EmuError(err.value.decode())


@pytest.fixture(scope="session")
def kernels(emu_build):
    lib = KernelLibrary(emu_build / "libforgert_emu_test_kernels.so")
    assert lib.lib.fg_emu_abi_version() == 1
    assert lib.lib.fg_emu_library_error() == b""
    return lib


def u32(*values):
    return np.array(values, dtype=np.uint32)


# ---- simd_* ----
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_simd_collectives(kernels, schedule):
    rng = np.random.default_rng(0)
    x = rng.integers(-20, 20, size=64).astype(np.float32)  # integers: sums are exact in any order
    out = np.zeros(64 * 12, np.float32)
    kernels.run("simd_collectives", [u32(64), x, out], (1,), (64,), schedule=schedule)
    got = out.reshape(64, 12)
    for sg in range(2):
        v = x[32 * sg:32 * sg + 32]
        g = got[32 * sg:32 * sg + 32]
        lanes = np.arange(32)
        np.testing.assert_array_equal(g[:, 0], v.sum())
        np.testing.assert_array_equal(g[:, 1], v.max())
        np.testing.assert_array_equal(g[:, 2], v.min())
        np.testing.assert_array_equal(g[:, 3], np.concatenate([[0], np.cumsum(v)[:-1]]))
        np.testing.assert_array_equal(g[:, 4], np.cumsum(v))
        np.testing.assert_array_equal(g[:, 5], v[3])
        np.testing.assert_array_equal(g[:, 6], v[(lanes + 5) % 16])
        np.testing.assert_array_equal(g[:, 7], v[lanes ^ 1])
        np.testing.assert_array_equal(g[:, 8], np.where(lanes + 4 < 32, v[np.minimum(lanes + 4, 31)], v))
        np.testing.assert_array_equal(g[:, 9], np.where(lanes >= 2, v[np.maximum(lanes - 2, 0)], v))
        votes = v > 0
        np.testing.assert_array_equal(g[:, 10], votes.sum() + np.where(votes, 0.5, 0.0))
        np.testing.assert_array_equal(g[:, 11], v[0] + np.where(lanes == 0, 1000.0, 0.0))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_simd_vector_collectives(kernels, schedule):
    x = np.arange(96 * 4, dtype=np.float32).reshape(96, 4) % 13
    out = np.zeros((6, 4), np.float32)
    kernels.run("simd_vector_sum", [x, out], (1,), (96,), schedule=schedule)
    for sg in range(3):
        expect = x[32 * sg:32 * sg + 32].sum(axis=0)
        np.testing.assert_array_equal(out[2 * sg], expect)      # shuffle_down tree
        np.testing.assert_array_equal(out[2 * sg + 1], expect)  # simd_sum of float4


def test_simd_divergent_collectives_use_active_lanes(kernels):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(128, np.float32)
    kernels.run("simd_divergent", [x, out], (1,), (64,))
    got = out.reshape(64, 2)
    for sg in range(2):
        v = x[32 * sg:32 * sg + 32]
        lanes = np.arange(32)
        np.testing.assert_array_equal(got[32 * sg:32 * sg + 32, 0], np.where(lanes % 2 == 1, v[1::2].sum(), 0))
        np.testing.assert_array_equal(got[32 * sg:32 * sg + 32, 1], v.sum())


def test_shuffle_from_nonexistent_lane_is_reported(kernels):
    with pytest.raises(EmuError, match=r"kernel 'simd_bad_shuffle'.*simd_shuffle_down reads an inactive or "
                                       r"nonexistent lane at .*simd\.metal:\d+"):
        kernels.run("simd_bad_shuffle", [np.zeros(40, np.float32)], (1,), (40,))


def test_shuffle_from_inactive_lane_is_reported(kernels):
    with pytest.raises(EmuError, match=r"simd_inactive_read.*simd_shuffle reads an inactive"):
        kernels.run("simd_inactive_read", [np.zeros(32, np.float32)], (1,), (32,))


# ---- threadgroup memory and barriers ----
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n,threads", [(1000, 256), (64, 64), (33, 1024), (5000, 32)])
def test_threadgroup_tree_sum(kernels, schedule, n, threads):
    rng = np.random.default_rng(n)
    x = rng.integers(-50, 50, size=n).astype(np.float32)
    groups = (n + threads - 1) // threads
    out = np.zeros(groups, np.float32)
    kernels.run("tg_tree_sum", [u32(n), x, out], (groups,), (threads,), threadgroup={0: threads * 4},
                schedule=schedule)
    expect = np.add.reduceat(np.concatenate([x, np.zeros(groups * threads - n, np.float32)]),
                             np.arange(0, groups * threads, threads))
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("kernel,dtype", [("tg_reverse_f32", np.float32), ("tg_reverse_i32", np.int32)])
def test_threadgroup_local_in_template_kernel(kernels, kernel, dtype):
    x = np.arange(3 * 256).astype(dtype)
    out = np.zeros_like(x)
    kernels.run(kernel, [x, out], (3,), (256,), schedule="random")
    np.testing.assert_array_equal(out, x.reshape(3, 256)[:, ::-1].reshape(-1))


def test_builtin_ids_of_a_3d_dispatch(kernels):
    groups, threads = (3, 2, 2), (8, 3, 2)
    nthreads = 8 * 3 * 2
    out = np.zeros(12 * 12 * nthreads, np.uint32)
    kernels.run("tg_ids", [out], groups, threads)
    got = out.reshape(12, nthreads, 12)
    for gz in range(2):
        for gy in range(2):
            for gx in range(3):
                g = got[(gz * 2 + gy) * 3 + gx]
                t = np.arange(nthreads)
                tx, ty, tz = t % 8, (t // 8) % 3, t // 24
                np.testing.assert_array_equal(g[:, 0], gx * 8 + tx)
                np.testing.assert_array_equal(g[:, 1], gy * 3 + ty)
                np.testing.assert_array_equal(g[:, 2], gz * 2 + tz)
                np.testing.assert_array_equal(g[:, 3:6], np.stack([tx, ty, tz], 1))
                np.testing.assert_array_equal(g[:, 6:9], np.tile([gx, gy, gz], (nthreads, 1)))
                np.testing.assert_array_equal(g[:, 9], t)
                np.testing.assert_array_equal(g[:, 10], 2)
                np.testing.assert_array_equal(g[:, 11], 32)


def test_missing_barrier_is_exposed_by_schedule_order(kernels):
    x = np.arange(64, dtype=np.float32)
    results = {}
    for schedule in SCHEDULES:
        out = np.zeros(64, np.float32)
        kernels.run("tg_racy_shift", [x, out], (1,), (64,), schedule=schedule, seed=3)
        results[schedule] = out
    assert not np.array_equal(results["forward"], results["reverse"]), "the race went unnoticed"
    # with the barrier every order agrees with NumPy
    for schedule in SCHEDULES:
        out = np.zeros(64, np.float32)
        kernels.run("tg_shift", [x, out], (1,), (64,), schedule=schedule)
        np.testing.assert_array_equal(out, np.roll(x, -1))


def test_barrier_divergence_is_reported(kernels):
    with pytest.raises(EmuError, match=r"kernel 'tg_divergent_barrier', threadgroup \(0,0,0\): barrier divergence: "
                                       r"thread 0 .*threadgroup\.metal:\d+ but thread 1 .*threadgroup\.metal:\d+"):
        kernels.run("tg_divergent_barrier", [np.zeros(64, np.float32)], (1,), (64,))


def test_early_exit_before_barrier_is_reported(kernels):
    with pytest.raises(EmuError, match=r"tg_early_exit.*early exit before a barrier: 24 thread\(s\) returned "
                                       r"\(first thread 40 .*\) while 40 thread\(s\) wait"):
        kernels.run("tg_early_exit", [u32(40), np.zeros(64, np.float32)], (1,), (64,))
    out = np.zeros(64, np.float32)
    kernels.run("tg_early_exit", [u32(64), out], (1,), (64,))  # no thread exits early: fine
    np.testing.assert_array_equal(out, np.arange(64)[::-1])


def test_threadgroup_memory_limit(kernels):
    with pytest.raises(EmuError, match=r"tg_too_much_memory.*36000 bytes exceeds the 32768"):
        kernels.run("tg_too_much_memory", [np.zeros(32, np.float32)], (1,), (32,))
    with pytest.raises(EmuError, match=r"tg_tree_sum.*40000 bytes of \[\[threadgroup\]\] memory exceed"):
        kernels.run("tg_tree_sum", [u32(1), np.zeros(1, np.float32), np.zeros(1, np.float32)], (1,), (32,),
                    threadgroup={0: 40000})


def test_bad_geometry_and_bindings_are_reported(kernels):
    with pytest.raises(EmuError, match=r"tg_shift.*2048x1x1 threads per threadgroup; Metal allows 1 to 1024"):
        kernels.run("tg_shift", [np.zeros(1, np.float32)] * 2, (1,), (2048,))
    with pytest.raises(EmuError, match=r"tg_shift.*\[\[buffer\(1\)\]\] \(parameter 1\) is not bound"):
        kernels.run("tg_shift", [np.zeros(64, np.float32)], (1,), (64,))
    with pytest.raises(EmuError, match=r"tg_tree_sum.*\[\[threadgroup\(0\)\]\].*set_threadgroup_memory missing"):
        kernels.run("tg_tree_sum", [u32(1), np.zeros(1, np.float32), np.zeros(1, np.float32)], (1,), (32,))


# ---- simdgroup_matrix ----
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_simdgroup_matrix_multiply(kernels, schedule):
    rng = np.random.default_rng(1)
    m, n, k = 24, 16, 40
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    kernels.run("simdgroup_matmul", [u32(m, n, k), a, np.ascontiguousarray(b.T), c], (n // 8, m // 8), (32,),
                schedule=schedule)
    expect = a.astype(np.float16).astype(np.float64) @ b.astype(np.float64)  # A goes through half
    np.testing.assert_allclose(c, expect, rtol=1e-4, atol=1e-4)


def test_simdgroup_matrix_diagonal_and_transposed_store(kernels):
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    out = np.zeros((8, 8), np.float32)
    kernels.run("simdgroup_diag", [x, out], (1,), (32,))
    np.testing.assert_array_equal(out, (2 * x).T)


def test_simdgroup_load_with_per_lane_pointer_is_reported(kernels):
    with pytest.raises(EmuError, match=r"simdgroup_bad_load.*simdgroup_load: lanes pass different arguments"):
        kernels.run("simdgroup_bad_load", [np.zeros(128, np.float32), np.zeros(64, np.float32)], (1,), (32,))


# ---- atomics and deadlock ----
@pytest.mark.parametrize("workers", [1, 2])
def test_atomics_across_threadgroups(kernels, workers):
    groups, threads = 37, 64
    counter = np.zeros(1, np.uint32)
    total = np.zeros(1, np.float32)
    maximum = np.zeros(1, np.int32)
    per_group = np.zeros(groups, np.uint32)
    kernels.run("atomic_counts", [counter, total, maximum, per_group], (groups,), (threads,), workers=workers,
                schedule="random")
    assert counter[0] == groups * threads
    assert total[0] == 0.5 * groups * threads
    assert maximum[0] == (groups - 1) * 1000 + threads - 1
    np.testing.assert_array_equal(per_group, threads)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_spin_wait_that_can_finish(kernels, schedule):
    out = np.zeros(2, np.int32)
    kernels.run("atomic_spin_ok", [out], (1,), (2,), schedule=schedule)
    assert out[0] == 42


def test_deadlock_is_reported(kernels):
    with pytest.raises(EmuError, match=r"kernel 'atomic_deadlock'.*deadlock: 1 thread\(s\) spin on atomics "
                                       r"\(thread 0 .* at .*atomics\.metal:\d+\).*thread 1 .* waits at "
                                       r"threadgroup_barrier"):
        kernels.run("atomic_deadlock", [np.zeros(32, np.int32)], (1,), (32,))


# ---- function constants ----
@pytest.mark.parametrize("negate,repeat,scale,bias", [(False, 0, 1.0, None), (True, 3, 0.25, True),
                                                      (False, 1, -2.0, False)])
def test_function_constants(kernels, negate, repeat, scale, bias):
    x = np.arange(32, dtype=np.float32)
    out = np.zeros(32, np.float32)
    constants = [(0, "bool", negate), (1, "int", repeat), (2, "float", scale)]
    if bias is not None:
        constants.append((3, "bool", bias))
    kernels.run("fc_apply", [x, out], (1,), (32,), constants=constants)
    expect = (-1 if negate else 1) * scale * x * (repeat + 1) + (100.0 if bias else 0.0)
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_unset_function_constant_is_reported(kernels):
    with pytest.raises(EmuError, match=r"fc_apply.*function constant 'FC_SCALE' \(index 2\) is used but the "
                                       r"pipeline was created without a value"):
        kernels.run("fc_apply", [np.zeros(32, np.float32)] * 2, (1,), (32,), constants=[(0, "bool", 1), (1, "int", 0)])


# ---- vector types and conversions ----
def test_vector_types_and_casts(kernels):
    x = np.array([[1.5, -2.25, 3.75, 0.5], [-7.9, 100.1, 2.0, 3.0]], np.float32)
    out = np.zeros(16, np.float32)
    outh = np.zeros(8, np.float16)
    outi = np.zeros(4, np.int32)
    kernels.run("vector_ops", [x, out, outh, outi], (2,), (1,))
    got = out.reshape(2, 8)
    for i, v in enumerate(x):
        c = np.array([v[0], v[1], 1.0, v[3]], np.float32)
        assert got[i, 0] == pytest.approx(float(v @ c), rel=1e-6)
        assert got[i, 1] == pytest.approx((v[2] + c[0]) * (v[3] + c[1]), rel=1e-6)
        assert got[i, 2] == np.trunc(v).astype(np.int32).sum()  # converted, not reinterpreted
        assert got[i, 3] == 5.0
        assert got[i, 4] == pytest.approx(np.clip(v[0], -1, 1) + max(v[1], 0) + (1.0 if v[2] > v[3] else 0.0))
        assert got[i, 5] == v[0]
        assert got[i, 6] == v[3]
        bf16 = np.frombuffer(np.float32(v[0]).tobytes(), np.uint32)[0]
        bf16 = ((bf16 + 0x7FFF + ((bf16 >> 16) & 1)) >> 16) << 16  # round to nearest even
        assert got[i, 7] == np.frombuffer(np.uint32(bf16).tobytes(), np.float32)[0]
        np.testing.assert_array_equal(outh[4 * i:4 * i + 4], v.astype(np.float16) * np.float16(2))
        assert outi[2 * i] == 1
    halves = np.array([1.0, -2.0], np.float16).view(np.int32)[0]
    assert outi[1] == halves


# ---- the translator ----
def load_translator():
    sys.path.insert(0, str(ROOT / "src" / "emulator" / "tools"))
    try:
        import msl2cpp
    finally:
        sys.path.pop(0)
    return msl2cpp


def test_translator_rewrites_preserve_lines():
    msl2cpp = load_translator()
    src = ("kernel void k(device float4* o [[buffer(0)]],\n"
           "              uint i [[thread_position_in_grid]]) {\n"
           "    threadgroup float a[4], b[2];\n"
           "    o[i] = (float4) as_type<int4>(o[i]) + (float4)(i);\n"
           "}\n")
    out = msl2cpp.translate(src, "k.metal")
    body = out.split('#line 1 "k.metal"\n', 1)[1].split("// ---- generated")[0]
    assert body.rstrip("\n").count("\n") == src.rstrip("\n").count("\n")
    assert "::fgemu::vcast<float4>(as_type<int4>(o[i]))" in body
    assert "::fgemu::vcast<float4>((i))" in body
    assert "::fgemu::threadgroup_var<" in body and "auto& a =" in body and "auto& b =" in body
    assert "[[" not in body
    assert '{"k", &__fgemu_entry_0' in out


def test_translator_rejects_unknown_parameters():
    msl2cpp = load_translator()
    with pytest.raises(msl2cpp.TranslateError, match=r"k\.metal:1: kernel parameter 'uint i' has no attribute"):
        msl2cpp.translate("kernel void k(uint i) {}\n", "k.metal")


def test_model_shaders_translate_and_register(emu_build):
    lib = KernelLibrary(emu_build / "libforgert_msl_kernels.so")
    assert lib.lib.fg_emu_library_error() == b""
    shaders = sorted((ROOT / "src" / "shaders").glob("*.metal"))
    names = lib.names()
    if shaders:
        assert names, "the model's shaders registered no kernel"
    for path in shaders:  # every non-template kernel of every file is in the table
        msl2cpp = load_translator()
        t = msl2cpp.Translator(path.read_text(), str(path))
        t.find_kernels()
        t.find_instantiations()
        for fn, k in t.kernels.items():
            if not k["template"]:
                assert k["host"] in names, "%s: %s missing" % (path.name, k["host"])
        for host, _, _ in t.entries:
            assert host in names, "%s: %s missing" % (path.name, host)


# ---- the emulated Device (device_emulated.cpp) ----
def test_emulated_device(emu_build):
    r = subprocess.run([str(emu_build / "emu_device_test"), str(emu_build / "libforgert_emu_test_kernels.so")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and r.stdout.count("PASS") >= 10, r.stdout


def test_emulated_device_reports_a_missing_library(emu_build, tmp_path):
    # A library path that does not exist: make_emulated_device_from must explain, not crash.
    r = subprocess.run([str(emu_build / "emu_device_test"), str(tmp_path / "libnothing.so")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "FAIL open: cannot load the MSL kernel library" in r.stdout
    assert "apt-get install clang" in r.stdout
