"""What machine a benchmark ran on, for the tables it writes (every speed claim names its CPU), and
the environment its forgert subprocesses run in."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def forgert_env(installed: bool = False, **extra: str) -> dict:
    """os.environ plus `extra`, for a subprocess running forgert: this tree's python/ first on
    PYTHONPATH (an in-place or editable build), unless `installed` asks for the installed package."""
    env = dict(os.environ, **extra)
    if not installed:
        env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def read_bandwidth_gbs(installed: bool = False, threads: int = 0) -> float:
    """The machine's memory read bandwidth with `threads` threads (0: all cores), GB/s, from
    forgert's C++ probe (`_core.cpu_read_bandwidth_gbs`) in a subprocess of forgert_env."""
    out = subprocess.run([sys.executable, "-c", f"from forgert import _core; print(_core.cpu_read_bandwidth_gbs({threads}))"],
                         capture_output=True, text=True, check=True, env=forgert_env(installed)).stdout
    return float(out)


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
