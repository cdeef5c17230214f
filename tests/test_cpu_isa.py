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
