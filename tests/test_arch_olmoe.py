"""OLMoE (GGUF arch `olmoe`, HF `olmoe`: OLMoE-1B-7B): Llama with OLMo 2's QK-norm over the
whole Q and K rows (but its pre-norms) and experts whose top-k softmax weights are not
renormalised. A tiny random OlmoeForCausalLM (4 experts, top 2) as an HF directory and as GGUF
against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import arch_e2e as ae

tm, reference = ae.model_fixtures("olmoe")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_clip_qkv_is_refused_by_name(forgert, tm, tmp_path):
    ae.assert_hf_config_refused(forgert, tm, tmp_path, "clip_qkv", clip_qkv=8.0)


def test_info_names_the_layout(forgert, tm):
    feats = forgert.Model(str(tm.path("gguf-Q8_0")), backend="cpu").info()["features"]
    assert "QK-norm (RMSNorm over all of Q and over all of K)" in feats
    assert any(f.startswith("mixture of experts: 2 of 4 experts per token") and "renormalised" not in f for f in feats)
