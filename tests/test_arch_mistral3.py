"""Mistral 3 (GGUF arch `mistral3`, HF `ministral3`: Ministral 3, Devstral Small 2): Llama with YaRN
(mscale and mscale_all_dim 1, llama.cpp's yarn_log_multiplier) and the Llama 4 query temperature,
q times 1 + beta ln(floor(pos / original) + 1) from YaRN's original context on. A tiny random
Ministral3ForCausalLM (original context 16, so the shared checks' 24-64 positions cross three
temperature steps) as an HF directory and as GGUF against transformers, on the CPU and the
emulated Metal device."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("ministral3")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def _variant(tm, **rope):
    """The tiny model's weights under other rope_parameters."""
    return ae.with_config(tm, rope_parameters={**tm.model.config.rope_parameters, **rope})


def test_yarn_and_temperature_are_visible(tm):
    """The checks are only checks if both features matter at the positions they run: plain RoPE,
    or no query temperature, moves 64 positions' logits far beyond the F32 bound."""
    ids = ae.token_ids(tm, 64, 1)
    ae.assert_visible(tm.model, _variant(tm, rope_type="default"), ids)
    ae.assert_visible(tm.model, _variant(tm, llama_4_scaling_beta=0.0), ids)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_temperature(forgert, tm, fmt):
    info = forgert.Model(str(tm.path(fmt)), backend="cpu").info()
    assert info["arch"] == "mistral3"
    assert "query temperature 1 + 0.1 ln(floor(pos / 16) + 1)" in info["features"]


def test_gguf_keys_are_the_converters(tm):
    import gguf
    r = gguf.GGUFReader(str(tm.gguf_files["F32"]))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "mistral3"
    assert float(r.fields["mistral3.attention.temperature_scale"].parts[-1][0]) == pytest.approx(0.1)
    assert float(r.fields["mistral3.rope.scaling.yarn_log_multiplier"].parts[-1][0]) == 1.0


def test_quantized_export_writes_the_converters_yarn_keys(tm, tmp_path):
    """`forgert quantize` of the HF directory writes YaRN's attention factor as the mistral3
    converter does (yarn_log_multiplier = mscale_all_dim, 1 here), and the temperature."""
    import gguf
    from forgert.gguf_export import export_gguf
    out = tmp_path / "exported.gguf"
    export_gguf(str(tm.path("hf-F32")), str(out), "f32", log=lambda msg: None)
    f = gguf.GGUFReader(str(out)).fields
    assert float(f["mistral3.rope.scaling.yarn_log_multiplier"].parts[-1][0]) == pytest.approx(1.0, abs=1e-6)
    assert "mistral3.rope.scaling.attn_factor" not in f
    assert float(f["mistral3.attention.temperature_scale"].parts[-1][0]) == pytest.approx(0.1)
