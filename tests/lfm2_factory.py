"""Tiny random LFM2 models (transformers' Lfm2ForCausalLM: short-convolution layers beside attention
layers with a per-head QK-norm), saved as an HF directory and as GGUFs in llama.cpp's lfm2 layout,
written here after its converter (LFM2Model) independently of forgert: the convolution layers
marked by a head_count_kv of 0 in the per-layer array, conv.conv [C, 1, K] as shortconv.conv
[C, K], the final norm (embedding_norm) named token_embd_norm, shortconv.l_cache, the MLP's
width as transformers computes it (block_auto_adjust_ff_dim) in feed_forward_length.

Nothing here imports forgert: this module is the reference side of the tests.
"""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file

import model_factory as mf
import moe_factory as moe

_LAYER = {
    "operator_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "conv.in_proj.weight": "shortconv.in_proj.weight", "conv.conv.weight": "shortconv.conv.weight",
    "conv.out_proj.weight": "shortconv.out_proj.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.out_proj.weight": "attn_output.weight",
    "self_attn.q_layernorm.weight": "attn_q_norm.weight", "self_attn.k_layernorm.weight": "attn_k_norm.weight",
    "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.gate.weight": "ffn_gate_inp.weight", "feed_forward.expert_bias": "exp_probs_b.bias",
}
# name -> (GGUF arch, builder arguments): "lfm2": LFM2-1.2B's pattern on 6 layers (convolution
# layers 0, 1, 3, 4; attention 2 and 5), the MLP width adjusted as LFM2's configs ask, tied
# embeddings; "lfm2-untied": every other layer attention, an untied output, no width adjustment.
# "lfm2moe": LFM2-8B-A1B's layout on 6 layers: 2 dense layers, then 8 experts top 2 under a sigmoid
# router whose expert_bias chooses, renormalised, times 1.5.
MODELS = {
    "lfm2": ("lfm2", dict(seed=71, attn=(2, 5), tied=True, adjust=True)),
    "lfm2-untied": ("lfm2", dict(seed=72, attn=(1, 3, 5), tied=False, adjust=False)),
    "lfm2moe": ("lfm2moe", dict(seed=73, attn=(2, 5), tied=True, moe=True)),
}
_EXPERT = re.compile(r"^feed_forward\.experts\.(\d+)\.(w1|w3|w2)\.weight$")
_FUSED = re.compile(r"^feed_forward\.experts\.(gate_up_proj|down_proj)$")
_STACK = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}
_KEPT_F32 = ("conv.conv.weight", "feed_forward.gate.weight")   # what the GGUF keeps F32


def build(name: str, vocab: int):
    from transformers import Lfm2Config, Lfm2ForCausalLM, Lfm2MoeConfig, Lfm2MoeForCausalLM
    _, kw = MODELS[name]
    torch.manual_seed(kw["seed"])
    if kw.get("moe"):
        cfg = Lfm2MoeConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                            num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=256, norm_eps=1e-5, conv_L_cache=3, num_dense_layers=2,
                            num_experts=8, num_experts_per_tok=2, routed_scaling_factor=1.5, norm_topk_prob=True,
                            layer_types=["full_attention" if i in kw["attn"] else "conv" for i in range(6)],
                            # no EOS for transformers' generate: its min_new_tokens would hide token 1,
                            # this model's argmax at the 3rd greedy step, which ignore_eos keeps
                            tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=None,
                            pad_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        model = moe._randomise(Lfm2MoeForCausalLM(cfg), kw["seed"], 0.5)
        with torch.no_grad():   # the selection bias large enough to change choices (sigmoid scores are 0..1)
            gen = torch.Generator().manual_seed(kw["seed"] + 2000)
            for mod in model.modules():
                if hasattr(mod, "expert_bias"):
                    mod.expert_bias.copy_(0.3 * torch.randn(mod.expert_bias.shape, generator=gen))
        return model
    # adjusted: int(2 * 144 / 3) = 96, times 1.0, rounded up to a multiple of 32: 96 (a Q8_0 row's 32)
    cfg = Lfm2Config(vocab_size=vocab, hidden_size=64, intermediate_size=144 if kw["adjust"] else 96,
                     num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     norm_eps=1e-5, conv_L_cache=3, block_auto_adjust_ff_dim=kw["adjust"], block_multiple_of=32,
                     block_ffn_dim_multiplier=1.0, full_attn_idxs=list(kw["attn"]), tie_word_embeddings=kw["tied"],
                     initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return moe._randomise(Lfm2ForCausalLM(cfg), kw["seed"], 0.5)


def save_hf(model, tok, out_dir: Path) -> Path:
    return moe.save_hf(model, tok, out_dir)


def ffn_width(model) -> int:
    return model.model.layers[0].feed_forward.w1.weight.shape[0]


def gguf_tensors(hf_dir: Path) -> dict:
    out, experts = {}, {}
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        top = {"model.embed_tokens.weight": "token_embd.weight", "model.embedding_norm.weight": "token_embd_norm.weight",
               "lm_head.weight": "output.weight"}
        if name in top:
            out[top[name]] = w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        p = f"blk.{layer}."
        expert, fused = _EXPERT.match(rest), _FUSED.match(rest)
        if expert:
            experts.setdefault(f"{p}{_STACK[expert.group(2)]}.weight", {})[int(expert.group(1))] = w
            continue
        if fused:   # transformers 5's fused experts
            moe.add_fused_experts(out, p, fused.group(1), w)
            continue
        if rest == "conv.conv.weight":
            w = w[:, 0, :]
        out[p + _LAYER[rest]] = w
    moe.stack_experts(out, experts)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, c, tok, extra_meta=None) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-lfm2")
    meta = {
        "add_block_count": c.num_hidden_layers, "add_context_length": 256, "add_embedding_length": c.hidden_size,
        "add_feed_forward_length": (lfm2_width(c)), "add_head_count": c.num_attention_heads,
        "add_head_count_kv": [c.num_key_value_heads if t == "full_attention" else 0 for t in c.layer_types],
        "add_rope_freq_base": float(c.rope_parameters["rope_theta"]), "add_layer_norm_rms_eps": c.norm_eps,
        "add_vocab_size": c.vocab_size, "add_shortconv_l_cache": c.conv_L_cache,
    }
    if arch == "lfm2moe":   # LFM2MoeModel's keys
        meta.update(add_feed_forward_length=c.intermediate_size, add_expert_count=c.num_experts,
                    add_expert_used_count=c.num_experts_per_tok, add_expert_feed_forward_length=c.moe_intermediate_size,
                    add_leading_dense_block_count=c.num_dense_layers,
                    add_expert_gating_func=gguf.ExpertGatingFuncType.SIGMOID,
                    add_expert_weights_scale=float(c.routed_scaling_factor), add_expert_weights_norm=c.norm_topk_prob)
    meta.update(extra_meta or {})
    for key, value in meta.items():
        if value is not None:
            getattr(w, key)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in gguf_tensors(hf_dir).items():
        if t.ndim == 1 or name.endswith(("shortconv.conv.weight", "ffn_gate_inp.weight")) or \
                qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def lfm2_width(c) -> int:
    """The MLP's width as transformers' Lfm2MLP computes it (what LFM2Model writes as feed_forward_length)."""
    width = c.intermediate_size
    if getattr(c, "block_auto_adjust_ff_dim", False):   # (LFM2-MoE's dense MLPs are intermediate_size wide)
        width = int(2 * width / 3)
        if c.block_ffn_dim_multiplier is not None:
            width = int(c.block_ffn_dim_multiplier * width)
            width = c.block_multiple_of * ((width + c.block_multiple_of - 1) // c.block_multiple_of)
    return width


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes rounded (not the convolution
    kernels and the router, which the GGUF keeps F32)."""
    return moe.rounded_reference(model, type_name, kept=_KEPT_F32)


FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0")


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "lfm2")


def half_weight_reference(model, type_name: str = "Q8_0"):
    """quantized_reference with the quantized matrices also rounded to half, as Metal's prefill GEMM
    stages them (activations stay f32): the reference for its prefix rows where a routing choice
    sits so near a tie that the half rounding flips it (lfm2moe: row 40 of the 64-token prefill)."""
    ref = quantized_reference(model, type_name)
    sd = ref.state_dict()
    for name, w in sd.items():
        if w.ndim >= 2 and w.shape[0] > 1 and not name.endswith(_KEPT_F32):
            sd[name] = w.half().float()
    ref.load_state_dict(sd)
    return ref

