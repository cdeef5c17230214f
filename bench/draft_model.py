"""Speculative decoding with a draft model against plain greedy decoding: decode tokens/s, the draft
tokens kept, a check that both give the same tokens, and llama.cpp's plain decode of the same
target file beside them (llama-bench tg: the peer has no draft-model benchmark).

    python bench/draft_model.py --target T.gguf --draft D.gguf [--threads N] [--draft-tokens 4,8]
                                [--rounds 3] [--peer ../shared/peers/llama-bench.sh] [--out FILE]

prompt_lookup.py's three chat tasks on the target's template (greedy, from an empty cache, prefill
excluded: decode tokens/s from Completion.timings); each round runs plain, then each draft length,
alternating; medians over the rounds. Names the CPU.

    python bench/draft_model.py --costs --target T.gguf --draft D.gguf [--threads N]

A pair that agrees on every token at the costs of two sizes, from random weights: the target's
layers past N add nothing, the draft is its first N layers (bench/synthetic_gguf.py):

    python bench/synthetic_gguf.py T.gguf --preset llama3-8b --type Q4_K_M --zero-from 4
    python bench/synthetic_gguf.py D.gguf --preset llama3-8b --type Q4_K_M --layers 4

--costs needs no agreement between the two (random-weight files of real shapes serve,
bench/synthetic_gguf.py): it times the target's verification pass of 1..16 rows
(Engine.forward_rows_argmax) and the draft's one-token step, and gives the speed-up they predict
for a draft of k tokens each kept with probability a: (1 - a^(k+1)) / (1 - a) tokens a round, in
k draft steps and one pass of k + 1 rows.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import forgert

from machine import cpu_name  # bench/machine.py (the script's directory is on sys.path)
from prompt_lookup import TASKS
from report import publish


def peer_tg(peer: str, path: str, threads: int, tokens: int) -> float | None:
    """llama-bench's decode tokens/s of `tokens` tokens on path (None where it did not run)."""
    try:
        out = subprocess.run([peer, "-m", path, "-t", str(threads), "-p", "0", "-n", str(tokens), "-r", "3",
                              "-o", "csv"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"llama-bench did not run: {e}", file=sys.stderr)
        return None
    head, *rows = [line for line in out.splitlines() if line.startswith('"') or line.startswith("build")]
    cols = [c.strip('"') for c in head.split(",")]
    for row in rows:
        vals = [v.strip('"') for v in row.split(",")]
        rec = dict(zip(cols, vals))
        if rec.get("n_gen") == str(tokens):
            return float(rec["avg_ts"])
    return None


def decode_runs(a):
    plain = forgert.Model(a.target, backend="cpu", threads=a.threads, n_ctx=2048)
    drafted = forgert.Model(a.target, backend="cpu", threads=a.threads, n_ctx=2048,
                            draft_model=forgert.Model(a.draft, backend="cpu", threads=a.threads, n_ctx=2048))
    ks = [int(k) for k in a.draft_tokens.split(",")]
    rows = []
    for name, prompt in TASKS.items():
        # the chat template where the model has one (a random-weight file has none: the text as is)
        ids = plain.prompt_tokens([{"role": "user", "content": prompt}] if plain.chat_template else prompt)
        speeds = {k: [] for k in [0] + ks}
        kept = {}
        for _ in range(a.rounds):
            for k in speeds:
                m = plain if k == 0 else drafted
                m.reset()   # the draft model's cache too
                if k:
                    m.draft_tokens = k
                c = m.generate(ids, max_tokens=a.tokens, temperature=0)
                speeds[k].append(c.timings.decode_tokens_per_s)
                if k == 0:
                    want = c.tokens
                elif c.tokens != want:
                    sys.exit(f"{name}: the draft model's tokens differ from greedy's")
                else:
                    kept[k] = (c.timings.accepted_draft_tokens, c.timings.draft_tokens)
        p = statistics.median(speeds[0])
        for k in ks:
            q = statistics.median(speeds[k])
            rows.append(f"| {name} | {len(want)} | {k} | {kept[k][0]} / {kept[k][1]} | {p:.1f} | {q:.1f} | "
                        f"{q / p:.2f}x |")
    tg = peer_tg(a.peer, a.target, plain.threads, a.tokens) if a.peer else None
    peer_line = (f"llama-bench tg{a.tokens} of the target (plain decode, same threads): {tg:.1f} tok/s."
                 if tg else "llama-bench: not run.")
    text = "\n".join([
        f"# Draft-model speculative decoding, {Path(a.target).name} drafted by {Path(a.draft).name} on "
        f"{cpu_name()}, {plain.threads} threads",
        "",
        f"`bench/draft_model.py --draft-tokens {a.draft_tokens} --tokens {a.tokens} --rounds {a.rounds}`: greedy "
        f"decode tokens/s, medians of {a.rounds} alternating rounds; every drafted run gave greedy's tokens. "
        + peer_line,
        "",
        "| task | tokens | draft tokens | kept / proposed | greedy tok/s | with draft tok/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows, ""])
    publish(text, a.out)


def _seconds(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def costs(a):
    target = forgert.Model(a.target, backend="cpu", threads=a.threads, n_ctx=1024)
    draft = forgert.Model(a.draft, backend="cpu", threads=a.threads, n_ctx=1024)
    rng = np.random.default_rng(0)
    for m in (target, draft):   # a context of 256 tokens, as a conversation's decode sees
        m._engine.prefill(rng.integers(0, m.vocab_size, 256).astype(np.int32), 0)
    rows_t = {}
    for n in range(1, 17):
        toks = rng.integers(0, target.vocab_size, n).astype(np.int32)
        rows_t[n] = _seconds(lambda: target._engine.forward_rows_argmax(toks, 256), a.repeats)
    one = rng.integers(0, draft.vocab_size, 1).astype(np.int32)
    t_d = _seconds(lambda: draft._engine.forward_argmax(one, 256), a.repeats)
    lines = [f"# Draft-model costs, {Path(a.target).name} drafted by {Path(a.draft).name} on {cpu_name()}, "
             f"{target.threads} threads",
             "",
             f"`bench/draft_model.py --costs`: best of {a.repeats} of each engine call after a 256-token "
             f"context. Target pass of n rows (`forward_rows_argmax`), ms: "
             + ", ".join(f"{n}: {rows_t[n] * 1e3:.2f}" for n in rows_t)
             + f". Draft step: {t_d * 1e3:.2f} ms ({rows_t[1] / t_d:.1f}x cheaper than the target's).",
             "",
             "Predicted speed-up over plain decoding, a draft of k tokens each kept with probability a, "
             "(1 - a^(k+1)) / (1 - a) tokens a round in k draft steps and one pass of k + 1 rows:",
             "",
             "| a | " + " | ".join(f"k = {k}" for k in (1, 2, 3, 4, 6, 8, 12)) + " | best k |",
             "|---:|" + "---:|" * 8]
    for acc in (0.5, 0.6, 0.7, 0.8, 0.9):
        cells = {}
        for k in range(1, 16):
            tokens = (1 - acc ** (k + 1)) / (1 - acc)
            cells[k] = tokens * rows_t[1] / (k * t_d + rows_t[k + 1])
        best = max(cells, key=cells.get)
        lines.append(f"| {acc:.1f} | " + " | ".join(f"{cells[k]:.2f}x" for k in (1, 2, 3, 4, 6, 8, 12))
                     + f" | {best} ({cells[best]:.2f}x) |")
    publish("\n".join(lines + [""]), a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True, help="the model served (GGUF or HF directory)")
    ap.add_argument("--draft", required=True, help="the draft model (the same tokenizer)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--draft-tokens", default="4,8", help="comma-separated draft lengths (1-15)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="--costs: timings per call (the best is kept)")
    ap.add_argument("--peer", default=None, help="llama-bench.sh to run on the target (plain decode)")
    ap.add_argument("--costs", action="store_true", help="time the passes and predict the speed-ups")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    costs(a) if a.costs else decode_runs(a)


if __name__ == "__main__":
    main()
