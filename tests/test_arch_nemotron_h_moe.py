"""Nemotron 3 (tests/nemotron_h_factory.py: transformers' NemotronHForCausalLM with "E" blocks, GGUF
nemotron_h_moe after llama.cpp's converter) against transformers: logits on prefill and decode, as
HF F32 and GGUF F32 / Q8_0, on the CPU and emulated Metal; 32 greedy tokens (Metal's equal to the
CPU's). Two models: Nano's layout (experts after Mamba2 and attention blocks; a sigmoid router with
a selection bias, renormalised, times routed_scaling_factor; an ungated ReLU-squared shared expert)
and Super's latent MoE (experts on fc1_latent_proj x, brought back by fc2_latent_proj; 2 of 4
expert groups; unnormalised weights) with a multi-token-prediction block in both files, skipped.

Bounds are tests/test_arch_moe.py's (the same kernels and paths). Measured here (64-token prefill,
24 decode steps), max_rel / rms_rel, the larger of the two models:
  F32 (HF and GGUF), CPU: 1.1e-5 / 8.4e-6; Metal: 1.1e-5 / 8.4e-6 (bounds 5e-4 / 2.5e-4)
  Q8_0, CPU: prefill 1.3e-4 / 9.6e-5, decode 1.2e-4 / 9.3e-5 (bounds 3e-3 / 2e-3)
  Q8_0, Metal: prefill 7.8e-4 / 6.1e-4, decode 7.1e-6 / 4.0e-6 (bounds 5e-3 / 4e-3); argmax 1.0 everywhere
"""
from __future__ import annotations


import pytest

import arch_e2e as ae
import nemotron_h_factory as nf
from conftest import backend_params, require_backend
from test_arch_moe import bounds

models = nf.models_fixture()
MOE_MODELS = ("nemotron-3-nano", "nemotron-3-super")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", nf.FORMATS)
@pytest.mark.parametrize("name", MOE_MODELS)
def test_prefill_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_prefill(forgert, files, refs, fmt, backend, model.config.vocab_size, "nemotron_h_moe",
                             bounds(fmt, False, backend), name)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", nf.FORMATS)
@pytest.mark.parametrize("name", MOE_MODELS)
def test_decode_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_decode(forgert, files, refs, fmt, backend, model.config.vocab_size, bounds(fmt, True, backend),
                            name)


@pytest.mark.parametrize("name,fmt", [("nemotron-3-nano", "gguf-F32"), ("nemotron-3-super", "hf-F32")])
def test_greedy_32_tokens_equal_transformers(forgert, models, name, fmt):
    """(one format per model: transformers' greedy run is the file's cost here)"""
    model, files, refs = models(name)
    ae.check_factory_greedy(forgert, files, refs, fmt, model.config.vocab_size)


@pytest.mark.metal
@pytest.mark.parametrize("name,fmt", [("nemotron-3-nano", "gguf-F32"), ("nemotron-3-super", "hf-F32")])
def test_greedy_32_tokens_metal_equal_cpu(forgert, models, metal_reason, name, fmt):
    """The emulated Metal device's 32 greedy tokens equal the CPU's (which equal transformers', above)."""
    require_backend("metal", metal_reason)
    model, files, _ = models(name)
    prompt = ae.factory_ids(model.config.vocab_size, 8, 4)

    def greedy(backend):
        return list(forgert.Model(str(files[fmt]), backend=backend).generate(prompt, max_tokens=32, temperature=0.0,
                                                                             ignore_eos=True).tokens)
    assert greedy("metal") == greedy("cpu")


def test_blocks_paired_and_experts_described(forgert, models):
    """"ME*EMEM*E": 9 blocks, 5 layers (3 Mamba2, 2 attention), 4 with experts (a Mamba2 block
    alone between); the experts, the router, the latent and the MTP block named in `info`."""
    _, files, _ = models("nemotron-3-super")
    for fmt in ("hf-F32", "gguf-F32"):
        features = forgert.Model(str(files[fmt]), backend="cpu", n_ctx=64).info()["features"]
        assert any("3 of 8 experts per token (width 32), a shared expert of width 96" in f for f in features), features
        assert any("sigmoid router with a selection bias, 2 of 4 expert groups, weights times 1.5" in f
                   for f in features), features
        assert any("ungated ReLU-squared experts and shared expert (Nemotron 3), run on a latent of width 32" in f
                   for f in features), features
        assert any("1 multi-token-prediction layer" in f for f in features), features
        assert any("a feed-forward in 4 of 5 layers" in f for f in features), features
        assert any("Mamba2 in 3 of 5 layers" in f for f in features), features


@pytest.mark.parametrize("changes,match", [
    (dict(layers_block_type=["linear_attention", "moe", "moe", "full_attention", "moe", "linear_attention",
                             "linear_attention", "full_attention", "moe"]), "block 2 is an MoE block that follows no mixer"),
    (dict(n_group=3), "8 experts do not split into 3 groups"),
    (dict(num_experts_per_tok=9), "9 experts used per token of only 8"),
    (dict(routed_scaling_factor=0), "routed_scaling_factor / expert_weights_scale must be a positive number"),
])
def test_unsupported_configs_refused_by_name(forgert, models, tmp_path, changes, match):
    _, files, _ = models("nemotron-3-super")
    ae.assert_hf_dir_refused(forgert, files["hf-F32"], tmp_path, match, **changes)


def test_gguf_groups_without_used_count_refused(forgert, models, tmp_path, tiny_tokenizer):
    """llama.cpp's converter writes expert_group_count but not expert_group_used_count: with groups
    the file cannot say how many to choose from, and forgert says so."""
    from forgert.errors import ModelFormatError
    model, files, _ = models("nemotron-3-super")
    path = nf.write_gguf(files["hf-F32"], tmp_path / "g.gguf", "F32", "nemotron_h_moe", model.config, tiny_tokenizer,
                         extra_meta={"add_expert_group_used_count": None})
    with pytest.raises(ModelFormatError, match="expert_group_count 4 without expert_group_used_count"):
        forgert.Model(str(path), backend="cpu")


def test_quantize_gguf_and_refuse_hf_directory(forgert, models, tmp_path):
    """forgert quantize: a nemotron_h_moe GGUF (with its MTP block) requantizes tensor for tensor
    as the file has them and runs as the factory's Q8_0 file does; an HF directory is refused by name."""
    from forgert.errors import ModelFormatError
    from forgert.gguf import GGUFFile
    from forgert.gguf_export import export_gguf
    model, files, _ = models("nemotron-3-super")
    with pytest.raises(ModelFormatError, match="Nemotron-H / Nemotron 3 HF directories cannot be quantized"):
        export_gguf(str(files["hf-F32"]), str(tmp_path / "x.gguf"), "q8_0", log=lambda msg: None)
    out = tmp_path / "requantized.gguf"
    export_gguf(str(files["gguf-F32"]), str(out), "q8_0", log=lambda msg: None)
    src, dst = GGUFFile(str(files["gguf-F32"])), GGUFFile(str(out))
    assert {n: list(t.ne) for n, t in dst.tensors.items()} == {n: list(t.ne) for n, t in src.tensors.items()}
    p = ae.factory_ids(model.config.vocab_size, 8, 4)

    def greedy(path):
        return list(forgert.Model(str(path), backend="cpu").generate(p, max_tokens=8, temperature=0.0,
                                                                     ignore_eos=True).tokens)
    assert greedy(out) == greedy(files["gguf-Q8_0"])


ROUTER_SETTINGS = {"selection bias": dict(bias_zero=True), "expert groups": dict(n_group=1, topk_group=1),
                   "renormalisation": dict(norm_topk_prob=True), "weight scale": dict(routed_scaling_factor=1.0)}


def test_each_router_setting_matters(forgert, models):
    """Super's logits (GGUF F32, CPU) sit far from a transformers model without one of its router
    settings: each setting is read and applied. Measured max_rel gaps (16 tokens): selection bias
    0.23, groups 0.38, renormalisation 0.32, weight scale 0.18 (against 1e-5 from the model itself)."""
    import torch
    from test_e2e_tiny import logit_errors
    import model_factory as mf
    model, files, refs = models("nemotron-3-super")
    ids = ae.factory_ids(model.config.vocab_size, 16, 3)
    out = forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids)
    assert logit_errors(out, mf.reference_logits(refs["gguf-F32"], ids))["max_rel"] < 5e-4
    for setting, changes in ROUTER_SETTINGS.items():
        cfg = {**model.config.to_dict(), **{k: v for k, v in changes.items() if k != "bias_zero"}}
        other = type(model)(type(model.config).from_dict(cfg)).float().eval()
        other.load_state_dict(model.state_dict())
        if changes.get("bias_zero"):
            with torch.no_grad():
                for mod in other.modules():
                    if hasattr(mod, "e_score_correction_bias"):
                        mod.e_score_correction_bias.zero_()
        assert logit_errors(out, mf.reference_logits(other, ids))["max_rel"] > 1e-2, setting


def test_mlp_and_moe_blocks_in_one_model(forgert, tmp_path, tiny_tokenizer):
    """transformers allows "-" (ReLU-squared MLP, intermediate_size) and "E" blocks side by side
    (llama.cpp's nemotron_h_moe does not: HF only); each layer runs its own kind. CPU prefill
    against transformers (measured max_rel / rms_rel 7.3e-7 / 6.5e-7; the F32 bound 5e-4 / 2.5e-4)."""
    import model_factory as mf
    from test_e2e_tiny import compare_logits
    nf.MODELS["nemotron-3-mixed"] = ("nemotron_h_moe", dict(seed=97, pattern="M-ME*E", moe=nf.MODELS[
        "nemotron-3-nano"][1]["moe"]))
    try:
        model = nf.build("nemotron-3-mixed", tiny_tokenizer.get_vocab_size())
    finally:
        del nf.MODELS["nemotron-3-mixed"]
    d = nf.save_hf(model, tiny_tokenizer, tmp_path / "hf")
    ids = ae.factory_ids(model.config.vocab_size, 24, 5)
    m = forgert.Model(str(d), backend="cpu")
    compare_logits(m.logits(ids), mf.reference_logits(mf.with_f16_kv(model), ids), **bounds("hf-F32", False),
                   what="M-ME*E")


def test_gguf_per_block_expert_width_read(forgert, models, tmp_path, tiny_tokenizer):
    """llama.cpp reads expert_feed_forward_length as a scalar or a per-block array: the array's one
    width runs the same model (logits bit for bit the scalar file's); two widths are refused by name."""
    import numpy as np
    from forgert.errors import ModelFormatError
    model, files, _ = models("nemotron-3-nano")
    c = model.config
    per_block = [c.moe_intermediate_size if k == "moe" else 0 for k in c.layers_block_type]
    path = nf.write_gguf(files["hf-F32"], tmp_path / "a.gguf", "F32", "nemotron_h_moe", c, tiny_tokenizer,
                         arrays={"expert_feed_forward_length": per_block})
    ids = ae.factory_ids(c.vocab_size, 8, 9)
    np.testing.assert_array_equal(forgert.Model(str(path), backend="cpu").logits(ids),
                                  forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids))
    bad = nf.write_gguf(files["hf-F32"], tmp_path / "b.gguf", "F32", "nemotron_h_moe", c, tiny_tokenizer,
                        arrays={"expert_feed_forward_length": [w and w + 32 * (b == 1) for b, w in
                                                             enumerate(per_block)]})
    with pytest.raises(ModelFormatError, match=r"expert_feed_forward_length per block \[64, 96\]"):
        forgert.Model(str(bad), backend="cpu")
