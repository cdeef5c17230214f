"""Decode and prefill tokens/s of a whole model on one backend, with the bandwidth decode
achieves (every weight byte is read once per generated token) as a share of the chip's.

    python bench/metal/bench_model.py                     # the default SmolLM2 model, metal
    python bench/metal/bench_model.py model.gguf --backend cpu --prompt-tokens 512
    python bench/metal/bench_model.py model.gguf --peak-gbs 400

On Linux, backend "metal" is the MSL emulator: use it with a tiny model and few tokens only.
"""
from __future__ import annotations

import argparse
import os
import sys

import forgert


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None, help="GGUF file (default: forgert's default model)")
    ap.add_argument("--backend", default="metal" if sys.platform == "darwin" else "cpu")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-gbs", type=float, default=0.0, help="memory bandwidth of the chip, GB/s")
    a = ap.parse_args()

    m = forgert.Model(a.model, backend=a.backend)
    model_bytes = os.path.getsize(m.path)
    vocab = m.vocab_size
    # Token ids avoiding the first few (special) ids; the content does not matter for speed.
    prompt = [100 + (i * 7919) % max(1, vocab - 200) for i in range(a.prompt_tokens)]

    best_pf, best_dec = 0.0, 0.0
    for _ in range(a.repeats):
        c = m.generate(prompt, max_tokens=a.decode_tokens, temperature=0.0, ignore_eos=True)
        t = c.timings
        best_pf = max(best_pf, t.prefill_tokens_per_s)
        best_dec = max(best_dec, t.decode_tokens_per_s)
    print(f"backend {a.backend}  model {m.path}")
    print(f"prefill {a.prompt_tokens:5d} tokens: {best_pf:9.1f} tokens/s")
    line = f"decode  {a.decode_tokens:5d} tokens: {best_dec:9.1f} tokens/s"
    gbs = model_bytes * best_dec / 1e9
    line += f"  ~{gbs:.1f} GB/s of weights"
    if a.peak_gbs > 0:
        line += f" ({100 * gbs / a.peak_gbs:.0f}% of {a.peak_gbs:g} GB/s)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
