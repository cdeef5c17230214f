"""DeepSeek V2 / V3, GLM-4.7-Flash and Mistral 4 (GGUF arch `deepseek2`, HF `deepseek_v2`,
`deepseek_v3`, `glm4_moe_lite`, `mistral4`): multi-head latent attention (mla.py: one latent row per token cached, K's and V's expansions absorbed into Q and the output, Q
through its low rank on V3), YaRN with DeepSeek's softmax-scale factor (mscale_all_dim), and
experts under V2's softmax router, V3's sigmoid one or Mistral 4's softmax one with groups;
Mistral 4's Llama 4 query temperature and transformers 5's fused expert tensors it is saved with. What is DeepSeek's own here; the logits of
tiny DeepseekV2ForCausalLM (V2-Lite's layout) and DeepseekV3ForCausalLM models against
transformers, HF and GGUF, on the CPU and emulated Metal: tests/test_arch_routed_moe.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import arch_e2e as ae
import model_factory as mf
import routed_moe_factory as rmf
from conftest import backend_params, require_backend
from test_arch_moe import bounds
from test_arch_routed_moe import check_export
from test_e2e_tiny import compare_logits

models = rmf.models_fixture()


def ids_for(vocab, n, seed):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name", ["deepseek-v2-lite", "deepseek-v3", "glm4moe-lite"])
def test_split_kv_b_layout_matches_transformers(forgert, models, metal_reason, tmp_path, tiny_tokenizer, name, backend):
    """Newer converters split attn_kv_b into attn_k_b (transposed) and attn_v_b, describe the
    latent with key_length / value_length and write one KV head: the same model."""
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "split.gguf", "F32", "deepseek2", model.config, tiny_tokenizer,
                          split_mla=True)
    ids = ids_for(model.config.vocab_size, 48, 7)
    compare_logits(forgert.Model(str(path), backend=backend).logits(ids), mf.reference_logits(refs["gguf-F32"], ids),
                   **bounds("gguf-F32", False, backend), what=f"{name} split attn_kv_b {backend}")


@pytest.mark.parametrize("backend", backend_params())
def test_mistral4_gguf_is_deepseek2_under_its_own_name(forgert, models, metal_reason, tmp_path, tiny_tokenizer,
                                                       backend):
    """llama.cpp's converter now writes Mistral 4 as arch mistral4 (its deepseek2's loader and
    graph under their own name: src/models/mistral4.cpp): its keys prefixed mistral4., the MLA
    split. The same model as transformers runs; forgert quantize writes it back as deepseek2."""
    require_backend(backend, metal_reason)
    model, files, refs = models("mistral4")
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "m4.gguf", "F32", "deepseek2", model.config, tiny_tokenizer,
                          split_mla=True, file_arch="mistral4")
    ids = ids_for(model.config.vocab_size, 48, 7)
    compare_logits(forgert.Model(str(path), backend=backend).logits(ids), mf.reference_logits(refs["gguf-F32"], ids),
                   **bounds("gguf-F32", False, backend), what=f"mistral4 arch {backend}")
    if backend == "cpu":
        import gguf
        from forgert.gguf_export import export_gguf
        out = tmp_path / "m4-requantized.gguf"
        export_gguf(str(path), str(out), "f32", log=lambda msg: None)
        r = gguf.GGUFReader(str(out))
        assert r.fields["general.architecture"].contents() == "deepseek2"
        assert r.fields["deepseek2.attention.kv_lora_rank"].contents() == 32
        assert not [k for k in r.fields if k.startswith("mistral4.")]
        compare_logits(forgert.Model(str(out), backend="cpu").logits(ids), mf.reference_logits(refs["gguf-F32"], ids),
                       **bounds("gguf-F32", False), what="mistral4 requantized")


@pytest.mark.parametrize("name", ["deepseek-v3", "glm4moe"])
def test_per_layer_expert_arrays(forgert, models, tmp_path, tiny_tokenizer, name):
    """llama.cpp's loader reads expert_feed_forward_length, expert_used_count, feed_forward_length
    and the head counts as one value or one per layer (get_key_or_arr, over block_count's layers,
    the MTP block's included): arrays whose layers agree are the same model as transformers runs;
    experts of different widths per layer are refused naming the key."""
    model, files, refs = models(name)
    c = model.config
    arch = "glm4moe" if name == "glm4moe" else "deepseek2"
    n = c.num_hidden_layers + getattr(c, "num_nextn_predict_layers", 0)
    heads = c.num_attention_heads if arch == "deepseek2" else c.num_key_value_heads
    arrays = {"add_expert_feed_forward_length": [c.moe_intermediate_size] * n,
              "add_expert_used_count": [c.num_experts_per_tok] * n,
              "add_feed_forward_length": [c.intermediate_size] * n,
              "add_head_count": [c.num_attention_heads] * n, "add_head_count_kv": [heads] * n}
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "arrays.gguf", "F32", arch, c, tiny_tokenizer,
                          extra_meta=arrays)
    ids = ids_for(c.vocab_size, 48, 7)
    compare_logits(forgert.Model(str(path), backend="cpu").logits(ids), mf.reference_logits(refs["gguf-F32"], ids),
                   **bounds("gguf-F32", False), what=f"{name} per-layer arrays")
    wider = dict(arrays, add_expert_feed_forward_length=[c.moe_intermediate_size * 2] + [c.moe_intermediate_size] * (n - 1))
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "wider.gguf", "F32", arch, c, tiny_tokenizer, extra_meta=wider)
    with pytest.raises(forgert.ModelFormatError, match=rf"'{arch}.expert_feed_forward_length' differs between layers"):
        forgert.Model(str(path), backend="cpu")


def test_yarn_softmax_scale_matters(forgert, models):
    """V2-Lite's mscale_all_dim multiplies the softmax scale by yarn_mscale(4, 0.707)^2 = 1.20:
    without it transformers' logits move far beyond the F32 bound."""
    model, _, _ = models("deepseek-v2-lite")
    changed = copy.deepcopy(model)
    for layer in changed.model.layers:
        layer.self_attn.scaling = layer.self_attn.qk_head_dim ** -0.5
    ae.assert_visible(model, changed, ids_for(model.config.vocab_size, 64, 1))


def test_query_temperature_matters(forgert, models):
    """Mistral 4's query temperature (1 + 0.1 ln(floor(pos / 16) + 1) past position 16) moves
    transformers' logits far beyond the F32 bound."""
    model, _, _ = models("mistral4")
    changed = copy.deepcopy(model)
    changed.config.rope_parameters["llama_4_scaling_beta"] = 0.0
    ae.assert_visible(model, changed, ids_for(model.config.vocab_size, 64, 1))


def test_fused_hf_experts_load_zero_copy(forgert, models):
    """Mistral 4's checkpoint keeps each layer's experts fused ([E, 2 * ffn, hidden] gate_up_proj,
    [E, hidden, ffn] down_proj): each expert's gate, up and down are views of the file's mmap."""
    from safetensors.numpy import load_file
    from forgert.loader import load_model
    _, files, _ = models("mistral4")
    assert "model.layers.1.mlp.experts.gate_up_proj" in load_file(str(files["hf-F32"] / "model.safetensors"))
    h = load_model(str(files["hf-F32"]))
    mm = np.frombuffer(h.handle.files[0]._mm, np.uint8)
    for stack in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        experts = h.core_tensors[f"blk.1.{stack}.weight"]
        assert len(experts) == 8 and all(np.shares_memory(e[0], mm) for e in experts)


def test_info_names_latent_attention(forgert, models):
    _, files, _ = models("deepseek-v3")
    info = forgert.Model(str(files["gguf-Q8_0"]), backend="cpu").info()
    assert info["n_layers"] == 3   # the MTP layer after them is not run
    feats = info["features"]
    assert "multi-head latent attention (latent 32, query rank 64; heads of 32 + 16 rotated dims, values of 32)" in feats
    assert "sigmoid router with a selection bias, 1 of 2 expert groups, weights times 2.5" in feats
    assert "1 multi-token-prediction layer in the file, not run" in feats
    _, files, _ = models("deepseek-v2-lite")
    feats = forgert.Model(str(files["hf-F32"]), backend="cpu").info()["features"]
    assert not any("router" in f for f in feats)   # a plain softmax router
    assert any(f.startswith("YaRN x4 over an original context of 16") for f in feats)


@pytest.mark.parametrize("changes,match", [
    (dict(topk_method="group_limited_greedy", n_group=2, topk_group=1), "group_limited_greedy"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(moe_layer_freq=2), "moe_layer_freq"),
    (dict(v_head_dim=64), "v_head_dim 64"),
])
def test_unsupported_hf_settings_are_named(forgert, models, tmp_path, changes, match):
    _, files, _ = models("deepseek-v2-lite")
    tm = type("TM", (), {"path": lambda self, fmt: files[fmt]})()
    ae.assert_hf_config_refused(forgert, tm, tmp_path, match, **changes)


YARN = {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 16, "rope_theta": 10000.0, "rope_type": "yarn"}


@pytest.mark.parametrize("key,value,match", [
    ("factor", "4", r"yarn' factor must be a number, got '4'"),
    ("mscale", [0.7], r"yarn' mscale must be a number, got \[0\.7\]"),
    ("original_max_position_embeddings", 0, "original_max_position_embeddings must be >= 1, got 0"),
    ("original_max_position_embeddings", None, "is missing 'original_max_position_embeddings'"),
])
def test_yarn_parameters_of_the_wrong_type_are_named(forgert, models, tmp_path, key, value, match):
    """YaRN's rope_parameters that are not numbers were float()'s / int()'s bare errors or math's
    'math domain error' (0 original positions)."""
    _, files, _ = models("deepseek-v2-lite")
    ae.assert_hf_dir_refused(forgert, files["hf-F32"], tmp_path, match, rope_parameters={**YARN, key: value})


def test_gguf_yarn_without_its_log_multiplier_is_named(forgert, models, tmp_path, tiny_tokenizer):
    from forgert.errors import ModelFormatError
    model, files, _ = models("deepseek-v2-lite")
    path = rmf.write_gguf(files["hf-F32"], tmp_path / "yarn.gguf", "F32", "deepseek2", model.config, tiny_tokenizer,
                          extra_meta={"add_rope_scaling_yarn_log_mul": 0.0})
    with pytest.raises(ModelFormatError, match="deepseek2 YaRN without rope.scaling.yarn_log_multiplier"):
        forgert.Model(str(path), backend="cpu")


@pytest.mark.parametrize("name", ["deepseek-v2-lite", "deepseek-v3", "glm4moe-lite", "mistral4"])
def test_quantize_from_hf_dir(forgert, models, tmp_path, name):
    """`forgert quantize` of the HF directory writes llama.cpp's deepseek2 GGUF (attn_kv_b whole,
    the MTP layer left out), which runs as transformers does; the gguf package reads its keys."""
    r = check_export(forgert, models, name, tmp_path)
    assert r.fields["deepseek2.attention.kv_lora_rank"].contents() == 32
    assert r.fields["deepseek2.attention.key_length"].contents() == 48
    assert "blk.1.attn_kv_b.weight" in {t.name for t in r.tensors}


@pytest.mark.parametrize("name", ["deepseek-v2-lite", "deepseek-v3", "glm4moe-lite", "mistral4"])
def test_cache_holds_the_latent_row(forgert, models, name):
    """Absorbed latent attention caches one f16 row of kv_lora + rope values per token and layer
    (V read from it): the tiny models' 32 latent + 16 rope over 3 layers, hand-computed
    (32 + 16) * 2 bytes * 3 = 288; the core's cache is that wide, and a saved state holds each
    row once (V's rows are K's)."""
    _, files, _ = models(name)
    m = forgert.Model(str(files["gguf-F32"]), backend="cpu", n_ctx=16)
    assert m.info()["kv_bytes_per_token"] == (32 + 16) * 2 * 3 == 288
    m._engine.forward(ids_for(m.info()["vocab"], 4, 3), 0, False)
    kv = np.asarray(m._engine.kv_save(4))   # [n_layers, K alone, n, width]
    assert kv.shape == (3, 1, 4, 32 + 16) and kv.nbytes == 4 * 288
    m.generate(ids_for(m.info()["vocab"], 5, 4).tolist(), max_tokens=2, temperature=0.0, ignore_eos=True)
    state = m.save_state()
    assert len(state.tokens) >= 5 and state.nbytes == len(state.tokens) * 288


def test_cache_bytes_of_glm47_flash_shape():
    """GLM-4.7-Flash's shape (47 layers, 20 heads of 192 + 64 for K and 256 for V, latent 512 +
    rope 64): 576 * 2 * 47 = 54,144 bytes a token, hand-computed (README, docs/design.md), where
    full heads took 2 * 20 * 256 * 2 * 47 = 962,560."""
    from forgert.config import ModelConfig
    cfg = ModelConfig(arch="deepseek2", n_layers=47, dim=2048, n_heads=20, n_kv_heads=20, head_dim=256, ffn_dim=10240,
                      vocab=154880, context_length=202752, rms_eps=1e-5, rope_theta=1e6, rope_neox=False, rope_dim=64,
                      mla_kv_lora=512, mla_q_lora=768, mla_v_head_dim=256)
    assert cfg.kv_bytes_per_position() == 576 * 2 * 47 == 54144


@pytest.mark.parametrize("backend", backend_params())
def test_saved_state_and_prompt_cache_continue_as_fresh(forgert, models, metal_reason, backend):
    """The latent cache through save_state / load_state and the prompt cache: a sequence restored
    (or found in the prompt cache after another ran) continues with the tokens a fresh model gives."""
    from forgert.sampling import SamplingParams
    require_backend(backend, metal_reason)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    _, files, _ = models("glm4moe-lite")
    path = str(files["gguf-F32"])
    vocab = 320
    a, b = [int(t) for t in ids_for(vocab, 30, 11)], [int(t) for t in ids_for(vocab, 25, 12)]
    m = forgert.Model(path, backend=backend, n_ctx=128)
    first = list(m.generate(a, greedy).tokens)
    state = m.save_state()
    m.generate(b, greedy)
    m.load_state(state)
    turn = a + first + [int(t) for t in ids_for(vocab, 5, 13)]
    c = m.generate(turn, greedy)
    assert c.timings.cached_tokens > len(a)
    fresh = list(forgert.Model(path, backend=backend, n_ctx=128).generate(turn, greedy).tokens)
    assert list(c.tokens) == fresh
    m2 = forgert.Model(path, backend=backend, n_ctx=128)
    m2.set_prompt_cache(8 << 20)
    m2.generate(a, greedy)
    m2.generate(b, greedy)
    c2 = m2.generate(turn, greedy)
    assert c2.timings.cached_tokens > len(a)
    assert list(c2.tokens) == fresh


@pytest.mark.parametrize("backend", backend_params())
def test_batch_of_prompts_equals_each_alone(forgert, models, metal_reason, backend):
    """Several sequences in one batch (each slot's latent rows through the row table) give the
    greedy tokens each prompt gives alone."""
    require_backend(backend, metal_reason)
    _, files, _ = models("deepseek-v3")
    path = str(files["gguf-F32"])
    prompts = [[int(t) for t in ids_for(320, n, 20 + n)] for n in (5, 17, 9)]
    kw = dict(max_tokens=8, temperature=0.0, ignore_eos=True)
    batch = forgert.Model(path, backend=backend, n_ctx=64, parallel=3).generate(prompts, **kw)
    single = forgert.Model(path, backend=backend, n_ctx=64)
    assert [list(c.tokens) for c in batch] == [list(single.generate(p, **kw).tokens) for p in prompts]
