"""GLM-4.5 / 4.6 / 4.7 (GGUF arch `glm4moe`, HF `glm4_moe`): Llama attention with q/k/v biases,
half of each head rotated over its two halves and an optional per-head QK-norm; a dense first
layer, then experts under DeepSeek V3's router (sigmoid scores, a per-expert selection bias that
steers the choice but not the weights, group-limited choice, renormalised or not, times
routed_scaling_factor) beside an ungated shared expert; and a multi-token-prediction layer after
the model's own, which is not run. What is GLM-4.5's own: each router setting matters, the MTP
layer is skipped, the metadata is checked, `forgert quantize` writes llama.cpp's keys. The logits
against transformers, on the CPU and emulated Metal: tests/test_arch_routed_moe.py.
"""
from __future__ import annotations

import copy
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import arch_e2e as ae
import routed_moe_factory as rmf
from test_arch_routed_moe import check_export

models = rmf.models_fixture()


def ids_for(vocab, n, seed):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


@pytest.mark.parametrize("change", [
    dict(e_score_correction_bias=0.0),   # the selection bias dropped
    dict(n_group=1),                     # every group chosen from
    dict(routed_scaling_factor=1.0),
    dict(norm_topk_prob=False),
])
def test_each_router_setting_matters(forgert, models, change):
    """Each of the router's settings moves transformers' logits far beyond the F32 bound, so the
    agreement above checks every one of them."""
    import torch
    model, files, _ = models("glm4moe")
    changed = copy.deepcopy(model)
    if "e_score_correction_bias" in change:
        with torch.no_grad():
            for name, b in changed.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.zero_()
    else:
        key, value = next(iter(change.items()))
        setattr(changed.config, key, value)
        for layer in changed.model.layers[changed.config.first_k_dense_replace:]:
            attr = {"n_group": "num_group"}.get(key, key)
            setattr(layer.mlp.gate, attr, value)
    ae.assert_visible(model, changed, ids_for(model.config.vocab_size, 64, 1))


def test_mtp_layer_is_not_run(forgert, models, tmp_path, tiny_tokenizer):
    """The GGUF without its MTP block (block_count 3, nextn_predict_layers 0, as some quantizers
    write it) gives the logits of the file with it: the block is skipped, not run."""
    model, files, _ = models("glm4moe")
    bare = rmf.write_gguf(files["hf-F32"], tmp_path / "no-mtp.gguf", "F32", "glm4moe", model.config, tiny_tokenizer,
                          mtp=False)
    ids = ids_for(model.config.vocab_size, 16, 3)
    with_mtp = forgert.Model(str(files["gguf-F32"]), backend="cpu")
    assert with_mtp.info()["n_layers"] == 3
    assert "1 multi-token-prediction layer in the file, not run" in with_mtp.info()["features"]
    np.testing.assert_array_equal(with_mtp.logits(ids), forgert.Model(str(bare), backend="cpu").logits(ids))


def test_trunk_only_and_mtp_only_files(forgert, models, tmp_path, tiny_tokenizer):
    """llama.cpp's glm4moe loader reads a file whose block_count and nextn_predict_layers count an
    MTP block it does not hold (trunk only: the logits of the whole file), and one that holds only
    the MTP block (a draft head for its MTP speculative decoding), which forgert refuses as such
    rather than as a model missing blk.0."""
    model, files, _ = models("glm4moe")
    c = model.config
    trunk = rmf.write_gguf(files["hf-F32"], tmp_path / "trunk.gguf", "F32", "glm4moe", c, tiny_tokenizer,
                           mtp_blocks="trunk")
    ids = ids_for(c.vocab_size, 16, 3)
    np.testing.assert_array_equal(forgert.Model(str(trunk), backend="cpu").logits(ids),
                                  forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids))
    mtp_only = rmf.write_gguf(files["hf-F32"], tmp_path / "mtp-only.gguf", "F32", "glm4moe", c, tiny_tokenizer,
                              mtp_blocks="mtp")
    with pytest.raises(forgert.ModelFormatError, match=r"holds only the multi-token-prediction layers "
                                                       r"\(nextn_predict_layers 1: blk\.3\.\*, no blk\.0\.\*\)"):
        forgert.Model(str(mtp_only), backend="cpu")


def test_vision_models_language_model_runs_on_text(forgert, models, tmp_path, tiny_tokenizer):
    """GLM-4.5V / 4.6V's language model as llama.cpp's converter writes it: glm4moe with
    rope.dimension_sections (its multimodal RoPE, llama.cpp's MROPE type: each section of the
    rotated pairs turned by its own position id, all of them the token's position on text). On
    text that is glm4moe's 1-D RoPE: the logits of the file without the sections, which
    test_arch_routed_moe holds to transformers; forgert info says it runs text only. It was
    refused as a multimodal RoPE."""
    model, files, _ = models("glm4moe-air")
    c = model.config
    half = int(c.head_dim * c.rope_parameters["partial_rotary_factor"]) // 2
    sections = [half - 2 * (half // 4), half // 4, half // 4, 0]
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "glm45v.gguf", "F32", "glm4moe", c, tiny_tokenizer,
                          extra_meta={"add_rope_dimension_sections": sections})
    ids = ids_for(c.vocab_size, 32, 5)
    m = forgert.Model(str(path), backend="cpu")
    np.testing.assert_array_equal(m.logits(ids), forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids))
    assert any("the language model of a vision model: text only" in f for f in m.info()["features"])


def test_info_names_the_router(forgert, models):
    _, files, _ = models("glm4moe")
    feats = forgert.Model(str(files["gguf-Q8_0"]), backend="cpu").info()["features"]
    assert "sigmoid router with a selection bias, 1 of 2 expert groups, weights times 2.5" in feats
    assert "dense feed-forward (width 96) in the first 1 layer" in feats
    assert "QK-norm (RMSNorm on each head of Q and K)" in feats
    assert any(f.startswith("mixture of experts: 2 of 8 experts per token (width 32, renormalised), a shared expert")
               for f in feats)
    _, files, _ = models("glm4moe-air")
    feats = forgert.Model(str(files["gguf-F32"]), backend="cpu").info()["features"]
    assert not any("QK-norm" in f for f in feats)


@pytest.mark.parametrize("meta,match", [
    ({"add_expert_gating_func": SimpleNamespace(value=3)}, "expert_gating_func 3 is not supported"),
    ({"add_expert_group_count": 3, "add_expert_group_used_count": 1}, "do not split into 3 groups"),
    ({"add_leading_dense_block_count": 9}, "9 leading dense layers of only 3"),
    ({"add_rope_dimension_sections": [8, 4, 4, 0]}, r"rope.dimension_sections \[8, 4, 4, 0\] do not fit the 8 "
                                                    r"rotated pairs"),
])
def test_bad_router_metadata_is_named(forgert, models, tmp_path, tiny_tokenizer, meta, match):
    from forgert.errors import ModelFormatError
    model, files, _ = models("glm4moe")
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "bad.gguf", "F32", "glm4moe", model.config, tiny_tokenizer,
                          extra_meta=meta)
    with pytest.raises(ModelFormatError, match=match):
        forgert.Model(str(path), backend="cpu")


def test_hf_mtp_layer_tensors_are_skipped_and_a_missing_bias_named(forgert, models, tmp_path):
    """The HF checkpoint's model.layers.3.* (the MTP layer) are not read; a router without its
    e_score_correction_bias is refused naming the tensor."""
    from safetensors.numpy import load_file, save_file
    from forgert.errors import ModelFormatError
    _, files, _ = models("glm4moe")
    d = tmp_path / "nobias"
    shutil.copytree(files["hf-F32"], d)
    sd = load_file(str(d / "model.safetensors"))
    assert "model.layers.3.eh_proj.weight" in sd
    del sd["model.layers.1.mlp.gate.e_score_correction_bias"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="missing tensor 'blk.1.exp_probs_b.bias'"):
        forgert.Model(str(d), backend="cpu")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["num_nextn_predict_layers"] == 1


def test_quantize_from_hf_dir(forgert, models, tmp_path):
    """`forgert quantize` of the HF directory writes llama.cpp's glm4moe GGUF (the MTP layer left
    out), which runs as transformers does; the gguf package reads its router keys back."""
    r = check_export(forgert, models, "glm4moe", tmp_path)
    field = lambda key: r.fields[key].contents()   # noqa: E731
    assert field("general.architecture") == "glm4moe"
    assert field("glm4moe.expert_gating_func") == 2 and field("glm4moe.leading_dense_block_count") == 1
    assert field("glm4moe.expert_group_count") == 2 and abs(field("glm4moe.expert_weights_scale") - 2.5) < 1e-6
    assert "blk.1.exp_probs_b.bias" in {t.name for t in r.tensors}
