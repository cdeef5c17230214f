"""The server's own cost per batch step, apart from the engine's: `forgert serve --parallel N`'s
app (HTTP, SSE, the batch worker and its scheduler, the real tokenizer) over an engine whose
pass is a fixed sleep (no CPU), with N streaming clients in another process.

    python bench/server_overhead.py [--model PATH] [--clients 1,8] [--pass-ms 20] [--max-tokens 128]

Per level: the clients' aggregate decode tok/s (bench/decode_window.py) against the rate the
sleeping pass allows (clients / the pass's measured time: a sleep overshoots a little), and the
batch thread's time per step outside the pass
(the server's own: scheduling, detokenization, hand-offs to the event loop; its /metrics counters).
The pass uses no CPU, so this measures the server with the engine's work taken out; on a machine
shared with other work the figures still move with its load (written beside them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from machine import cpu_name  # noqa: E402


class SleepingEngine:
    """The model's engine, but each batch pass sleeps `seconds` and returns made-up tokens."""

    def __init__(self, engine, seconds: float):
        self._engine, self.seconds = engine, seconds
        self.vocab = int(engine.vocab)

    def __getattr__(self, name):        # n_slots, n_ctx, max_batch, kv_copy...
        return getattr(self._engine, name)

    def forward_batch_argmax(self, entries):
        time.sleep(self.seconds)
        # i32 [n_entries]: a token id that depends on the slot and position (any id decodes)
        return np.array([(1000 + 7919 * (slot + pos)) % self.vocab for slot, _, pos, *rest in entries], np.int32)


CLIENT = """
import json, sys
sys.path.insert(0, {bench!r})
from load_test import run_level
r = run_level({port}, {clients}, 1, {max_tokens}, 600, "completions")
print(json.dumps({{"decode": r["decode_per_s"], "errors": r["errors"]}}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a GGUF (default: forgert's SmolLM2 model); only its tokenizer works")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--pass-ms", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    levels = [int(c) for c in a.clients.split(",")]

    import uvicorn

    import forgert
    from forgert.server import create_app
    from forgert.server.connections import ConnectionLimits, uvicorn_config

    model = forgert.Model(a.model, threads=1, n_ctx=a.max_tokens + 64, parallel=max(levels) + 1)
    model._engine = SleepingEngine(model._engine, a.pass_ms / 1e3)
    app = create_app(model, "m")
    worker = app.state.forgert.batch_worker
    port = a.port or _free_port()
    server = uvicorn.Server(uvicorn_config(app, ConnectionLimits(), host="127.0.0.1", port=port, log_level="warning"))
    rows, load_before = [], os.getloadavg()[0]

    def client(clients: int, max_tokens: int) -> dict:
        code = CLIENT.format(bench=str(BENCH), port=port, clients=clients, max_tokens=max_tokens)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def drive():
        try:
            while not server.started:
                time.sleep(0.05)
            client(1, 4)    # warm-up
            for n in levels:
                before = worker.stats()
                got = client(n, a.max_tokens)
                after = worker.stats()
                steps = after["steps"] - before["steps"]
                pass_s = (after["pass_seconds"] - before["pass_seconds"]) / steps
                own = (after["busy_seconds"] - before["busy_seconds"]) / steps - pass_s
                rows.append((n, got["decode"], n / pass_s, steps, pass_s * 1e3, own * 1e3, len(got["errors"])))
        finally:
            server.should_exit = True

    threading.Thread(target=drive, daemon=True).start()
    server.run()
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs; forgert from {Path(forgert.__file__).parent}")
    print(f"engine pass: a {a.pass_ms:g} ms sleep; {a.max_tokens} tokens a request (completions, streamed); "
          f"1-minute load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print("| clients | aggregate decode tok/s | pass-bound tok/s | share | steps | pass ms | "
          "server ms/step outside the pass | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, got, bound, steps, pass_ms, own_ms, errors in rows:
        print(f"| {n} | {got:.1f} | {bound:.1f} | {100 * got / bound:.1f}% | {steps} | {pass_ms:.2f} "
              f"| {own_ms:.3f} | {errors} |")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
