"""Echo requests (prompt logprobs, lm-eval's log-likelihood shape) arriving while chat clients
stream: how long the chats stall, with echo scored inside the batch steps (the server's
BatchWorker) against the former design, where each echo's prompt logprobs ran on slot 0
between two steps (Model.prompt_logprobs, the batch waiting). One process, one model, both
schedules measured in one run; no HTTP (the scheduler is what differs).

    python bench/echo_in_batch.py [--model PATH] [--chats 3] [--echoes 8] [--echo-tokens 200]
                                  [--max-tokens 64] [--threads 2] [--out bench/results/echo_in_batch.md]

Reported per schedule: the chats' longest gap between two tokens (and the p95 gap), the time
until every request finished, and the echoes' mean latency; then the ratio of the two. A noisy
machine skews every figure: the 1-minute load average is written with the table.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _between_steps_worker():
    from forgert.server.batch_worker import BatchWorker
    from forgert.server.generation import Piece

    class BetweenSteps(BatchWorker):
        """The former design: echo's prompt logprobs computed on slot 0 at admission, between
        two batch steps, then the choice joins the batch without its echo."""

        def _admit(self, req):
            spec = req.spec
            for index, choice in enumerate(spec.choices):
                if choice.echo is not None and spec.top_logprobs is not None:
                    lps = self.model.prompt_logprobs(choice.prompt_ids, spec.top_logprobs)
                    req.deliver(Piece(choice.echo, lps, index))
            req.spec = replace(spec, choices=[replace(c, echo=None) for c in spec.choices])
            super()._admit(req)

    return BetweenSteps


def run_schedule(worker, model, args) -> dict:
    from forgert.server.generation import ChoiceSpec, Finish, GenerationSpec, Piece
    sampling = dict(max_tokens=args.max_tokens, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0,
                    presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, stop=[],
                    ignore_eos=True)
    rng = np.random.default_rng(0)
    chats = [model.prompt_tokens(f"Tell me a long story about the number {i}.") for i in range(args.chats)]
    echoes = [rng.integers(1000, 20000, size=args.echo_tokens).tolist() for _ in range(args.echoes)]

    async def chat(ids):
        spec = GenerationSpec([ChoiceSpec(ids)], sampling, None)
        stamps = []
        async for event in worker.events(spec):
            if isinstance(event, Piece) and event.text:
                stamps.append(time.perf_counter())
        return np.diff(stamps).tolist()

    async def echo(ids, delay):
        await asyncio.sleep(delay)
        t0 = time.perf_counter()
        spec = GenerationSpec([ChoiceSpec(ids, echo="x")], dict(sampling, max_tokens=1), 1)
        async for event in worker.events(spec):
            if isinstance(event, Finish):
                pass
        return time.perf_counter() - t0

    async def main():
        t0 = time.perf_counter()
        # the echoes arrive together once the chats are decoding (lm-eval's concurrent requests)
        jobs = [chat(ids) for ids in chats] + [echo(ids, 0.5) for ids in echoes]
        out = await asyncio.gather(*jobs)
        return out, time.perf_counter() - t0

    out, wall = asyncio.run(main())
    gaps = [g for gs in out[:args.chats] for g in gs]
    return {"max_gap_s": max(gaps), "p95_gap_s": float(np.percentile(gaps, 95)), "wall_s": wall,
            "echo_latency_s": float(np.mean(out[args.chats:]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF path (default: the packaged SmolLM2)")
    ap.add_argument("--chats", type=int, default=3)
    ap.add_argument("--echoes", type=int, default=8)
    ap.add_argument("--echo-tokens", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "echo_in_batch.md"))
    args = ap.parse_args()

    import forgert
    from forgert.default_model import default_model_path
    from forgert.server.batch_worker import BatchWorker
    path = args.model or default_model_path()
    load = os.getloadavg()[0]
    results = {}
    for name, kind in (("between steps (before)", _between_steps_worker()), ("in the batch", BatchWorker)):
        model = forgert.Model(path, n_ctx=1024, threads=args.threads, parallel=args.chats + args.echoes + 1)
        results[name] = run_schedule(kind(model), model, args)
        print(name, results[name], flush=True)
    before, after = results["between steps (before)"], results["in the batch"]
    lines = [f"# Echo requests beside streaming chats ({Path(path).name})", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {args.threads} threads; "
             f"1-min load average {load:.2f} before, {os.getloadavg()[0]:.2f} after.",
             f"{args.chats} chats of {args.max_tokens} tokens; {args.echoes} echo requests of "
             f"{args.echo_tokens} prompt tokens (logprobs 1, max_tokens 1) arriving together 0.5 s "
             "into the chats' decoding.", "",
             "| schedule | chats' longest token gap | p95 gap | all done | echo latency (mean) |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['max_gap_s'] * 1e3:.0f} ms | {r['p95_gap_s'] * 1e3:.0f} ms | "
                     f"{r['wall_s']:.2f} s | {r['echo_latency_s']:.2f} s |")
    lines += ["", f"Longest chat stall: {before['max_gap_s'] / after['max_gap_s']:.2f}x shorter in the batch; "
              f"all done {before['wall_s'] / after['wall_s']:.2f}x sooner."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
