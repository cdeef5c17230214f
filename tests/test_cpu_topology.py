"""Thread count: one per physical core the process may use; a warning above the CPU count.

Topology parsing is checked against hand-written sysfs trees and /proc/cpuinfo texts (the
expected core counts are counted by hand), and the live machine against lscpu."""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import pytest

from forgert import cpu_topology
from forgert.cli import main


def write_sysfs(root, siblings: dict, name="core_cpus_list"):
    """siblings: cpu id -> its SMT siblings list as the kernel prints it ("0,4", "2-3")."""
    for cpu, text in siblings.items():
        d = root / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / name).write_text(text + "\n")
    return str(root)


# 2 sockets x 2 cores x 2 SMT threads; Linux numbers the second thread of each core after all
# the first ones: cores {0,4} {1,5} on socket 0, {2,6} {3,7} on socket 1.
SMT_2S = {0: "0,4", 1: "1,5", 2: "2,6", 3: "3,7", 4: "0,4", 5: "1,5", 6: "2,6", 7: "3,7"}


@pytest.mark.parametrize("cpus,cores", [
    (range(8), 4),            # every thread: 4 cores
    ([0, 4], 1),              # both threads of one core
    ([0, 1, 2, 3], 4),        # first threads only
    ([0, 1, 4], 2),
])
def test_sysfs_counts_cores_among_allowed_cpus(tmp_path, cpus, cores):
    assert cpu_topology.cores_from_sysfs(cpus, write_sysfs(tmp_path, SMT_2S)) == cores


def test_sysfs_old_kernels_and_ranges(tmp_path):
    # thread_siblings_list (kernels < 5.7), ranges for adjacent sibling numbering: 3 cores
    root = write_sysfs(tmp_path, {0: "0-1", 1: "0-1", 2: "2-3", 3: "2-3", 4: "4"}, "thread_siblings_list")
    assert cpu_topology.cores_from_sysfs(range(5), root) == 3


def test_sysfs_unreadable_gives_none(tmp_path):
    assert cpu_topology.cores_from_sysfs([0, 1], str(tmp_path)) is None


def cpuinfo(entries) -> str:
    """entries: (processor, physical id, core id); None ids leave the line out."""
    blocks = []
    for proc, phys, core in entries:
        lines = [f"processor\t: {proc}", "vendor_id\t: GenuineIntel", "model name\t: Xeon"]
        if phys is not None:
            lines.append(f"physical id\t: {phys}")
        if core is not None:
            lines.append(f"core id\t\t: {core}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n\n"


def test_cpuinfo_counts_socket_and_core_pairs():
    # two sockets whose core ids both start at 0, two threads per core: 4 cores
    text = cpuinfo([(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1), (4, 0, 0), (5, 0, 1), (6, 1, 0), (7, 1, 1)])
    assert cpu_topology.cores_from_cpuinfo(range(8), text) == 4
    assert cpu_topology.cores_from_cpuinfo([0, 4], text) == 1
    assert cpu_topology.cores_from_cpuinfo([0, 2], text) == 2     # core 0 of each socket


def test_cpuinfo_without_core_ids_gives_none():
    assert cpu_topology.cores_from_cpuinfo([0, 1], cpuinfo([(0, None, None), (1, None, None)])) is None


def test_physical_cores_respects_affinity(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 5}, raising=False)
    monkeypatch.setattr(cpu_topology.sys, "platform", "linux")
    real_sysfs = cpu_topology.cores_from_sysfs
    root = write_sysfs(tmp_path, SMT_2S)
    monkeypatch.setattr(cpu_topology, "cores_from_sysfs", lambda cpus: real_sysfs(cpus, root))
    assert cpu_topology.allowed_cpus() == [1, 5]
    assert cpu_topology.physical_cores() == 1     # two threads of core {1,5}


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="needs lscpu")
def test_physical_cores_matches_lscpu():
    out = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    allowed = set(os.sched_getaffinity(0))
    rows = [line.split(",") for line in out.splitlines() if not line.startswith("#")]
    cores = {(sock, core) for cpu, core, sock in rows if int(cpu) in allowed}
    assert cpu_topology.physical_cores() == len(cores)


def test_model_defaults_to_physical_cores_and_warns_on_oversubscription(tiny_models):
    import forgert
    path = tiny_models("llama_tied").path("gguf-F32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the default must not warn
        assert forgert.Model(path, n_ctx=64).threads == cpu_topology.physical_cores()
    too_many = len(cpu_topology.allowed_cpus()) + 1
    with pytest.warns(cpu_topology.OversubscribedWarning, match=f"threads={too_many} is more than"):
        assert forgert.Model(path, n_ctx=64, threads=too_many).threads == too_many


def test_cli_warns_on_oversubscription_in_its_own_words(tiny_models, capsys):
    path = tiny_models("llama_tied").path("gguf-F32")
    n_cpus = len(cpu_topology.allowed_cpus())
    assert main(["run", "hello", "--raw", "-m", str(path), "-n", "2", "--n-ctx", "64",
                 "--threads", str(n_cpus + 1)]) == 0
    err = capsys.readouterr().err
    assert f"forgert: warning: --threads {n_cpus + 1} is more than the {n_cpus} CPUs" in err
    assert "threads=" not in err and "UserWarning" not in err       # said once, in CLI terms
