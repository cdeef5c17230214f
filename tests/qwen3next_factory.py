"""Tiny random Qwen3-Next models (transformers' Qwen3NextForCausalLM): three Gated DeltaNet layers
to one gated attention layer, every MLP a mixture of experts with a sigmoid-gated shared expert.
Each is saved as an HF directory (with an mtp.* block, as Qwen3-Next's checkpoints carry one) and
as GGUFs in llama.cpp's qwen3next layout, written here after its converter (conversion/qwen.py,
Qwen3NextModel over Qwen2MoeModel), independently of forgert:
  - in_proj_qkvz (rows per key head: q, k, that head's v, its z) de-interleaved into attn_qkv
    (every q, every k, every v) and attn_gate (every z); older converters kept it whole as ssm_in
    (the "gguf-legacy-Q8_0" format here);
  - in_proj_ba written unchanged as ssm_ba (rows per key head: b, then a);
  - the value heads left in HF's grouped order everywhere (unlike Qwen3.5's tiled GGUFs);
  - ssm_a = -exp(A_log), dt_bias as ssm_dt.bias, conv1d [C, 1, K] as [C, K]; every norm stored as
    1 + w except the gated output norm (ssm_norm); the MLP's input norm named post_attention_norm;
  - the F32 GGUF with the MTP block as an extra blk.N (nextn_predict_layers 1), as the newest
    converter writes it; the quantized ones without;
  - ssm_conv1d and the routers kept F32; ssm_ba quantized (llama-quantize does).

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
import qwen35_factory as q35

# name -> (GGUF arch, builder arguments): "qwen3next": 2 key heads of 4 value heads (so grouped and
# tiled orders differ, and the fused rows interleave); "qwen3next-1k": one key head (the fused
# projections' parts are contiguous rows, read as views).
MODELS = {
    "qwen3next": ("qwen3next", dict(seed=71)),
    "qwen3next-1k": ("qwen3next", dict(seed=74, k_heads=1, v_heads=2)),
}
FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0", "gguf-legacy-Q8_0")
_LAYER = {**q35._LAYER, "linear_attn.in_proj_ba.weight": "ssm_ba.weight"}
_KEPT_F32 = ("linear_attn.conv1d.weight", "mlp.gate.weight", "mlp.shared_expert_gate.weight")
KEPT_F32_GGUF = ("ssm_conv1d.weight", "ffn_gate_inp.weight")   # the same, GGUF-named


def config_kwargs(vocab: int, k_heads=2, v_heads=4, hidden=64, n_layers=4, k_dim=32, v_dim=32):
    """Widths multiples of 32 where a Q8_0 row needs it."""
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=96, num_hidden_layers=n_layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32, linear_conv_kernel_dim=4,
                linear_key_head_dim=k_dim, linear_value_head_dim=v_dim, linear_num_key_heads=k_heads,
                linear_num_value_heads=v_heads, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                shared_expert_intermediate_size=64, norm_topk_prob=True, max_position_embeddings=256,
                rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})


def build(name: str, vocab: int):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
    _, kw = MODELS[name]
    torch.manual_seed(kw["seed"])
    heads = {k: kw[k] for k in ("k_heads", "v_heads") if k in kw}
    model = Qwen3NextForCausalLM(Qwen3NextConfig(**config_kwargs(vocab, **heads)))
    return q35._randomise_recurrence(moe._randomise(model, kw["seed"], 0.5), kw["seed"])


def text_config(model):
    return model.config


def save_hf(model, tok, out_dir: Path) -> Path:
    d = moe.save_hf(model, tok, out_dir)
    q35.add_hf_mtp(d, model.config.hidden_size)
    return d


def _deinterleave_qkvz(w: np.ndarray, c) -> tuple:
    """in_proj_qkvz [nk * (2 kd + 2 per_k vd), dim] -> (qkv, z) as llama.cpp's converter writes them."""
    nk, kd = c.linear_num_key_heads, c.linear_key_head_dim
    per = c.linear_num_value_heads // nk * c.linear_value_head_dim
    heads = w.reshape(nk, 2 * kd + 2 * per, w.shape[1])
    q, k, v, z = (heads[:, a:b] for a, b in ((0, kd), (kd, 2 * kd), (2 * kd, 2 * kd + per), (2 * kd + per, None)))
    return np.concatenate([x.reshape(-1, w.shape[1]) for x in (q, k, v)]), z.reshape(-1, w.shape[1])


def gguf_tensors(hf_dir: Path, c, legacy: bool) -> dict:
    """GGUF-named float32 tensors in llama.cpp's layout (the module docstring's transforms);
    legacy: in_proj_qkvz whole, as ssm_in."""
    out, experts = {}, {}
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        if name.startswith("mtp."):
            continue
        top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
        if name in top:
            out[top[name]] = w + 1.0 if name == "model.norm.weight" else w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        p = f"blk.{layer}."
        expert = q35._EXPERT.match(rest)
        if expert:
            experts.setdefault(f"{p}{q35._STACK[expert.group(2)]}.weight", {})[int(expert.group(1))] = w
            continue
        fused = q35._FUSED.match(rest)
        if fused:
            moe.add_fused_experts(out, p, fused.group(1), w)
            continue
        if rest == "linear_attn.in_proj_qkvz.weight":
            if legacy:
                out[p + "ssm_in.weight"] = w
            else:
                out[p + "attn_qkv.weight"], out[p + "attn_gate.weight"] = _deinterleave_qkvz(w, c)
            continue
        if rest == "linear_attn.conv1d.weight":
            w = w[:, 0, :]
        elif rest == "linear_attn.A_log":
            w = -np.exp(w)
        elif rest.endswith("norm.weight") and rest != "linear_attn.norm.weight":
            w = w + 1.0   # zero-centred norms: the file stores 1 + w
        out[p + _LAYER[rest]] = w.reshape(-1) if w.ndim == 2 and w.shape[0] == 1 else w
    moe.stack_experts(out, experts)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, c, tok, legacy=False, mtp=None,
               extra_meta=None) -> Path:
    """The GGUF as llama.cpp's converter writes it (Qwen2MoeModel's and Qwen3NextModel's keys);
    mtp (default: at F32) adds the MTP block."""
    rope = c.rope_parameters
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    meta = {
        "add_block_count": c.num_hidden_layers, "add_context_length": 256, "add_embedding_length": c.hidden_size,
        "add_feed_forward_length": c.intermediate_size, "add_head_count": c.num_attention_heads,
        "add_head_count_kv": c.num_key_value_heads, "add_key_length": c.head_dim, "add_value_length": c.head_dim,
        "add_rope_freq_base": float(rope["rope_theta"]),
        "add_rope_dimension_count": int(c.head_dim * rope["partial_rotary_factor"]),
        "add_layer_norm_rms_eps": c.rms_norm_eps, "add_vocab_size": c.vocab_size,
        "add_expert_count": c.num_experts, "add_expert_used_count": c.num_experts_per_tok,
        "add_expert_feed_forward_length": c.moe_intermediate_size,
        "add_expert_shared_feed_forward_length": c.shared_expert_intermediate_size,
        "add_ssm_conv_kernel": c.linear_conv_kernel_dim, "add_ssm_state_size": c.linear_key_head_dim,
        "add_ssm_group_count": c.linear_num_key_heads, "add_ssm_time_step_rank": c.linear_num_value_heads,
        "add_ssm_inner_size": c.linear_num_value_heads * c.linear_value_head_dim, "add_full_attention_interval": 4,
    }
    tensors = gguf_tensors(hf_dir, c, legacy)
    if (type_name == "F32") if mtp is None else mtp:
        q35.add_gguf_mtp(tensors, meta, c.num_hidden_layers, c.hidden_size)
    for key, value in {**meta, **(extra_meta or {})}.items():
        getattr(w, key)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in tensors.items():
        if t.ndim == 1 or name.endswith(KEPT_F32_GGUF) or type_name == "F32":
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes rounded (the de-interleaving
    moves whole rows, so it rounds the same values)."""
    return moe.rounded_reference(model, type_name, kept=_KEPT_F32)


def extra_files(name, hf_dir: Path, out_dir: Path, model, tok) -> dict:
    """The older layout (ssm_in), quantized: its rows are gathered at load."""
    path = write_gguf(hf_dir, out_dir / "m-legacy-Q8_0.gguf", "Q8_0", MODELS[name][0], model.config, tok, legacy=True)
    return {"gguf-legacy-Q8_0": (path, quantized_reference(model, "Q8_0"))}


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "qwen3next")
