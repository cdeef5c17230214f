"""The language models of Qwen's vision GGUFs (arch `qwen2vl`: Qwen2-VL, Qwen2.5-VL; `qwen3vl`:
Qwen3-VL), run on text. Their multimodal RoPE splits each head's rotated pairs into sections
rotated by a token's time / height / width positions (Qwen3-VL interleaves them); a text token has
the same position in each, so its rotation is 1-D RoPE, and forgert runs them as Qwen2 / Qwen3.
The reference is transformers' own vision-language model (tiny, random) given text only, which
computes the three position streams itself; the GGUF holds its language model's weights with
llama.cpp's rope.dimension_sections key. CPU and emulated Metal."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import model_factory as mf
from conftest import backend_params, require_backend
from test_e2e_tiny import bounds_for, compare_logits, decode_logits

TEXT = dict(vocab_size=None, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
            rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=None)
SECTIONS = [2, 3, 3]   # time, height, width pairs of each head's 8 rotated pairs (head_dim 16)


def build_vl(kind: str, vocab: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    torch.manual_seed(31 if kind == "qwen2vl" else 32)
    text = {**TEXT, "vocab_size": vocab}
    if kind == "qwen2vl":
        cfg = Qwen2VLConfig(text_config={**text, "rope_scaling": {"type": "mrope", "mrope_section": SECTIONS}},
                            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                                               patch_size=2, spatial_merge_size=1, temporal_patch_size=1))
        model = Qwen2VLForConditionalGeneration(cfg)
    else:
        cfg = Qwen3VLConfig(text_config={**text, "head_dim": 16, "rope_scaling": {"rope_type": "default",
                                         "mrope_section": SECTIONS, "mrope_interleaved": True}},
                            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=2,
                                               spatial_merge_size=1, temporal_patch_size=1, out_hidden_size=64,
                                               deepstack_visual_indexes=[0], num_position_embeddings=16))
        model = Qwen3VLForConditionalGeneration(cfg)
    model = model.float().eval()
    with torch.no_grad():   # random norms and biases, as the other tiny models
        gen = torch.Generator().manual_seed(7)
        for name, p in model.named_parameters():
            if "language_model" in name and name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "language_model" in name and name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def write_gguf(model, kind: str, tok, path, type_name: str):
    """The language model's tensors under llama.cpp's names, with the qwen2vl / qwen3vl keys its
    converter writes (rope.dimension_sections padded to four)."""
    text = model.config.text_config
    w = gguf.GGUFWriter(str(path), kind)
    w.add_context_length(text.max_position_embeddings)
    w.add_embedding_length(text.hidden_size)
    w.add_block_count(text.num_hidden_layers)
    w.add_feed_forward_length(text.intermediate_size)
    w.add_head_count(text.num_attention_heads)
    w.add_head_count_kv(text.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(text.rms_norm_eps)
    w.add_rope_dimension_sections(SECTIONS + [0])
    if kind == "qwen3vl":
        w.add_key_length(16)
        w.add_value_length(16)
    w.add_vocab_size(text.vocab_size)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    for hf_name, t in model.state_dict().items():
        if "language_model" not in hf_name and not hf_name.startswith("lm_head"):
            continue   # the vision tower lives in the mmproj file
        name = mf._gguf_name(hf_name.replace("model.language_model.", "model."))
        data, qtype = mf.encode_tensor(np.ascontiguousarray(t.detach().float().numpy()), type_name, name)
        w.add_tensor(name, data, raw_dtype=qtype)
    return mf.write_and_close(w, path)


@pytest.fixture(scope="module", params=["qwen2vl", "qwen3vl"])
def vl(request, tmp_path_factory, tiny_tokenizer):
    kind = request.param
    model = build_vl(kind, tiny_tokenizer.get_vocab_size())
    root = tmp_path_factory.mktemp(kind)
    files = {t: write_gguf(model, kind, tiny_tokenizer, root / f"{kind}-{t}.gguf", t) for t in ("F32", "Q8_0")}
    return kind, model, files


def reference(model, type_name: str):
    """transformers' model holding the GGUF's weights as the gguf package dequantizes them."""
    import copy
    if type_name == "F32":
        return mf.with_f16_kv(model)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ("language_model" in name or name.startswith("lm_head")) and p.ndim == 2:
                raw = gguf.quants.quantize(p.detach().numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(p.shape)))
    return mf.with_f16_kv(m)


def ids_of(model, n: int, seed: int) -> list:
    return np.random.default_rng(seed).integers(2, model.config.text_config.vocab_size, n).tolist()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("type_name", ["F32", "Q8_0"])
def test_text_logits_match_transformers(forgert, vl, metal_reason, backend, type_name):
    """Prefill of 48 positions and decode of 16, against the vision-language model on text."""
    require_backend(backend, metal_reason)
    kind, model, files = vl
    m = forgert.Model(str(files[type_name]), backend=backend)
    assert m.info()["arch"] == kind
    ref_model = reference(model, type_name)
    ids = ids_of(model, 48, 1)
    compare_logits(m.logits(ids), mf.reference_logits(ref_model, ids), **bounds_for(f"gguf-{type_name}", 48, backend),
                   what=f"{kind} {type_name} {backend} prefill")
    ids = ids_of(model, 16, 2)
    m2 = forgert.Model(str(files[type_name]), backend=backend)
    compare_logits(decode_logits(m2, ids), mf.reference_logits(ref_model, ids), **bounds_for(f"gguf-{type_name}", 1, backend),
                   what=f"{kind} {type_name} {backend} decode")


def test_info_says_text_only(forgert, vl):
    kind, _, files = vl
    feats = forgert.Model(str(files["F32"]), backend="cpu").info()["features"]
    assert any("text only" in f and "vision encoder" in f for f in feats)


def test_sections_wider_than_the_head_are_refused(forgert, vl, tmp_path, tiny_tokenizer):
    from forgert.errors import ModelFormatError
    kind, model, _ = vl
    orig = gguf.GGUFWriter.add_rope_dimension_sections
    gguf.GGUFWriter.add_rope_dimension_sections = lambda self, v: orig(self, [8, 8, 8, 0])
    try:
        path = write_gguf(model, kind, tiny_tokenizer, tmp_path / "wide.gguf", "F32")
    finally:
        gguf.GGUFWriter.add_rope_dimension_sections = orig
    with pytest.raises(ModelFormatError, match="dimension_sections"):
        forgert.Model(str(path), backend="cpu")


def test_qwen3vlmoe_runs_as_qwen3_moe(forgert, tmp_path, tiny_tokenizer):
    """qwen3vlmoe (Qwen3-VL-30B-A3B's language model): Qwen3-MoE on text, the reduction of its
    RoPE on text being the one the dense qwen3vl case above checks against transformers' Qwen3-VL.
    A tiny Qwen3-MoE's weights under arch qwen3vlmoe with sections, against transformers' Qwen3-MoE."""
    import moe_factory as moe
    vocab = tiny_tokenizer.get_vocab_size()
    model = moe.build_qwen3_moe(vocab, n_expert=4, top_k=2, norm_topk_prob=True, seed=33)
    hf_dir = moe.save_hf(model, tiny_tokenizer, tmp_path / "hf")
    path = moe.write_gguf(hf_dir, tmp_path / "vlmoe.gguf", "F32", "qwen3vlmoe", model.config, tiny_tokenizer,
                          extra_meta={"add_rope_dimension_sections": [4, 6, 6, 0]})
    m = forgert.Model(str(path), backend="cpu")
    assert m.info()["arch"] == "qwen3vlmoe"
    ids = np.random.default_rng(3).integers(2, vocab, 40).tolist()
    compare_logits(m.logits(ids), mf.reference_logits(mf.with_f16_kv(model), ids), **bounds_for("gguf-F32", 40),
                   what="qwen3vlmoe")
