"""The CPU activation format option (forgert.Model's `activations`, the CLI's --activations):
values, how FORGERT_CPU_PREFILL combines with it, and refusals. Numerics: tests/test_cpu_ops.py
(against NumPy), tests/test_batch_invariance.py (alone = batched), tests/test_e2e_smollm2.py
(against transformers)."""
from __future__ import annotations

import numpy as np
import pytest

IDS = [1, 5, 9, 2, 7, 3, 11, 4]


@pytest.fixture(scope="module")
def q8_path(tiny_models):
    return str(tiny_models("llama3_untied").path("gguf-Q8_0"))


@pytest.mark.parametrize("activations, prefill_env, expected", [
    ("int16", None, {"decode": 2, "prefill": 2}),
    ("int8", None, {"decode": 1, "prefill": 1}),
    ("int8", "int8x2", {"decode": 1, "prefill": 2}),    # the env var chooses the prefill alone
    ("int16", "int8", {"decode": 2, "prefill": 1}),
    ("int8", "f32", {"decode": 1, "prefill": 0}),
])
def test_activation_parts_and_prefill_env(forgert, q8_path, monkeypatch, activations, prefill_env, expected):
    if prefill_env:
        monkeypatch.setenv("FORGERT_CPU_PREFILL", prefill_env)
    else:
        monkeypatch.delenv("FORGERT_CPU_PREFILL", raising=False)
    m = forgert.Model(q8_path, backend="cpu", threads=2, n_ctx=64, activations=activations)
    assert m._engine.cpu_activation_parts == expected
    assert m.info()["activations"] == activations


def test_int8_changes_decode_logits_only_slightly(forgert, q8_path, monkeypatch):
    """The two formats give different decode logits (the option reaches the kernels), near each
    other (this tiny random model: measured max |diff| / max |logit| 3.6e-2; bound 0.2). Accuracy
    against references: test_cpu_ops.py (NumPy), test_e2e_smollm2.py (transformers)."""
    monkeypatch.delenv("FORGERT_CPU_PREFILL", raising=False)
    rows = {}
    for a in ("int16", "int8"):
        e = forgert.Model(q8_path, backend="cpu", threads=2, n_ctx=64, activations=a)._engine
        e.forward(np.array(IDS[:-1], np.int32), 0)
        rows[a] = np.asarray(e.forward(np.array(IDS[-1:], np.int32), len(IDS) - 1))
    rel = np.abs(rows["int8"] - rows["int16"]).max() / np.abs(rows["int16"]).max()
    print(f"int8 vs int16 decode logits: max rel diff {rel:.3g}")
    assert 0 < rel < 0.2


@pytest.mark.parametrize("bad", ["int4", "INT8", "", "f32"])
def test_bad_activations_rejected(forgert, q8_path, bad):
    with pytest.raises(ValueError, match="activations must be one of 'int16', 'int8'"):
        forgert.Model(q8_path, backend="cpu", activations=bad)


def test_engine_rejects_bad_activations(forgert, q8_path):
    m = forgert.Model(q8_path, backend="cpu", threads=1, n_ctx=32)
    with pytest.raises(ValueError, match="activations must be 'int16' or 'int8', got 'int4'"):
        forgert._core.Engine(m.config.core_dict(32), m._model.core_tensors, backend="cpu", activations="int4")


def test_int8_on_metal_rejected(forgert, q8_path, monkeypatch):
    with pytest.raises(ValueError, match="CPU backend option"):
        forgert.Model(q8_path, backend="metal", activations="int8")
    monkeypatch.setenv("FORGERT_BACKEND", "metal")
    with pytest.raises(ValueError, match="CPU backend option"):
        forgert.Model(q8_path, activations="int8")


def test_bad_prefill_env_still_rejected(forgert, q8_path, monkeypatch):
    monkeypatch.setenv("FORGERT_CPU_PREFILL", "int4")
    with pytest.raises(ValueError, match="FORGERT_CPU_PREFILL=int4 is not a prefill mode"):
        forgert.Model(q8_path, backend="cpu", activations="int8")


def test_cli_flag(forgert, q8_path):
    import argparse
    from forgert.cli.common import add_model_args
    p = argparse.ArgumentParser()
    add_model_args(p)
    assert p.parse_args(["--activations", "int8"]).activations == "int8"
    assert p.parse_args([]).activations == "int16"
    with pytest.raises(SystemExit):
        p.parse_args(["--activations", "int4"])
