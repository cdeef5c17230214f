"""Every SIMD kernel set against the portable one, through tests/cpp/kernel_sets_check.cpp.

x86-64 sets run natively (AMX-INT8 where the CPU and OS allow tile instructions); the arm64 NEON set is cross-compiled and run under qemu where
`aarch64-linux-gnu-g++` and `qemu-aarch64` are installed (.ci/run installs them).
"""
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cpp"
CPU = SRC / "backends" / "cpu"
CHECK = ROOT / "tests" / "cpp" / "kernel_sets_check.cpp"


def build(tmp_path, cxx, flags, name):
    exe = tmp_path / name
    sources = [CHECK, CPU / "kernels_generic.cpp", SRC / "core" / "dtype.cpp"]
    cmd = [*cxx.split(), "-std=c++17", "-O2", f"-I{SRC}", *flags, *map(str, sources), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def run_check(cmd, env=None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failures" in proc.stdout
    return proc.stdout


X86_ONLY = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                              reason="x86-64 kernel sets need an x86-64 host")


@pytest.fixture(scope="module")
def x86_check_output(tmp_path_factory):
    """The check program over every x86 set this CPU runs, built and run once per module."""
    tmp_path = tmp_path_factory.mktemp("x86")
    cxx = shutil.which("g++") or shutil.which("clang++")
    base = ["-mavx2", "-mfma", "-mf16c"]
    avx512 = base + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
    objs = []
    for src, flags in [("kernels_avx2.cpp", base), ("kernels_avxvnni.cpp", base + ["-mavxvnni"]),
                       ("kernels_avx512.cpp", avx512),
                       ("kernels_amx.cpp", avx512 + ["-mamx-tile", "-mamx-int8"])]:
        obj = tmp_path / (src + ".o")
        subprocess.run([cxx, "-std=c++17", "-O2", f"-I{SRC}", *flags, "-c", str(CPU / src), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        objs.append(str(obj))
    exe = build(tmp_path, cxx, ["-DFORGERT_HAVE_AVX2=1", "-DFORGERT_HAVE_AVXVNNI=1", "-DFORGERT_HAVE_AVX512=1",
                                "-DFORGERT_HAVE_AMX=1",
                                str(CPU / "cpu_kernels.cpp"), *objs], "check_x86")
    # The AMX set's few-token decode on tiles for every count from 2 (its default may leave it off)
    return run_check([str(exe)], env={**os.environ, "FORGERT_AMX_DECODE_MIN_TOKENS": "2"})


@X86_ONLY
def test_x86_kernel_sets_match_generic(x86_check_output):
    assert "0 failures" in x86_check_output


def set_lines(output, name, *words):
    """The check's result lines of kernel set `name` that contain all of `words`."""
    return [ln for ln in output.splitlines() if ln.split()[:1] == [name] and all(w in ln for w in words)]


@X86_ONLY
def test_amx_kernel_set_matches_generic(x86_check_output):
    """The AMX-INT8 set (prefill int8 GEMM and few-token decode on tiles), where this CPU and OS run
    tile instructions."""
    if "avx512-amx: not run" in x86_check_output:
        pytest.skip("no usable AMX-INT8 here (CPU, OS tile permission or the probe's tile instruction)")
    for words in (["gemm_i8"], ["bit-identical to n=1"]):
        lines = set_lines(x86_check_output, "avx512-amx", *words)
        assert lines and all(ln.endswith("ok") for ln in lines), "\n".join(lines)


@X86_ONLY
def test_amx_decode_on_emulated_tiles(x86_check_output):
    """The AMX few-token decode's layouts and finishing, on tiles emulated by loops (any AVX-512
    VNNI CPU): bit-identical to one-token decode for 2..15 tokens, and close to generic."""
    if "avx512-vnni" not in x86_check_output:
        pytest.skip("needs AVX-512 VNNI")
    for words in (["bit-identical to n=1"], ["gemm Q4_0", "n=6"], ["gemv Q5_1 vs f64"]):
        lines = set_lines(x86_check_output, "avx512-amx-emulated", *words)
        assert lines and all(ln.endswith("ok") for ln in lines), "\n".join(lines)


@X86_ONLY
def test_amx_prefill_gemm_on_emulated_tiles(x86_check_output):
    """The AMX prefill int8 GEMM (16-token tiles on signed panels converted once per call, the
    last n % 16 tokens through the VNNI tiles after the offsets are put back), on tiles emulated
    by loops: bit-identical to the generic set and close to an f64 product for every weight
    type, Q8_0x16 / Q4_0x16 / Q4_1x16 bit-identical to the file layout."""
    if "avx512-vnni" not in x86_check_output:
        pytest.skip("needs AVX-512 VNNI")
    for words in (["gemm_i8 Q8_0", "n=21"], ["gemm_i8 Q4_0", "n=70"], ["gemm_i8 Q4_K", "n=21"],
                  ["gemm_i8 Q5_K", "n=70"], ["gemm_i8 Q6_K", "n=70"], ["gemm_i8 Q4_1", "n=70"], ["gemm_i8 Q8_0x16"],
                  ["gemm_i8 Q4_0x16"], ["gemm_i8 Q4_1x16"]):
        lines = set_lines(x86_check_output, "avx512-amx-emulated", *words)
        assert lines and all(ln.endswith("ok") for ln in lines), "\n".join(lines)


LATTICE = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]


@X86_ONLY
def test_lattice_prefill_gemm_on_every_x86_set(x86_check_output):
    """The IQ1-IQ3 lattice types through the prefill int8 GEMM as Q6_K's halves (their panels built
    per call from the file's blocks): on the AVX2 int16 panels, AVX-512 VNNI and the emulated AMX
    tiles, both activation formats, bit-identical to the generic set and close to an f64 product."""
    sets = ["avx2"] + (["avx512-vnni", "avx512-amx-emulated"] if "avx512-vnni" in x86_check_output else [])
    for name in sets:
        for t in LATTICE:
            lines = set_lines(x86_check_output, name, f"gemm_i8 {t} ")
            assert len(lines) >= 12 and all(ln.endswith("ok") for ln in lines), f"{name} {t}:\n" + "\n".join(lines)


@X86_ONLY
def test_panel_layouts_on_every_x86_set(x86_check_output):
    """Q4_0 / Q4_1 / Q5_0 / Q8_0 weights repacked into 16-row panels (Q4_0x16 / Q4_1x16 / Q5_0x16 / Q8_0x16), on each
    x86 set that ran here: decode of 1..15 tokens bit-identical to the scalar definition, rows read
    back equal to the file's dequantization, the f32 panel GEMM bit-identical to the file layout."""
    sets = [name for name in ("avx2", "avx2-vnni", "avx512-vnni", "avx512-amx", "avx512-amx-emulated")
            if set_lines(x86_check_output, name)]
    assert "avx2" in sets
    for name in sets:
        for pt in ("Q4_0x16", "Q4_1x16", "Q5_0x16", "Q8_0x16"):
            for words in ([pt, "definition"], ["rows of", pt], ["gemm_panel", pt]):
                lines = set_lines(x86_check_output, name, *words)
                assert lines and all(ln.endswith("ok") for ln in lines), (name, words, "\n".join(lines))


@X86_ONLY
def test_kquant_panels_on_every_x86_set(x86_check_output):
    """Q4_K / Q5_K / Q6_K weights repacked into 16-row panels (Q4_Kx16 / Q5_Kx16 / Q6_Kx16) on every x86 set that
    ran here (the AVX-512 kernels and the 256-bit ones, kernels_x86_panels16_kquant_256.inc): decode of 1..15 tokens
    bit-identical to the scalar statement of the panels' definition (kquant_definition_dot) and within f32
    rounding of the file layout's K-quant decode, rows read back equal to the file's dequantization, the f32
    panel GEMM and the int8 GEMM (one and two activation parts) bit-identical to the file layout."""
    sets = [name for name in ("avx2", "avx2-vnni", "avx512-vnni", "avx512-amx", "avx512-amx-emulated")
            if set_lines(x86_check_output, name)]
    assert "avx2" in sets
    for name in sets:
        for pt in ("Q4_Kx16", "Q5_Kx16", "Q6_Kx16"):
            for words in ([pt, "definition"], ["rows of", pt], ["gemm_panel", pt], ["gemm_i8", pt, "x1"],
                          ["gemm_i8", pt, "x2"]):
                lines = set_lines(x86_check_output, name, *words)
                assert lines and all(ln.endswith("ok") for ln in lines), (name, words, "\n".join(lines))


@X86_ONLY
def test_avxvnni_set_through_evex(tmp_path):
    """The avx2-vnni set's kernels on a CPU with AVX-512 VNNI but no AVX-VNNI (Zen 4, Ice Lake, ...),
    where the fixture above skips it: kernels_avxvnni.cpp built with the EVEX form of 256-bit
    vpdpbusd and vpdpwssd (AVX-512 VL + VNNI: the same operations) in place of the VEX ones it ships with."""
    flags = cpu_flags()
    if "avx_vnni" in flags:
        pytest.skip("this CPU runs the avx2-vnni set itself (test_x86_kernel_sets_match_generic)")
    if not {"avx512vl", "avx512_vnni"} <= flags:
        pytest.skip("needs AVX-512 VL and VNNI")
    cxx = shutil.which("g++") or shutil.which("clang++")
    base = ["-mavx2", "-mfma", "-mf16c"]
    objs = []
    for src, flags_ in [("kernels_avx2.cpp", base),
                        ("kernels_avxvnni.cpp", base + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni",
                                                        "-D_mm256_dpbusd_avx_epi32=_mm256_dpbusd_epi32",
                                                        "-D_mm256_dpwssd_avx_epi32=_mm256_dpwssd_epi32"])]:
        obj = tmp_path / (src + ".o")
        subprocess.run([cxx, "-std=c++17", "-O2", f"-I{SRC}", *flags_, "-c", str(CPU / src), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        objs.append(str(obj))
    exe = build(tmp_path, cxx, ["-DFORGERT_HAVE_AVX2=1", "-DFORGERT_HAVE_AVXVNNI=1", "-DFG_CHECK_AVXVNNI_AS_EVEX=1",
                                str(CPU / "cpu_kernels.cpp"), *objs], "check_avxvnni_evex")
    out = run_check([str(exe)])
    for words in (["x16", "definition"], ["Q4_1x16", "definition"], ["Q5_0x16", "definition"], ["gemm_i8", "Q8_0x16"],
                  ["Q4_Kx16", "definition"], ["Q5_Kx16", "definition"], ["Q6_Kx16", "definition"],
                  ["gemm_i8", "Q4_Kx16"], ["gemm_i8", "Q5_Kx16"], ["gemm_i8", "Q6_Kx16"],
                  ["bit-identical to n=1"]):
        lines = set_lines(out, "avx2-vnni", *words)
        assert lines and all(ln.endswith("ok") for ln in lines), "\n".join(lines) or out


# GCC, as Linux arm64 builds use; clang, the compiler Apple's toolchain is built on (Mac users
# build these files with it): the two unroll and allocate the tiles' registers differently.
NEON_COMPILERS = ["aarch64-linux-gnu-g++", "clang++ --target=aarch64-linux-gnu"]


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
                    reason="needs aarch64-linux-gnu-g++ and qemu-aarch64 (apt-get install g++-aarch64-linux-gnu qemu-user)")
@pytest.mark.parametrize("cxx", NEON_COMPILERS, ids=["gcc", "clang"])
def test_neon_kernel_set_matches_generic(tmp_path, cxx):
    """neon-dotprod, and neon-i8mm (SMMLA prefill GEMM): qemu's `max` CPU has both extensions."""
    if cxx.startswith("clang") and not shutil.which("clang++"):
        pytest.skip("needs clang++ (apt-get install clang; it cross-compiles with the aarch64 GCC's libraries)")
    exe = build(tmp_path, cxx,
                ["-static", "-march=armv8.2-a+dotprod+fp16+i8mm", "-DFORGERT_HAVE_NEON=1", "-DFORGERT_HAVE_I8MM=1",
                 str(CPU / "cpu_kernels.cpp"), str(CPU / "kernels_neon.cpp"), str(CPU / "kernels_neon_i8mm.cpp")],
                "check_neon")
    out = run_check(["qemu-aarch64", "-cpu", "max", str(exe)])
    i8mm = [ln for ln in out.splitlines() if ln.startswith("neon-i8mm") and "gemm_i8" in ln]
    assert i8mm and all(ln.endswith("ok") for ln in i8mm), "\n".join(i8mm) or out
    # the lattice types: Q6_K's halves panel on SDOT; the K-quants, Q4_1 and Q5_0 (their mins and
    # offsets through the activation sums; Q3_K on Q8_0's tiles) bit for bit the generic set's
    for name in ("neon-dotprod", "neon-i8mm"):
        for t in [*LATTICE, "Q4_1", "Q5_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
            lines = [ln for ln in out.splitlines() if ln.split()[:1] == [name] and f"gemm_i8 {t} " in ln]
            assert len(lines) >= 12 and all(ln.endswith("ok") for ln in lines), f"{name} {t}:\n" + "\n".join(lines)
    # the vector math: decode attention over every KV head in one call (kernels_attention_rows.h on
    # NeonVec4), the gated activations, the activation quantizer (the same parts as the generic one)
    for name in ("neon-dotprod", "neon-i8mm"):
        for words in (["attention_group", "n_kv=3", "bit-identical to each head alone"], ["attention_group", "nq=3"],
                      ["silu_mul_row"], ["gelu_mul_row"], ["quantize_row_q8 identical"]):
            lines = [ln for ln in out.splitlines() if ln.split()[:1] == [name] and all(w in ln for w in words)]
            assert lines and all(ln.endswith("ok") for ln in lines), f"{name} {words}:\n" + "\n".join(lines)
