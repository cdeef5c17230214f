"""OLMo 3 (HF `olmo3`; GGUF arch `olmo2` with a sliding window, as llama.cpp's converter writes
it): OLMo 2's layer with three local layers (a window, RoPE without the model's scaling) to one
global layer (YaRN). The two RoPE tables differ in their frequencies and in YaRN's cos/sin
attention factor, which the core applies per table. A tiny random Olmo3ForCausalLM (window 8,
YaRN x4 over an original context of 16 on layer 3 only) as an HF directory and as GGUF against
transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("olmo3")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_local_rope_is_visible(tm):
    """The local layers' unscaled RoPE matters: the same weights with YaRN on every layer (as one
    RoPE for all layers would give) move the logits of 48 positions far beyond the F32 bound."""
    import copy
    params = copy.deepcopy(tm.model.config.rope_parameters)
    params["sliding_attention"] = dict(params["full_attention"])
    ae.assert_visible(tm.model, ae.with_config(tm, rope_parameters=params), ae.token_ids(tm, 48, 1))


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_layout(forgert, tm, fmt):
    info = forgert.Model(str(tm.path(fmt)), backend="cpu").info()
    assert info["arch"] == "olmo2"
    feats = info["features"]
    assert "2 RoPE tables (local / global layers)" in feats and "sliding window 8 in layers 0, 1, 2, 4" in feats
    assert any(f.startswith("YaRN x4 over an original context of 16") for f in feats)


def test_gguf_without_pattern_takes_llama_cpps_default(forgert, tm, reference, tmp_path):
    """An olmo2 file with a window but no pattern array: llama.cpp's olmo2 loader makes every
    fourth layer global (layer 3 here), as transformers' Olmo3Config does by default, so the file
    runs as the model it came from."""
    import model_factory as mf
    path = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "no-pattern.gguf", "F32", swa_pattern=False)
    ids = ae.token_ids(tm, 48, 7)
    ae.compare_logits(forgert.Model(str(path), backend="cpu").logits(ids), mf.reference_logits(reference("gguf-F32"), ids),
                      **ae.bounds_for("gguf-F32", 48), what="olmo3 without pattern")
