"""Nemotron (GGUF arch `nemotron`, HF `nemotron`: Nemotron-Mini-4B, Minitron): Llama with
LayerNorm1P (the row normalised, times 1 + w, plus b; GGUF stores 1 + w as llama.cpp's converter
writes it), a plain ReLU-squared feed-forward and half of each head rotated. A tiny random
NemotronForCausalLM as an HF directory and as GGUF against transformers, on the CPU and emulated
Metal."""
from __future__ import annotations

import arch_e2e as ae

tm, reference = ae.model_fixtures("nemotron")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_info_names_the_layout(forgert, tm):
    feats = forgert.Model(str(tm.path("gguf-Q8_0")), backend="cpu").info()["features"]
    assert "LayerNorm (with bias)" in feats and "plain ReLU-squared feed-forward (no gate)" in feats
    assert "partial rotary (8 of 16 dims)" in feats
