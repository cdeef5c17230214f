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

With --peer (../shared/peers/llama-bench.sh) llama.cpp runs the same work on the same file and
threads, between forgert's rounds: 1 sequence as its "tg" (--steps generated tokens), N > 1 as a
prompt of N x --steps tokens in micro-batches of N (-b N -ub N). Each micro-batch's weight GEMMs are
an N-sequence step's (N activation columns); its attention covers up to N x --steps positions of one
sequence where forgert's covers --prompt-tokens + --steps per sequence (attention is ~2% of the 1B
step at these depths: a proxy for llama-server's --parallel N step, which is not built here).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_name  # noqa: E402


def fill_prompts(engine, n_seqs: int, prompt_tokens: int, vocab: int) -> list:
    """Evaluates a random prompt of prompt_tokens in each of slots 0..n_seqs-1 (seeded by n_seqs);
    the greedy next token of each."""
    rng = np.random.default_rng(n_seqs)
    nxt = []
    for s in range(n_seqs):
        prompt = rng.integers(1, vocab, prompt_tokens).astype(np.int32)
        for p0 in range(0, prompt_tokens, 512):  # a pass holds at most the engine's max_batch (512) tokens
            last = engine.forward_batch_argmax([(s, prompt[p0:p0 + 512], p0)])
        nxt.append(int(last[0]))
    return nxt


def decode_rate(engine, n_seqs: int, prompt_tokens: int, steps: int, vocab: int) -> tuple[float, float]:
    """Tokens per wall second and per CPU second (this process's threads) of `steps` batch steps
    over n_seqs sequences (slots 0..n_seqs-1) after their prompts."""
    nxt = fill_prompts(engine, n_seqs, prompt_tokens, vocab)
    pos = prompt_tokens
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        entries = [(s, np.array([nxt[s]], np.int32), pos) for s in range(n_seqs)]
        nxt = [int(t) for t in engine.forward_batch_argmax(entries)]
        pos += 1
    return n_seqs * steps / (time.perf_counter() - t0), n_seqs * steps / (time.process_time() - c0)


def peer_rate(peer: Path, model: Path, threads: int, n_seqs: int, steps: int) -> float:
    """llama-bench's tokens/s for the weight work of `steps` n_seqs-sequence decode steps (module doc)."""
    work = (["-p", "0", "-n", str(steps)] if n_seqs == 1 else
            ["-p", str(n_seqs * steps), "-n", "0", "-b", str(n_seqs), "-ub", str(n_seqs)])
    out = subprocess.run(["bash", str(peer), "-m", str(model), "-t", str(threads), "-r", "1", "-o", "json", *work],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


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
    ap.add_argument("--peer", type=Path, default=None, help="llama-bench.sh: llama.cpp's figures beside forgert's")
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
        peer = {n: [] for n in counts}
        for _ in range(a.repeats):
            for n in counts:
                for f in formats:
                    rates[f, n].append(decode_rate(models[f]._engine, n, a.prompt_tokens, a.steps, vocab))
                if a.peer:
                    peer[n].append(peer_rate(a.peer, path, model.threads, n, a.steps))

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
    if a.peer:
        lp = {n: statistics.median(v) for n, v in peer.items()}
        print(f"\nllama.cpp (llama-bench, module doc), median of {a.repeats}; forgert's {formats[0]} beside it")
        print("| sequences | llama.cpp tokens/s | vs 1 sequence | forgert tokens/s | forgert / llama.cpp |")
        print("|---:|---:|---:|---:|---:|")
        for n in counts:
            print(f"| {n} | {lp[n]:.1f} | {lp[n] / lp[1]:.2f}x | {wall[formats[0], n]:.1f} | "
                  f"{wall[formats[0], n] / lp[n]:.2f}x |")


if __name__ == "__main__":
    main()
