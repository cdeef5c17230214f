"""Prompt lookup decoding against plain greedy decoding on a real model: decode tokens/s, the
draft tokens kept, and a check that both give the same tokens.

    python bench/prompt_lookup.py [--model PATH] [--threads N] [--draft 8] [--rounds 5] [--out FILE]

Three chat tasks on the model's template: one whose answer repeats its input (code rewritten
with type hints), one that repeats it in part (a function renamed in prose), one that does not
(a story). Each round runs plain greedy then prompt lookup on every task, alternating, from an
empty cache (prefill excluded: decode tokens/s from Completion.timings); medians over the rounds.
Names the CPU. A markdown table on stdout (or --out).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import forgert

from machine import cpu_name  # bench/machine.py (the script's directory is on sys.path)
from report import publish

CODE = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b


def factorial(n):
    """Return n factorial."""
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result
'''
TASKS = {
    "code edit": "Add type hints to both functions. Output only the complete code.\n\n" + CODE,
    "explain code": "Explain what each function does, quoting its lines.\n\n" + CODE,
    "story": "Write a short story about a lighthouse keeper.",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF or HF directory (default: forgert's default model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--draft", type=int, default=8, help="prompt_lookup: most draft tokens a pass")
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    m = forgert.Model(a.model, backend="cpu", threads=a.threads, n_ctx=2048)
    rows = []
    for name, prompt in TASKS.items():
        ids = m.prompt_tokens([{"role": "user", "content": prompt}])
        plain, lookup, kept = [], [], None
        for _ in range(a.rounds):
            for k, out in ((0, plain), (a.draft, lookup)):
                m.reset()
                c = m.generate(ids, max_tokens=a.tokens, temperature=0, prompt_lookup=k)
                out.append(c.timings.decode_tokens_per_s)
                if k == 0:
                    want = c.tokens
                else:
                    if c.tokens != want:
                        sys.exit(f"{name}: prompt lookup's tokens differ from greedy's")
                    kept = (c.timings.accepted_draft_tokens, c.timings.draft_tokens, len(c.tokens))
        p, q = statistics.median(plain), statistics.median(lookup)
        rows.append(f"| {name} | {kept[2]} | {kept[0]} / {kept[1]} | {p:.1f} | {q:.1f} | {q / p:.2f}x |")
    text = "\n".join([
        f"# Prompt lookup decoding, {Path(m.path).name} on {cpu_name()}, {m.threads} threads",
        "",
        f"`bench/prompt_lookup.py --draft {a.draft} --tokens {a.tokens} --rounds {a.rounds}`: greedy decode "
        f"tokens/s, medians of {a.rounds} alternating rounds; both runs of every round gave the same tokens.",
        "",
        "| task | tokens | draft tokens kept / proposed | greedy tok/s | prompt lookup tok/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        *rows, ""])
    publish(text, a.out)


if __name__ == "__main__":
    main()
