"""Per-stage times (embedding, layers, logits) from the engine's own timers, and the CPU
backend's per-op profile (time per op kind, parallel regions, thread busyness), for --profile."""
from __future__ import annotations

STAGES = ("embed", "layers", "logits")


def profiling_engine(model):
    """The model's engine with its stage timers switched on, or None when it has none.

    forgert.Model keeps its _core.Engine as `_engine`; the engine times the stages of its last
    forward call (set_profiling / last_profile) and, on the CPU, every op since set_profiling
    (cpu_profile)."""
    engine = getattr(model, "_engine", None)
    if engine is None or not hasattr(engine, "set_profiling"):
        return None
    engine.set_profiling(True)
    return engine


def format_stages(seconds: dict) -> str:
    return ", ".join(f"{stage} {seconds[stage] * 1e3:.2f} ms" for stage in STAGES)


def cpu_per_token(raw: dict | None, tokens: int) -> dict | None:
    """Engine.cpu_profile() over `tokens` forward steps, per token: each op kind's ms and
    calls and share of the op time, the parallel regions forked, and the threads' busyness
    in them (time inside work / (threads x region wall time); None when none was forked),
    in all and per op kind."""
    if raw is None or tokens < 1:
        return None

    def busyness(d):
        return d["busy_s"] / d["capacity_s"] if d["capacity_s"] > 0 else None

    total = sum(o["seconds"] for o in raw["ops"].values()) or 1.0
    ops = {name: {"ms_per_token": o["seconds"] * 1e3 / tokens, "calls_per_token": o["calls"] / tokens,
                  "share": o["seconds"] / total, "regions_per_token": o["regions"] / tokens,
                  "busyness": busyness(o)}
           for name, o in sorted(raw["ops"].items(), key=lambda kv: -kv[1]["seconds"])}
    return {"threads": raw["threads"], "split": raw["split"], "units_per_thread": raw["units_per_thread"],
            "regions_per_token": raw["regions"] / tokens, "busyness": busyness(raw), "ops": ops}


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def format_cpu_table(cpu: dict) -> list[str]:
    busy = "n/a (no region forked)" if cpu["busyness"] is None else _pct(cpu["busyness"])
    units = f", {cpu['units_per_thread']} units a thread" if cpu["split"] == "dynamic" else ""
    lines = [f"  cpu ops per decoded token ({cpu['threads']} threads, {cpu['split']} split{units}): "
             f"{cpu['regions_per_token']:.1f} parallel regions, thread busyness {busy}",
             "  op              ms/token   calls/token   share   regions/token   busy"]
    for name, o in cpu["ops"].items():
        lines.append(f"  {name:<14} {o['ms_per_token']:9.3f}   {o['calls_per_token']:11.1f}   {o['share'] * 100:4.0f}%"
                     f"   {o['regions_per_token']:13.1f}   {_pct(o['busyness']):>4}")
    return lines
