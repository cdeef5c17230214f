"""ERNIE 4.5 dense (GGUF arch `ernie4_5`, HF `ernie4_5`: ERNIE-4.5-0.3B): Llama whose HF checkpoint
rotates adjacent pairs of each head (llama.cpp's NORM type, its converter leaving Q/K as they
are). A tiny random Ernie4_5ForCausalLM as an HF directory and as GGUF against transformers, on
the CPU and emulated Metal."""
from __future__ import annotations

import json

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("ernie4_5")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_use_bias_is_refused_by_name(forgert, tm, tmp_path):
    """use_bias=true puts biases on the MLP too, which forgert does not run: refused, saying so."""
    import shutil
    from forgert.errors import ModelFormatError
    d = tmp_path / "biased"
    shutil.copytree(tm.path("hf-F32"), d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "use_bias": True}))
    with pytest.raises(ModelFormatError, match="use_bias"):
        forgert.Model(str(d), backend="cpu")
