"""Tiny random Nemotron-H models (transformers' NemotronHForCausalLM: blocks of one Mamba2 mixer, NoPE
attention or a ReLU-squared MLP each), saved as an HF directory and as GGUFs in llama.cpp's
nemotron_h layout, written here after its converter (NemotronHModel over GraniteHybridModel)
independently of forgert: one blk.N per block, each block's norm as attn_norm; head_count_kv (0 but
for attention) and feed_forward_length (0 but for an MLP) per block; the Mamba2 tensors as for
Granite 4.0-H (mamba2_factory: ssm_a = -exp(A_log) and ssm_d [n_heads, 1], ssm_norm [n_groups,
d_inner / n_groups], conv1d squeezed); q / k rows permuted as for llama; layer_norm_epsilon.

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

_BLOCK = {
    "norm.weight": "attn_norm.weight",
    "mixer.in_proj.weight": "ssm_in.weight", "mixer.conv1d.weight": "ssm_conv1d.weight",
    "mixer.conv1d.bias": "ssm_conv1d.bias", "mixer.dt_bias": "ssm_dt.bias", "mixer.A_log": "ssm_a",
    "mixer.D": "ssm_d", "mixer.norm.weight": "ssm_norm.weight", "mixer.out_proj.weight": "ssm_out.weight",
    "mixer.q_proj.weight": "attn_q.weight", "mixer.k_proj.weight": "attn_k.weight",
    "mixer.v_proj.weight": "attn_v.weight", "mixer.o_proj.weight": "attn_output.weight",
    "mixer.up_proj.weight": "ffn_up.weight", "mixer.down_proj.weight": "ffn_down.weight",
}
# name -> (GGUF arch, builder arguments): every kind of pairing of blocks into forgert's layers: a
# Mamba2 block and an attention block each followed by an MLP, a Mamba2 block followed by another,
# and attention last without an MLP.
MODELS = {"nemotron-h": ("nemotron_h", dict(seed=91, pattern="M-M*-MM-*"))}
_KEPT_F32 = ("conv1d.weight",)


def build(name: str, vocab: int):
    from transformers import NemotronHConfig, NemotronHForCausalLM
    _, kw = MODELS[name]
    torch.manual_seed(kw["seed"])
    cfg = NemotronHConfig(
        vocab_size=vocab, hidden_size=64, hybrid_override_pattern=kw["pattern"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16, n_groups=2,
        ssm_state_size=16, conv_kernel=4, chunk_size=16, layer_norm_epsilon=1e-5, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.1,
        # no EOS for transformers' generate: its min_new_tokens would hide a greedy EOS that ignore_eos keeps
        bos_token_id=0, eos_token_id=None, pad_token_id=None)
    model = moe._randomise(NemotronHForCausalLM(cfg), kw["seed"], 0.5)
    gen = torch.Generator().manual_seed(kw["seed"] + 3000)
    with torch.no_grad():   # Mamba2's per-head constants off their inits
        for mod in model.modules():
            if hasattr(mod, "A_log"):
                mod.A_log.copy_(torch.log(torch.rand(mod.A_log.shape, generator=gen) * 4.0 + 0.5))
                mod.D.copy_(1.0 + 0.5 * torch.randn(mod.D.shape, generator=gen))
                mod.dt_bias.copy_(0.5 * torch.randn(mod.dt_bias.shape, generator=gen))
                mod.conv1d.bias.copy_(0.2 * torch.randn(mod.conv1d.bias.shape, generator=gen))
    return model


def save_hf(model, tok, out_dir: Path) -> Path:
    return moe.save_hf(model, tok, out_dir)


def gguf_tensors(hf_dir: Path, c) -> dict:
    out = {}
    d_inner = c.mamba_num_heads * c.mamba_head_dim
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        top = re.sub(r"^(backbone|model)\.", "", name)
        if top in ("embeddings.weight", "norm_f.weight", "lm_head.weight"):
            out[{"embeddings.weight": "token_embd.weight", "norm_f.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}[top]] = w
            continue
        block, rest = re.match(r"^layers\.(\d+)\.(.+)$", top).groups()
        if rest == "mixer.conv1d.weight":
            w = w[:, 0, :]
        elif rest == "mixer.A_log":
            w = -np.exp(w.astype(np.float64)).astype(np.float32)[:, None]
        elif rest == "mixer.D":
            w = w[:, None]
        elif rest == "mixer.norm.weight":
            w = w.reshape(c.n_groups, d_inner // c.n_groups)
        elif rest == "mixer.q_proj.weight":
            w = mf.permute_qk_for_gguf(w, c.num_attention_heads)
        elif rest == "mixer.k_proj.weight":
            w = mf.permute_qk_for_gguf(w, c.num_key_value_heads)
        out[f"blk.{block}.{_BLOCK[rest]}"] = w
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, c, tok, extra_meta=None) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-nemotron-h")
    kinds = list(c.layers_block_type)
    meta = {
        "add_block_count": len(kinds), "add_context_length": 2 ** 20, "add_embedding_length": c.hidden_size,
        "add_feed_forward_length": [c.intermediate_size if k == "mlp" else 0 for k in kinds],
        "add_head_count": c.num_attention_heads,
        "add_head_count_kv": [c.num_key_value_heads if k == "full_attention" else 0 for k in kinds],
        "add_key_length": c.head_dim, "add_value_length": c.head_dim,
        "add_rope_freq_base": 10000.0, "add_layer_norm_eps": c.layer_norm_epsilon, "add_vocab_size": c.vocab_size,
        "add_ssm_conv_kernel": c.conv_kernel, "add_ssm_state_size": c.ssm_state_size,
        "add_ssm_group_count": c.n_groups, "add_ssm_inner_size": c.mamba_num_heads * c.mamba_head_dim,
        "add_ssm_time_step_rank": c.mamba_num_heads, "add_rope_scaling_finetuned": False,
    }
    meta.update(extra_meta or {})
    for key, value in meta.items():
        if value is not None:
            getattr(w, key)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in gguf_tensors(hf_dir, c).items():
        keep = t.ndim == 1 or t.shape[-1] % 32 or name.endswith(("ssm_conv1d.weight", "ssm_a", "ssm_d",
                                                                  "ssm_norm.weight"))
        if keep or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes rounded (not the convolution kernels)."""
    return moe.rounded_reference(model, type_name, kept=_KEPT_F32)


FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0")


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "nemotron_h")
