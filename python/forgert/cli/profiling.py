"""Per-stage times (embedding, layers, logits) from the engine's own timers, for --profile."""
from __future__ import annotations

STAGES = ("embed", "layers", "logits")


def profiling_engine(model):
    """The model's engine with its stage timers switched on, or None when it has none.

    forgert.Model keeps its _core.Engine as `_engine`; the engine times the stages of its last
    forward call (set_profiling / last_profile)."""
    engine = getattr(model, "_engine", None)
    if engine is None or not hasattr(engine, "set_profiling"):
        return None
    engine.set_profiling(True)
    return engine


def format_stages(seconds: dict) -> str:
    return ", ".join(f"{stage} {seconds[stage] * 1e3:.2f} ms" for stage in STAGES)
