"""Gemma 1 (GGUF arch `gemma`, HF `gemma`: Gemma 2B / 7B, CodeGemma): Llama with Gemma's GeGLU
(tanh GELU), RMSNorms that multiply by 1 + w (GGUF stores 1 + w, as llama.cpp's converter writes
it), embeddings times sqrt(hidden) and every layer global. A tiny random GemmaForCausalLM as an HF
directory and as GGUF against transformers, on the CPU and emulated Metal (Gemma 2 and 3:
tests/test_arch_gemma.py)."""
from __future__ import annotations

import json

import arch_e2e as ae

tm, reference = ae.model_fixtures("gemma")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_hidden_act_gelu_runs_the_tanh_gelu(forgert, tm, reference, tmp_path):
    """Gemma 1's configs say hidden_act "gelu" without hidden_activation; transformers runs the
    tanh approximation then, and so does forgert."""
    import shutil
    import model_factory as mf
    d = tmp_path / "gelu"
    shutil.copytree(tm.path("hf-F32"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("hidden_activation", None)
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    ids = ae.token_ids(tm, 32, 5)
    ae.compare_logits(forgert.Model(str(d), backend="cpu").logits(ids), mf.reference_logits(reference("hf-F32"), ids),
                      **ae.bounds_for("hf-F32", 32), what="gemma hidden_act gelu")


def test_info_names_the_features(forgert, tm):
    feats = forgert.Model(str(tm.path("gguf-Q8_0")), backend="cpu").info()["features"]
    assert "GeGLU feed-forward (tanh GELU)" in feats and "embeddings scaled by 8" in feats
    assert not [f for f in feats if "soft-capping" in f or "sliding window" in f or "post-" in f]
