"""Prompt lookup decoding against plain greedy decoding on a real model: decode tokens/s, the
draft tokens kept, and a check that both give the same tokens.

    python bench/prompt_lookup.py [--model PATH] [--threads N] [--draft 8] [--rounds 5] [--out FILE]

Three chat tasks on the model's template: one whose answer repeats its input (code rewritten
with type hints), one that repeats it in part (a function renamed in prose), one that does not
(a story). Each round runs plain greedy then prompt lookup on every task, alternating, from an
empty cache (prefill excluded: decode tokens/s from Completion.timings); medians over the rounds.
Names the CPU. A markdown table on stdout (or --out).

    python bench/prompt_lookup.py --record passes.json            # also writes each run's engine calls
    python bench/prompt_lookup.py --replay passes.json --model synthetic-llama32-1b-Q4_K_M.gguf

--replay times the recorded engine calls of both modes (their rows and positions; the tokens are
arbitrary) on another model of any shape: the pass pattern a real model's text gave, costed on a
random-weight file of the shapes one wants (bench/synthetic_gguf.py), on a machine where the real
model cannot go. Each mode's calls alternate with the other's over --rounds; the median seconds.
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


class _Recorder:
    """Model._engine's stand-in that notes each decode call: (rows, position)."""

    def __init__(self, engine):
        self._engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def forward_argmax(self, tokens, pos):
        self.calls.append((len(tokens), pos))
        return self._engine.forward_argmax(tokens, pos)

    def forward_rows_argmax(self, tokens, pos):
        self.calls.append((-len(tokens), pos))     # negative: a verification pass
        return self._engine.forward_rows_argmax(tokens, pos)


def replay(a):
    import json
    import time

    import numpy as np
    recorded = json.loads(a.replay.read_text())
    m = forgert.Model(a.model, backend="cpu", threads=a.threads, n_ctx=2048)
    eng = m._engine
    rng = np.random.default_rng(0)
    rows = []
    for name, rec in recorded["tasks"].items():
        times = {"plain": [], "lookup": []}
        for _ in range(a.rounds):
            for mode in ("plain", "lookup"):
                m.reset()
                eng.prefill(rng.integers(0, m.vocab_size, rec["prompt"] - 1).astype(np.int32), 0)
                t0 = time.perf_counter()
                for n, pos in rec[mode]:
                    toks = rng.integers(0, m.vocab_size, abs(n)).astype(np.int32)
                    (eng.forward_rows_argmax if n < 0 else eng.forward_argmax)(toks, pos)
                times[mode].append(time.perf_counter() - t0)
        p, q = statistics.median(times["plain"]), statistics.median(times["lookup"])
        passes = len(rec["lookup"])
        rows.append(f"| {name} | {rec['tokens']} | {len(rec['plain'])} / {passes} | {rec['tokens'] / p:.1f} | "
                    f"{rec['tokens'] / q:.1f} | {p / q:.2f}x |")
    text = "\n".join([
        f"# Prompt lookup decoding replayed: {Path(m.path).name} on {cpu_name()}, {m.threads} threads",
        "",
        f"`bench/prompt_lookup.py --replay` of {recorded['model']}'s engine calls (draft {recorded['draft']}): "
        f"tokens/s over the decode calls, medians of {a.rounds} alternating rounds.",
        "",
        "| task | tokens | passes greedy / lookup | greedy tok/s | prompt lookup tok/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        *rows, ""])
    publish(text, a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF or HF directory (default: forgert's default model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--draft", type=int, default=8, help="prompt_lookup: most draft tokens a pass")
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--record", type=Path, default=None, help="write the runs' engine calls here (JSON)")
    ap.add_argument("--replay", type=Path, default=None, help="time recorded engine calls on --model")
    a = ap.parse_args()
    if a.replay:
        return replay(a)
    m = forgert.Model(a.model, backend="cpu", threads=a.threads, n_ctx=2048)
    recorder = m._engine = _Recorder(m._engine)
    recorded = {"model": Path(m.path).name, "draft": a.draft, "tasks": {}}
    rows = []
    for name, prompt in TASKS.items():
        ids = m.prompt_tokens([{"role": "user", "content": prompt}])
        plain, lookup, kept = [], [], None
        for _ in range(a.rounds):
            for k, out in ((0, plain), (a.draft, lookup)):
                m.reset()
                recorder.calls = []
                c = m.generate(ids, max_tokens=a.tokens, temperature=0, prompt_lookup=k)
                recorded["tasks"].setdefault(name, {"prompt": len(ids), "tokens": len(c.tokens)})[
                    "lookup" if k else "plain"] = recorder.calls
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
    if a.record:
        import json
        a.record.write_text(json.dumps(recorded))


if __name__ == "__main__":
    main()
