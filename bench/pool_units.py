"""Decode steps under different units per thread of the CPU pool's dynamic split (FORGERT_CPU_UNITS).

    python bench/pool_units.py --model m.gguf --threads 16 --units default,4 --rounds 2
    python bench/pool_units.py --preset llama32-1b --type Q4_0 --threads 16 --seqs 1,8

Each (round, units) runs in a process of its own (the pool reads FORGERT_CPU_UNITS when a Model is
made; several 16-thread models in one process disturbed each other on the lent host), the
configurations alternating within each round: batch_decode.py's measurement, a --prompt-tokens
prefill per sequence (not timed), then --steps greedy steps of all N sequences together
(forward_batch_argmax, the server's batch step), after one untimed step. Figures: tokens/s, the median over rounds, and each over the first configuration's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_name, forgert_env

BENCH = Path(__file__).resolve().parent

# One configuration's process: batch_decode.decode_rate (prompts, then timed batch steps) for each
# sequence count, after one untimed step of the same shape.
STEPS = """
import json, sys
import forgert
bench, path, threads, seqs, steps, prompt = sys.argv[1:7]
sys.path.insert(0, bench)
from batch_decode import decode_rate
counts, steps, prompt = [int(c) for c in seqs.split(",")], int(steps), int(prompt)
e = forgert.Model(path, backend="cpu", threads=int(threads), n_ctx=prompt + steps + 8, parallel=max(counts))._engine
rates = {}
for n in counts:
    decode_rate(e, n, prompt, 1, int(e.vocab))  # warm-up
    rates[n] = decode_rate(e, n, prompt, steps, int(e.vocab))[0]
print(json.dumps(rates))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a GGUF (default: a synthetic one of --preset / --type)")
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--type", default="Q4_0")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--units", default="default,4", help="FORGERT_CPU_UNITS values; 'default': unset")
    ap.add_argument("--seqs", default="1,8")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--installed", action="store_true", help="import the installed forgert, not this checkout's")
    a = ap.parse_args()
    units = a.units.split(",")
    counts = [int(c) for c in a.seqs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = a.model
        if path is None:
            import synthetic_gguf
            path = Path(tmp) / f"{a.preset}-{a.type}.gguf"
            synthetic_gguf.write(path, a.preset, a.type)
        rates = {(u, n): [] for u in units for n in counts}
        for _ in range(a.rounds):
            for u in units:
                env = forgert_env(a.installed, FORGERT_CPU_UNITS="" if u == "default" else u)
                out = subprocess.run([sys.executable, "-c", STEPS, str(BENCH), str(path), str(a.threads), a.seqs,
                                      str(a.steps), str(a.prompt_tokens)], env=env, capture_output=True, text=True,
                                     check=True)
                for n, r in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    rates[u, int(n)].append(r)
    print(f"machine: {cpu_name()}; {a.threads} threads; model {Path(path).name}; {a.steps} greedy steps after "
          f"{a.prompt_tokens}-token prompts; median of {a.rounds} rounds, one process per round and configuration")
    print()
    print("| units per thread | " + " | ".join(f"{n} seq tok/s | vs {units[0]}" for n in counts) + " | rounds |")
    print("|---|" + "---:|---:|" * len(counts) + "---|")
    for u in units:
        cells = []
        for n in counts:
            med = statistics.median(rates[u, n])
            cells += [f"{med:.1f}", f"{med / statistics.median(rates[units[0], n]):.2f}x"]
        rounds = "; ".join(" ".join(f"{r:.0f}" for r in rates[u, n]) for n in counts)
        print(f"| {u} | " + " | ".join(cells) + f" | {rounds} |")


if __name__ == "__main__":
    sys.exit(main())
