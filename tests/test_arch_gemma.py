"""Gemma 2 and Gemma 3 (text): tiny random Gemma2ForCausalLM / Gemma3ForCausalLM models
(tests/gemma_factory.py) as HF directories and as GGUF in llama.cpp's layout, run by forgert on
the CPU and the emulated Metal device against transformers (eager attention, so soft-capping
applies; K/V rounded to f16 as forgert's cache stores them).

What the tiny models exercise: GeGLU, RMSNorm with (1 + w) (random norm weights), embeddings
times sqrt(hidden), query_pre_attn_scalar, sandwich norms, Gemma 2's attention and final
soft-capping (caps 2 and 3, small enough to bend these logits), local layers with an 8-key
window under 24-64-token sequences, Gemma 3's QK-norm and its two RoPE tables (10k local,
1M x linear 8 global), tied embeddings, head_dim 32 with q_dim 128 != hidden 64.
Bounds: test_e2e_tiny's (same kernels and paths). Measured here (max_rel / rms_rel of the logits,
worst over both architectures, prefill of 64 and decode of 24 positions): F32/F16 files <= 2.5e-4 /
1.8e-4 (bound 5e-4 / 2.5e-4); Q8_0 CPU prefill 1.3e-4 / 9.5e-5 (1e-3 / 5e-4), CPU decode 5.1e-4 /
4.2e-4 (3e-3 / 2e-3), Metal 1.5e-3 / 1.3e-3 (5e-3 / 4e-3); head_dim 256 within the same. Argmax
agreement 1.0 everywhere (bound 0.95).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import gemma_factory as gf
import model_factory as mf
from conftest import backend_params, require_backend
from test_e2e_tiny import bounds_for, compare_logits, decode_logits

ARCHS = list(gf.SPECS)
FORMATS = ["hf-F32", "hf-F16", "gguf-F32", "gguf-F16", "gguf-Q8_0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    return {name: gf.make_tiny_gemma(spec, root) for name, spec in gf.SPECS.items()}


@pytest.fixture(scope="module")
def refs(tiny):
    cache = {}

    def get(arch, fmt):
        if (arch, fmt) not in cache:
            cache[arch, fmt] = gf.reference(tiny[arch], fmt)
        return cache[arch, fmt]
    return get


def token_ids(tm, n: int, seed: int) -> list:
    rng = np.random.default_rng(1000 * seed + n)
    return rng.integers(0, tm.model.config.vocab_size, n).tolist()


# ----------------------------------------------------------------------------- the tests see the features

def _softcaps_off(m):
    m = copy.deepcopy(m)
    m.config.final_logit_softcapping = None
    for layer in m.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    return m


def _global_rope_unscaled(m):
    """Gemma 3 with its global layers rotating by the local table (one RoPE for all)."""
    m = copy.deepcopy(m)
    rot = m.model.rotary_emb
    rot.full_attention_inv_freq.copy_(rot.sliding_attention_inv_freq)
    return m


@pytest.mark.parametrize("arch, change", [("gemma2", _softcaps_off), ("gemma3", _global_rope_unscaled)])
def test_features_are_visible(tiny, arch, change):
    """Dropping Gemma 2's soft-capping or Gemma 3's second RoPE table moves the logits far past
    the F32 bound (5e-4 of max|logit|): the logits tests below would catch a loader that lost them."""
    tm = tiny[arch]
    ids = token_ids(tm, 48, 1)
    a, b = mf.reference_logits(tm.model, ids), mf.reference_logits(change(tm.model), ids)
    assert np.abs(a - b).max() / np.abs(a).max() > 20 * 5e-4


# ----------------------------------------------------------------------------- file layout

@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_layout_is_the_converters(tiny, arch):
    """The factory's GGUF is what convert_hf_to_gguf.py writes (read back by the gguf package):
    the arch, Gemma's tensor names, norm weights as w + 1, no output.weight."""
    import gguf
    tm = tiny[arch]
    r = gguf.GGUFReader(str(tm.gguf_files["F32"]))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == arch
    tensors = {t.name: t for t in r.tensors}
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight", "blk.0.ffn_norm.weight"} <= set(tensors)
    assert ("blk.0.attn_q_norm.weight" in tensors) == (arch == "gemma3")
    assert "output.weight" not in tensors
    hf_w = tm.model.model.layers[0].post_attention_layernorm.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.post_attention_norm.weight"].data), hf_w + 1)
    assert int(r.fields[f"{arch}.attention.key_length"].parts[-1][0]) == tm.spec.head_dim


@pytest.mark.parametrize("arch", ARCHS)
def test_config_matches_transformers(forgert, tiny, arch):
    """forgert's reading of the HF config and of the GGUF agree with transformers' own model:
    the windows of its layer_types, its query scaling, the RoPE tables of its rotary module."""
    tm = tiny[arch]
    hf_cfg = tm.model.config
    for fmt in ("hf-F32", "gguf-F32"):
        c = forgert.Model(str(tm.path(fmt)), backend="cpu")._model.config
        assert c.windows() == [hf_cfg.sliding_window if t == "sliding_attention" else 0 for t in hf_cfg.layer_types]
        assert c.attn_scale == pytest.approx(hf_cfg.query_pre_attn_scalar ** -0.5)
        assert c.embed_scale == pytest.approx(hf_cfg.hidden_size ** 0.5)
        assert c.ffn_act == "gelu_tanh"
        rot = tm.model.model.rotary_emb
        if arch == "gemma3":
            tables = {"sliding_attention": rot.sliding_attention_inv_freq, "full_attention": rot.full_attention_inv_freq}
            for layer, kind in enumerate(hf_cfg.layer_types):
                table = c.rope_freqs[c.layer_rope[layer]]
                np.testing.assert_allclose(table, tables[kind].numpy(), rtol=1e-6)
        else:
            np.testing.assert_allclose(c.rope_freqs, rot.inv_freq.numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- logits

@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(forgert, tiny, refs, metal_reason, arch, fmt, backend):
    """Batched prefill of 64 positions (8 windows' worth)."""
    require_backend(backend, metal_reason)
    tm = tiny[arch]
    ids = token_ids(tm, 64, 2)
    m = forgert.Model(str(tm.path(fmt)), backend=backend)
    assert m.info()["arch"] == arch
    compare_logits(m.logits(ids), mf.reference_logits(refs(arch, fmt), ids), **bounds_for(fmt, 64, backend),
                   what=f"{arch} {fmt} {backend}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_decode_logits_match_transformers(forgert, tiny, refs, metal_reason, arch, fmt, backend):
    """One token per forward (decode kernels, the window sliding past key 0) at 24 positions."""
    require_backend(backend, metal_reason)
    tm = tiny[arch]
    ids = token_ids(tm, 24, 3)
    m = forgert.Model(str(tm.path(fmt)), backend=backend)
    compare_logits(decode_logits(m, ids), mf.reference_logits(refs(arch, fmt), ids), **bounds_for(fmt, 1, backend),
                   what=f"{arch} {fmt} {backend} decode")


@pytest.mark.parametrize("arch", ARCHS)
def test_quantize_from_hf_dir(forgert, tiny, refs, arch, tmp_path):
    """`forgert quantize` of the HF directory to an F32 GGUF: llama.cpp's gemma keys (window and
    layer pattern, soft caps, the local RoPE base) and its 1 + w norms, so the file runs as
    transformers does."""
    from forgert.gguf_export import export_gguf
    tm = tiny[arch]
    out = tmp_path / f"{arch}-exported.gguf"
    export_gguf(str(tm.path("hf-F32")), str(out), "f32", log=lambda msg: None)
    ids = token_ids(tm, 48, 6)
    m = forgert.Model(str(out), backend="cpu")
    assert m.info()["arch"] == arch
    compare_logits(m.logits(ids), mf.reference_logits(refs(arch, "hf-F32"), ids), **bounds_for("hf-F32", 48),
                   what=f"{arch} exported")


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_32_tokens_equal_transformers(forgert, tiny, refs, arch, fmt):
    tm = tiny[arch]
    prompt = token_ids(tm, 8, 4)
    c = forgert.Model(str(tm.path(fmt)), backend="cpu").generate(prompt, max_tokens=32, temperature=0.0,
                                                                 ignore_eos=True)
    with torch.no_grad():
        out = refs(arch, fmt).generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32,
                                       do_sample=False, pad_token_id=0)
    assert list(c.tokens) == out[0, len(prompt):].tolist()


# ----------------------------------------------------------------------------- tokenizer, template, info

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": " What is 2+2? "}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
]
SYSTEM_CONVERSATION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("arch", ARCHS)
def test_chat_template_equals_transformers(forgert, tiny, arch, fmt):
    """forgert renders the file's template as the tokenizer's apply_chat_template does; Gemma 3
    folds a system message into the first user turn, Gemma 2 refuses it."""
    from transformers import AutoTokenizer
    tm = tiny[arch]
    ref = AutoTokenizer.from_pretrained(str(tm.hf_dirs["F32"]))
    m = forgert.Model(str(tm.path(fmt)), backend="cpu")
    for conv in CONVERSATIONS:
        assert m.apply_chat_template(conv) == ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    if arch == "gemma3":
        text = m.apply_chat_template(SYSTEM_CONVERSATION)
        assert text == ref.apply_chat_template(SYSTEM_CONVERSATION, tokenize=False, add_generation_prompt=True)
        assert "<start_of_turn>user\nAnswer briefly.\n\nHi<end_of_turn>" in text
    else:
        with pytest.raises(ValueError, match="System role not supported"):
            m.apply_chat_template(SYSTEM_CONVERSATION)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("arch", ARCHS)
def test_bos_added_and_end_of_turn_stops(forgert, tiny, arch, fmt):
    """BOS is added to prompts; <end_of_turn> (an id from the file: generation_config's list, or
    the GGUF token llama.cpp recognises by its text) ends generation; the chat prompt's turn
    markers are single tokens."""
    tm = tiny[arch]
    m = forgert.Model(str(tm.path(fmt)), backend="cpu")
    eot = tm.tokenizer.token_to_id(gf.END_OF_TURN)
    assert eot in m.info()["stop_token_ids"]
    assert m.tokenize("Hi")[0] == tm.tokenizer.token_to_id(mf.BOS_TOKEN)
    ids = m.tokenize(m.apply_chat_template(CONVERSATIONS[0]), add_bos=False)
    assert ids[0] == tm.tokenizer.token_to_id(mf.BOS_TOKEN) and ids.count(eot) == 1
    assert tm.tokenizer.token_to_id(gf.START_OF_TURN) in ids


@pytest.mark.parametrize("arch", ARCHS)
def test_info_names_architecture_and_features(forgert, tiny, arch):
    from forgert.cli.info import describe, format_text
    from forgert.loader import load_model
    d = describe(load_model(tiny[arch].gguf_files["F32"]))
    assert d["arch"] == arch
    text = format_text(d, False, False)
    assert "GeGLU" in text and "post-attention and post-feed-forward norms" in text
    assert "sliding window 8 in layers" in text
    if arch == "gemma2":
        assert "attention-logit soft-capping 2" in text and "final-logit soft-capping 3" in text
    else:
        assert "QK-norm" in text and "2 RoPE tables" in text and "soft-capping" not in text


# ----------------------------------------------------------------------------- config reading

def _hf_config(**over):
    base = {"model_type": "gemma2", "hidden_size": 2304, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "intermediate_size": 9216, "num_hidden_layers": 4, "vocab_size": 256000,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 224,
            "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 10000.0}
    base.update(over)
    return base


def test_hf_query_pre_attn_scalar_and_caps():
    """The 27B's query_pre_attn_scalar (144 = dim / heads, not head_dim) and the caps as the
    config gives them; transformers 4 configs without layer_types alternate local/global."""
    from forgert.config import TensorCensus, config_from_hf
    c = config_from_hf(_hf_config(query_pre_attn_scalar=144), "t", TensorCensus(10_000, 1 << 20))
    assert c.attn_scale == pytest.approx(144 ** -0.5)
    assert (c.attn_softcap, c.final_softcap) == (50.0, 30.0)
    assert c.windows() == [4096, 0, 4096, 0]


def test_hf_gemma3_transformers4_rope_spelling():
    """Hub Gemma 3 configs: rope_theta + rope_scaling for the global layers, rope_local_base_freq
    for the local ones, sliding_window_pattern 6."""
    from forgert.config import TensorCensus, config_from_hf
    from forgert.rope import rope_freqs
    hf = _hf_config(model_type="gemma3_text", num_hidden_layers=7, rope_theta=1e6, rope_local_base_freq=1e4,
                    rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=6,
                    attn_logit_softcapping=None, final_logit_softcapping=None)
    c = config_from_hf(hf, "t", TensorCensus(10_000, 1 << 20))
    assert c.windows() == [4096] * 5 + [0, 4096]
    assert c.layer_rope == [0] * 5 + [1, 0]
    np.testing.assert_array_equal(c.rope_freqs[0], rope_freqs(1e4, 256))
    np.testing.assert_array_equal(c.rope_freqs[1], rope_freqs(1e6, 256) / np.float32(8))
    assert (c.attn_softcap, c.final_softcap) == (0.0, 0.0)


@pytest.mark.parametrize("type_id, dim, expect", [(30, 3072, 55.5), (1, 3072, 55.4375), (0, 3072, 55.42562)])
def test_embedding_scale_in_the_embedding_dtype(type_id, dim, expect):
    """transformers multiplies by sqrt(hidden) as a tensor of the embedding's dtype: BF16
    Gemma 3 4B scales by 55.5, not 55.4256 (torch.tensor(3072 ** 0.5, dtype=bfloat16) == 55.5)."""
    from forgert.gemma import embedding_scale
    tdtype = {30: torch.bfloat16, 1: torch.float16, 0: torch.float32}[type_id]
    assert embedding_scale(dim, type_id) == float(torch.tensor(dim ** 0.5, dtype=tdtype))
    assert embedding_scale(dim, type_id) == pytest.approx(expect, abs=1e-4)


@pytest.mark.parametrize("n_layers, head_scale", [(4, 256), (46, 4608 // 32)])
def test_gguf_attention_scale_follows_llama_cpp(n_layers, head_scale):
    """GGUF has no query_pre_attn_scalar: llama.cpp scales by 1/sqrt(head_dim), or by
    1/sqrt(dim / heads) for the 27B (46 layers)."""
    from forgert.config import TensorCensus, config_from_gguf
    meta = {"general.architecture": "gemma2", "gemma2.attention.head_count": 32, "gemma2.embedding_length": 4608,
            "gemma2.attention.key_length": 128, "gemma2.attention.value_length": 128,
            "gemma2.block_count": n_layers, "gemma2.feed_forward_length": 36864, "gemma2.context_length": 8192,
            "gemma2.attention.layer_norm_rms_epsilon": 1e-6, "gemma2.attention.head_count_kv": 16}
    meta["gemma2.attention.key_length"] = meta["gemma2.attention.value_length"] = 256 if n_layers == 4 else 128
    c = config_from_gguf(meta, 256000, "t", TensorCensus(10_000, 1 << 20))
    assert c.attn_scale == pytest.approx(head_scale ** -0.5)
    assert (c.attn_softcap, c.final_softcap) == (50.0, 30.0)     # llama.cpp's defaults


@pytest.mark.parametrize("arch, dropped", [("gemma2", "blk.1.post_ffw_norm.weight"),
                                           ("gemma2", "blk.0.post_attention_norm.weight"),
                                           ("gemma3", "blk.5.attn_q_norm.weight")])
def test_missing_gemma_tensor_is_refused(forgert, tiny, tmp_path, arch, dropped):
    """A Gemma GGUF without one of its post-norms or QK-norms is an error naming the tensor."""
    tm = tiny[arch]
    tensors = gf.gguf_tensors(tm.model)
    del tensors[dropped]
    path = gf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "missing.gguf", "F32", tensors=tensors)
    with pytest.raises(ValueError, match=dropped.replace(".", r"\.")):
        forgert.Model(str(path), backend="cpu")


# ----------------------------------------------------------------------------- Gemma's SentencePiece GGUF

GEMMA_SPM_TEXTS = ["the cat sat on the mat", " the  cat", "ü 😀 is it", "hello\nworld",
                   "<start_of_turn>user\nthe cat<end_of_turn>\n<start_of_turn>model\n", "mat"]


@pytest.mark.parametrize("arch", ARCHS)
def test_sentencepiece_gguf_tokenizer_matches_transformers(tmp_path, arch):
    """Real Gemma GGUFs carry a SentencePiece ("llama") vocabulary written by the converter's
    _set_vocab_sentencepiece with add_space_prefix false, byte-fallback tokens and the turn
    markers as control tokens: forgert's tokenizer against transformers' GGUF tokenizer loader,
    and <end_of_turn> found as the EOT by its text (the file has no eot_token_id)."""
    import gguf
    from test_tokenizer import SPM_PIECES

    from forgert.gguf import GGUFFile
    from forgert.tokenizer import ModelTokenizer
    transformers = pytest.importorskip("transformers")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", gf.START_OF_TURN, gf.END_OF_TURN]
    pieces = SPM_PIECES + ["▁▁", "\n", "▁\n"]
    path = tmp_path / "gemma-spm.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    for add in (w.add_context_length, w.add_embedding_length, w.add_block_count, w.add_feed_forward_length,
                w.add_head_count):
        add(64)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(specials + [f"<0x{b:02X}>" for b in range(256)] + pieces)
    w.add_token_scores([0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))])
    w.add_token_types([3, 3, 3, 2, 3, 3] + [6] * 256 + [1] * len(pieces))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    ours = ModelTokenizer.from_gguf(GGUFFile(path).metadata, path.name)
    for text in GEMMA_SPM_TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ids[0] == 2
        assert ours.decode(ids[1:]) == ref.decode(ids[1:])
    assert ours.eot_id == 5 and ours.stop_ids == {1, 5}


# ----------------------------------------------------------------------------- Gemma's real head_dim

@pytest.fixture(scope="module")
def tiny_hd256(tmp_path_factory):
    """Gemma 2 with head_dim 256, every Gemma's (the attention kernels' widest head on CPU and
    Metal), two query heads sharing one KV head."""
    spec = gf.GemmaSpec(name="gemma2_hd256", arch="gemma2", n_layers=2, n_heads=2, n_kv_heads=1, head_dim=256,
                        attn_softcap=2.0, final_softcap=3.0, seed=23)
    return gf.make_tiny_gemma(spec, tmp_path_factory.mktemp("gemma_hd256"), hf_dtypes=("F32",),
                              gguf_types=("Q8_0",))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_head_dim_256_logits_match_transformers(forgert, tiny_hd256, metal_reason, fmt, backend):
    """Prefill of 40 positions and decode of 12 (the window of 8 sliding in both)."""
    require_backend(backend, metal_reason)
    tm = tiny_hd256
    ref = gf.reference(tm, fmt)
    m = forgert.Model(str(tm.path(fmt)), backend=backend)
    ids = token_ids(tm, 40, 5)
    compare_logits(m.logits(ids), mf.reference_logits(ref, ids), **bounds_for(fmt, 40, backend),
                   what=f"head_dim 256 {fmt} {backend}")
    ids = token_ids(tm, 12, 6)
    compare_logits(decode_logits(m, ids), mf.reference_logits(ref, ids), **bounds_for(fmt, 1, backend),
                   what=f"head_dim 256 {fmt} {backend} decode")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_after_cached_prefix_matches_transformers(forgert, tiny, refs, metal_reason, arch, backend):
    """A prompt continuing a cached one (a chat's next turn): 30 positions, then 26 more at
    pos 30 in one batch, every local layer's window (8) starting inside the new batch and in
    the cached rows."""
    require_backend(backend, metal_reason)
    tm = tiny[arch]
    ids = token_ids(tm, 56, 7)
    eng = forgert.Model(str(tm.path("gguf-F32")), backend=backend)._engine
    eng.forward(np.asarray(ids[:30], np.int32), 0)
    out = np.asarray(eng.forward(np.asarray(ids[30:], np.int32), 30, all_logits=True))
    ref = mf.reference_logits(refs(arch, "gguf-F32"), ids)[30:]
    compare_logits(out, ref, **bounds_for("gguf-F32", 26, backend), what=f"{arch} {backend} cached prefix")
