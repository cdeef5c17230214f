"""Time to the first token of n choices of one prompt: prefilled once and copied (Engine.kv_copy)
vs prefilled once per choice (the scheduler before the copy existed).

    python bench/n_choices_prefill.py --preset smollm2-135m --type Q8_0 --n 3 --prompt-tokens 256

Each configuration runs Model.generate([prompt] * n, max_tokens=1) (each choice its own seed):
the prefill, then one evaluated last-token row per choice. "per choice" is the same scheduler
with leaders turned off (BatchScheduler._leader_for returning None). The two alternate over
--repeats rounds; each figure is a median and the ratio is measured in this one run on this one
machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_name  # noqa: E402


def first_tokens_s(model, prompt, n, copy: bool) -> float:
    from forgert.batch import BatchScheduler
    from forgert.sampling import SamplingParams
    params = [SamplingParams(temperature=1.0, seed=j, max_tokens=1, ignore_eos=True) for j in range(n)]
    original = BatchScheduler._leader_for
    if not copy:
        BatchScheduler._leader_for = lambda self, seq: None
    try:
        t0 = time.perf_counter()
        model.generate([prompt] * n, params)
        return time.perf_counter() - t0
    finally:
        BatchScheduler._leader_for = original


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a GGUF (default: a synthetic one of --preset / --type)")
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--type", default="Q8_0")
    ap.add_argument("--n", type=int, default=3, help="choices of the prompt")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="cpu")
    a = ap.parse_args()

    import forgert

    with tempfile.TemporaryDirectory() as tmp:
        path = a.model
        if path is None:
            import synthetic_gguf
            path = Path(tmp) / f"{a.preset}-{a.type}.gguf"
            synthetic_gguf.write(path, a.preset, a.type)
        model = forgert.Model(path, backend=a.backend, threads=a.threads, n_ctx=a.prompt_tokens + 8, parallel=a.n)
        prompt = np.random.default_rng(0).integers(1, int(model._engine.vocab), a.prompt_tokens).tolist()
        times = {True: [], False: []}
        for _ in range(a.repeats):
            for copy in (False, True):
                times[copy].append(first_tokens_s(model, prompt, a.n, copy))

    print(f"machine: {cpu_name()}; backend {model.backend}, {model.threads} threads; model {Path(path).name}")
    print(f"{a.n} choices of a {a.prompt_tokens}-token prompt, time to every choice's first token, "
          f"median of {a.repeats}")
    per_choice, copied = statistics.median(times[False]), statistics.median(times[True])
    print("| prefill | seconds | vs per choice |")
    print("|---|---:|---:|")
    print(f"| once per choice | {per_choice:.3f} | 1.00x |")
    print(f"| once, K/V copied | {copied:.3f} | {per_choice / copied:.2f}x faster |")


if __name__ == "__main__":
    main()
