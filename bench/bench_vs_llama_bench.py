"""forgert vs llama.cpp's C++ llama-bench on the CPU, over a thread sweep, on random-weight GGUFs
of real shapes (bench/synthetic_gguf.py). Writes a markdown table that names the CPU.

    python bench/bench_vs_llama_bench.py --presets llama32-1b --types Q4_0,Q8_0,Q4_K_M --threads 4,8,16

Both engines read the same file with the same thread count, each in a fresh process, in
alternating order, --repeats runs each (llama-bench's own -r; forgert bench's -r), and the
figure of each is its own median (forgert) or mean (llama-bench's avg_ts) over those runs:
  prefill: tokens/s over a --prompt-tokens prompt from an empty cache (llama-bench "pp")
  decode:  tokens/s over --gen-tokens greedy steps, both engines at the same depth: from an empty
           context (llama-bench "tg"; forgert bench -d 0), or with --same-depth after --prompt-tokens
           of context (llama-bench -d; forgert bench decoding right after its prompt)
The peer is built by ../shared/peers/llama-bench.sh (native ISA, repacking and AMX on, as shipped).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import synthetic_gguf  # noqa: E402
from machine import Contention, cpu_name, forgert_env, read_bandwidth_gbs  # noqa: E402
from report import publish  # noqa: E402



# llama-bench's -fa per --peer-fa: its own default (auto: on where the backend has the kernel, the
# CPU's included), off, on, or both ("best": each test takes the faster, which on the lent host's
# CPU was off for decode 4096 deep, 63 against 36 tok/s, and on for a 4096-token prefill, 755
# against 693: bench/results/long_context_gpuhost.md)
PEER_FA = {"auto": (), "0": ("-fa", "0"), "1": ("-fa", "1"), "best": ("-fa", "0,1")}


def llama_bench(peer: Path, model: Path, threads: int, a) -> dict:
    def rows(*args):
        out = subprocess.run(["bash", str(peer), "-m", str(model), "-t", str(threads), "-r", str(a.repeats),
                              "-o", "json", *PEER_FA[a.peer_fa], *args], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)

    def fastest(rs, prompt: bool) -> dict:  # the test's row (the faster of -fa 0 and 1 under "best")
        return max((r for r in rs if (r["n_prompt"] > 0) == prompt and (r["n_gen"] > 0) != prompt),
                   key=lambda r: r["avg_ts"])
    if a.same_depth:   # decode after prompt-tokens of context, as forgert bench decodes after its prompt
        pp = fastest(rows("-p", str(a.prompt_tokens), "-n", "0"), True)
        tg = fastest(rows("-p", "0", "-n", str(a.gen_tokens), "-d", str(a.prompt_tokens)), False)
    else:
        both = rows("-p", str(a.prompt_tokens), "-n", str(a.gen_tokens))
        pp, tg = fastest(both, True), fastest(both, False)
    return {"prefill": pp["avg_ts"], "decode": tg["avg_ts"]}


def forgert_bench(model: Path, threads: int, a, prefill_mode: str | None = None) -> dict:
    env = forgert_env(a.installed, **({"FORGERT_CPU_PREFILL": prefill_mode} if prefill_mode else {}))
    out = subprocess.run([sys.executable, "-m", "forgert", "bench", "--model", str(model), "--threads", str(threads),
                          "-p", str(a.prompt_tokens), "-g", str(a.gen_tokens), "-r", str(a.repeats),
                          *(() if a.same_depth else ("--decode-depth", "0")),
                          "--n-ctx", str(a.prompt_tokens + a.gen_tokens + 16), "--json"],
                         capture_output=True, text=True, check=True, env=env).stdout
    r = json.loads(out)
    return {"prefill": r["prefill_tokens_per_s"], "decode": r["decode_tokens_per_s"], "backend": r["backend"]}


def median_run(runs: list[dict]) -> dict:
    """Each numeric figure's median over the rounds (the rest from the first run)."""
    out = dict(runs[0])
    for k, v in out.items():
        if isinstance(v, float):
            out[k] = statistics.median(r[k] for r in runs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="llama32-1b")
    ap.add_argument("--types", default="Q4_0,Q8_0,Q4_K_M")
    ap.add_argument("--threads", default="4,8,16")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--same-depth", action="store_true",
                    help="both decode after --prompt-tokens of context (llama-bench -d); "
                         "default: both from an empty context (llama-bench's tg)")
    ap.add_argument("--rounds", type=int, default=1, help="pairs of runs (peer, forgert) per row; medians")
    ap.add_argument("--peer", type=Path, default=ROOT.parent / "shared" / "peers" / "llama-bench.sh")
    ap.add_argument("--peer-fa", choices=sorted(PEER_FA), default="auto",
                    help="llama-bench's flash attention: its default (auto), off, on, or best (both, "
                         "the faster per test)")
    ap.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    ap.add_argument("--installed", action="store_true", help="run the installed forgert, not python/ of this tree")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: print only)")
    ap.add_argument("--int8", action="store_true", help="also time prefill with one int8 activation part")
    a = ap.parse_args()

    bw = read_bandwidth_gbs(a.installed)
    print(f"read bandwidth (all {os.cpu_count()} CPUs): {bw:.1f} GB/s", file=sys.stderr, flush=True)
    rows = []
    for preset in a.presets.split(","):
        for ftype in a.types.split(","):
            path = synthetic_gguf.cached(a.models, preset, ftype)
            for threads in map(int, a.threads.split(",")):
                # --rounds pairs of runs, alternating which engine goes first, so a drift in machine
                # load hits both; each figure is the median over the rounds
                runs = {"peer": [], "forgert": []}
                busy = {"others": 0.0, "steal": 0.0}  # the worst of the row's runs
                for r in range(a.rounds):
                    first_peer = (len(rows) + r) % 2 == 0
                    for who in (("peer", "forgert") if first_peer else ("forgert", "peer")):
                        with Contention() as c:
                            runs[who].append(llama_bench(a.peer, path, threads, a) if who == "peer"
                                             else forgert_bench(path, threads, a))
                        busy = {k: max(busy[k], c.pct[k]) for k in busy}
                f, p = median_run(runs["forgert"]), median_run(runs["peer"])
                f["busy"] = busy
                # one int8 part per activation (FORGERT_CPU_PREFILL=int8: faster, coarser prefill)
                f["prefill_int8"] = forgert_bench(path, threads, a, "int8")["prefill"] if a.int8 else float("nan")
                # decode streams the weights one token reads (an MoE: the used experts' share) over the
                # read bandwidth
                f["bw_pct"] = 100.0 * f["decode"] * synthetic_gguf.bytes_per_token(path) / 1e9 / bw
                rows.append((preset, ftype, threads, f, p))
                print(f"{preset} {ftype} t={threads}: prefill {f['prefill']:.1f} vs {p['prefill']:.1f} "
                      f"({f['prefill'] / p['prefill']:.2f}x), decode {f['decode']:.1f} vs {p['decode']:.1f} "
                      f"({f['decode'] / p['decode']:.2f}x); others {busy['others']:.0f}%, steal {busy['steal']:.0f}%",
                      file=sys.stderr, flush=True)

    lines = [f"# forgert vs llama-bench, CPU ({cpu_name()}, {os.cpu_count()} logical CPUs)", "",
             f"`{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`; random-weight GGUFs of real shapes "
             f"(bench/synthetic_gguf.py); prefill {a.prompt_tokens} tokens, decode {a.gen_tokens}, "
             f"both decode {'after the prompt (llama-bench -d)' if a.same_depth else 'from an empty context'}; "
             f"{a.rounds} alternating rounds of {a.repeats} runs each (median of the rounds); forgert's kernel set: {rows[0][3]['backend'] if rows else '-'}; "
             f"read bandwidth {bw:.1f} GB/s (all CPUs); llama-bench's flash attention: "
             f"{ {'auto': 'its default (auto)', '0': 'off', '1': 'on', 'best': 'off and on, the faster per test'}[a.peer_fa] }.", "",
             "Prefill int8: forgert with `FORGERT_CPU_PREFILL=int8` (one int8 part per activation, as llama.cpp; "
             "the default uses two). Decode % bw: forgert's decode tokens/s x the weight bytes a token reads "
             "(the file less the embedding table; of expert stacks only the used share) / read bandwidth. "
             "Others / steal: the most, over the row's runs of both engines, of the machine's CPU time that "
             "went to other processes / (on a virtual machine) to other guests while a run went on "
             "(/proc/stat less the run's own CPU time): a row with either above a few percent was measured "
             "on a shared machine.", "",
             "| model | type | threads | prefill forgert | prefill int8 | prefill llama.cpp | ratio | decode forgert | "
             "decode llama.cpp | ratio | decode % bw | others / steal |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for preset, ftype, threads, f, p in rows:
        lines.append(f"| {preset} | {ftype} | {threads} | {f['prefill']:.1f} | {f['prefill_int8']:.1f} | "
                     f"{p['prefill']:.1f} | {f['prefill'] / p['prefill']:.2f}x | {f['decode']:.1f} | {p['decode']:.1f} | "
                     f"{f['decode'] / p['decode']:.2f}x | {f['bw_pct']:.0f}% | "
                     f"{f['busy']['others']:.0f}% / {f['busy']['steal']:.0f}% |")
    publish("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
    main()
