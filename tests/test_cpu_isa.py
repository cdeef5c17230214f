"""The per-op NumPy tests (test_cpu_ops.py) once more under every other kernel set this CPU
can run, chosen with FORGERT_CPU_ISA: the portable set is the reference the SIMD sets are
compared with in test_kernel_sets.py, so it is itself held to NumPy here."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

TESTS = Path(__file__).resolve().parent


def runnable_sets():
    from forgert import _core
    chosen = _core.cpu_info()["kernels"]
    names = {"generic": "generic", "avx2": "avx2", "avx2-vnni": "avx2vnni", "avx512-vnni": "avx512", "avx512-amx": "amx", "neon-dotprod": "neon"}
    sets = []
    for name in _core.cpu_info()["available"]:
        if name == chosen:
            continue   # test_cpu_ops.py runs it in this process
        env = subprocess_env(FORGERT_CPU_ISA=names[name])
        probe = subprocess.run([sys.executable, "-c", "from forgert import _core; _core.Ops('cpu')"],
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0:   # the CPU has that ISA
            sets.append(names[name])
    return sets


@pytest.mark.parametrize("isa", runnable_sets())
def test_cpu_ops_under_kernel_set(isa):
    env = subprocess_env(FORGERT_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not metal",
                           str(TESTS / "test_cpu_ops.py")], env=env, capture_output=True, text=True,
                          cwd=TESTS.parent, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("isa", runnable_sets())
def test_mxfp4_ops_under_kernel_set(isa):
    """MXFP4's matmul and matmul_id (decode GEMV, grouped prefill) against NumPy on gguf-py's
    dequantization, under every other kernel set (each has its own MXFP4 decode kernel)."""
    env = subprocess_env(FORGERT_CPU_ISA=isa)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not metal",
                           "-k", "(mxfp4 or MXFP4) and not metal", str(TESTS / "test_moe_ops.py")], env=env,
                          capture_output=True, text=True, cwd=TESTS.parent, timeout=900)
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


# A Q4_0 prefill (32 tokens: the int8 GEMM of every set that has one) under each
# FORGERT_CPU_PREFILL mode, against NumPy on the dequantized weights; prints the nmse.
PREFILL_NMSE = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_cpu_ops import Q4_0, decode_weights, encode_weights, nmse, randn
from forgert import _core
rng = np.random.default_rng(3)
w, x = randn(rng, 64, 256), randn(rng, 32, 256)
raw = encode_weights(w, Q4_0)
ref = np.asarray(x, np.float64) @ decode_weights(raw, Q4_0, 64, 256).T
print(nmse(_core.Ops("cpu").matmul(raw, Q4_0, 64, 256, x), ref))
"""


def prefill_nmse(mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", PREFILL_NMSE, str(TESTS)], env=subprocess_env(FORGERT_CPU_PREFILL=mode),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout)


def test_prefill_modes_round_activations_as_documented():
    """design.md "Numerics": int8x2 (default) rounds activations in two int8 parts like decode,
    int8 in one (llama.cpp's format, ~256x coarser), f32 not at all (dequantized panels; the
    portable set has none and uses its two-part decode kernels). Measured on this shape, the same
    on avx512-amx, avx512-vnni, avx2-vnni, avx2 and generic (bit-identical kernels): int8x2 4.2e-10,
    int8 2.8e-5, f32 8.0e-14 (generic 2.7e-9)."""
    from forgert import _core
    two, one, f32 = prefill_nmse("int8x2"), prefill_nmse("int8"), prefill_nmse("f32")
    assert two < 2e-9, two
    assert 5e-6 < one < 1.5e-4, one
    assert f32 < (1e-8 if _core.cpu_info()["kernels"] == "generic" else 5e-13), f32


def test_bad_prefill_mode_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-c", "from forgert import _core; _core.Ops('cpu')"],
                          env=subprocess_env(FORGERT_CPU_PREFILL="int4"), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "FORGERT_CPU_PREFILL=int4" in proc.stderr and "int8x2" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.skipif("generic" not in runnable_sets(), reason="this CPU already runs the portable set")
def test_sampler_under_the_portable_set():
    """The C++ sampler's exp over its candidates: four at a time by a polynomial on CPUs with AVX2
    and FMA (src/cpp/sampling/exp_rows.cpp), std::exp under FORGERT_CPU_ISA=generic and elsewhere.
    test_sampler_core.py holds this process's choice to NumPy; here the other one."""
    env = subprocess_env(FORGERT_CPU_ISA="generic")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           str(TESTS / "test_sampler_core.py")], env=env, capture_output=True, text=True,
                          cwd=TESTS.parent, timeout=900)
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]
