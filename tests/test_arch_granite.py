"""Granite (GGUF arch `granite`, HF `granite`: IBM Granite 3): Llama with four multipliers, the
embeddings times embedding_multiplier, attention scores times attention_multiplier (instead of
1 / sqrt(head_dim)), each sub-layer's output times residual_multiplier before the residual add,
and the logits divided by logits_scaling. A tiny random GraniteForCausalLM (every multiplier far
from 1) as an HF directory and as GGUF against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("granite")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


@pytest.mark.parametrize("multiplier", ["embedding_multiplier", "residual_multiplier", "attention_multiplier",
                                        "logits_scaling"])
def test_each_multiplier_is_visible(tm, multiplier):
    """The checks are only checks if each multiplier matters: the same weights with it at its
    neutral value move the logits far beyond the F32 bound."""
    neutral = tm.spec.head_dim ** -0.5 if multiplier == "attention_multiplier" else 1.0
    ae.assert_visible(tm.model, ae.with_config(tm, **{multiplier: neutral}), ae.token_ids(tm, 32, 1))


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_multipliers(forgert, tm, fmt):
    info = forgert.Model(str(tm.path(fmt)), backend="cpu").info()
    assert info["arch"] == "granite"
    assert "sub-layer outputs times 0.5, logits divided by 4" in info["features"]


def test_gguf_keys_are_the_converters(tm):
    import gguf
    f = gguf.GGUFReader(str(tm.gguf_files["F32"])).fields
    assert bytes(f["general.architecture"].parts[-1]).decode() == "granite"
    for key, want in (("logit_scale", 4.0), ("residual_scale", 0.5), ("embedding_scale", 3.0),
                      ("attention.scale", 0.1)):
        assert float(f[f"granite.{key}"].parts[-1][0]) == pytest.approx(want)
