"""Where a batched decode step's time goes, per op kind, 1 sequence against N in one step.

    python bench/batch_step_ops.py --model m.gguf --seqs 1,8 --steps 16 --rounds 5 --threads 16

One process, one model; each round runs --steps greedy forward_batch_argmax steps over 1, then
N sequences (each after a --prompt-tokens prompt in its own slot, not timed) with the CPU
backend's per-op profile on (Engine.cpu_profile: an op's wall time, its pool regions and the
threads' busyness inside them). Prints per op the median over the rounds of ms per step for each
sequence count, the ratio N / 1, and the threads' busy share inside the op's regions. The
kernel-level knobs (FORGERT_AMX_DECODE_MIN_TOKENS, FORGERT_CPU_UNITS, ...) are read once per
process: compare them by running this script once per setting, alternating.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_decode import fill_prompts  # noqa: E402
from machine import cpu_name  # noqa: E402


def one_round(engine, n_seqs: int, prompt_tokens: int, steps: int, vocab: int, base: int) -> dict:
    nxt = fill_prompts(engine, n_seqs, prompt_tokens, vocab)
    pos = prompt_tokens
    engine.set_profiling(True)
    engine.cpu_profile(True)
    import time
    t0 = time.perf_counter()
    for _ in range(steps):
        entries = [(s, np.array([nxt[s]], np.int32), pos) for s in range(n_seqs)]
        nxt = [int(t) for t in engine.forward_batch_argmax(entries)]
        pos += 1
    dt = time.perf_counter() - t0
    p = engine.cpu_profile(True)
    engine.set_profiling(False)
    out = {"step": dt / steps * 1e3, "busy %": 100 * p["busy_s"] / max(p["capacity_s"], 1e-12)}
    for name, op in p["ops"].items():
        out[name] = op["seconds"] / steps * 1e3
        out[name + " busy %"] = 100 * op["busy_s"] / max(op["capacity_s"], 1e-12)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--seqs", default="1,8")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--activations", default="int16")
    ap.add_argument("--label", default="", help="a name for this run's settings, printed with the table")
    a = ap.parse_args()
    import forgert

    counts = sorted({1, *(int(c) for c in a.seqs.split(","))})
    n_ctx = a.prompt_tokens + a.steps + 8
    model = forgert.Model(str(a.model), threads=a.threads, n_ctx=n_ctx, parallel=max(counts),
                          activations=a.activations)
    eng = model._engine
    vocab = int(eng.vocab)
    rows: dict[tuple[int, str], list[float]] = defaultdict(list)
    for _ in range(a.rounds):
        for n in counts:
            for k, v in one_round(eng, n, a.prompt_tokens, a.steps, vocab, 0).items():
                rows[(n, k)].append(v)
    print(f"{cpu_name()}; {a.model.name}; {model.threads} threads; activations {a.activations}; {a.label}")
    print(f"{a.rounds} rounds x {a.steps} steps, median ms per step (busy %: the threads' share inside the op's regions)")
    keys = sorted({k for _, k in rows if not k.endswith("busy %")},
                  key=lambda k: (k != "step", -statistics.median(rows[(counts[-1], k)] or [0])))
    head = " | ".join(f"{n} seq ms | busy %" for n in counts)
    print(f"| op | {head} | {counts[-1]} / 1 |")
    print("|---|" + "---:|---:|" * len(counts) + "---:|")
    for k in keys:
        bk = "busy %" if k == "step" else k + " busy %"
        cells = " | ".join(f"{statistics.median(rows[(n, k)]) if rows[(n, k)] else 0:.3f} | "
                           f"{statistics.median(rows[(n, bk)]) if rows[(n, bk)] else 0:.0f}" for n in counts)
        r1 = statistics.median(rows[(1, k)]) if rows[(1, k)] else 0
        rn = statistics.median(rows[(counts[-1], k)]) if rows[(counts[-1], k)] else 0
        print(f"| {k} | {cells} | {rn / r1 if r1 else float('nan'):.2f}x |")


if __name__ == "__main__":
    main()
