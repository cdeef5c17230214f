"""The Metal ops layer's encoding decisions, checked without running kernels: builds
tests/metal/encoder_test.cpp (MetalBackend over a recording Device) with the host C++
compiler and runs it. It asserts barrier placement (only on read-after-write,
write-after-write and write-after-read hazards inside one command buffer), legal
dispatch geometry for Apple GPUs on shapes around every tile size, and InputError on
mismatched shapes, the zero-copy view plan for weights past maxBufferLength, that a
decode step of the model commits no empty command buffer and waits once, and the pipelined
decode's command stream (commit of step t+1 before the wait for step t), residency once and
buffer lifetimes under unretained command buffers."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cpp"
METAL = SRC / "backends" / "metal"
SOURCES = [ROOT / "tests" / "metal" / "encoder_test.cpp", METAL / "metal_backend.cpp", METAL / "metal_ops.cpp",
           METAL / "hazard_tracker.cpp", METAL / "buffer_views.cpp", METAL / "device_metal_unavailable.cpp",
           METAL / "device_emulated_unavailable.cpp", SRC / "core" / "dtype.cpp", SRC / "model" / "llama_model.cpp",
           SRC / "model" / "decode_pipeline.cpp", SRC / "model" / "row_scores.cpp",
           SRC / "model" / "weights.cpp", SRC / "model" / "tensor_layout.cpp", SRC / "core" / "backend.cpp",
           SRC / "model" / "per_layer_embeddings.cpp", SRC / "model" / "gemma4_moe.cpp",
           SRC / "model" / "altup.cpp", SRC / "backends" / "cpu" / "thread_pool.cpp"]


def host_compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_encoder_decisions(tmp_path):
    cxx = host_compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "encoder_test"
    build = subprocess.run([cxx, "-std=c++17", "-O0", "-Wall", "-I", str(SRC), *map(str, SOURCES), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failure(s)" in run.stdout
