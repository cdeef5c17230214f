"""Every SIMD kernel set against the portable one, through tests/cpp/kernel_sets_check.cpp.

x86-64 sets run natively; the arm64 NEON set is cross-compiled and run under qemu where
`aarch64-linux-gnu-g++` and `qemu-aarch64` are installed (.ci/run installs them).
"""
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cpp"
CPU = SRC / "backends" / "cpu"
CHECK = ROOT / "tests" / "cpp" / "kernel_sets_check.cpp"


def build(tmp_path, cxx, flags, name):
    exe = tmp_path / name
    sources = [CHECK, CPU / "kernels_generic.cpp", SRC / "core" / "dtype.cpp"]
    cmd = [cxx, "-std=c++17", "-O2", f"-I{SRC}", *flags, *map(str, sources), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def run_check(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failures" in proc.stdout


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 kernel sets need an x86-64 host")
def test_x86_kernel_sets_match_generic(tmp_path):
    cxx = shutil.which("g++") or shutil.which("clang++")
    objs = []
    for src, flags in [("kernels_avx2.cpp", ["-mavx2", "-mfma", "-mf16c"]),
                       ("kernels_avx512.cpp", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw",
                                               "-mavx512vl", "-mavx512vnni"])]:
        obj = tmp_path / (src + ".o")
        subprocess.run([cxx, "-std=c++17", "-O2", f"-I{SRC}", *flags, "-c", str(CPU / src), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        objs.append(str(obj))
    exe = build(tmp_path, cxx, ["-DFORGERT_HAVE_AVX2=1", "-DFORGERT_HAVE_AVX512=1", str(CPU / "cpu_kernels.cpp"),
                                *objs], "check_x86")
    run_check([str(exe)])


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
                    reason="needs aarch64-linux-gnu-g++ and qemu-aarch64 (apt-get install g++-aarch64-linux-gnu qemu-user)")
def test_neon_kernel_set_matches_generic(tmp_path):
    exe = build(tmp_path, "aarch64-linux-gnu-g++",
                ["-static", "-march=armv8.2-a+dotprod+fp16", "-DFORGERT_HAVE_NEON=1",
                 str(CPU / "cpu_kernels.cpp"), str(CPU / "kernels_neon.cpp")], "check_neon")
    run_check(["qemu-aarch64", "-cpu", "max", str(exe)])
