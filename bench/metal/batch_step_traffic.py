"""What a batch decode step moves on Metal as the number of decoding sequences grows, counted by
the MSL emulator's traffic build (no Mac needed; counts, not times): per step, the dispatches, the
distinct device bytes the matmul kernels need and the bytes their simdgroup accesses request (the
re-reads a GPU's caches must absorb, else DRAM traffic), and the step's totals.

Batch invariance (docs/design.md "Batch invariance (Metal)") runs every decode row through the
GEMV whatever the row count (several rows: the multi-token GEMV, up to 8 rows sharing each weight
window); by row count a step of 8 or more rows took the GEMM (weights requested once per 32 rows).
This shows what that costs per step, and what a mixed step (decode rows beside a prompt chunk)
dispatches:

    python bench/metal/batch_step_traffic.py                  # this build (PYTHONPATH=python for in place)
    python bench/metal/batch_step_traffic.py --rows 1 8 16    # decoding sequences per step

A synthetic 1-layer model of SmolLM2-135M's layer shapes (bench/synthetic_gguf.py) with a 2048-token
vocabulary, Q4_0.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

MATMUL_PREFIXES = ("mul_mv", "mul_mm")


def step_traffic(path: str, n_decode: int, chunk: int) -> collections.Counter:
    """One forward_batch of n_decode decode rows (each sequence 4 tokens in) and, with chunk > 0,
    a prompt chunk of `chunk` rows at positions 16.. (prefix rows): its dispatch and byte counts.
    (Short prefixes: the traffic build counts every access, minutes per step.)"""
    import forgert
    from forgert import _core
    _core.set_emulator_traffic(True)
    try:
        m = forgert.Model(path, backend="metal", n_ctx=128, parallel=n_decode + 1)
    finally:
        _core.set_emulator_traffic(False)
    eng = m._engine
    prompt = np.arange(100, 116, dtype=np.int32)
    for s in range(1, n_decode + 1):   # each decoding sequence's 4-token prefix
        eng.forward_batch([(s, prompt[:4], 0, None, True)])
    entries = [(s, np.asarray([7 + s], np.int32), 4) for s in range(1, n_decode + 1)]
    if chunk:
        eng.forward_batch([(0, prompt, 0, None, True)])
        entries.append((0, np.arange(200, 200 + chunk, dtype=np.int32), 16, None, True))
    _core.emulator_traffic()   # drop what came before
    eng.forward_batch(entries)
    c = collections.Counter()
    for d in _core.emulator_traffic():
        mm = d["kernel"].startswith(MATMUL_PREFIXES)
        c["dispatches"] += 1
        c["matmul dispatches"] += mm
        c["attention dispatches"] += d["kernel"].startswith("attention")
        for f in ("read_needed", "read_requested"):
            c[f] += d[f]
            if mm:
                c["matmul " + f] += d[f]
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--chunk", type=int, default=32, help="prefix rows of the mixed steps")
    args = ap.parse_args()
    import forgert
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import synthetic_gguf as sg
    sg.PRESETS["smollm2-layer"] = (1, 576, 1536, 9, 3, 2048, 8192)
    print(f"forgert from {os.path.dirname(forgert.__file__)}\n")
    print("| step | dispatches | matmul dispatches | attention dispatches | matmul needed MB | matmul requested MB "
          "| matmul req/need | step requested MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer.gguf")
        sg.write(Path(path), "smollm2-layer", "Q4_0")
        for chunk in (0, args.chunk):
            for n in args.rows if not chunk else args.rows[-1:]:
                c = step_traffic(path, n, chunk)
                what = f"{n} decode rows" + (f" + {chunk}-row prompt chunk" if chunk else "")
                need, req = c["matmul read_needed"], c["matmul read_requested"]
                print(f"| {what} | {c['dispatches']} | {c['matmul dispatches']} | {c['attention dispatches']} "
                      f"| {need / 1e6:.3f} | {req / 1e6:.3f} | {req / max(need, 1):.2f} | {c['read_requested'] / 1e6:.3f} |")


if __name__ == "__main__":
    main()
