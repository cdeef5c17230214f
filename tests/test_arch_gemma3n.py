"""Gemma 3n text (tests/gemma3n_factory.py: E2B's features on 5 layers: 4 AltUp streams, LAuReL,
per-layer embeddings, KV sharing of the last two layers, sparse gates on the first two, per-layer MLP
widths, a final soft cap; and a 2-stream model without sparsity or sharing) against transformers:
logits on prefill and decode, as HF F32 and GGUF F32 / Q8_0 in llama.cpp's gemma3n layout, on the
CPU and emulated Metal; 32 greedy tokens; a batch of sequences in slots and the prompt cache; the
multimodal checkpoint's text model; `forgert quantize` of its GGUF; Gemma's chat template and its
<end_of_turn> stop; what is not run refused by name.

Measured here, worst over the two models (64-token prefill, 24 decode steps), max_rel / rms_rel:
  F32 (HF and GGUF), CPU: prefill 9.1e-5 / 4.9e-5, decode 5.3e-5 / 2.3e-5;
  Metal: prefill 9.0e-5 / 4.4e-5, decode 5.3e-5 / 2.3e-5 (bounds 5e-4 / 2.5e-4)
  Q8_0 (tests/test_arch_moe.py's bounds), CPU: prefill 2.8e-4 / 2.0e-4, decode 3.3e-4 / 1.8e-4
  (bounds 3e-3 / 2e-3); Metal: prefill 9.8e-4 / 6.9e-4, decode 8.2e-5 / 5.8e-5
  (bounds 5e-3 / 4e-3); argmax agreement 1.0 everywhere (bound 0.95)
"""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

import arch_e2e as ae
import gemma3n_factory as gf
import model_factory as mf
from conftest import backend_params, require_backend
from test_arch_moe import bounds as moe_bounds
from test_e2e_tiny import compare_logits

models = gf.models_fixture()
# every format of the full model; the 2-stream model as HF F32 (its differences are config-side)
# every format of the full model; the 2-stream model and the per-layer table short of the
# vocabulary as HF F32 (their differences are config-side)
CASES = [("gemma3n", fmt) for fmt in gf.FORMATS] + [("gemma3n-2", "hf-F32"), ("gemma3n-pv", "hf-F32")]


def bounds(fmt, decode, backend="cpu"):
    if fmt.endswith("F32"):
        return dict(max_rel=5e-4, rms_rel=2.5e-4, argmax=0.95)
    return moe_bounds(fmt, decode, backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name,fmt", CASES)
def test_prefill_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_prefill(forgert, files, refs, fmt, backend, model.config.vocab_size, "gemma3n",
                             bounds(fmt, False, backend), name)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name,fmt", CASES)
def test_decode_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_decode(forgert, files, refs, fmt, backend, model.config.vocab_size, bounds(fmt, True, backend),
                            name)


def test_greedy_32_tokens_equal_transformers(forgert, models):
    model, files, refs = models("gemma3n")
    ae.check_factory_greedy(forgert, files, refs, "hf-F32", model.config.vocab_size)


def test_features_visible(forgert, models):
    """Each Gemma 3n setting changes the output (the reference without it disagrees: the test model
    exercises it), and both formats read it."""
    import torch
    model, files, refs = models("gemma3n")
    ids = ae.factory_ids(model.config.vocab_size, 32, 7)
    ref = mf.reference_logits(refs["hf-F32"], ids)

    def zero(attr):
        return lambda m: [getattr(l, attr).zero_() for l in m.model.layers]

    for what, change in (
            ("LAuReL", lambda m: [l.laurel.linear_right.weight.zero_() for l in m.model.layers]),
            ("AltUp predictions", lambda m: [l.altup.prediction_coefs.weight.zero_() for l in m.model.layers]),
            ("AltUp corrections", lambda m: [l.altup.correction_coefs.weight.zero_() for l in m.model.layers]),
            ("the corrected stream's scale", lambda m: [l.altup.correct_output_scale.fill_(1.0) for l in m.model.layers]),
            ("sparsity", lambda m: [setattr(l.mlp, "activation_sparsity", 0.0) for l in m.model.layers])):
        other = copy.deepcopy(refs["hf-F32"])
        with torch.no_grad():
            change(other)
        assert np.abs(mf.reference_logits(other, ids) - ref).max() > 0.05, what
    for fmt in ("hf-F32", "gguf-F32"):
        from forgert.loader import load_model
        c = load_model(str(files[fmt])).config
        assert c.altup_n == 4 and c.laurel_rank == 32 and c.altup_correct_scale, fmt
        assert c.layer_sparsity[:2] == [pytest.approx(0.2533471, abs=1e-6)] * 2 and c.layer_sparsity[2:] == [0.0] * 3, fmt
        assert c.layer_kv_source == [0, 1, 2, 1, 2] and c.attn_scale == 1.0 and c.v_norm, fmt
        assert c.layer_ffn_dim == [96, 96, 128, 96, 128] and c.final_softcap == 10.0, fmt
        assert c.layer_window == [8, 8, 0, 8, 0] and c.norm_shift == 0.0, fmt
        from forgert.cli.info import describe, format_text
        text = format_text(describe(load_model(str(files[fmt]))), False, False)
        assert "AltUp: 4 streams; LAuReL of rank 32" in text and "sparse gates (gaussian top-k) in layers 0-1" in text
        short = load_model(str(models("gemma3n-pv")[1][fmt])).config   # the table's rows, from config or tensor
        assert short.ple_vocab == short.vocab - 40, fmt


def test_multimodal_checkpoint_runs_its_text_model(forgert, models, tmp_path):
    """Gemma3nForConditionalGeneration's layout (config under text_config, the language model's
    tensors under model.language_model., vision and audio towers beside them): its text model runs."""
    from safetensors.numpy import load_file, save_file
    model, files, _ = models("gemma3n-2")
    d = tmp_path / "multimodal"
    shutil.copytree(files["hf-F32"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"],
                                               "text_config": {**cfg, "model_type": "gemma3n_text"},
                                               "vision_config": {"model_type": "gemma3n_vision"},
                                               "audio_config": {"model_type": "gemma3n_audio"}}))
    sd = load_file(str(d / "model.safetensors"))
    out = {("model.language_model." + k[len("model."):]) if k.startswith("model.") else k: v for k, v in sd.items()}
    out["model.vision_tower.timm_model.conv_stem.conv.weight"] = np.zeros((4, 3, 3, 3), np.float32)
    out["model.audio_tower.subsample_conv_projection.conv_0.conv.weight"] = np.zeros((4, 1, 3, 3), np.float32)
    out["model.embed_vision.embedding.weight"] = np.zeros((8, 4), np.float32)
    save_file(out, str(d / "model.safetensors"))
    ids = ae.factory_ids(model.config.vocab_size, 16, 8)
    np.testing.assert_array_equal(forgert.Model(str(d), backend="cpu").logits(ids),
                                  forgert.Model(str(files["hf-F32"]), backend="cpu").logits(ids))


@pytest.mark.parametrize("change,match", [
    (dict(altup_active_idx=1), "altup_active_idx 1 is not supported"),
    (dict(vocab_size_per_layer_input=100000), "'vocab_size_per_layer_input' = 100000 is more than"),
    (dict(hidden_activation="silu"), "hidden_activation 'silu'"),
])
def test_unsupported_settings_refused(forgert, models, tmp_path, change, match):
    _, files, _ = models("gemma3n-2")
    ae.assert_hf_dir_refused(forgert, files["hf-F32"], tmp_path, match, **change)


@pytest.mark.parametrize("change,match", [
    (dict(altup_active_idx="0"), r"metadata 'altup_active_idx' must be an integer >= 0, got '0'"),
    (dict(rope_parameters="default"), "rope_parameters must map layer kinds to JSON objects"),
    (dict(rope_parameters={"full_attention": 5}), "rope_parameters must map layer kinds to JSON objects"),
    (dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": "1e6"}}),
     r"metadata 'rope_theta' must be a positive number, got '1e6'"),
    (dict(activation_sparsity_pattern="dense"), "activation_sparsity_pattern must be a number or a list of numbers"),
])
def test_settings_of_the_wrong_type_refused(forgert, models, tmp_path, change, match):
    """Values of the wrong JSON type were int()'s / float()'s bare errors or AttributeError."""
    _, files, _ = models("gemma3n-2")
    ae.assert_hf_dir_refused(forgert, files["hf-F32"], tmp_path, match, **change)


def test_quantize_gguf_runs(forgert, models, tmp_path):
    """`forgert quantize` of its F32 GGUF to Q8_0: the stacked AltUp projections are copied as the
    file has them and the result runs as close to the F32 transformers model as the factory's own
    Q8_0 file does (this sparse-gated tiny model is sensitive to rounding: both measured max_rel
    2.8e-2, rms_rel 2.2e-2, argmax 0.97; bounds 8e-2 / 6e-2 / 0.9)."""
    from forgert.gguf_export import export_gguf
    model, files, refs = models("gemma3n")
    out = tmp_path / "q8.gguf"
    export_gguf(str(files["gguf-F32"]), str(out), "q8_0", log=lambda msg: None)
    ids = ae.factory_ids(model.config.vocab_size, 32, 9)
    m = forgert.Model(str(out), backend="cpu")
    assert m.info()["arch"] == "gemma3n"
    compare_logits(m.logits(ids), mf.reference_logits(refs["hf-F32"], ids), max_rel=8e-2, rms_rel=6e-2, argmax=0.9,
                   what="gemma3n quantized")


def test_quantize_hf_dir_refused(forgert, models, tmp_path):
    from forgert.errors import ModelFormatError
    from forgert.gguf_export import export_gguf
    _, files, _ = models("gemma3n-2")
    with pytest.raises(ModelFormatError, match="Gemma 3n HF directories cannot be quantized yet"):
        export_gguf(str(files["hf-F32"]), str(tmp_path / "x.gguf"), "q8_0", log=lambda msg: None)


def test_batch_slots_and_prompt_cache(forgert, models):
    """Prompts in parallel slots equal each alone (AltUp's streams per row; the KV-sharing layers
    reading their source's slot), and a follow-up prompt through the prompt cache equals a fresh run."""
    _, files, _ = models("gemma3n")
    path = str(files["gguf-F32"])

    def fresh(prompt):
        return list(forgert.Model(path, backend="cpu", n_ctx=256).generate(
            prompt, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)

    rng = np.random.default_rng(5)
    first = [int(t) for t in rng.integers(2, 320, 20)]
    m = forgert.Model(path, backend="cpu", n_ctx=256, parallel=2)
    c1 = m.generate(first, max_tokens=6, temperature=0.0, ignore_eos=True)
    follow = first + list(c1.tokens) + [int(t) for t in rng.integers(2, 320, 5)]
    assert list(m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True).tokens) == fresh(follow)
    prompts = [first, follow, [int(t) for t in rng.integers(2, 320, 9)]]
    for p, c in zip(prompts, m.generate(prompts, max_tokens=8, temperature=0.0, ignore_eos=True)):
        assert list(c.tokens) == fresh(p)


def test_end_of_turn_stops(forgert, tmp_path):
    """Gemma's chat template (Gemma 3n's is Gemma 3's) renders its turns, and <end_of_turn> ends
    generation: an id from generation_config's list (HF), or the GGUF token found by its text."""
    import gemma_factory as gmf
    tok = gmf.build_tokenizer()
    model = gf.build("gemma3n-2", tok.get_vocab_size())
    hf = gf.save_hf(model, tok, tmp_path / "hf")
    (hf / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": mf.BOS_TOKEN, "eos_token": mf.EOS_TOKEN, "add_bos_token": True,
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": gmf.GEMMA3_TEMPLATE}))
    (hf / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.token_to_id(mf.BOS_TOKEN),
        "eos_token_id": [tok.token_to_id(mf.EOS_TOKEN), tok.token_to_id(gmf.END_OF_TURN)]}))
    gg = gf.write_gguf(hf, tmp_path / "m.gguf", "F32", "gemma3n", model.config, tok,
                       vocab=(gmf.tokenizer_tables(tok), gmf.GEMMA3_TEMPLATE))
    eot = tok.token_to_id(gmf.END_OF_TURN)
    for path in (hf, gg):
        m = forgert.Model(str(path), backend="cpu")
        assert eot in m.info()["stop_token_ids"], path
        text = m.apply_chat_template([{"role": "user", "content": "Hi"}])
        assert text.endswith("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"), path
        assert m.tokenize(text, add_bos=False).count(eot) == 1, path


@pytest.mark.parametrize("value, match", [(2.0, None), (2.5, "must be a whole number of layers")])
def test_gguf_shared_kv_layers_written_as_a_float(forgert, models, tmp_path, tiny_tokenizer, monkeypatch, value, match):
    """The first converters wrote gemma3n's attention.shared_kv_layers as a float32 (10.0 in the
    published E2B files): a whole float reads as the count (the logits equal the integer file's),
    any other is refused naming the key."""
    import gguf
    from forgert.errors import ModelFormatError
    model, files, _ = models("gemma3n")
    assert model.config.num_kv_shared_layers == 2
    monkeypatch.setattr(gguf.GGUFWriter, "add_shared_kv_layers",
                        lambda w, v: w.add_float32(f"{w.arch}.attention.shared_kv_layers", value))
    path = gf.write_gguf(files["hf-F32"], tmp_path / "float.gguf", "F32", "gemma3n", model.config, tiny_tokenizer)
    if match is not None:
        with pytest.raises(ModelFormatError, match=match):
            forgert.Model(str(path), backend="cpu")
        return
    ids = ae.factory_ids(model.config.vocab_size, 16, 5)
    np.testing.assert_array_equal(forgert.Model(str(path), backend="cpu").logits(ids),
                                  forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids))


def test_gguf_with_fused_qkv_runs(forgert, models, tmp_path, tiny_tokenizer, monkeypatch):
    """Q, K and V fused into attn_qkv (convert_hf_to_gguf.py --fuse-qkv lists gemma3n) give the
    logits of the file with them apart, bit for bit (tests/test_fused_qkv_gguf.py)."""
    from test_fused_qkv_gguf import fuse_qkv
    model, files, _ = models("gemma3n")
    apart = gf.gguf_tensors
    monkeypatch.setattr(gf, "gguf_tensors", lambda d: fuse_qkv(apart(d)))
    path = gf.write_gguf(files["hf-F32"], tmp_path / "fused.gguf", "F32", "gemma3n", model.config, tiny_tokenizer)
    from forgert.gguf import GGUFFile
    assert "blk.0.attn_qkv.weight" in GGUFFile(path).tensors and "blk.0.attn_k.weight" not in GGUFFile(path).tensors
    ids = ae.factory_ids(model.config.vocab_size, 16, 5)
    np.testing.assert_array_equal(forgert.Model(str(path), backend="cpu").logits(ids),
                                  forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids))


def test_gguf_rope_attn_factor_refused(forgert, models, tmp_path):
    """rope.scaling.attn_factor (llama.cpp multiplies every rotation's cos and sin by it) beside
    Gemma 3n's two RoPE tables is refused by name; gemma3n's reader ignored it."""
    import gguf
    _, files, _ = models("gemma3n")
    ae.assert_gguf_meta_refused(forgert, files["gguf-F32"], tmp_path, "gemma3n.rope.scaling.attn_factor", 1.5,
                                gguf.GGUFValueType.FLOAT32,
                                "rope.scaling.attn_factor 1.5 beside per-layer RoPE tables is not supported")
