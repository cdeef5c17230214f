"""bench/'s scripts as modules, for the tests of their arithmetic (bench/ is not a package, and its
scripts put things on sys.path when imported the usual way)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(relative: str):
    """A fresh module of bench/<relative> (e.g. "machine.py", "metal/traffic.py")."""
    path = BENCH / relative
    spec = importlib.util.spec_from_file_location("bench_" + path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
