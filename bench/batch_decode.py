"""Engine decode throughput for 1 sequence vs N sequences in one batch step (continuous batching).

    python bench/batch_decode.py --model smollm2.gguf --seqs 1,4,8 --steps 32 --threads 2
    python bench/batch_decode.py --preset smollm2-135m --type Q8_0 --seqs 1,8   # a synthetic GGUF
    python bench/batch_decode.py --model m.gguf --seqs 1,8 --activations int16,int8  # both CPU formats

Each sequence gets a --prompt-tokens prompt in its own KV slot (prefilled first, not timed);
then --steps greedy batch steps run, each one forward_batch_argmax over all N sequences' next
tokens (the step the server's BatchScheduler runs). Tokens/s = N * steps / wall time. The
configurations alternate over --repeats rounds and each figure is its median; the ratio columns
are N sequences' figure over 1 sequence's, measured in this one run on this one machine. Tokens
per CPU second (this process's CPU time) go beside the wall-clock figure: on a shared machine
they move less with the other processes' load. With several --activations (the CPU's activation
format, forgert.Model's `activations`) one Model per format is loaded and the formats alternate
too; the last columns are each figure over the first format's at the same sequence count.
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


def decode_rate(engine, n_seqs: int, prompt_tokens: int, steps: int, vocab: int) -> tuple[float, float]:
    """Tokens per wall second and per CPU second (this process's threads) of `steps` batch steps
    over n_seqs sequences (slots 0..n_seqs-1) after their prompts."""
    rng = np.random.default_rng(n_seqs)
    nxt = []
    for s in range(n_seqs):
        prompt = rng.integers(1, vocab, prompt_tokens).astype(np.int32)
        nxt.append(int(engine.forward_batch_argmax([(s, prompt, 0)])[0]))
    pos = prompt_tokens
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        entries = [(s, np.array([nxt[s]], np.int32), pos) for s in range(n_seqs)]
        nxt = [int(t) for t in engine.forward_batch_argmax(entries)]
        pos += 1
    return n_seqs * steps / (time.perf_counter() - t0), n_seqs * steps / (time.process_time() - c0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a GGUF (default: a synthetic one of --preset / --type)")
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--type", default="Q8_0")
    ap.add_argument("--seqs", default="1,8", help="sequence counts, comma-separated (1 is always run)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--activations", default="int16", help="CPU activation formats, comma-separated (int16, int8)")
    a = ap.parse_args()
    counts = sorted({1, *(int(c) for c in a.seqs.split(","))})
    formats = list(dict.fromkeys(a.activations.split(",")))

    import forgert

    with tempfile.TemporaryDirectory() as tmp:
        path = a.model
        if path is None:
            import synthetic_gguf
            path = Path(tmp) / f"{a.preset}-{a.type}.gguf"
            synthetic_gguf.write(path, a.preset, a.type)
        n_ctx = a.prompt_tokens + a.repeats * (a.steps + 1) + 8
        models = {f: forgert.Model(path, backend=a.backend, threads=a.threads, n_ctx=n_ctx, parallel=max(counts),
                                   activations=f) for f in formats}
        model = models[formats[0]]
        vocab = int(model._engine.vocab)
        rates = {(f, n): [] for f in formats for n in counts}
        for _ in range(a.repeats):
            for n in counts:
                for f in formats:
                    rates[f, n].append(decode_rate(models[f]._engine, n, a.prompt_tokens, a.steps, vocab))

    print(f"machine: {cpu_name()}; backend {model.backend}, {model.threads} threads; model {Path(path).name}; "
          f"forgert from {Path(forgert.__file__).parent}")
    print(f"{a.steps} greedy batch steps after {a.prompt_tokens}-token prompts, median of {a.repeats}")
    # Tokens per CPU second: on a shared machine, less disturbed by other processes than wall time
    # (though a pool thread's brief spin before it sleeps counts as CPU time).
    vs = f" | tokens/s vs {formats[0]} | tokens/CPU-s vs {formats[0]}" if len(formats) > 1 else ""
    print(f"| activations | sequences | tokens/s | vs 1 sequence | tokens/CPU-s | vs 1 sequence{vs} |")
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if vs else ""))
    wall = {k: statistics.median(r[0] for r in v) for k, v in rates.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in rates.items()}
    for f in formats:
        for n in counts:
            row = (f"| {f} | {n} | {wall[f, n]:.1f} | {wall[f, n] / wall[f, 1]:.2f}x | {cpu[f, n]:.1f} | "
                   f"{cpu[f, n] / cpu[f, 1]:.2f}x |")
            if vs:
                row += f" {wall[f, n] / wall[formats[0], n]:.2f}x | {cpu[f, n] / cpu[formats[0], n]:.2f}x |"
            print(row)


if __name__ == "__main__":
    main()
