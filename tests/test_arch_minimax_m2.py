"""MiniMax-M2 / M2.1 (GGUF arch `minimax-m2`, HF `minimax_m2`): Llama attention with OLMo 2's
QK-norm over the whole Q and K rows and half of each head rotated (rotary_dim), every layer's
feed-forward Mixtral-style experts chosen by sigmoid score plus a per-expert selection bias, the
chosen scores renormalised. What is MiniMax-M2's own here; the logits against transformers on
the CPU and emulated Metal: tests/test_arch_routed_moe.py.
"""
from __future__ import annotations

import copy

import numpy as np

import arch_e2e as ae
import routed_moe_factory as rmf
from test_arch_routed_moe import check_export

models = rmf.models_fixture()
NAME = "minimax-m2"


def ids_for(vocab, n, seed):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


def test_selection_bias_matters(forgert, models):
    import torch
    model, _, _ = models(NAME)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for name, b in changed.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.zero_()
    ae.assert_visible(model, changed, ids_for(model.config.vocab_size, 64, 1))


def test_info_names_the_layout(forgert, models):
    _, files, _ = models(NAME)
    feats = forgert.Model(str(files["gguf-Q8_0"]), backend="cpu").info()["features"]
    assert "QK-norm (RMSNorm over all of Q and over all of K)" in feats
    assert "partial rotary (16 of 32 dims)" in feats
    assert "sigmoid router with a selection bias" in feats
    assert any(f.startswith("mixture of experts: 2 of 8 experts per token (width 32, renormalised)") for f in feats)


def test_quantize_from_hf_dir(forgert, models, tmp_path):
    """`forgert quantize` of the HF directory writes llama.cpp's minimax-m2 GGUF, which runs as
    transformers does."""
    r = check_export(forgert, models, NAME, tmp_path)
    assert r.fields[f"{NAME}.expert_gating_func"].contents() == 2
    assert "blk.0.exp_probs_b.bias" in {t.name for t in r.tensors}
