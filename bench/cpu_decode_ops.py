"""Where a CPU decode token's time goes, per op kind, at several thread counts: one process
holds one model per thread count and the counts take turns, round after round (a shared
machine's minutes differ; alternating puts every count in each minute). Prints, per op, the
median and the minimum over the rounds of its milliseconds per token, the parallel regions
per token, and the load average before and after.

    python bench/cpu_decode_ops.py --model /tmp/mvm_bench/synthetic-smollm2-135m-Q8_0.gguf --threads 1,2
    python bench/cpu_decode_ops.py --model ... --threads 2 --spin-us 0,30,2600   # FORGERT_CPU_SPIN_US variants

Each round: a 16-token prompt, then --tokens greedy steps of one token (forward_argmax), timed
with the backend's per-op profile on (FORGERT_CPU_PROFILE's counters: an op's wall time,
regions and the threads' busyness inside them). Which forgert runs is whichever imports: the
installed package, or an in-place build with PYTHONPATH=python.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def one_round(engine, tokens: int) -> dict:
    """ms per token of the whole step and of each op kind, regions per token, busyness."""
    engine.forward_argmax(np.arange(1, 17, dtype=np.int32), 0)
    tok = 5
    engine.set_profiling(True)
    engine.cpu_profile(True)
    t0 = time.perf_counter()
    for i in range(tokens):
        tok = int(np.asarray(engine.forward_argmax(np.asarray([tok], np.int32), 16 + i)).reshape(-1)[-1]) % 1000
    dt = time.perf_counter() - t0
    p = engine.cpu_profile(True)
    engine.set_profiling(False)
    out = {"token": dt / tokens * 1e3, "regions": p["regions"] / tokens,
           "busy %": 100 * p["busy_s"] / max(p["capacity_s"], 1e-12)}
    for name, op in p["ops"].items():
        out[name] = op["seconds"] / tokens * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=48, help="decode steps per round (n_ctx is 16 + this)")
    ap.add_argument("--spin-us", default="", help="comma-separated FORGERT_CPU_SPIN_US values, each a variant "
                    "at every thread count above 1 (default: the environment's)")
    a = ap.parse_args()
    import forgert

    spins = [s for s in a.spin_us.split(",") if s] or [None]
    counts = []  # variant names: "2t" or "2t spin 30"
    models = {}
    for t in (int(t) for t in a.threads.split(",")):
        for spin in (spins if t > 1 else [None]):
            name = f"{t}t" + (f" spin {spin}" if spin is not None else "")
            saved = os.environ.get("FORGERT_CPU_SPIN_US")
            if spin is not None:
                os.environ["FORGERT_CPU_SPIN_US"] = spin  # read when the backend is made
            try:
                models[name] = forgert.Model(str(a.model), threads=t, n_ctx=16 + a.tokens)
            finally:
                if saved is None:
                    os.environ.pop("FORGERT_CPU_SPIN_US", None)
                else:
                    os.environ["FORGERT_CPU_SPIN_US"] = saved
            counts.append(name)
    before = load_average()
    rows: dict[tuple[int, str], list[float]] = defaultdict(list)
    for _ in range(a.rounds):
        for t in counts:
            for k, v in one_round(models[t]._engine, a.tokens).items():
                rows[(t, k)].append(v)
    after = load_average()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; {a.model.name}; forgert {forgert.__file__}")
    print(f"{a.rounds} rounds x {a.tokens} tokens; load average {before} before, {after} after")
    names = sorted({k for _, k in rows}, key=lambda k: (k not in ("token", "regions", "busy %"),
                                                       -float(np.median(rows[(counts[0], k)]))))
    print("columns: " + ", ".join(counts) + " (median, then minimum)")
    head = " ".join(f"{'med':>9s} {'min':>9s}" for _ in counts)
    print(f"| {'ms / token':14s} | " + head + " |")
    for k in names:
        cells = " ".join(f"{np.median(rows[(t, k)]):9.3f} {min(rows[(t, k)]):9.3f}" for t in counts)
        print(f"| {k:14s} | " + cells + " |")


if __name__ == "__main__":
    main()
