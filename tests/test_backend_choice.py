"""Which backend a Model runs on, and what happens when Metal fails (python/forgert/model.py).

No Mac has built the Metal backend yet, so a Metal failure on macOS must be visible: with
backend="auto" a warning carrying Metal's own message, then the CPU; with backend="metal" or
FORGERT_BACKEND=metal (which overrides "auto") the error itself. Simulated on any OS: sys.platform
is set to "darwin" and _core.Engine replaced by a factory whose Metal engine fails.
"""
from __future__ import annotations

import sys
import types
import warnings

import pytest

from forgert import model as fm

METAL_MESSAGE = "cannot load the Metal kernels (MTLLibraryErrorCompileFailure: line 12: bad)"


class FakeCore:
    """Stands in for forgert._core: Engine(backend="metal") fails with METAL_MESSAGE."""

    def __init__(self):
        self.asked = []

    def Engine(self, cfg, tensors, backend, n_threads, n_slots=1, activations="int16"):
        self.asked.append(backend)
        if backend == "metal":
            raise RuntimeError(METAL_MESSAGE)
        return types.SimpleNamespace(backend_name=backend)


def make_engine(backend, monkeypatch, platform="darwin", env=None, activations="int16"):
    monkeypatch.setattr(sys, "platform", platform)
    if env is None:
        monkeypatch.delenv("FORGERT_BACKEND", raising=False)
    else:
        monkeypatch.setenv("FORGERT_BACKEND", env)
    core = FakeCore()
    owner = types.SimpleNamespace(_model=types.SimpleNamespace(core_tensors={}), parallel=1, activations=activations)
    engine = fm.Model._make_engine(owner, core, {}, backend, 0)
    return engine, core.asked


def test_auto_on_macos_warns_with_metals_message_and_runs_on_the_cpu(monkeypatch):
    with pytest.warns(RuntimeWarning, match="Metal backend failed") as caught:
        engine, asked = make_engine("auto", monkeypatch)
    assert METAL_MESSAGE in str(caught[0].message)
    assert asked == ["metal", "cpu"] and engine.backend_name == "cpu"


@pytest.mark.parametrize("backend,env", [("metal", None), ("auto", "metal"), ("auto", " Metal ")])
def test_metal_asked_for_raises_metals_message(monkeypatch, backend, env):
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # raised, not warned about
        with pytest.raises(RuntimeError, match="cannot load the Metal kernels"):
            make_engine(backend, monkeypatch, env=env)


def test_forgert_backend_cpu_skips_metal(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine, asked = make_engine("auto", monkeypatch, env="cpu")
    assert asked == ["cpu"]


def test_forgert_backend_does_not_override_an_explicit_backend(monkeypatch):
    engine, asked = make_engine("cpu", monkeypatch, env="metal")
    assert asked == ["cpu"]


def test_forgert_backend_must_name_a_backend(monkeypatch):
    with pytest.raises(ValueError, match="FORGERT_BACKEND must be one of auto, cpu, metal, got 'cuda'"):
        make_engine("auto", monkeypatch, env="cuda")


def test_auto_off_macos_is_the_cpu_without_trying_metal(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine, asked = make_engine("auto", monkeypatch, platform="linux")
    assert asked == ["cpu"]


# ----------------------------------------------------------------------------- available memory

def test_available_memory_on_macos_is_free_plus_inactive_pages(monkeypatch):
    # 1000 free + 3000 inactive pages: what Activity Monitor and psutil count as available,
    # not the machine's total RAM (what this returned before).
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(fm, "_macos_free_inactive_pages", lambda: (1000, 3000))
    monkeypatch.setattr(fm.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 16384}[name])
    assert fm.available_memory_bytes() == 4000 * 16384


def test_available_memory_on_macos_unknown_when_the_kernel_call_fails(monkeypatch):
    def fail():
        raise OSError("host_statistics64 failed with kern_return_t 5")
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(fm, "_macos_free_inactive_pages", fail)
    assert fm.available_memory_bytes() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_available_memory_on_linux_is_memavailable():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    want = int(fields["MemAvailable"].split()[0]) * 1024
    # Memory moves between the two reads; the kernel's figure is the reference.
    assert abs(fm.available_memory_bytes() - want) < 256 << 20


def test_auto_with_one_part_activations_runs_on_the_cpu_without_trying_metal(monkeypatch):
    """activations="int8" exists only on the CPU backend: "auto" goes there directly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine, asked = make_engine("auto", monkeypatch, activations="int8")
    assert asked == ["cpu"] and engine.backend_name == "cpu"


def test_forgert_backend_metal_with_one_part_activations_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="CPU backend option"):
        make_engine("auto", monkeypatch, env="metal", activations="int8")
