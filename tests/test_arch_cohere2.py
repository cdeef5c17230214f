"""Command R7B (GGUF and HF `cohere2`): Cohere's parallel block (tests/test_arch_cohere.py) with
three local layers (a window, RoPE) to one global layer without RoPE. A tiny random
Cohere2ForCausalLM (window 8, layer 3 global) as an HF directory and as GGUF against transformers,
on the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("cohere2")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_layers(forgert, tm, fmt):
    feats = forgert.Model(str(tm.path(fmt)), backend="cpu").info()["features"]
    assert "no RoPE (NoPE) in layers 3" in feats and "sliding window 8 in layers 0, 1, 2, 4" in feats


def test_global_layers_without_rope_are_visible(tm):
    """Layer 3's missing RoPE and full attention matter: the same weights with every layer local
    (a window and RoPE everywhere) move the logits of 32 positions far beyond the F32 bound."""
    ae.assert_visible(tm.model, ae.with_config(tm, layer_types=["sliding_attention"] * tm.spec.n_layers),
                      ae.token_ids(tm, 32, 1))


def test_local_layers_rotate_at_freq_base_swa(forgert, tm, tmp_path):
    """llama.cpp's cohere2 loader rotates the local layers at rope.freq_base_swa where the file
    has it; forgert read rope.freq_base there."""
    ae.check_local_theta_from_freq_base_swa(forgert, tm, tmp_path)
