"""ERNIE 4.5 dense (GGUF arch `ernie4_5`, HF `ernie4_5`: ERNIE-4.5-0.3B): Llama whose HF checkpoint
rotates adjacent pairs of each head (llama.cpp's NORM type, its converter leaving Q/K as they
are). A tiny random Ernie4_5ForCausalLM as an HF directory and as GGUF against transformers, on
the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("ernie4_5")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_use_bias_is_refused_by_name(forgert, tm, tmp_path):
    """use_bias=true puts biases on the MLP too, which forgert does not run: refused, saying so."""
    ae.assert_hf_config_refused(forgert, tm, tmp_path, "use_bias", use_bias=True)
