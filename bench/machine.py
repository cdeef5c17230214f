"""What machine a benchmark ran on, for the tables it writes (every speed claim names its CPU), and
the environment its forgert subprocesses run in."""
from __future__ import annotations

import os
import platform
import resource
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


# Cloud CPUs often report a bare "AMD EPYC" or "Intel(R) Xeon(R) Processor", which leaves a table
# unable to say which generation ran it (the 2-vCPU VMs have been Zen 3, Zen 4 and Zen 5 under the
# same name). The generation is worked out from the family / model numbers and the flags.
_INTEL_FAMILY6 = {0x55: "Skylake-SP / Cascade Lake", 0x6A: "Ice Lake-SP", 0x6C: "Ice Lake-D",
                  0x8F: "Sapphire Rapids", 0xCF: "Emerald Rapids", 0xAD: "Granite Rapids",
                  0xAF: "Sierra Forest", 0x97: "Alder Lake", 0x9A: "Alder Lake", 0xB7: "Raptor Lake",
                  0xBA: "Raptor Lake", 0xBF: "Raptor Lake", 0xAA: "Meteor Lake", 0xC6: "Arrow Lake"}
_ISA_FLAGS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name (Linux /proc/cpuinfo, or `cpuinfo`'s text), with its generation and its
    int8 ISA extensions where the file tells them: "AMD EPYC (Zen 5, family 26 model 2; AVX-512 VNNI,
    AVX-VNNI)". Elsewhere what platform knows."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    try:
        family, model = int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return name
    flags = set(fields.get("flags", "").split())
    gen = None
    if fields.get("vendor_id") == "AuthenticAMD":
        gen = {23: "Zen / Zen 2", 25: "Zen 4" if "avx512f" in flags else "Zen 3", 26: "Zen 5"}.get(family)
    elif fields.get("vendor_id") == "GenuineIntel" and family == 6:
        gen = _INTEL_FAMILY6.get(model)
    isa = [label for flag, label in _ISA_FLAGS if flag in flags]
    detail = ", ".join(filter(None, [gen, f"family {family} model {model}"]))
    return f"{name} ({detail}" + (f"; {', '.join(isa)})" if isa else ")")


# What else the machine did while a benchmark ran. A lent machine can be shared: in one lease of the
# lent host, 16-thread decode ran at a third of its speed with its threads waiting for CPUs
# (bench/results/cpu_vs_llama_bench_gpuhost.md, lease D), and nothing in the table said so. Each row
# now carries the share of the machine's CPU time that went to neither engine: other processes'
# work ("others") and, on a virtual machine, time the hypervisor gave to other guests ("steal").

def proc_stat_cpu(text: str | None = None) -> tuple[int, int, int]:
    """(total, busy, steal) clock ticks of all CPUs from /proc/stat's first line (or `text`): busy is
    every state but idle and iowait; guest time is already inside user. (0, 0, 0) off Linux."""
    if text is None:
        try:
            with open("/proc/stat") as f:
                text = f.readline()
        except OSError:
            return 0, 0, 0
    fields = text.split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"not /proc/stat's cpu line: {text[:60]!r}")
    v = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    v += [0] * (8 - len(v))  # before Linux 2.6.11 the line stops at softirq: no steal
    total = sum(v)
    return total, total - v[3] - v[4], v[7]


def contention_pct(before: tuple[int, int, int], after: tuple[int, int, int], children_ticks: float) -> dict:
    """Shares of the CPU time between two proc_stat_cpu() readings (percent of all CPUs' time):
    "others", busy time that was neither steal nor the `children_ticks` our subprocesses used,
    and "steal". Both 0 where nothing was counted."""
    total = after[0] - before[0]
    if total <= 0:
        return {"others": 0.0, "steal": 0.0}
    steal = after[2] - before[2]
    others = (after[1] - before[1]) - steal - children_ticks
    return {"others": max(0.0, 100.0 * others / total), "steal": max(0.0, 100.0 * steal / total)}


class Contention:
    """with Contention() as c: run subprocesses; then c.pct = contention_pct over the block, the
    subprocesses' own CPU time (waited children's rusage) taken out. The benchmark driver itself
    should idle inside the block (it waits on its subprocess)."""

    def __enter__(self):
        self._stat = proc_stat_cpu()
        self._children = self._children_s()
        self.pct = {"others": 0.0, "steal": 0.0}
        return self

    def __exit__(self, *exc):
        used = (self._children_s() - self._children) * os.sysconf("SC_CLK_TCK")
        self.pct = contention_pct(self._stat, proc_stat_cpu(), used)
        return False

    @staticmethod
    def _children_s() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
