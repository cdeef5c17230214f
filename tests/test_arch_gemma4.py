"""Gemma 4 text (tests/gemma4_factory.py: sliding layers with 32-wide heads beside global layers with
64-wide heads and their own KV head count, V from K on the global layers, proportional RoPE, layer
scalars, a final soft cap; an E2B-style model with per-layer embeddings, KV sharing and double-wide
MLPs; a 26B-A4B-style model with experts beside the dense MLP) against transformers: logits on prefill and decode, as HF F32 and GGUF
F32 / Q8_0 in llama.cpp's gemma4 layout, on the CPU and emulated Metal; 32 greedy tokens; a batch
of sequences in slots, and the prompt cache's saved K/V rows (per-layer widths); the published
config.json keys (global_head_dim) beside transformers 5's per_layer_config; the multimodal
checkpoints' text model; Gemma 4's chat template and its <turn|> stop; what is not run refused by name.
The GGUFs carry the converter's "gemma4" tokenizer (tests/test_tokenizer_gemma4.py tests it alone).

Bounds are tests/test_arch_moe.py's for Q8_0; F32's are twice theirs, as Gemma 4 scales scores by 1
rather than 1/sqrt(d) (sharper attention: f32 summation order moves the logits more). Measured here,
worst over the four models (64-token prefill, 24 decode steps), max_rel / rms_rel:
  F32 (HF and GGUF), CPU: prefill 2.7e-4 / 1.3e-4, decode 1.5e-4 / 9.2e-5;
  Metal: prefill 3.3e-4 / 1.9e-4, decode 1.9e-4 / 1.4e-4 (bounds 1e-3 / 5e-4)
  Q8_0, CPU: prefill 7.3e-4 / 4.3e-4, decode 6.3e-4 / 4.4e-4 (bounds 3e-3 / 2e-3)
  Q8_0, Metal: prefill 2.1e-3 / 1.1e-3 (the prefill GEMM stages quantized weights in half), decode
  2.6e-4 / 1.6e-4 (bounds 5e-3 / 4e-3); argmax agreement >= 0.98 (bound 0.95; 0.98: gemma4-moe's
  Metal Q8_0 prefill, one row of 64 whose top two logits sit within its error)
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import arch_e2e as ae
import gemma4_factory as gf
import model_factory as mf
from conftest import backend_params, require_backend
from test_arch_moe import bounds as moe_bounds
from test_e2e_tiny import compare_logits

models = gf.models_fixture()
NAMES = list(gf.MODELS)


def bounds(fmt, decode, backend="cpu"):
    if fmt.endswith("F32"):
        return dict(max_rel=1e-3, rms_rel=5e-4, argmax=0.95)
    return moe_bounds(fmt, decode, backend)


ids_for = ae.factory_ids   # (the shared checks' prompts)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", gf.FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_prefill_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_prefill(forgert, files, refs, fmt, backend, model.config.vocab_size, "gemma4", bounds(fmt, False, backend), name)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", gf.FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_decode_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_decode(forgert, files, refs, fmt, backend, model.config.vocab_size, bounds(fmt, True, backend), name)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("name", NAMES)
def test_greedy_32_tokens_equal_transformers(forgert, models, name, fmt):
    model, files, refs = models(name)
    ae.check_factory_greedy(forgert, files, refs, fmt, model.config.vocab_size)


def test_features_visible(forgert, models):
    """Each Gemma 4 setting changes the output: the reference without it disagrees (the test
    model exercises it), and the config reads it from both formats."""
    model, files, refs = models("gemma4")
    ids = ids_for(model.config.vocab_size, 32, 7)
    got = forgert.Model(str(files["hf-F32"]), backend="cpu").logits(ids)
    ref = mf.reference_logits(refs["hf-F32"], ids)
    compare_logits(got, ref, **bounds("hf-F32", False), what="gemma4 hf-F32")
    import torch
    for what, change in (("layer scalars", lambda m: [l.layer_scalar.fill_(1.0) for l in m.model.layers]),
                         ("V's norm", lambda m: [setattr(l.self_attn, "v_norm", torch.nn.Identity()) for l in m.model.layers])):
        import copy
        other = copy.deepcopy(refs["hf-F32"])
        with torch.no_grad():
            change(other)
        assert np.abs(mf.reference_logits(other, ids) - ref).max() > 0.05, what
    for fmt in ("hf-F32", "gguf-F32"):
        from forgert.loader import load_model
        c = load_model(str(files[fmt])).config
        assert c.layer_head_dim == [32, 32, 64, 32, 32, 64] and c.layer_n_kv_heads == [2, 2, 1, 2, 2, 1], fmt
        assert c.layer_v_is_k == [0, 0, 1, 0, 0, 1] and c.attn_scale == 1.0 and c.v_norm, fmt
        assert c.layer_out_scale == pytest.approx([float(l.layer_scalar) for l in model.model.layers]), fmt
        assert c.final_softcap == 5.0 and c.layer_window == [8, 8, 0, 8, 8, 0], fmt


def test_published_config_keys(forgert, models, tmp_path):
    """The published checkpoints' config.json (global_head_dim, num_global_key_value_heads, no
    per_layer_config) reads as transformers 5's per_layer_config does."""
    model, files, refs = models("gemma4")
    d = tmp_path / "published"
    shutil.copytree(files["hf-F32"], d)
    cfg = json.loads((d / "config.json").read_text())
    assert "per_layer_config" in cfg
    del cfg["per_layer_config"]
    cfg.update(global_head_dim=gf.GLOBAL_HEAD_DIM, num_global_key_value_heads=1)
    (d / "config.json").write_text(json.dumps(cfg))
    ids = ids_for(model.config.vocab_size, 16, 8)
    np.testing.assert_array_equal(forgert.Model(str(d), backend="cpu").logits(ids),
                                  forgert.Model(str(files["hf-F32"]), backend="cpu").logits(ids))


def test_multimodal_checkpoint_runs_its_text_model(forgert, models, tmp_path):
    """Gemma4ForConditionalGeneration's layout (config under text_config, the language model's
    tensors under model.language_model., vision and audio towers beside them): its text model runs,
    the towers unread."""
    from safetensors.numpy import load_file, save_file
    model, files, _ = models("gemma4-e")
    d = tmp_path / "multimodal"
    shutil.copytree(files["hf-F32"], d)
    text = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({"model_type": "gemma4", "text_config": text,
                                               "vision_config": {"model_type": "gemma4_vision"},
                                               "tie_word_embeddings": True}))
    tensors = {n.replace("model.", "model.language_model.", 1): w
               for n, w in load_file(str(d / "model.safetensors")).items()}
    tensors.update({"model.vision_tower.encoder.layers.0.mlp.weight": np.ones((4, 4), np.float32),
                    "model.embed_vision.embedding_projection.weight": np.ones((4, 4), np.float32),
                    "model.audio_tower.layers.0.weight": np.ones((4, 4), np.float32),
                    "model.embed_audio.embedding_projection.weight": np.ones((4, 4), np.float32)})
    save_file(tensors, str(d / "model.safetensors"))
    ids = ids_for(model.config.vocab_size, 16, 10)
    np.testing.assert_array_equal(forgert.Model(str(d), backend="cpu").logits(ids),
                                  forgert.Model(str(files["hf-F32"]), backend="cpu").logits(ids))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name", ["gemma4", "gemma4-e"])
def test_batch_slots_and_saved_rows(forgert, models, metal_reason, name, backend):
    """Prompts in parallel slots equal each alone (per-layer KV widths, KV-sharing layers reading
    their source's slot), and a follow-up prompt through the prompt cache (kv_save / kv_load of
    rows as wide as the widest layer's; none kept for the sharing layers) equals a fresh run."""
    require_backend(backend, metal_reason)
    _, files, _ = models(name)
    path = str(files["gguf-F32"])

    def fresh(prompt):
        return list(forgert.Model(path, backend=backend, n_ctx=256).generate(
            prompt, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)

    rng = np.random.default_rng(5)
    first = [int(t) for t in rng.integers(2, 320, 20)]
    m = forgert.Model(path, backend=backend, n_ctx=256, parallel=2)
    c1 = m.generate(first, max_tokens=6, temperature=0.0, ignore_eos=True)
    follow = first + list(c1.tokens) + [int(t) for t in rng.integers(2, 320, 5)]
    assert list(m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True).tokens) == fresh(follow)
    prompts = [first, follow, [int(t) for t in rng.integers(2, 320, 9)]]
    for p, c in zip(prompts, m.generate(prompts, max_tokens=8, temperature=0.0, ignore_eos=True)):
        assert list(c.tokens) == fresh(p)
    eng = forgert.Model(path, backend=backend, n_ctx=64)._engine
    eng.forward(np.asarray(first, dtype=np.int32), 0)
    kv = eng.kv_save(len(first))
    from forgert.loader import load_model
    cfg = load_model(path).config
    width = max(cfg.kv_dim_of(l) for l in range(cfg.n_layers))   # 64 (gemma4), 128 (gemma4-e's global layers)
    assert kv.shape == (6, 2, len(first), width)
    for l in range(6):   # a narrower layer's rows padded with zeros; a sharing layer's all zeros
        kept = cfg.kv_dim_of(l) if (cfg.layer_kv_source or list(range(6)))[l] == l else 0
        assert not kv[l, :, :, kept:].any() and (kept == 0 or kv[l, :, :, :kept].any()), l
    other = forgert.Model(path, backend=backend, n_ctx=64)._engine
    other.kv_load(kv)
    np.testing.assert_array_equal(other.kv_save(len(first)), kv)
    nxt = np.asarray([7], dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(other.forward(nxt, len(first))), np.asarray(eng.forward(nxt, len(first))))


@pytest.mark.parametrize("key, value, match", [
    ("use_bidirectional_attention", "all", "bidirectional"),
    ("num_kv_shared_layers", 6, "KV sharing of all 6 layers"),
])
def test_unsupported_hf_settings_refused(forgert, models, tmp_path, key, value, match):
    _, files, _ = models("gemma4-plain")
    from forgert.errors import ModelFormatError
    d = tmp_path / "changed"
    shutil.copytree(files["hf-F32"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ModelFormatError, match=f"gemma4: .*{match}.* not supported yet"):
        forgert.Model(str(d), backend="cpu")


@pytest.mark.parametrize("key, value, match", [
    ("add_shared_kv_layers", 6, "KV sharing of all 6 layers"),
])
def test_unsupported_gguf_settings_refused(forgert, models, tiny_tokenizer, tmp_path, key, value, match):
    model, files, _ = models("gemma4-plain")
    from forgert.errors import ModelFormatError
    path = gf.write_gguf(files["hf-F32"], tmp_path / "m.gguf", "F32", "gemma4", model.config, tiny_tokenizer,
                         extra_meta={key: value})
    with pytest.raises(ModelFormatError, match=f"gemma4: .*{match}.* not supported yet"):
        forgert.Model(str(path), backend="cpu")


def test_e_model_features_read(forgert, models):
    """The E-style model's per-layer embeddings, KV sharing and double-wide MLPs, from both formats;
    the sharing layers keep no K/V rows (the memory estimate counts 4 layers' rows)."""
    from forgert.loader import load_model
    _, files, _ = models("gemma4-e")
    for fmt in ("hf-F32", "gguf-F32"):
        c = load_model(str(files[fmt])).config
        assert c.ple_dim == 32 and c.layer_kv_source == [0, 1, 2, 3, 2, 3], fmt
        assert c.layer_ffn_dim == [96, 96, 96, 96, 192, 192] and not any(c.layer_v_is_k), fmt
        assert c.kv_bytes_per_position() == 2 * 2 * (3 * 2 * 32 + 1 * 2 * 64), fmt


def test_moe_settings_read_and_visible(forgert, models):
    """The MoE model's experts from both formats (GGUF: the fused ffn_gate_up_exps split zero-copy),
    and the router's input scale and per-expert scales matter (the reference without them disagrees)."""
    import copy
    import torch
    from forgert.loader import load_model
    model, files, refs = models("gemma4-moe")
    for fmt in ("hf-F32", "gguf-F32"):
        c = load_model(str(files[fmt])).config
        assert (c.n_expert, c.n_expert_used, c.expert_ffn_dim, c.moe_beside_dense) == (4, 2, 32, True), fmt
    ids = ids_for(model.config.vocab_size, 32, 11)
    ref = mf.reference_logits(refs["hf-F32"], ids)
    for what in ("router.scale", "per_expert_scale"):
        other = copy.deepcopy(refs["hf-F32"])
        with torch.no_grad():
            for name, p in other.named_parameters():
                if name.endswith(what):
                    p.fill_(1.0)
        assert np.abs(mf.reference_logits(other, ids) - ref).max() > 0.05, what


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}],
]


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_chat_template_and_turn_end(forgert, tmp_path, fmt):
    """forgert renders Gemma 4's template as transformers' apply_chat_template does (a system turn of
    its own, "model" for the assistant); <turn|> ends generation (generation_config's list, or the
    GGUF token llama.cpp recognises by its text); the turn markers are single tokens."""
    from transformers import AutoTokenizer
    tok, hf, gg = gf.write_chat_files("gemma4-plain", tmp_path)
    ref = AutoTokenizer.from_pretrained(str(hf))
    m = forgert.Model(str(hf if fmt == "hf" else gg), backend="cpu")
    for conv in CONVERSATIONS:
        assert m.apply_chat_template(conv) == ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    text = m.apply_chat_template(CONVERSATIONS[1])
    assert text.startswith(gf.BOS + "<|turn>system\nAnswer briefly.<turn|>\n<|turn>user\nHi<turn|>")
    close = tok.token_to_id(gf.TURN_CLOSE)
    assert close in m.info()["stop_token_ids"]
    ids = m.tokenize(text, add_bos=False)
    assert ids == ref.encode(text, add_special_tokens=False)   # the GGUF's "gemma4" tokenizer too
    assert ids.count(close) == 4 and ids.count(tok.token_to_id(gf.TURN_OPEN)) == 5   # 4 turns, then the prompt


def test_per_layer_vocab_refused(forgert, models, tmp_path):
    _, files, _ = models("gemma4-e")
    from forgert.errors import ModelFormatError
    d = tmp_path / "changed"
    shutil.copytree(files["hf-F32"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "vocab_size_per_layer_input": 262144}))
    with pytest.raises(ModelFormatError, match="vocab_size_per_layer_input"):
        forgert.Model(str(d), backend="cpu")


def test_gguf_requantized(forgert, models, tmp_path):
    """`forgert quantize` of the GGUF keeps its per-layer keys, rope_freqs and layer scalars; the HF
    directory is refused by name."""
    from forgert.errors import ModelFormatError
    from forgert.gguf_export import export_gguf
    model, files, refs = models("gemma4")
    out = tmp_path / "requantized.gguf"
    export_gguf(str(files["gguf-F32"]), str(out), "q8_0", log=lambda msg: None)
    ids = ids_for(model.config.vocab_size, 32, 9)
    compare_logits(forgert.Model(str(out), backend="cpu").logits(ids), mf.reference_logits(refs["gguf-Q8_0"], ids),
                   **bounds("gguf-Q8_0", False), what="gemma4 requantized")
    with pytest.raises(ModelFormatError, match="Gemma 4 HF directories cannot be quantized"):
        export_gguf(str(files["hf-F32"]), str(tmp_path / "x.gguf"), "q8_0", log=lambda msg: None)


@pytest.mark.parametrize("name", ["gemma4-plain", "gemma4-e", "gemma4"])
def test_gguf_with_fused_qkv_runs(forgert, models, tiny_tokenizer, tmp_path, monkeypatch, name):
    """Q, K and V fused into attn_qkv (convert_hf_to_gguf.py --fuse-qkv; llama.cpp's gemma4 graph
    views Q's rows, then K's, then V's) give the logits of the file with them apart, bit for bit:
    layers of either width, K/V-sharing layers (gemma4-e: they keep attn_q alone, having no K or V
    of their own), and global layers whose V is K's projection (gemma4: fused with K's rows as V's,
    what llama.cpp's fused graph needs there)."""
    from forgert.gguf import GGUFFile
    model, files, _ = models(name)
    apart = gf.gguf_tensors

    def fused(hf_dir):
        t = apart(hf_dir)
        out = {}
        for n, w in t.items():
            p = n[:n.rindex("attn_")] if ".attn_" in n else ""
            if n.endswith(".attn_q.weight") and f"{p}attn_k.weight" in t:
                out[f"{p}attn_qkv.weight"] = np.concatenate([w, t[f"{p}attn_k.weight"],
                                                            t.get(f"{p}attn_v.weight", t[f"{p}attn_k.weight"])])
            elif not (n.endswith((".attn_k.weight", ".attn_v.weight")) and f"{p}attn_q.weight" in t):
                out[n] = w
        return out
    monkeypatch.setattr(gf, "gguf_tensors", fused)
    path = gf.write_gguf(files["hf-F32"], tmp_path / "fused.gguf", "F32", "gemma4", model.config, tiny_tokenizer)
    held = GGUFFile(path).tensors
    assert "blk.0.attn_qkv.weight" in held and "blk.0.attn_k.weight" not in held
    ids = ae.factory_ids(model.config.vocab_size, 16, 5)
    np.testing.assert_array_equal(forgert.Model(str(path), backend="cpu").logits(ids),
                                  forgert.Model(str(files["gguf-F32"]), backend="cpu").logits(ids))


def test_gguf_rope_attn_factor_refused(forgert, models, tmp_path):
    """rope.scaling.attn_factor (llama.cpp multiplies every rotation's cos and sin by it) beside
    Gemma 4's two RoPE tables is refused by name; gemma4's reader ignored it."""
    import gguf
    _, files, _ = models("gemma4-plain")
    ae.assert_gguf_meta_refused(forgert, files["gguf-F32"], tmp_path, "gemma4.rope.scaling.attn_factor", 1.5,
                                gguf.GGUFValueType.FLOAT32,
                                "rope.scaling.attn_factor 1.5 beside per-layer RoPE tables is not supported")
