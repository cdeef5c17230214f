"""What a step mixing decode rows with a prompt's prefill chunk costs, against the decode-only step
and the chunk alone; and what a short prompt's prefix costs (a prefix chunk below 16 rows takes the
prefill GEMM since the row classes, the GEMV before).

    python bench/mixed_step.py --model SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \
        --peer-pythonpath python --rounds 5

Two builds in one run: the installed forgert ("installed") and the one found first on
--peer-pythonpath ("peer", e.g. an in-place build of this tree); each round runs both, in
alternating order, each in a fresh process, and each figure is the median over the rounds.
A step: --decode sequences' next tokens (slots 1..) plus, for the mixed step, one prefill chunk
of C tokens (slot 0, from --chunk-pos) in one forward_batch_argmax; times in milliseconds per step (median of
--reps steps within a process).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_name  # noqa: E402


def worker(args) -> dict:
    import numpy as np

    import forgert
    eng = forgert.Model(args.model, backend="cpu", threads=args.threads, n_ctx=1024,
                        parallel=args.decode + 1)._engine
    rng = np.random.default_rng(0)
    vocab = eng.vocab_size if hasattr(eng, "vocab_size") else 1000
    prompt_len = 64
    for s in range(1, args.decode + 1):     # the decoding sequences' prompts, not timed
        eng.forward_batch([(s, rng.integers(1, vocab, prompt_len).astype(np.int32), 0)])
    decode = [(s, np.array([int(rng.integers(1, vocab))], np.int32), prompt_len) for s in range(1, args.decode + 1)]
    try:    # the row-class build marks a prefix chunk; the older one knows only (slot, tokens, pos)
        eng.forward_batch_argmax([(0, np.arange(1, 3, dtype=np.int32), 0, None, True)])
        marked = True
    except ValueError:
        marked = False

    def chunk(n):   # mid-prompt (past position 15, where the row-class build takes the GEMM)
        toks = rng.integers(1, vocab, n).astype(np.int32)
        return (0, toks, args.chunk_pos, None, True) if marked else (0, toks, args.chunk_pos)

    def ms(entries_fn):
        times = []
        for _ in range(args.reps):
            entries = entries_fn()
            t0 = time.perf_counter()
            eng.forward_batch_argmax(entries)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    out = {"decode_only": ms(lambda: decode)}
    for c in args.chunks:
        out[f"chunk{c}"] = ms(lambda c=c: [chunk(c)])
        out[f"mixed{c}"] = ms(lambda c=c: decode + [chunk(c)])
    for n in args.short:    # a lone short prompt's prefix (Engine.prefill, slot 0)
        toks = rng.integers(1, vocab, n).astype(np.int32)
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            eng.prefill(toks, 0)
            times.append((time.perf_counter() - t0) * 1e3)
        out[f"prefix{n}"] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", type=int, default=7, help="decoding sequences per step")
    ap.add_argument("--chunks", default="8,64,256", help="prefill chunk sizes of the mixed step")
    ap.add_argument("--short", default="3,8,15", help="short prompt prefixes timed alone")
    ap.add_argument("--chunk-pos", type=int, default=100, help="position of the chunk's first token")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peer-pythonpath", default=None, help="PYTHONPATH of the peer build")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.chunks = [int(c) for c in args.chunks.split(",") if c]
    args.short = [int(c) for c in args.short.split(",") if c]
    if args.worker:
        print(json.dumps(worker(args)))
        return
    builds = {"installed": None, "peer": args.peer_pythonpath}
    results = {b: [] for b in builds}
    for r in range(args.rounds):
        order = list(builds) if r % 2 == 0 else list(builds)[::-1]
        for b in order:
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            if builds[b]:
                env["PYTHONPATH"] = str(Path(builds[b]).resolve())
            cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--threads", str(args.threads),
                   "--decode", str(args.decode), "--chunks", ",".join(map(str, args.chunks)),
                   "--short", ",".join(map(str, args.short)), "--reps", str(args.reps),
                   "--chunk-pos", str(args.chunk_pos)]
            line = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
            results[b].append(json.loads(line.splitlines()[-1]))
    keys = list(results["installed"][0])
    med = {b: {k: statistics.median(r[k] for r in results[b]) for k in keys} for b in builds}
    print(f"# {cpu_name()}, {args.threads} threads, {Path(args.model).name}, {args.decode} decoding sequences, "
          f"medians of {args.rounds} rounds x {args.reps} steps (ms per step)")
    print("| step | installed | peer | peer / installed |")
    print("|---|---|---|---|")
    for k in keys:
        print(f"| {k} | {med['installed'][k]:.2f} | {med['peer'][k]:.2f} | {med['peer'][k] / med['installed'][k]:.2f} |")
    for b in builds:
        for c in args.chunks:
            extra = med[b][f"mixed{c}"] - med[b][f"chunk{c}"]
            print(f"{b}: mixed step with a {c}-token chunk costs the chunk alone + {extra:.2f} ms "
                  f"(the decode-only step: {med[b]['decode_only']:.2f} ms)")


if __name__ == "__main__":
    main()
