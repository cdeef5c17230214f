"""Load test of `forgert serve` on loopback: requests/s and latency percentiles at 1, 4 and 16
concurrent clients, written to bench/results/load_test.md.

Bounded: a fixed number of requests per level, small max_tokens, a deadline per level; the server
listens on 127.0.0.1 only and is stopped at the end.

    python bench/load_test.py [--model PATH] [--levels 1,4,16] [--max-tokens 16] [--parallel N]

--parallel N serves with continuous batching (`forgert serve --parallel N`); the table's
completion tok/s is then the aggregate decode rate of all clients together.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "load_test.md"
PROMPTS = ["Write a haiku about the sea.", "What is the capital of Italy?", "Name three colours.",
           "Explain what a CPU does.", "Give me a synonym for happy.", "Count from one to five.",
           "What is 12 times 12?", "Describe a cat in one sentence."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Server:
    def __init__(self, model: str | None, n_ctx: int, threads: int | None, parallel: int = 1):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "forgert", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--n-ctx", str(n_ctx), "--log-level", "warning", "--parallel", str(parallel)]
        if model:
            cmd += ["--model", model]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"forgert serve exited: {self.proc.stderr.read()}")
            try:
                return httpx.get(self.base + "/health", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit("forgert serve did not come up")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    """A streaming chat request; returns latency, time to first token and tokens, or the error."""
    body = {"model": "x", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = 0
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
    except httpx.HTTPError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"latency": time.perf_counter() - start, "ttft": first, "tokens": tokens}


async def run_level(base: str, clients: int, n_requests: int, max_tokens: int, deadline_s: float) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n_requests):
        queue.put_nowait(PROMPTS[i % len(PROMPTS)])
    results: list[dict] = []

    async def client(http):
        while not queue.empty():
            results.append(await one_request(http, queue.get_nowait(), max_tokens))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=deadline_s, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(clients))), deadline_s)
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "clients": clients, "requests": len(results), "errors": [r["error"] for r in results if "error" in r],
        "wall_s": wall, "requests_per_s": len(ok) / wall,
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "latency": {q: percentile(latencies, q) for q in (0.5, 0.9, 0.99)} if latencies else {},
        "ttft": {q: percentile(ttfts, q) for q in (0.5, 0.9, 0.99)} if ttfts else {},
    }


def write_markdown(rows: list[dict], args, health: dict) -> str:
    lines = [
        "# forgert serve load test",
        "",
        f"- machine: {machine()}",
        f"- model: {health.get('model')}, n_ctx {args.n_ctx}, threads {args.threads or 'all'}, "
        f"--parallel {args.parallel}",
        f"- requests: streaming chat completions, max_tokens {args.max_tokens}, temperature 0, "
        f"{args.requests_per_client} requests per client (at least {args.min_requests} per level), "
        "over loopback (127.0.0.1)",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average "
        f"before / after: {args.load_before:.1f} / {os.getloadavg()[0]:.1f} (other work on the machine "
        "skews every figure)",
        ("- one model serves all clients: requests queue FIFO, so latency grows with the queue while "
         "throughput stays that of one generation at a time" if args.parallel == 1 else
         f"- continuous batching: up to {args.parallel} requests decode together, the rest queue FIFO"),
        "",
        "| clients | requests | errors | req/s | completion tok/s | latency p50 (s) | p90 | p99 "
        "| first token p50 (s) | p90 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat, ttft = r["latency"], r["ttft"]
        lines.append(
            f"| {r['clients']} | {r['requests']} | {len(r['errors'])} | {r['requests_per_s']:.2f} "
            f"| {r['tokens_per_s']:.1f} | {lat.get(0.5, float('nan')):.2f} | {lat.get(0.9, float('nan')):.2f} "
            f"| {lat.get(0.99, float('nan')):.2f} | {ttft.get(0.5, float('nan')):.2f} "
            f"| {ttft.get(0.9, float('nan')):.2f} |")
    errors = [e for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors[:20]]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model path (default: forgert's default SmolLM2 model)")
    p.add_argument("--levels", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--min-requests", type=int, default=16)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--parallel", type=int, default=1, help="forgert serve --parallel N (continuous batching)")
    p.add_argument("--deadline", type=float, default=600, help="seconds allowed per level")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    args.load_before = os.getloadavg()[0]

    server = Server(args.model, args.n_ctx, args.threads, args.parallel)
    try:
        health = server.wait_ready()
        asyncio.run(run_level(server.base, 1, 1, 2, args.deadline))     # warm-up, not reported
        rows = []
        for clients in levels:
            n = max(args.min_requests, clients * args.requests_per_client)
            row = asyncio.run(run_level(server.base, clients, n, args.max_tokens, args.deadline))
            rows.append(row)
            print(f"{clients:>3} clients: {row['requests']} requests, {len(row['errors'])} errors, "
                  f"{row['requests_per_s']:.2f} req/s, p50 {row['latency'].get(0.5, float('nan')):.2f}s, "
                  f"p99 {row['latency'].get(0.99, float('nan')):.2f}s", flush=True)
    finally:
        server.stop()
    report = write_markdown(rows, args, health)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
