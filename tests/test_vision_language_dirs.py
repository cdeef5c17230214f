"""Hugging Face vision-language directories run as their language model, on text
(python/forgert/vision_language.py): Gemma 3 (4B-27B's Gemma3ForConditionalGeneration), Mistral
Small 3.1 / 3.2 (Mistral3ForConditionalGeneration), Qwen2-VL / Qwen2.5-VL, Qwen3-VL, LLaVA,
LLaVA-NeXT, SmolVLM and Idefics3 (SmolVLM's first version). Each tiny
random model is saved with save_pretrained (vision tower, projector and language model in one
safetensors file) and forgert's logits on text, CPU and emulated Metal, prefill and decode, are
compared with transformers running the same vision-language model on the same token ids (their
own computation of the multimodal positions included)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import model_factory as mf
from conftest import backend_params, require_backend
from test_arch_qwen_vl import build_vl
from test_e2e_tiny import FLOAT_BOUNDS, compare_logits, decode_logits


def build_gemma3(vocab: int):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    torch.manual_seed(41)
    cfg = Gemma3Config(text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                                        query_pre_attn_scalar=16,
                                        max_position_embeddings=256, layer_types=["sliding_attention",
                                                                                  "full_attention",
                                                                                  "sliding_attention"]),
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                          image_size=28, patch_size=14), mm_tokens_per_image=4,
                       image_token_index=vocab - 1, boi_token_index=vocab - 2, eoi_token_index=vocab - 3)
    return Gemma3ForConditionalGeneration(cfg)


def build_mistral3(vocab: int):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    torch.manual_seed(42)
    cfg = Mistral3Config(text_config=dict(model_type="mistral", vocab_size=vocab, hidden_size=64, intermediate_size=160,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                          max_position_embeddings=256, rope_theta=1e6, sliding_window=None,
                                          tie_word_embeddings=False),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                            image_size=28, patch_size=14, head_dim=16),
                         image_token_index=vocab - 1, spatial_merge_size=1)
    return Mistral3ForConditionalGeneration(cfg)


def build_qwen2_5_vl(vocab: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(43)
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
                rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=2,
                                             spatial_merge_size=1, temporal_patch_size=1, out_hidden_size=64,
                                             window_size=8, fullatt_block_indexes=[0])))


CLIP = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32)


def llama_text(vocab: int) -> dict:
    return dict(model_type="llama", vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


def build_llava(vocab: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    torch.manual_seed(44)
    return LlavaForConditionalGeneration(LlavaConfig(text_config=llama_text(vocab), vision_config=CLIP,
                                                     image_token_index=vocab - 1))


def build_llava_next(vocab: int):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
    torch.manual_seed(45)
    return LlavaNextForConditionalGeneration(LlavaNextConfig(text_config=llama_text(vocab), vision_config=CLIP,
                                                             image_token_index=vocab - 1, image_grid_pinpoints=[[28, 28]]))


def build_smolvlm(vocab: int, idefics3: bool = False):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, SmolVLMConfig, SmolVLMForConditionalGeneration
    torch.manual_seed(46)
    config, model = ((Idefics3Config, Idefics3ForConditionalGeneration) if idefics3 else
                     (SmolVLMConfig, SmolVLMForConditionalGeneration))
    return model(config(
        text_config=llama_text(vocab), image_token_id=vocab - 1, scale_factor=1,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14)))


BUILDERS = {"gemma3": build_gemma3, "mistral3": build_mistral3, "qwen2_vl": lambda v: build_vl("qwen2vl", v),
            "qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": lambda v: build_vl("qwen3vl", v), "llava": build_llava,
            "llava_next": build_llava_next, "smolvlm": build_smolvlm,
            "idefics3": lambda v: build_smolvlm(v, idefics3=True)}
ARCH = {"gemma3": "gemma3", "mistral3": "llama", "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "qwen3_vl": "qwen3",
        "llava": "llama", "llava_next": "llama", "smolvlm": "llama", "idefics3": "llama"}


def randomise(model, seed):
    """Norms around 1 and small biases in the language model, so a dropped one shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision" in name or "visual" in name or "projector" in name:
                continue
            if name.endswith("norm.weight"):
                p.copy_((0.2 if "gemma" in type(model).__name__.lower() else 1.0) + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module", params=list(BUILDERS))
def vl_dir(request, tmp_path_factory, tiny_tokenizer):
    kind = request.param
    model = BUILDERS[kind](tiny_tokenizer.get_vocab_size()).float().eval()
    randomise(model, 5)
    spec = type("Spec", (), {"legacy_rope_config": False})()
    path = mf.save_hf_dir(model, spec, tiny_tokenizer, tmp_path_factory.mktemp(kind), "F32")
    assert json.loads((path / "config.json").read_text())["model_type"] == kind
    return kind, model, path


def ids_of(vocab: int, n: int, seed: int) -> list:
    return np.random.default_rng(seed).integers(2, vocab - 4, n).tolist()   # text tokens, no image markers


@pytest.mark.parametrize("backend", backend_params())
def test_text_logits_match_transformers(forgert, vl_dir, metal_reason, backend):
    require_backend(backend, metal_reason)
    kind, model, path = vl_dir
    m = forgert.Model(str(path), backend=backend)
    info = m.info()
    assert info["arch"] == ARCH[kind]
    assert any("text only" in f for f in info["features"])
    ref = mf.with_f16_kv(model)
    vocab = model.config.get_text_config().vocab_size
    ids = ids_of(vocab, 40, 1)
    compare_logits(m.logits(ids), mf.reference_logits(ref, ids), **FLOAT_BOUNDS, what=f"{kind} {backend} prefill")
    ids = ids_of(vocab, 12, 2)
    m2 = forgert.Model(str(path), backend=backend)
    compare_logits(decode_logits(m2, ids), mf.reference_logits(ref, ids), **FLOAT_BOUNDS, what=f"{kind} {backend} decode")


def test_vision_tensors_stay_unread(vl_dir):
    """Only the language model's tensors are read: every weight the loader keeps has a text-only
    checkpoint's canonical name."""
    from forgert.loader import load_model
    kind, _, path = vl_dir
    names = list(load_model(path).weights)
    assert names and all(n.startswith(("token_embd.", "output", "blk.")) for n in names), names


def test_transformers_4_qwen2_vl_layout(forgert, vl_dir, tmp_path):
    """Qwen2-VL / Qwen2.5-VL as transformers 4 saved them: the language model's keys at the top
    level of config.json with rope_scaling {"type": "mrope"}, and its tensors under model.layers.*
    beside visual.*; the same logits as the transformers 5 layout above."""
    kind, model, path = vl_dir
    if kind not in ("qwen2_vl", "qwen2_5_vl"):
        pytest.skip("the transformers 4 layout is Qwen2-VL's")
    import shutil
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "v4"
    shutil.copytree(path, d)
    cfg = json.loads((d / "config.json").read_text())
    text = cfg.pop("text_config")
    text.pop("rope_parameters", None)
    cfg.update({k: v for k, v in text.items() if k != "model_type"},
               rope_theta=10000.0, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    (d / "config.json").write_text(json.dumps(cfg))

    def v4_name(n):
        for new, old in (("model.language_model.", "model."), ("model.visual.", "visual.")):
            if n.startswith(new):
                return old + n[len(new):]
        return n
    tensors = load_file(str(d / "model.safetensors"))
    save_file({v4_name(n): t for n, t in tensors.items()}, str(d / "model.safetensors"))
    assert any(n.startswith("model.layers.") for n in map(v4_name, tensors))
    m = forgert.Model(str(d), backend="cpu")
    ids = ids_of(model.config.get_text_config().vocab_size, 40, 3)
    compare_logits(m.logits(ids), mf.reference_logits(mf.with_f16_kv(model), ids), **FLOAT_BOUNDS, what=f"{kind} v4")


def test_quantize_writes_the_language_model(forgert, vl_dir, tmp_path):
    """`forgert quantize` of a vision-language directory writes its language model as a text GGUF
    that runs as transformers' vision-language model does on text."""
    from forgert.gguf_export import export_gguf
    kind, model, path = vl_dir
    out = tmp_path / f"{kind}.gguf"
    export_gguf(str(path), str(out), "f32", log=lambda msg: None)
    m = forgert.Model(str(out), backend="cpu")
    assert m.info()["arch"] == ARCH[kind]
    ids = ids_of(model.config.get_text_config().vocab_size, 40, 4)
    compare_logits(m.logits(ids), mf.reference_logits(mf.with_f16_kv(model), ids), **FLOAT_BOUNDS,
                   what=f"{kind} exported")
