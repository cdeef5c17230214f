"""Arcee (GGUF arch `arcee`, HF `arcee`: AFM-4.5B): Llama with a plain feed-forward,
x += w_down relu(w_up xn)^2, no gate matrix (a ReLU-squared op on the CPU and Metal:
tests/test_cpu_ops.py, tests/test_metal_ops.py). A tiny random ArceeForCausalLM as an HF
directory and as GGUF against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import arch_e2e as ae

tm, reference = ae.model_fixtures("arcee")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_info_names_the_feed_forward(forgert, tm):
    feats = forgert.Model(str(tm.path("gguf-Q8_0")), backend="cpu").info()["features"]
    assert "plain ReLU-squared feed-forward (no gate)" in feats
