"""Load test of `forgert serve`: N concurrent streaming clients against 1, on one server it starts.

Reports, per level (every request generates exactly --max-tokens tokens: ignore_eos):
- aggregate decode tok/s: the rate at which tokens reach the clients while all of them decode at
  once (bench/decode_window.py: each request's time to first token excluded), and its ratio to
  one client's: the issue's "aggregate decode tokens/s";
- aggregate tok/s: all completion tokens over the level's wall time (prefill, admission and first
  token latency included), and its ratio;
- time to first token (p50 / p95) while the batch is busy;
- the server's batch steps over the level (its /metrics counters): milliseconds per step of the
  batch thread at work against those of the engine pass alone; the difference is the server's
  own time per step (scheduling, detokenization, hand-offs to the event loop).
With --rounds R the levels run R times, alternating (1, N, 1, N, ...), each ratio taken against
the same round's one client, and the median ratio over the rounds is given: on a machine shared
with other work, one round's ratio swings with the load of the moment.
Standard library only (http.client, threads).

    python bench/load_test.py [--model PATH] [--clients 8] [--parallel 8] [--max-tokens 128]
                              [--requests-per-client 2] [--route chat|completions] [--threads N]
                              [--rounds 1]
                              [--out bench/results/load_test.md]

The server runs with `--parallel P` (continuous batching; default: as many as the clients), on
127.0.0.1 only, and is stopped at the end. A noisy machine (other work on it) skews every figure:
the 1-minute load average before and after is written with the table.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_window import DecodeSpan, concurrent_decode  # noqa: E402
from machine import cpu_name, forgert_env  # noqa: E402
from report import publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "load_test.md"
PROMPTS = ["Write a haiku about the sea.", "What is the capital of Italy?", "Name three colours.",
           "Explain what a CPU does.", "Give me a synonym for happy.", "Count from one to five.",
           "What is 12 times 12?", "Describe a cat in one sentence."]


def machine() -> str:
    return f"{platform.node()}: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default); nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Server:
    """`python -m forgert serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str | None, n_ctx: int, threads: int | None, parallel: int, installed: bool = False,
                 activations: str = "int16"):
        self.port = free_port()
        cmd = [sys.executable, "-m", "forgert", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--n-ctx", str(n_ctx), "--log-level", "warning", "--parallel", str(parallel)]
        if model:
            cmd += ["--model", model]
        if threads:
            cmd += ["--threads", str(threads)]
        cmd += ["--activations", activations]
        self.proc = subprocess.Popen(cmd, env=forgert_env(installed), stderr=subprocess.PIPE, text=True)

    def get(self, path: str) -> dict:
        return json.loads(self.get_text(path))

    def get_text(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def batch_counters(self) -> dict:
        """The batch's counters from /metrics (forgert_batch_*_total; empty without --parallel)."""
        out = {}
        for line in self.get_text("/metrics").splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("forgert_batch_") and name.endswith("_total"):
                out[name.removeprefix("forgert_batch_").removesuffix("_total")] = float(value)
        return out

    def wait_ready(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"forgert serve exited: {self.proc.stderr.read()}")
            try:
                return self.get("/health")
            except OSError:
                time.sleep(0.2)
        raise SystemExit("forgert serve did not come up")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(port: int, prompt: str, max_tokens: int, timeout: float, route: str = "chat") -> dict:
    """A streaming chat (or plain completions) request: {"latency", "ttft", "tokens", "first_at",
    "last_at"} (the first and last token's arrival, perf_counter seconds) or {"error"}."""
    # completions: for models without a chat template (the random-weight GGUFs of bench/synthetic_gguf.py)
    text_field = {"messages": [{"role": "user", "content": prompt}]} if route == "chat" else {"prompt": prompt}
    body = json.dumps({"model": "x", **text_field,
                       "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read()[:200]!r}"}
        for raw in r:       # SSE lines as they arrive (http.client undoes the chunked encoding)
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and (chunk["choices"][0].get("delta", {}).get("content")
                                       or chunk["choices"][0].get("text")):
                last = time.perf_counter()
                first = last if first is None else first
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()
    return {"latency": time.perf_counter() - start, "ttft": None if first is None else first - start,
            "tokens": tokens, "first_at": first, "last_at": last}


def run_level(port: int, clients: int, requests_per_client: int, max_tokens: int, timeout: float,
              route: str = "chat") -> dict:
    """`clients` threads, each sending its requests one after another; all start together."""
    results: list[dict] = []
    lock = threading.Lock()
    go = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        go.wait()
        for i in range(requests_per_client):
            r = one_request(port, PROMPTS[(c + i * clients) % len(PROMPTS)], max_tokens, timeout, route)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    latencies = [r["latency"] for r in ok]
    # one client's decode rate: tokens after the first over the time after the first
    per_client = [(r["tokens"] - 1) / (r["latency"] - r["ttft"]) for r in ok
                  if r["ttft"] is not None and r["tokens"] > 1 and r["latency"] > r["ttft"]]
    window = concurrent_decode([DecodeSpan(r["first_at"], r["last_at"], r["tokens"] - 1)
                                for r in ok if r["first_at"] is not None], clients)
    return {"clients": clients, "requests": len(results), "errors": [r["error"] for r in results if "error" in r],
            "wall_s": wall, "tokens": sum(r["tokens"] for r in ok),
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "decode_per_s": window.tokens_per_s, "decode_window_s": window.seconds,
            "per_client_decode": percentile(per_client, 0.5),
            "ttft_p50": percentile(ttfts, 0.5), "ttft_p95": percentile(ttfts, 0.95),
            "latency_p50": percentile(latencies, 0.5)}


def step_costs(before: dict, after: dict) -> dict:
    """Milliseconds per batch step over a level: the batch thread at work and the engine pass
    alone (nan without the batch's counters)."""
    steps = after.get("steps", 0) - before.get("steps", 0)
    if steps <= 0:
        return {"steps": 0, "step_ms": float("nan"), "pass_ms": float("nan")}
    per = lambda key: 1e3 * (after[key] - before[key]) / steps     # noqa: E731
    return {"steps": int(steps), "step_ms": per("busy_seconds"), "pass_ms": per("engine_seconds")}


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's decode and wall ratios to the one-client row of its round."""
    one = {r["round"]: r for r in rows if r["clients"] == 1}
    return [dict(r, decode_ratio=r["decode_per_s"] / one[r["round"]]["decode_per_s"],
                 wall_ratio=r["tokens_per_s"] / one[r["round"]]["tokens_per_s"]) for r in rows]


def write_markdown(rows: list[dict], args, health: dict, load_after: float) -> str:
    rows = with_ratios(rows)
    lines = [
        "# forgert serve load test",
        "",
        f"- machine: {machine()}",
        f"- model: {health.get('model')}, n_ctx {args.n_ctx}, threads {args.threads or 'all'}, "
        f"`forgert serve --parallel {args.parallel} --activations {args.activations}` (continuous batching)",
        f"- requests: streaming {'chat completions' if args.route == 'chat' else 'completions'} over loopback, "
        f"{args.max_tokens} tokens each (ignore_eos), "
        f"temperature 0, {args.requests_per_client} per client, clients start together",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average before / after: "
        f"{args.load_before:.1f} / {load_after:.1f} (other work on the machine skews every figure)",
        "- aggregate decode tok/s: tokens reaching the clients per second while all of the level's clients "
        "decode at once, each request's time to first token excluded: the level's time is cut at every "
        "request's first and last token; over the pieces where every client has a request between its first "
        "and last token (the decode window), the sum of those requests' decode rates ((tokens - 1) / (last "
        "token - first token), taken as even over the request) weighted by the piece's length, / the window's "
        "length (`bench/decode_window.py`); vs 1 client is this figure's ratio",
        "- aggregate tok/s (wall): completion tokens of all clients / wall time of the level (prefill, "
        "admission and first-token latency included); per-client decode: median of (tokens - 1) / "
        "(latency - first token)",
        "- server ms/step: the batch thread's time at work per engine step over the level (its /metrics "
        "counters), beside the engine pass's own; the difference is the server's time per step "
        "(scheduling, detokenization, hand-offs to the event loop)",
        "",
        "| round | clients | requests | errors | aggregate decode tok/s | vs 1 client | decode window (s) "
        "| aggregate tok/s (wall) | wall vs 1 client | per-client decode tok/s "
        "| first token p50 (s) | p95 (s) | latency p50 (s) | steps | server ms/step | engine pass ms/step |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['round'] + 1} | {r['clients']} | {r['requests']} | {len(r['errors'])} "
                     f"| {r['decode_per_s']:.1f} | {r['decode_ratio']:.2f}x | {r['decode_window_s']:.2f} "
                     f"| {r['tokens_per_s']:.1f} | {r['wall_ratio']:.2f}x "
                     f"| {r['per_client_decode']:.1f} | {r['ttft_p50']:.3f} "
                     f"| {r['ttft_p95']:.3f} | {r['latency_p50']:.2f} | {r['steps']} "
                     f"| {r['step_ms']:.2f} | {r['pass_ms']:.2f} |")
    loaded = [r for r in rows if r["clients"] == args.clients]
    if args.rounds > 1 and args.clients > 1:
        lines += ["", f"{args.clients} clients against one, median over the {args.rounds} rounds: aggregate decode "
                  f"{statistics.median(r['decode_ratio'] for r in loaded):.2f}x, over the wall "
                  f"{statistics.median(r['wall_ratio'] for r in loaded):.2f}x"]
    errors = [e for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors[:20]]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model path (default: forgert's default SmolLM2 model)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients of the loaded level")
    p.add_argument("--parallel", type=int, default=None, help="forgert serve --parallel (default: --clients)")
    p.add_argument("--max-tokens", type=int, default=128,
                   help="tokens per request (more make the steady decode state dominate)")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--rounds", type=int, default=1,
                   help="run the levels this many times, alternating (median ratio over the rounds)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--installed", action="store_true", help="serve with the installed forgert, not python/ of this tree")
    p.add_argument("--activations", default="int16", choices=["int16", "int8"],
                   help="forgert serve --activations: the CPU's activation format (int8: one part, faster batches)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per request")
    p.add_argument("--out", type=Path, default=RESULTS, help="markdown table written here")
    p.add_argument("--route", choices=("chat", "completions"), default="chat",
                   help="completions for a model without a chat template (bench/synthetic_gguf.py's)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.max_tokens < 2 or args.requests_per_client < 1 or args.rounds < 1:
        p.error("--clients, --requests-per-client and --rounds must be >= 1, --max-tokens >= 2")
    args.parallel = args.parallel or args.clients
    args.load_before = os.getloadavg()[0]

    server = Server(args.model, args.n_ctx, args.threads, args.parallel, args.installed, args.activations)
    try:
        health = server.wait_ready()
        warm = run_level(server.port, 1, 1, 4, args.timeout, args.route)     # warm-up, not reported
        if warm["errors"]:
            raise SystemExit(f"the warm-up request failed: {warm['errors'][0]}")
        rows = []
        levels = [(rnd, clients) for rnd in range(args.rounds) for clients in sorted({1, args.clients})]
        for rnd, clients in levels:
            before = server.batch_counters()
            row = run_level(server.port, clients, args.requests_per_client, args.max_tokens, args.timeout,
                            args.route)
            row.update(step_costs(before, server.batch_counters()), round=rnd)
            rows.append(row)
            print(f"{clients:>3} clients: {row['requests']} requests, {len(row['errors'])} errors, "
                  f"{row['decode_per_s']:.1f} decode tok/s aggregate ({row['decode_window_s']:.2f}s window), "
                  f"{row['tokens_per_s']:.1f} tok/s over the wall, first token p50 {row['ttft_p50']:.3f}s "
                  f"p95 {row['ttft_p95']:.3f}s; {row['steps']} steps, {row['step_ms']:.2f} ms each "
                  f"(engine pass {row['pass_ms']:.2f})", flush=True)
    finally:
        server.stop()
    publish(write_markdown(rows, args, health, os.getloadavg()[0]), args.out)
    print(f"wrote {args.out}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
