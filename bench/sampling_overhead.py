"""Per-token cost of `Model.stream` with the full sampler against the engine's own greedy loop
(`forward_argmax` per token, no Python sampling): the Python + sampling overhead of decoding.

    python bench/sampling_overhead.py [--model PATH] [--threads 2] [--tokens 128] [--runs 5]

Prints ms/token of both (median of --runs, the two alternating) and their ratio three ways:
of the medians, the median of each run pair's ratio, and of the fastest runs (on a machine shared
with other work, the fastest run of each is the least disturbed one). Names the CPU. Timings
only: the text is not checked (ignore_eos keeps every run at --tokens tokens).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import forgert

from machine import cpu_name  # bench/machine.py (the script's directory is on sys.path)

PROMPT = "Once upon a time"
FULL = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1, seed=1)
# What `forgert serve` samples with when an OpenAI client sets no more than a temperature: OpenAI's
# defaults, no top-k / top-p / min-p, so every token of the vocabulary is a candidate.
SERVER_DEFAULT = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
# A client that sets top_p too: the mass of the whole vocabulary, then a partial sort of its best.
TOP_P_ALONE = dict(temperature=1.0, top_k=0, top_p=0.95, min_p=0.0, seed=1)



def raw_greedy(m, n):
    """ms/token of the engine's argmax loop alone (the floor the sampler's cost is measured on)."""
    eng = m._engine
    ids = m.tokenize(PROMPT)
    m.reset()
    eng.prefill(np.asarray(ids[:-1], dtype=np.int32), 0)
    tok = eng.forward_argmax(np.asarray(ids[-1:], dtype=np.int32), len(ids) - 1)
    pos = len(ids)
    t0 = time.perf_counter()
    for _ in range(n):
        tok = eng.forward_argmax(np.asarray([tok], dtype=np.int32), pos)
        pos += 1
    return (time.perf_counter() - t0) / n * 1e3


def stream_sampled(m, n, params=FULL):
    m.reset()
    s = m.stream(PROMPT, max_tokens=n + 1, ignore_eos=True, **params)
    for _ in s:
        pass
    c = s.completion
    return c.timings.decode_s / c.timings.decode_tokens * 1e3   # from the first token sampled to the end


def sampler_alone(vocab, n=200):
    """us per token of each sampler on one logits row [vocab] with a 128-token history: the
    part of the overhead that does not depend on the machine's load from one run to the next."""
    from forgert.sampling import Sampler, SamplingParams, native_sampler

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
    history = list(rng.integers(0, vocab, 128))
    params = SamplingParams(**FULL)
    py, cpp = Sampler(params), native_sampler(params, history)
    out = []
    for f in (lambda: py.sample(logits, history), lambda: cpp.sample(logits)):
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            t.append((time.perf_counter() - t0) / n * 1e6)
        out.append(statistics.median(t))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    m = forgert.Model(a.model, threads=a.threads)
    raw, samp, whole, top_p = [], [], [], []
    for _ in range(a.runs):   # interleaved, so drift on a shared machine hits all alike
        raw.append(raw_greedy(m, a.tokens))
        samp.append(stream_sampled(m, a.tokens))
        whole.append(stream_sampled(m, a.tokens, SERVER_DEFAULT))
        top_p.append(stream_sampled(m, a.tokens, TOP_P_ALONE))
    r, s = statistics.median(raw), statistics.median(samp)
    paired = statistics.median(b / a for a, b in zip(raw, samp))
    t_py, t_cpp = sampler_alone(m._engine.vocab)
    print(f"CPU: {cpu_name()}, threads={a.threads}, {a.tokens} tokens, median of {a.runs}")
    print(f"greedy engine loop: {r:.3f} ms/token   runs {[round(x, 3) for x in raw]}")
    print(f"stream, full sampler: {s:.3f} ms/token   runs {[round(x, 3) for x in samp]}")
    print(f"overhead: {100 * (s / r - 1):+.1f}% (medians), {100 * (paired - 1):+.1f}% (median of paired runs), "
          f"{100 * (min(samp) / min(raw) - 1):+.1f}% (fastest runs)")
    w = statistics.median(whole)
    print(f"stream, temperature alone (the server's OpenAI defaults: the whole vocabulary): {w:.3f} ms/token, "
          f"{100 * (w / r - 1):+.1f}% (medians), {100 * (min(whole) / min(raw) - 1):+.1f}% (fastest runs)")
    tp = statistics.median(top_p)
    print(f"stream, temperature 1 and top_p 0.95 alone: {tp:.3f} ms/token, "
          f"{100 * (tp / r - 1):+.1f}% (medians), {100 * (min(top_p) / min(raw) - 1):+.1f}% (fastest runs)")
    print(f"sampler alone, vocab {m._engine.vocab}: NumPy {t_py:.0f} us/token, C++ {t_cpp:.0f} us/token "
          f"(C++ timed through its test entry point, which copies the row)")


if __name__ == "__main__":
    main()
