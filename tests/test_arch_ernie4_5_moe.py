"""ERNIE 4.5 MoE (GGUF arch `ernie4_5-moe`, HF `ernie4_5_moe`: ERNIE-4.5-21B-A3B, 300B-A47B): ERNIE
4.5's attention (adjacent pairs rotated in the HF checkpoint, unpermuted in its GGUF), a dense
first layer, then experts chosen by softmax probability plus a per-expert selection bias
(moe_statics' e_score_correction_bias; llama.cpp's optional exp_probs_b), the chosen
probabilities renormalised, beside an ungated shared expert. What is ERNIE's own here; the logits
against transformers on the CPU and emulated Metal: tests/test_arch_routed_moe.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import arch_e2e as ae
import model_factory as mf
import routed_moe_factory as rmf
from test_arch_moe import bounds
from test_arch_routed_moe import check_export
from test_e2e_tiny import compare_logits

models = rmf.models_fixture()
NAME = "ernie4_5-moe"


def ids_for(vocab, n, seed):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


def without_selection_bias(model):
    changed = copy.deepcopy(model)
    import torch
    with torch.no_grad():
        for name, p in changed.named_parameters():
            if name.endswith("e_score_correction_bias"):
                p.zero_()
    return changed


def test_selection_bias_matters(forgert, models):
    model, _, _ = models(NAME)
    ae.assert_visible(model, without_selection_bias(model), ids_for(model.config.vocab_size, 64, 1))


def test_gguf_without_exp_probs_b_runs_unbiased(forgert, models, tmp_path, tiny_tokenizer):
    """llama.cpp's exp_probs_b is optional: a file without it chooses by the probabilities alone,
    as transformers does with the bias at zero."""
    import gguf
    model, files, _ = models(NAME)
    src = gguf.GGUFReader(str(files["gguf-F32"]))
    assert any(t.name.endswith("exp_probs_b.bias") for t in src.tensors)
    stripped = rmf.write_gguf(files["hf-F32"], tmp_path / "nobias.gguf", "F32", NAME, model.config, tiny_tokenizer,
                              drop=("exp_probs_b.bias",))
    ids = ids_for(model.config.vocab_size, 48, 5)
    m = forgert.Model(str(stripped), backend="cpu")
    assert not any("selection bias" in f for f in m.info()["features"])
    compare_logits(m.logits(ids), mf.reference_logits(mf.with_f16_kv(without_selection_bias(model)), ids),
                   **bounds("gguf-F32", False), what="ernie4_5-moe without exp_probs_b")


def test_info_names_the_router(forgert, models):
    _, files, _ = models(NAME)
    feats = forgert.Model(str(files["gguf-Q8_0"]), backend="cpu").info()["features"]
    assert any(f.startswith("mixture of experts: 2 of 8 experts per token (width 32, renormalised), a shared expert")
               for f in feats)
    assert "softmax router with a selection bias" in feats
    assert "dense feed-forward (width 96) in the first 1 layer" in feats


@pytest.mark.parametrize("changes,match", [
    (dict(moe_layer_interval=2), "moe_layer_interval 2"),
    (dict(moe_layer_end_index=1), "moe_layer_end_index 1"),
    (dict(use_bias=True), "use_bias"),
])
def test_unsupported_hf_layouts_are_named(forgert, models, tmp_path, changes, match):
    _, files, _ = models(NAME)
    ae.assert_hf_dir_refused(forgert, files["hf-F32"], tmp_path, match, **changes)


def test_gguf_moe_step_is_named(forgert, models, tmp_path, tiny_tokenizer):
    from forgert.errors import ModelFormatError
    model, files, _ = models(NAME)
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "step.gguf", "F32", NAME, model.config, tiny_tokenizer,
                          extra_meta={"add_interleave_moe_layer_step": 2})
    with pytest.raises(ModelFormatError, match="interleave_moe_layer_step = 2"):
        forgert.Model(str(path), backend="cpu")


def test_quantize_from_hf_dir(forgert, models, tmp_path):
    """`forgert quantize` of the HF directory writes llama.cpp's ernie4_5-moe GGUF, which runs as
    transformers does."""
    r = check_export(forgert, models, NAME, tmp_path)
    assert r.fields["general.architecture"].contents() == NAME
    assert r.fields[f"{NAME}.interleave_moe_layer_step"].contents() == 1
    assert r.fields[f"{NAME}.expert_shared_feed_forward_length"].contents() == 32
