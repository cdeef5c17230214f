"""How many CPU threads to use: one per physical core this process may run on.

Decode and prefill are bound by memory bandwidth and SIMD units, which SMT siblings share, and a
thread pool larger than the CPUs the process may use makes every barrier wait for a descheduled
thread (measured: 16 threads on 2 cores decode 12x slower than 2).
"""
from __future__ import annotations

import os
import subprocess
import sys

# The most CPU threads a Model takes: llama.cpp's GGML_MAX_N_THREADS. 10,000 threads on 2 cores took
# 14 s for 2 tokens, 10**9 was a std::bad_alloc, and past a C int a pybind TypeError.
MAX_THREADS = 512


class OversubscribedWarning(UserWarning):
    """More threads than the CPUs the process may use."""


def allowed_cpus() -> list:
    """Logical CPU ids this process may run on (its affinity mask where the OS has one)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cores_from_sysfs(cpus, root: str = "/sys/devices/system/cpu") -> int | None:
    """Distinct physical cores among `cpus`, from each CPU's list of SMT siblings
    (topology/core_cpus_list, or thread_siblings_list on kernels before 5.7); None if unreadable."""
    cores = set()
    for cpu in cpus:
        topology = os.path.join(root, f"cpu{cpu}", "topology")
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                with open(os.path.join(topology, name)) as f:
                    cores.add(f.read().strip())
                break
            except OSError:
                continue
        else:
            return None
    return len(cores) or None


def cores_from_cpuinfo(cpus, text: str) -> int | None:
    """Distinct (physical id, core id) pairs among `cpus` in /proc/cpuinfo's text; None when it
    does not say (e.g. most arm64 kernels)."""
    wanted, cores = set(cpus), set()
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        if "core id" not in fields:
            return None
        if int(fields["processor"]) in wanted:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def _macos_cores() -> int | None:
    # Performance cores on Apple silicon (efficiency cores would hold the pool back), else all.
    for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and int(out.stdout.strip()) > 0:
                return int(out.stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            continue
    return None


def physical_cores() -> int:
    """Physical cores available to this process (at least 1)."""
    cpus = allowed_cpus()
    if sys.platform == "darwin":
        n = _macos_cores()
    else:
        n = cores_from_sysfs(cpus)
        if n is None:
            try:
                with open("/proc/cpuinfo") as f:
                    n = cores_from_cpuinfo(cpus, f.read())
            except OSError:
                n = None
    return max(1, min(n or len(cpus), len(cpus)))
