"""forgert's CPU decode over a thread sweep, for each work split (FORGERT_CPU_SPLIT), with the
threads' busyness inside parallel regions; optionally llama.cpp's llama-bench beside it.
Writes a markdown table that names the CPU.

    python bench/cpu_decode_scaling.py --preset llama32-1b --type Q4_0 --threads 1,2,4,8,16 --llama-bench
    python bench/cpu_decode_scaling.py --model some.gguf            # threads: 1, 2, 4, ... up to nproc

Each (threads, split) runs `forgert bench --profile --json` in a fresh process: decode tokens/s
is its median over --repeats runs of --gen-tokens greedy steps after a --prompt-tokens prompt;
regions per token and busyness (time the threads spend inside the regions' work / (threads x
the regions' wall time)) come from its --profile pass (FORGERT_CPU_PROFILE's counters), which
runs after the timed runs and does not affect them. The peer (--llama-bench) is
../shared/peers/llama-bench.sh (native build, repacking and AMX on, as shipped) with `-p 0`:
its tg figure decodes from an empty context, forgert's after the prompt (a longer cache).

The ceiling beside them: the memory read bandwidth the same number of threads reaches
(`_core.cpu_read_bandwidth_gbs(threads)`, each thread summing its share of a buffer far larger
than the caches), and decode's weight stream (tokens/s x the bytes a token reads) as a share of
it. Decode reads every weight once per token, so its scaling from 1 thread cannot exceed the read
bandwidth's own scaling on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import synthetic_gguf  # noqa: E402
from machine import cpu_name, forgert_env, read_bandwidth_gbs  # noqa: E402
from report import publish  # noqa: E402

SPLITS = ("static", "dynamic")


def default_threads() -> list[int]:
    n = os.cpu_count() or 1
    sweep = [t for t in (1, 2, 4, 8, 16, 32, 64) if t < n]
    return sweep + [n]


def forgert_decode(model: Path, threads: int, split: str, a) -> dict:
    out = subprocess.run([sys.executable, "-m", "forgert", "bench", "--model", str(model), "--threads", str(threads),
                          "-p", str(a.prompt_tokens), "-g", str(a.gen_tokens), "-r", str(a.repeats),
                          "--n-ctx", str(a.prompt_tokens + a.gen_tokens + 16), "--profile", "--json"],
                         capture_output=True, text=True, check=True, env=forgert_env(a.installed, FORGERT_CPU_SPLIT=split)).stdout
    r = json.loads(out)
    cpu = (r.get("profile") or {}).get("cpu") or {}
    return {"decode": r["decode_tokens_per_s"], "busyness": cpu.get("busyness"),
            "regions": cpu.get("regions_per_token"), "backend": r["backend"]}


def llama_bench_decode(peer: Path, model: Path, threads: int, a) -> float:
    out = subprocess.run(["bash", str(peer), "-m", str(model), "-t", str(threads), "-p", "0",
                          "-n", str(a.gen_tokens), "-r", str(a.repeats), "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    return next(r["avg_ts"] for r in json.loads(out) if r["n_gen"] > 0)


def pct(x) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a GGUF (default: a synthetic one of --preset / --type)")
    ap.add_argument("--preset", default="llama32-1b", choices=sorted(synthetic_gguf.PRESETS))
    ap.add_argument("--type", default="Q4_0", choices=("Q4_0", "Q8_0", "Q4_K_M", "Q6_K"))
    ap.add_argument("--models", type=Path, default=ROOT / "bench" / "models", help="where synthetic GGUFs go")
    ap.add_argument("--threads", default=None, help="comma-separated (default: 1, 2, 4, ... and nproc)")
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--llama-bench", action="store_true", help="also run llama-bench's tg at each thread count")
    ap.add_argument("--peer", type=Path, default=ROOT.parent / "shared" / "peers" / "llama-bench.sh")
    ap.add_argument("--installed", action="store_true", help="run the installed forgert, not python/ of this tree")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: print only)")
    a = ap.parse_args()

    threads = [int(t) for t in a.threads.split(",")] if a.threads else default_threads()
    splits = a.splits.split(",")
    for s in splits:
        if s not in SPLITS:
            ap.error(f"--splits: unknown split {s!r} (use {', '.join(SPLITS)})")
    model = a.model or synthetic_gguf.cached(a.models, a.preset, a.type)
    token_bytes = synthetic_gguf.bytes_per_token(model)

    rows, backend = [], "-"
    for i, t in enumerate(threads):
        runs = {}
        # alternate the order, so that a drift in the shared machine's load hits every column
        order = list(splits) + (["llama-bench"] if a.llama_bench else []) + ["read"]
        for who in (order if i % 2 == 0 else order[::-1]):
            runs[who] = (llama_bench_decode(a.peer, model, t, a) if who == "llama-bench"
                         else read_bandwidth_gbs(a.installed, t) if who == "read"
                         else forgert_decode(model, t, who, a))
            if who in splits:
                backend = runs[who]["backend"]
        rows.append((t, runs))
        print(f"t={t}: " + ", ".join(f"{k} {v if isinstance(v, float) else v['decode']:.1f}"
                                     f"{' GB/s' if k == 'read' else ' tok/s'}" for k, v in runs.items()),
              file=sys.stderr, flush=True)

    base = {s: next((r[s]["decode"] for t, r in rows if t == 1), None) for s in splits}
    base_read = next((r["read"] for t, r in rows if t == 1), None)
    head = ["threads"]
    for s in splits:
        head += [f"{s} tok/s", f"{s} x1-thread", f"{s} busy", f"{s} regions/token"]
    if len(splits) == 2:
        head.append("dynamic / static")
    if a.llama_bench:
        head += ["llama-bench tg tok/s"] + [f"{s} / llama-bench" for s in splits]
    head += ["read GB/s", "read x1-thread"] + [f"{s} % of read" for s in splits]
    lines = [f"# forgert CPU decode scaling ({cpu_name()}, {os.cpu_count()} logical CPUs)", "",
             f"`{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`; model {model.name}; forgert's kernel set: "
             f"{backend}; decode of {a.gen_tokens} tokens after a {a.prompt_tokens}-token prompt, median of "
             f"{a.repeats} runs. busy: the threads' time inside parallel regions' work / (threads x the regions' "
             "wall time), from `forgert bench --profile`. x1-thread: tokens/s over the same split's at 1 thread. "
             f"read: the memory read bandwidth at the row's thread count (`_core.cpu_read_bandwidth_gbs`); "
             f"% of read: decode tokens/s x {token_bytes / 1e6:.1f} MB a token reads / that bandwidth.",
             "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for t, r in rows:
        cells = [str(t)]
        for s in splits:
            d = r[s]["decode"]
            cells += [f"{d:.1f}", f"{d / base[s]:.2f}x" if base[s] else "-", pct(r[s]["busyness"]),
                      "-" if r[s]["regions"] is None else f"{r[s]['regions']:.0f}"]
        if len(splits) == 2:
            cells.append(f"{r['dynamic']['decode'] / r['static']['decode']:.2f}x")
        if a.llama_bench:
            peer = r["llama-bench"]
            cells += [f"{peer:.1f}"] + [f"{r[s]['decode'] / peer:.2f}x" for s in splits]
        cells += [f"{r['read']:.1f}", f"{r['read'] / base_read:.2f}x" if base_read else "-"]
        cells += [pct(r[s]["decode"] * token_bytes / 1e9 / r["read"]) for s in splits]
        lines.append("| " + " | ".join(cells) + " |")
    publish("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
    main()
