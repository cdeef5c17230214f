"""bench/machine.py's contention figures (the "others / steal" column of bench_vs_llama_bench.py's
tables): /proc/stat lines and CPU times made up here, the shares worked out by hand. No timing is
asserted."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench_scripts import load_bench_script


def load():
    return load_bench_script("machine.py")


def test_proc_stat_line():
    m = load()
    # user nice system idle iowait irq softirq steal guest guest_nice
    total, busy, steal = m.proc_stat_cpu("cpu  300 20 100 500 40 10 5 25 7 0\n")
    assert total == 300 + 20 + 100 + 500 + 40 + 10 + 5 + 25  # guest is inside user already
    assert busy == total - 500 - 40
    assert steal == 25


def test_short_proc_stat_line():
    m = load()  # kernels before 2.6.11 stop after softirq: no steal
    assert m.proc_stat_cpu("cpu 10 0 5 80 5 0 0") == (100, 15, 0)


def test_not_a_cpu_line():
    m = load()
    with pytest.raises(ValueError, match="cpu line"):
        m.proc_stat_cpu("intr 12345 0 0")


def test_shares_between_two_readings():
    m = load()
    # 1000 ticks of all CPUs passed; 500 of them busy, of which 100 steal and 300 the benchmark's
    # own subprocesses: others 100 / 1000 = 10 %, steal 100 / 1000 = 10 %
    pct = m.contention_pct((1000, 150, 0), (2000, 650, 100), children_ticks=300)
    assert pct == pytest.approx({"others": 10.0, "steal": 10.0})


def test_own_work_only_is_no_contention():
    m = load()
    # all the busy time is the subprocesses' (a rounding tick over): never below 0
    pct = m.contention_pct((1000, 100, 0), (1400, 400, 0), children_ticks=301)
    assert pct == {"others": 0.0, "steal": 0.0}


def test_no_time_passed():
    m = load()
    assert m.contention_pct((5, 1, 0), (5, 1, 0), 0) == {"others": 0.0, "steal": 0.0}


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_around_a_subprocess():
    m = load()
    with m.Contention() as c:
        subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
    # the subprocess's own CPU time is taken out; what is left depends on the machine, but each
    # share is a percentage of the CPUs' time
    assert set(c.pct) == {"others", "steal"}
    assert all(0.0 <= v <= 100.0 for v in c.pct.values())
