"""Modeled cycles of the arm64 NEON GEMM tiles, for a machine with no arm64 CPU.

No arm64 hardware is in reach of this project's machines, so the NEON kernels' speed cannot be
measured here. This script gives the next best thing, a model: a small harness calls one tile
on zeroed data, built for arm64 by GCC and by clang (the compiler Apple's toolchain is built on),
under qemu single-stepping; the instructions the tile executed are read back from qemu's trace in
order, and llvm-mca runs that straight-line sequence through its scheduling model of a CPU (by
default its Apple M1 model). The tile runs twice, over NB and over 2 NB weight blocks; the
difference of the two modeled cycle counts over NB is the modeled cost of one more block, so
the call's fixed costs and the model's pipeline fill cancel.

A model is not a measurement: llvm-mca 14's Apple M1 model has three vector pipes where the
core has four, and it sees no cache misses. Use it to compare two versions of a kernel, not to
predict tokens per second.

    python bench/neon_mca.py [--src DIR] [--nb 4] [--cpu apple-m1] [--out FILE]

Needs aarch64-linux-gnu-g++, clang (aarch64 target), qemu-aarch64, llvm-mca and llvm-objdump
(llvm-14's names are tried too). --src: a tree's src/cpp (default this one's), to model an older
revision from a `git worktree`.
"""
from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (label, translation unit, call). Each call runs inside run_tile(nb); the harness declares
# zeroed buffers large enough for any tile: panel (weights), x (activations), mt (min terms), out.
TILES = [
    ("prefill sdot Q8_0, 2 parts, 8 rows x 4 tokens", "neon",
     "i8_tile_neon<DType::Q8_0, 2, 4>(panel, 0, x, mt, nb, out, 64, 16);"),
    ("prefill sdot Q4_K, 2 parts, 8 rows x 4 tokens", "neon",
     "i8_tile_neon<DType::Q4_K, 2, 4>(panel, 0, x, mt, nb, out, 64, 16);"),
    ("prefill sdot Q6_K, 2 parts, 8 rows x 4 tokens", "neon",
     "i8_tile_neon<DType::Q6_K, 2, 4>(panel, 0, x, mt, nb, out, 64, 16);"),
    ("prefill sdot Q4_K, 1 part, 8 rows x 4 tokens", "neon",
     "i8_tile_neon<DType::Q4_K, 1, 4>(panel, 0, x, mt, nb, out, 64, 16);"),
    ("prefill smmla Q8_0, 2 parts, 8 rows x 4 tokens", "i8mm",
     "i8mm_tile<DType::Q8_0, 2, 2>(panel, 0, px, nb, orow, 16);"),
    ("prefill smmla Q4_K, 2 parts, 8 rows x 4 tokens", "i8mm",
     "i8mm_tile<DType::Q4_K, 2, 2>(panel, 0, px, nb, orow, 16);"),
    ("prefill smmla Q6_K, 2 parts, 8 rows x 4 tokens", "i8mm",
     "i8mm_tile<DType::Q6_K, 2, 2>(panel, 0, px, nb, orow, 16);"),
    ("prefill smmla Q8_0, 1 part, 8 rows x 4 tokens", "i8mm",
     "i8mm_tile<DType::Q8_0, 1, 2>(panel, 0, px, nb, orow, 16);"),
    # decode: a unit is one 256-weight super-block of each of the 4 rows (nb counts super-blocks)
    ("decode Q4_K, 4 rows x 1 token (per super-block)", "neon",
     "kquant_gemm_rows<DType::Q4_K, 4, 1>(panel, 144 * 64, xp, ap, nb, out, 64);"),
    ("decode Q4_K, 4 rows x 4 tokens (per super-block)", "neon",
     "kquant_gemm_rows<DType::Q4_K, 4, 4>(panel, 144 * 64, xp, ap, nb, out, 64);"),
    ("decode Q6_K, 4 rows x 1 token (per super-block)", "neon",
     "kquant_gemm_rows<DType::Q6_K, 4, 1>(panel, 210 * 64, xp, ap, nb, out, 64);"),
    ("decode Q8_0, 4 rows x 1 token", "neon",
     "gemm_q_rows4<DType::Q8_0, 1>(rows, tok, nb, out, 64, 4);"),
]

HARNESS = r"""
#include "backends/cpu/kernels_neon{unit}.cpp"
#include <cstdlib>
namespace forgert::cpu {{
alignas(64) uint8_t panel[1 << 22];
alignas(64) BlockQ8Act x[8 * 512];
alignas(64) float mt[1 << 16], out[1 << 16];
{pairs}
const BlockQ8Act* tok[4] = {{x, x + 512, x + 1024, x + 1536}};
float* orow[4] = {{out, out + 16, out + 32, out + 48}};
const BlockQ8Act* xp[4] = {{x, x + 512, x + 1024, x + 1536}};
{acts}
const uint8_t* rows[4] = {{panel, panel + 34 * 512, panel + 2 * 34 * 512, panel + 3 * 34 * 512}};
__attribute__((noinline)) void run_tile(int64_t nb) {{ {call} }}
}}
int main(int argc, char** argv) {{
    using namespace forgert::cpu;
    {acts_init}
    run_tile(std::atoi(argv[1]));
    return 0;
}}
"""


def tool(*names: str) -> str:
    for n in names:
        if shutil.which(n):
            return n
    sys.exit(f"needs one of {', '.join(names)} on PATH")


def build(src: Path, unit: str, call: str, compiler: str, work: Path) -> Path:
    neon_unit = unit == "neon"
    acts = "KquantActs acts[4]; const KquantActs* ap[4] = {acts, acts + 1, acts + 2, acts + 3};" if neon_unit else ""
    acts_init = "for (int t = 0; t < 4; t++) kquant_acts(x + 512 * t, 512, acts[t]);" if neon_unit else ""
    pairs = "" if neon_unit else "alignas(64) I8mmPairBlock px[2 * 512];"
    text = HARNESS.format(unit="" if neon_unit else "_i8mm", acts=acts, call=call, acts_init=acts_init, pairs=pairs)
    cpp = work / "harness.cpp"
    cpp.write_text(text)
    exe = work / f"harness_{compiler}"
    cxx = ["aarch64-linux-gnu-g++"] if compiler == "gcc" else [tool("clang++", "clang++-14"), "--target=aarch64-linux-gnu"]
    flags = ["-std=c++17", "-O3", "-static", "-march=armv8.2-a+dotprod+fp16+i8mm", "-DFORGERT_HAVE_NEON=1",
             "-DFORGERT_HAVE_I8MM=1", f"-I{src}", f"-I{src / 'backends' / 'cpu'}"]
    objs = [str(src / "backends" / "cpu" / "cpu_kernels.cpp"), str(src / "core" / "dtype.cpp"),
            str(src / "backends" / "cpu" / "kernels_generic.cpp")]
    # the other NEON translation unit (the dot-product set and the i8mm set name each other)
    objs.append(str(src / "backends" / "cpu" / ("kernels_neon_i8mm.cpp" if neon_unit else "kernels_neon.cpp")))
    proc = subprocess.run([*cxx, *flags, str(cpp), *objs, "-o", str(exe)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{compiler} build failed:\n{proc.stderr[-3000:]}")
    return exe


def disassembly(exe: Path) -> tuple[dict[int, str], tuple[int, int], tuple[int, int]]:
    """Instruction text by address; the address ranges of run_tile and main."""
    objdump = tool("llvm-objdump-14", "llvm-objdump")
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", "--mattr=+dotprod,+fullfp16,+i8mm", str(exe)],
                         capture_output=True, text=True, check=True).stdout
    ins: dict[int, str] = {}
    for ln in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S.*)$", ln)
        if m:
            ins[int(m.group(1), 16)] = re.sub(r"\s*<.*>$", "", m.group(2)).replace("\t", " ")
    syms = subprocess.run(["nm", "-S", str(exe)], capture_output=True, text=True, check=True).stdout
    ranges = {}
    for ln in syms.splitlines():
        parts = ln.split()
        if len(parts) == 4 and (parts[3] == "main" or "run_tile" in parts[3]):
            a, n = int(parts[0], 16), int(parts[1], 16)
            ranges["main" if parts[3] == "main" else "run"] = (a, a + n)
    return ins, ranges["run"], ranges["main"]


def executed(exe: Path, nb: int, work: Path) -> list[int]:
    """The addresses run_tile executed (callees included), in order."""
    log = work / "trace.log"
    subprocess.run(["qemu-aarch64", "-cpu", "max", "-singlestep", "-d", "exec,nochain", "-D", str(log), str(exe),
                    str(nb)], check=True, capture_output=True)
    pcs = []
    for ln in log.read_text(errors="replace").splitlines():
        m = re.match(r"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/", ln)
        if m:
            pcs.append(int(m.group(1), 16))
    return pcs


def modeled_cycles(seq: list[str], cpu: str, work: Path) -> int:
    asm = work / "seq.s"
    # branches, calls and returns become nops: the sequence is already the path taken
    lines = ["nop" if re.match(r"(b|bl|br|blr|ret|cbz|cbnz|tbz|tbnz|b\.\w+)(\s|$)", s) else s for s in seq]
    asm.write_text("\n".join(lines) + "\n")
    mca = tool("llvm-mca-14", "llvm-mca")
    out = subprocess.run([mca, "-mtriple=aarch64", f"-mcpu={cpu}", "-mattr=+dotprod,+i8mm,+fullfp16", "-iterations=1",
                          str(asm)], capture_output=True, text=True)
    m = re.search(r"Total Cycles:\s+(\d+)", out.stdout)
    if not m:
        sys.exit(f"llvm-mca failed:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def tile_trace(exe: Path, dis, nb: int, work: Path) -> list[str]:
    """The instructions run_tile executed over nb blocks, in order (dis: disassembly(exe))."""
    ins, run, main = dis
    pcs = executed(exe, nb, work)
    start = next(i for i, pc in enumerate(pcs) if pc == run[0])
    seq = []
    for pc in pcs[start:]:
        if main[0] <= pc < main[1]:
            break
        seq.append(ins[pc])
    return seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src" / "cpp")
    ap.add_argument("--nb", type=int, default=4)
    ap.add_argument("--cpu", default="apple-m1")
    ap.add_argument("--compilers", default="gcc,clang")
    ap.add_argument("--only", default="", help="model only the tiles whose label contains this")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for t in ("qemu-aarch64", "aarch64-linux-gnu-g++"):
        tool(t)
    compilers = args.compilers.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for label, unit, call in TILES:
            if args.only not in label:
                continue
            cells = []
            for c in compilers:
                exe = build(args.src.resolve(), unit, call, c, work)
                dis = disassembly(exe)
                s1, s2 = tile_trace(exe, dis, args.nb, work), tile_trace(exe, dis, 2 * args.nb, work)
                cyc = (modeled_cycles(s2, args.cpu, work) - modeled_cycles(s1, args.cpu, work)) / args.nb
                n_ins = (len(s2) - len(s1)) / args.nb
                dots = sum(1 for s in s2 if s.split()[0] in ("sdot", "smmla")) - sum(
                    1 for s in s1 if s.split()[0] in ("sdot", "smmla"))
                cells.append(f"{cyc:.1f} ({n_ins:.0f} ins, {dots / args.nb:.0f} dots)")
                print(f"{label} [{c}]: {cells[-1]}", file=sys.stderr)
            rows.append((label, cells))
    head = (f"Modeled cycles per weight block (llvm-mca `-mcpu={args.cpu}`, the executed sequence of "
            f"{args.nb} vs {2 * args.nb} blocks under qemu; executed instructions and dot instructions per "
            f"block in brackets). Source: {args.src}. Host: {platform.machine()}, {platform.node()}.\n")
    table = ["| tile | " + " | ".join(compilers) + " |", "|---|" + "---:|" * len(compilers)]
    table += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    text = head + "\n" + "\n".join(table) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
