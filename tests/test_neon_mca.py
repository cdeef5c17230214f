"""bench/neon_mca.py's trace arithmetic: the dot instructions it counts per weight block are the
tile's, hand-computed (8 rows x 4 tokens x 32 quants x 2 activation parts: SDOT 4 rows x 4 quants
an instruction, 128 a block; SMMLA 2 rows x 2 tokens x 8 quants, 64 a block)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("aarch64-linux-gnu-g++", "qemu-aarch64"))
    or not (shutil.which("llvm-mca") or shutil.which("llvm-mca-14")),
    reason="needs aarch64-linux-gnu-g++, qemu-aarch64 and llvm-mca (apt-get install g++-aarch64-linux-gnu qemu-user llvm)")


@pytest.mark.parametrize("only, dots", [("prefill sdot Q8_0, 2 parts", 128), ("prefill smmla Q8_0, 2 parts", 64)])
def test_dots_per_block(only, dots):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "neon_mca.py"), "--only", only, "--compilers", "gcc",
                          "--nb", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith(f"| {only}"))
    assert f", {dots} dots)" in row, row
    cycles = float(row.split("|")[2].split()[0])
    assert cycles > dots / 4  # at most 4 vector instructions a cycle in any model
