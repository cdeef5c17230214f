"""What sequences that need their logits row in Python (logprobs, a grammar) cost the batch.

A BatchScheduler steps `--batch` sequences of the default model; this times the decode steps
(the prompts are prefilled first) with every row plain (argmax in the engine), with one row
asking for logprobs or a JSON grammar beside plain ones, and with every row asking. The
configurations alternate over --rounds rounds so that a noisy machine skews them alike; the table
gives the median step time and its ratio to the all-plain batch.

    python bench/batch_logits_rows.py [--model PATH] [--batch 8] [--steps 24] [--rounds 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402
from report import publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}


class TimedEngine:
    """The engine with the time of its last forward_batch* call kept (the rest of a step is host work)."""

    def __init__(self, engine):
        self.engine, self.last = engine, 0.0

    def __getattr__(self, name):
        attr = getattr(self.engine, name)
        if not name.startswith("forward_batch"):
            return attr

        def timed(*args):
            t0 = time.perf_counter()
            try:
                return attr(*args)
            finally:
                self.last = time.perf_counter() - t0
        return timed


def step_times(model, batch: int, steps: int, kinds: list[str]) -> list[tuple[float, float]]:
    """(step, engine call) seconds of each decode step of `batch` sequences; kinds[i]: 'plain' |
    'logprobs' | 'grammar'."""
    from forgert.batch import BatchScheduler, LogitsOptions
    from forgert.model import PREFILL_CHUNK
    from forgert.sampling import SamplingParams

    grammar = model.compile_response_format({"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}})
    options = {"plain": LogitsOptions(), "logprobs": LogitsOptions(top_logprobs=5),
               "grammar": LogitsOptions(grammar=grammar)}
    engine = TimedEngine(model._engine)
    sched = BatchScheduler(engine, model.tokenizer, PREFILL_CHUNK)
    params = SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True)
    for i in range(batch):
        prompt = model.tokenize(f"Story {i}: once upon a time, in a land far away,")
        sched.add(prompt, params, options[kinds[i % len(kinds)]])
    times = []
    while sched.busy:
        decoding = all(s.decoding for s in sched.running) and not sched.waiting
        t0 = time.perf_counter()
        sched.step()
        if decoding and len(sched.running) == batch:
            times.append((time.perf_counter() - t0, engine.last))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model path (default: forgert's default SmolLM2 model)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batch_logits_rows.md")
    args = p.parse_args(argv)
    import forgert
    from forgert.default_model import default_model_path

    model = forgert.Model(args.model or default_model_path(), threads=args.threads, n_ctx=256,
                          parallel=args.batch)
    configs = {"all plain": ["plain"],
               "1 logprobs (top 5) + plain": ["logprobs"] + ["plain"] * (args.batch - 1),
               "1 grammar + plain": ["grammar"] + ["plain"] * (args.batch - 1),
               "all logprobs (top 5)": ["logprobs"], "all grammar": ["grammar"]}
    load_before = os.getloadavg()[0]
    step_times(model, args.batch, 4, ["plain"])     # warm-up
    times = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, kinds in configs.items():
            times[name] += step_times(model, args.batch, args.steps, kinds)
    base = statistics.median(t for t, _ in times["all plain"])
    lines = ["# Logits rows in Python: cost to the batch step", "",
             f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs; 1-minute load average before / after: "
             f"{load_before:.1f} / {os.getloadavg()[0]:.1f} (other work on the machine skews every figure)",
             f"- model: {model.info()['name']}, {args.batch} sequences decoding, {args.rounds} alternating rounds "
             f"of {args.steps} steps per configuration, threads {args.threads or 'all'}",
             "- grammar: a JSON schema (one string field); its mask is computed while the engine runs",
             "- host: the step's time outside the engine call (admission, sampling on the host, "
             "logprobs, masks not ready when the pass ends, detokenizing)", "",
             "| rows | decode steps | median step (ms) | vs all plain | median host (ms) |",
             "|---|---:|---:|---:|---:|"]
    for name, ts in times.items():
        med = statistics.median(t for t, _ in ts)
        host = statistics.median(t - e for t, e in ts)
        lines.append(f"| {name} | {len(ts)} | {med * 1e3:.1f} | {med / base:.2f}x | {host * 1e3:.2f} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
