"""What each decode GEMV moves, per weight type, counted by the MSL emulator's traffic build
(src/emulator/README.md, Traffic counting): one token through mul_mv_<type>, mul_mv_swiglu_<type>
and mul_mv_id_<type> at one shape, with

- line efficiency of the loads: the fewest 64-byte (128-byte) lines each simdgroup load's bytes
  fit in, over the lines it touches, summed over loads;
- weights requested / needed: the bytes the simdgroup loads of the weight slot(s) request (each
  load's distinct bytes) over the distinct weight bytes (re-reads a cache has to absorb);
- x requested / needed: the same for the activation row (read once per threadgroup at best);
- all requested / needed: every device read and write of the dispatch.

    python bench/metal/gemv_traffic.py                    # 512 x 2048, every type
    python bench/metal/gemv_traffic.py --rows 576 --cols 1536 --types q4_0 q8_0
    python bench/metal/gemv_traffic.py --rows 20480 --cols 512   # 256-row threadgroups (the host's rule)
    FORGERT_METAL_GEMV=direct python bench/metal/gemv_traffic.py    # mul_mv.metal's direct loads
    FORGERT_METAL_GEMV_TG_ROWS=256 python bench/metal/gemv_traffic.py  # force the staged threadgroup rows

The staged kernels' rows per threadgroup follow the host's rule (metal_ops.cpp, gemv_tg_rows: 32
until the matrix makes 80 threadgroups of more); the "tg rows" column is what the dispatch took.

Goal (issue 14): >= 95% line efficiency, requested <= 1.05x needed. The counts are of the CPU
build of each kernel (per instruction as clang emits it), not of Apple's compiler and caches.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import test_metal_ops as ops  # noqa: E402  weight_bytes: plausible random blocks of every type

MXFP4 = 39
TYPES = dict(ops.WEIGHT_TYPES, mxfp4=MXFP4)
# [[buffer(n)]] slots (kernel_args.h): 1 w, 2 x, 3 out, 4 w_up (swiglu) / ids (mul_mv_id)
W, X = 1, 2


def weights(r, dtype, rows, cols):
    if dtype == MXFP4:  # 17-byte blocks; the traffic does not depend on the values
        return r.integers(0, 120, rows * cols // 32 * 17).astype(np.uint8)
    return ops.weight_bytes(r, dtype, rows, cols)


def measure(core, m, kernel, dtype, rows, cols, n_expert=4):
    r = np.random.default_rng(0)
    x = r.standard_normal((1, cols), dtype=np.float32)
    core.emulator_traffic()
    if kernel == "mul_mv":
        w_slots = [(W, weights(r, dtype, rows, cols).nbytes)]
        m.matmul(weights(r, dtype, rows, cols), dtype, rows, cols, x)
    elif kernel == "mul_mv_swiglu":
        w = weights(r, dtype, rows, cols)
        w_slots = [(W, w.nbytes), (4, w.nbytes)]
        m.matmul_swiglu(w, weights(r, dtype, rows, cols), dtype, rows, cols, x)
    else:  # mul_mv_id: one token, two of n_expert experts (each read whole)
        w = np.concatenate([weights(r, dtype, rows, cols) for _ in range(n_expert)])
        w_slots = [(W, 2 * w.nbytes // n_expert)]
        m.matmul_id(w, dtype, n_expert, rows, cols, x, np.array([[2, 0]], np.int32))
    log = [d for d in core.emulator_traffic() if d["kernel"].startswith(kernel + "_")]
    assert len(log) == 1, [d["kernel"] for d in log]
    d = log[0]
    w_need = sum(d["slot_read_needed"][s] for s, _ in w_slots)
    assert w_need == sum(n for _, n in w_slots), (w_need, w_slots)
    return {
        "kernel": d["kernel"],
        "lines64": d["load_lines64_min"] / d["load_lines64"],
        "lines128": d["load_lines128_min"] / d["load_lines128"],
        "w_reread": sum(d["slot_read_requested"][s] for s, _ in w_slots) / w_need,
        "x_reread": d["slot_read_requested"][X] / d["slot_read_needed"][X],
        "all_reread": (d["read_requested"] + d["write_requested"]) / (d["read_needed"] + d["write_needed"]),
        "tg_conflicts": d["tg_wavefronts"] / d["tg_wavefronts_min"] if d["tg_wavefronts_min"] else None,
        "tg_memory": d["threadgroup_memory"],
        "threads": d["threads_per_threadgroup"],
        "tg_rows": -(-rows // (d["threadgroups"] // (2 if kernel == "mul_mv_id" else 1))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--types", nargs="*", default=list(TYPES))
    ap.add_argument("--kernels", nargs="*", default=["mul_mv", "mul_mv_swiglu", "mul_mv_id"])
    a = ap.parse_args()

    from forgert import _core
    _core.set_emulator_traffic(True)
    try:
        m = _core.Ops("metal")
    finally:
        _core.set_emulator_traffic(False)
    print(f"### Decode GEMV traffic, one token, {a.rows} rows x {a.cols} columns (MSL emulator)\n")
    print("| kernel | load lines 64 B | 128 B | weights req/need | x req/need | all req/need "
          "| tg conflicts | tg mem B | threads | tg rows |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kernel in a.kernels:
        for t in a.types:
            if kernel == "mul_mv_swiglu" and t == "mxfp4":
                continue  # no swiglu kernel is dispatched for MXFP4 (gpt-oss's experts only)
            try:
                s = measure(_core, m, kernel, TYPES[t], a.rows, a.cols)
            except Exception as e:  # noqa: BLE001  a type an op does not take: say so, go on
                print(f"| {kernel}_{t} | {type(e).__name__}: {str(e)[:60]} | | | | | | | | |")
                continue
            conf = "-" if s["tg_conflicts"] is None else f"{s['tg_conflicts']:.2f}x"
            print(f"| {s['kernel']} | {100 * s['lines64']:.1f}% | {100 * s['lines128']:.1f}% "
                  f"| {s['w_reread']:.3f} | {s['x_reread']:.2f} | {s['all_reread']:.3f} | {conf} "
                  f"| {s['tg_memory']} | {s['threads']} | {s['tg_rows']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
