"""What machine a benchmark ran on, for the tables it writes (every speed claim names its CPU), and
the environment its forgert subprocesses run in."""
from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def forgert_env(installed: bool = False, **extra: str) -> dict:
    """os.environ plus `extra`, for a subprocess running forgert: this tree's python/ first on
    PYTHONPATH (an in-place or editable build), unless `installed` asks for the installed package."""
    env = dict(os.environ, **extra)
    if not installed:
        env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
