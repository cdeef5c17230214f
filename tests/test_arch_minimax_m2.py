"""MiniMax-M2 / M2.1 (GGUF arch `minimax-m2`, HF `minimax_m2`): Llama attention with OLMo 2's
QK-norm over the whole Q and K rows and half of each head rotated (rotary_dim), every layer's
feed-forward Mixtral-style experts chosen by sigmoid score plus a per-expert selection bias, the
chosen scores renormalised. What is MiniMax-M2's own here; the logits against transformers on
the CPU and emulated Metal: tests/test_arch_routed_moe.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

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


@pytest.mark.parametrize("name, arch", [(NAME, "minimax-m2"), ("ernie4_5-moe", "ernie4_5-moe")])
def test_expert_groups_where_the_reader_has_none_are_refused(forgert, models, tmp_path, tiny_tokenizer, name, arch):
    """llama.cpp reads expert_group_count for every architecture and routes within the best
    groups wherever it is above 1; on an architecture whose reader has no groups the file is
    refused naming the key rather than routed over all the experts. A count of 1 is no grouping."""
    model, files, _ = models(name)
    one = rmf.write_gguf(files["hf-F32"], tmp_path / "one.gguf", "F32", arch, model.config, tiny_tokenizer,
                         extra_meta={"add_expert_group_count": 1, "add_expert_group_used_count": 1})
    ids = ids_for(model.config.vocab_size, 16, 3)
    np.testing.assert_array_equal(forgert.Model(str(one), backend="cpu").logits(ids),
                                  forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids))
    two = rmf.write_gguf(files["hf-F32"], tmp_path / "two.gguf", "F32", arch, model.config, tiny_tokenizer,
                         extra_meta={"add_expert_group_count": 2, "add_expert_group_used_count": 1})
    with pytest.raises(forgert.ModelFormatError, match=rf"expert_group_count 2 .* on {arch} is not supported"):
        forgert.Model(str(two), backend="cpu")


def test_nextn_layers_where_the_reader_has_none_are_refused(forgert, models, tmp_path, tiny_tokenizer):
    """llama.cpp reads nextn_predict_layers for every architecture (block_count's last blocks, not
    run); on one whose reader does not take them out (minimax-m2's has no MTP blocks) the file is
    refused naming the key rather than run with them as the model's own layers."""
    model, files, _ = models(NAME)
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "nextn.gguf", "F32", "minimax-m2", model.config,
                          tiny_tokenizer, extra_meta={"add_nextn_predict_layers": 1})
    with pytest.raises(forgert.ModelFormatError, match=r"minimax-m2 with nextn_predict_layers .* is not supported"):
        forgert.Model(str(path), backend="cpu")
