"""GLM-4 (GGUF arch `glm4`, HF `glm4`: GLM-4-9B/32B-0414, GLM-Z1): Llama with Gemma's sandwich
norms (pre and post around attention and the MLP), q/k/v biases, gate_up_proj fused (split
zero-copy, as Phi-3's), and half of each head rotated over adjacent pairs (llama.cpp's NORM
type, in the HF checkpoint as well). A tiny random Glm4ForCausalLM (heads of 32, 16 dims
rotating) as an HF directory and as GGUF against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("glm4")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_partial_rotary_is_visible(tm):
    """Rotating all of each head instead of its first half moves the logits far beyond the F32
    bound, so the checks above see the rotated width."""
    params = {**tm.model.config.rope_parameters, "partial_rotary_factor": 1.0}
    ae.assert_visible(tm.model, ae.with_config(tm, rope_parameters=params), ae.token_ids(tm, 32, 1))


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_layout(forgert, tm, fmt):
    info = forgert.Model(str(tm.path(fmt)), backend="cpu").info()
    assert info["arch"] == "glm4"
    assert "post-attention and post-feed-forward norms" in info["features"]
    assert "partial rotary (16 of 32 dims)" in info["features"]


def test_gguf_keeps_gate_up_fused(tm):
    import gguf
    shapes = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(tm.gguf_files["F32"])).tensors}
    assert shapes["blk.0.ffn_up.weight"] == [tm.spec.hidden, 2 * tm.spec.ffn] and "blk.0.ffn_gate.weight" not in shapes
    assert "blk.1.post_attention_norm.weight" in shapes and "blk.1.post_ffw_norm.weight" in shapes


@pytest.mark.parametrize("key,value,what", [("glm4.nextn_predict_layers", 1, "nextn_predict_layers"),
                                            ("glm4.rope.dimension_sections", [8, 12, 12, 0], "multimodal RoPE")])
def test_what_it_cannot_run_is_refused_by_name(forgert, tm, tmp_path, key, value, what):
    import model_factory as mf
    from forgert.errors import ModelFormatError
    path = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "x.gguf", "F32", extra_keys={key: value})
    with pytest.raises(ModelFormatError, match=what):
        forgert.Model(str(path), backend="cpu")
