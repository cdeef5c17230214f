"""forgert vs llama.cpp (llama-cpp-python) on the CPU: decode and prefill tokens/s.

Both engines load the same GGUF with the same thread count, each run in a fresh process of
its own (no engine's idle threads can steal the other's cores); runs alternate between them
so load changes on the machine hit both; medians and ratios go to bench/results/.

    pip install llama-cpp-python        # builds llama.cpp from source
    python bench/bench_vs_llamacpp.py   # SmolLM2-135M Q4_1 + Q8_0 / Q4_0 versions of it

What is timed, for both, through their Python APIs:
  prefill: evaluate a 512-token prompt from an empty cache (logits of the last token)
  decode:  128 steps of "evaluate one token, take the argmax" after an 8-token prompt
  decode after a long prompt: 64 such steps after a 2048-token prompt (--long-context), where
           attention reads the whole KV cache (47 MB for SmolLM2 at 2048) every step
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from machine import cpu_name, forgert_env  # bench/machine.py (the script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODELS = ROOT / "bench" / "models"   # derived GGUFs (gitignored)


def default_model() -> Path:
    sys.path.insert(0, str(ROOT / "python"))
    from forgert.default_model import default_model_path
    return Path(default_model_path())


def derived_model(src: Path, qtype: str) -> Path:
    """A Q8_0 / Q4_0 version of the default model, made once with `forgert quantize --pure` (every
    matrix in the type: the files the README's results were measured on)."""
    out = MODELS / f"{src.stem.split('.')[0]}.{qtype.upper()}.gguf"
    if not out.exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "forgert", "quantize", str(src), str(out), "--type", qtype, "--pure"],
                       check=True, env=forgert_env())
    return out



class Forgert:
    def __init__(self, path, threads, n_ctx):
        import forgert
        self.m = forgert.Model(str(path), backend="cpu", threads=threads, n_ctx=n_ctx)
        self.eng = self.m._engine   # the native engine: no sampling or detokenization in the loop

    def prefill(self, ids):
        self.eng.forward(np.asarray(ids, np.int32), 0)

    def decode(self, prompt, n):
        self.decode_after(prompt, n - 1)

    def decode_after(self, prompt, n) -> float:
        """Seconds for n greedy steps after the prompt (whose evaluation gives the first token)."""
        tok = self.eng.forward_argmax(np.asarray(prompt, np.int32), 0)
        t0 = time.perf_counter()
        for i in range(n):
            tok = self.eng.forward_argmax(np.asarray([tok], np.int32), len(prompt) + i)
        return time.perf_counter() - t0


class LlamaCpp:
    def __init__(self, path, threads, n_ctx):
        import llama_cpp
        self.version = llama_cpp.__version__
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, logits_all=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        # the last token's logits, read in place (Llama.eval keeps none without logits_all)
        self._as_array = lambda: np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1), shape=(self.n_vocab,))

    def prefill(self, ids):
        self.llm.reset()
        self.llm.eval(list(ids))

    def decode(self, prompt, n):
        self.decode_after(prompt, n - 1)

    def decode_after(self, prompt, n) -> float:
        self.llm.reset()
        self.llm.eval(list(prompt))
        tok = int(np.argmax(self._as_array()))
        t0 = time.perf_counter()
        for _ in range(n):
            self.llm.eval([tok])
            tok = int(np.argmax(self._as_array()))
        return time.perf_counter() - t0


ENGINES = ["forgert", "llama.cpp"]
LONG_DECODE_STEPS = 64


def worker(args):
    """One measurement in this process: warm up, then prefill and decode once; prints JSON."""
    n_ctx = max(1024, args.long_context + LONG_DECODE_STEPS + 8)
    engine = (Forgert if args.worker == "forgert" else LlamaCpp)(args.model[0], args.threads, n_ctx)
    vocab = engine.m.vocab_size if args.worker == "forgert" else engine.n_vocab
    prompt_long = np.random.default_rng(0).integers(100, vocab - 100, args.prefill_tokens).tolist()
    prompt_short = prompt_long[:8]
    engine.prefill(prompt_long[:64])   # page in the weights, size the buffers
    engine.decode(prompt_short, 4)
    t0 = time.perf_counter()
    engine.prefill(prompt_long)
    prefill = args.prefill_tokens / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    engine.decode(prompt_short, args.decode_tokens)   # includes the 8-token prompt: <1% of the work
    decode = args.decode_tokens / (time.perf_counter() - t0)
    long_decode = 0.0
    if args.long_context:   # decode with a long history: attention reads the whole KV cache
        prompt = np.random.default_rng(1).integers(100, vocab - 100, args.long_context).tolist()
        long_decode = LONG_DECODE_STEPS / engine.decode_after(prompt, LONG_DECODE_STEPS)
    print(json.dumps({"prefill": prefill, "decode": decode, "long_decode": long_decode,
                      "version": getattr(engine, "version", "")}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--model", action="append", help="GGUF path (repeatable); default: SmolLM2 Q4_1, Q8_0, Q4_0")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--long-context", type=int, default=2048,
                    help="also time decoding after a prompt this long (0: skip)")
    ap.add_argument("--out", default=str(RESULTS / "cpu_vs_llamacpp.md"))
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    llama_version = ""
    if args.model:
        models = [Path(p) for p in args.model]
    else:
        base = default_model()
        models = [base, derived_model(base, "q8_0"), derived_model(base, "q4_0")]

    rows = []
    for path in models:
        times = {(e, k): [] for e in ENGINES for k in ("prefill", "decode", "long_decode")}
        for rep in range(args.reps):
            for name in (ENGINES if rep % 2 == 0 else ENGINES[::-1]):
                out = subprocess.run([sys.executable, __file__, "--worker", name, "--model", str(path),
                                      "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens),
                                      "--prefill-tokens", str(args.prefill_tokens),
                                      "--long-context", str(args.long_context)],
                                     check=True, capture_output=True, text=True,
                                     env=forgert_env()).stdout
                result = json.loads(out.strip().splitlines()[-1])
                times[(name, "prefill")].append(result["prefill"])
                times[(name, "decode")].append(result["decode"])
                times[(name, "long_decode")].append(result["long_decode"])
                llama_version = result["version"] or llama_version
        med = {k: statistics.median(v) for k, v in times.items()}
        row = (path.name, med[("forgert", "decode")], med[("llama.cpp", "decode")],
               med[("forgert", "prefill")], med[("llama.cpp", "prefill")], path.stat().st_size,
               med[("forgert", "long_decode")], med[("llama.cpp", "long_decode")])
        rows.append(row)
        print(f"{row[0]}: decode {row[1]:.1f} vs {row[2]:.1f} tok/s ({row[1] / row[2]:.2f}x), "
              f"prefill {row[3]:.1f} vs {row[4]:.1f} tok/s ({row[3] / row[4]:.2f}x)", flush=True)

    if str(ROOT / "python") not in sys.path:   # the forgert the workers ran (PYTHONPATH above)
        sys.path.insert(0, str(ROOT / "python"))
    from forgert import _core
    lines = [
        "# forgert vs llama.cpp on the CPU",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}; "
        f"threads: {args.threads} for both; forgert kernels: {_core.cpu_info()['kernels']}; "
        f"llama-cpp-python {llama_version}.",
        f"Medians of {args.reps} alternating runs, each in a fresh process; decode = {args.decode_tokens} greedy tokens after an "
        f"8-token prompt; prefill = a {args.prefill_tokens}-token prompt from an empty cache. "
        f"Written by `bench/bench_vs_llamacpp.py` on {time.strftime('%Y-%m-%d')}. Load average at the end: "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        "Weights GB/s: the model file read once per decoded token (decode's memory traffic).",
        "",
        "| model | decode forgert tok/s | decode llama.cpp tok/s | ratio | forgert weights GB/s "
        "| prefill forgert tok/s | prefill llama.cpp tok/s | ratio |"
        + (f" decode after {args.long_context} tokens: forgert vs llama.cpp tok/s | ratio |" if args.long_context else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.long_context else ""),
    ]
    for name, df, dl, pf, pl, size, lf, ll in rows:
        lines.append(f"| {name} | {df:.1f} | {dl:.1f} | {df / dl:.2f}x | {df * size / 1e9:.1f} "
                     f"| {pf:.1f} | {pl:.1f} | {pf / pl:.2f}x |"
                     + (f" {lf:.1f} vs {ll:.1f} | {lf / ll:.2f}x |" if args.long_context else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
