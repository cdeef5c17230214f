"""forgert's own decode and prefill under environment variants (a knob's settings: a kernel set,
a layout, a prefetch), each variant a separate `forgert bench` process, the variants alternating
round after round so that each meets the machine's every minute. Prints a markdown table naming
the CPU: per thread count and variant, each round's tokens/s, and each variant's median over the
first variant's.

    python bench/env_ab.py --model /tmp/m1b.gguf --threads 1,4 --rounds 2 \\
        --variant "avx2vnni panels=FORGERT_CPU_ISA=avx2vnni FORGERT_CPU_KQUANT_PANELS=1" \\
        --variant "avx2vnni file=FORGERT_CPU_ISA=avx2vnni FORGERT_CPU_KQUANT_PANELS=0"

A variant is NAME=VAR=VALUE [VAR=VALUE ...]; the first one in a group of variants sharing the
words before their last is the baseline of that group (with one group: the first variant).
Which forgert runs is whichever `python -m forgert` imports (--installed: the installed package,
else this tree's python/ first on PYTHONPATH).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name, forgert_env  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition("=")
    env = {}
    for item in rest.split():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"--variant {text!r}: expected NAME=VAR=VALUE [VAR=VALUE ...]")
        env[key] = value
    if not name or not env:
        raise SystemExit(f"--variant {text!r}: expected NAME=VAR=VALUE [VAR=VALUE ...]")
    return name.strip(), env


def run_bench(model: Path, threads: int, env: dict, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "forgert", "bench", "-m", str(model), "-t", str(threads), "-p", str(a.prompt_tokens),
           "-g", str(a.gen_tokens), "-r", str(a.repeats), "--json"]
    if a.decode_depth is not None:
        cmd += ["-d", str(a.decode_depth)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=forgert_env(a.installed, **env), timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--threads", default="1", help="comma-separated thread counts")
    ap.add_argument("--variant", action="append", required=True, help="NAME=VAR=VALUE [VAR=VALUE ...]; two or more")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2, help="forgert bench's own repeats (it reports their median)")
    ap.add_argument("--decode-depth", type=int, help="tokens in the cache when the timed decode starts "
                    "(forgert bench -d; default: the prompt's)")
    ap.add_argument("--installed", action="store_true")
    a = ap.parse_args()
    variants = [parse_variant(v) for v in a.variant]
    if len(variants) < 2:
        raise SystemExit("give two or more --variant")
    threads = [int(t) for t in a.threads.split(",")]
    decode: dict = {}
    prefill: dict = {}
    for _ in range(a.rounds):
        for t in threads:
            for name, env in variants:
                r = run_bench(a.model, t, env, a)
                decode.setdefault((t, name), []).append(r["decode_tokens_per_s"])
                prefill.setdefault((t, name), []).append(r["prefill_tokens_per_s"])

    def base_of(name: str) -> str:
        group = name.rsplit(" ", 1)[0] if " " in name else ""
        return next(n for n, _ in variants if (n.rsplit(" ", 1)[0] if " " in n else "") == group)

    print(f"{cpu_name()}, {os.cpu_count()} CPUs; {a.model.name}; {a.rounds} rounds alternating, "
          f"forgert bench -p {a.prompt_tokens} -g {a.gen_tokens} -r {a.repeats}"
          + (f" -d {a.decode_depth}" if a.decode_depth is not None else ""))
    print()
    for name, env in variants:
        print(f"- {name}: {' '.join(f'{k}={v}' for k, v in env.items())}")
    print()
    print("| threads | variant | decode tok/s, each round | decode vs baseline | prefill tok/s, each round |")
    print("|---:|---|---|---:|---|")
    for t in threads:
        for name, _ in variants:
            d, p = decode[(t, name)], prefill[(t, name)]
            ratio = statistics.median(d) / statistics.median(decode[(t, base_of(name))])
            print(f"| {t} | {name} | {', '.join(f'{v:.2f}' for v in d)} | {ratio:.2f}x | {', '.join(f'{v:.1f}' for v in p)} |")


if __name__ == "__main__":
    main()
