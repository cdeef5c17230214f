"""Tiny random Granite 4.0-H models (transformers' GraniteMoeHybridForCausalLM: Mamba2 layers beside
attention layers without RoPE, a shared MLP alone or beside experts, Granite's four multipliers),
saved as an HF directory and as GGUFs in llama.cpp's granitehybrid layout, written here after its
converter (GraniteHybridModel over Mamba2Model and GraniteMoeModel) independently of forgert:
- the Mamba2 layers marked by a head_count_kv of 0 in the per-layer array; ssm.conv_kernel,
  ssm.state_size, ssm.group_count, ssm.inner_size, ssm.time_step_rank (the heads);
- mamba.in_proj -> ssm_in, conv1d [C, 1, K] squeezed to ssm_conv1d [C, K] with its bias,
  dt_bias -> ssm_dt.bias, A_log stored as ssm_a = -exp(A_log) [n_heads, 1], D as ssm_d [n_heads, 1],
  norm.weight as ssm_norm [n_groups, d_inner / n_groups], out_proj -> ssm_out;
- the attention layers' q / k rows permuted as for llama (undo_permute), rope.scaling.finetuned
  false (no RoPE), Granite's attention.scale, embedding_scale, residual_scale, logit_scale;
- shared_mlp.input_linear split into gate (first half) and up: ffn_gate / ffn_up / ffn_down for a
  dense model, ffn_*_shexp beside the experts (expert_shared_feed_forward_length).

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
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mamba.in_proj.weight": "ssm_in.weight", "mamba.conv1d.weight": "ssm_conv1d.weight",
    "mamba.conv1d.bias": "ssm_conv1d.bias", "mamba.dt_bias": "ssm_dt.bias", "mamba.A_log": "ssm_a",
    "mamba.D": "ssm_d", "mamba.norm.weight": "ssm_norm.weight", "mamba.out_proj.weight": "ssm_out.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "block_sparse_moe.router.layer.weight": "ffn_gate_inp.weight",
    "block_sparse_moe.router.weight": "ffn_gate_inp.weight",
}
# name -> (GGUF arch, builder arguments): "granite4h-dense": H-Micro's layout on 6 layers (Mamba2
# layers 0, 1, 3, 4, 5; attention 2), one group, the shared MLP alone; "granite4h-moe": H-Tiny's
# on 6 layers (attention 3), two groups, 8 experts top 2 beside the shared MLP.
MODELS = {
    "granite4h-dense": ("granitehybrid", dict(seed=81, attn=(2,), groups=1, experts=0)),
    "granite4h-moe": ("granitehybrid", dict(seed=82, attn=(3,), groups=2, experts=8)),
    # Bamba-like: RoPE on the attention layers (position_embedding_type "rope"; GGUF rope.scaling.finetuned)
    "granite4h-rope": ("granitehybrid", dict(seed=83, attn=(1, 4), groups=1, experts=0, rope=True)),
}
# The router's weights: large enough that no routing choice of the tests' prompts sits within the
# half rounding of Metal's prefill GEMM (at 0.5 one sat 8e-4 from a tie; at 1.0 the smallest
# gap between the 2nd and 3rd logits over the 64-token prefill is 5.3e-3)
ROUTER_SCALE = 1.0
_KEPT_F32 = ("conv1d.weight", "router.layer.weight", "router.weight")   # what the GGUF keeps F32


def build(name: str, vocab: int):
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM
    _, kw = MODELS[name]
    torch.manual_seed(kw["seed"])
    cfg = GraniteMoeHybridConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=32 if kw["experts"] else 96, shared_intermediate_size=96,
        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, num_local_experts=kw["experts"], num_experts_per_tok=2 if kw["experts"] else 0,
        layer_types=["attention" if i in kw["attn"] else "mamba" for i in range(6)],
        mamba_n_heads=8, mamba_n_groups=kw["groups"], mamba_d_state=16, mamba_d_head="auto", mamba_d_conv=4,
        mamba_expand=2, mamba_chunk_size=16, mamba_conv_bias=True, mamba_proj_bias=False,
        position_embedding_type="rope" if kw.get("rope") else "nope", embedding_multiplier=2.0, attention_multiplier=0.2,
        residual_multiplier=0.5, logits_scaling=1.5, tie_word_embeddings=True, initializer_range=0.1,
        # no EOS for transformers' generate: its min_new_tokens would hide a greedy EOS that ignore_eos keeps
        bos_token_id=0, eos_token_id=None, pad_token_id=None)
    model = moe._randomise(GraniteMoeHybridForCausalLM(cfg), kw["seed"], 0.5)
    gen = torch.Generator().manual_seed(kw["seed"] + 3000)
    with torch.no_grad():
        randomise_mixer_constants(model, gen)
        for name, p in model.named_parameters():   # the router's logits well apart (_randomise looks for gate.weight)
            if "router" in name:
                p.copy_(ROUTER_SCALE * torch.randn(p.shape, generator=gen))
    return model


def randomise_mixer_constants(model, gen) -> None:
    """Every Mamba2 mixer's per-head constants off their inits (A_log = log(1..n), D = dt_bias = 1,
    a zero convolution bias), so that a reader mixing them up shows (under torch.no_grad)."""
    for mod in model.modules():
        if hasattr(mod, "A_log"):
            mod.A_log.copy_(torch.log(torch.rand(mod.A_log.shape, generator=gen) * 4.0 + 0.5))
            mod.D.copy_(1.0 + 0.5 * torch.randn(mod.D.shape, generator=gen))
            mod.dt_bias.copy_(0.5 * torch.randn(mod.dt_bias.shape, generator=gen))
            mod.conv1d.bias.copy_(0.2 * torch.randn(mod.conv1d.bias.shape, generator=gen))


def mixer_tensor_to_gguf(name: str, w, n_groups: int, d_inner: int):
    """A Mamba2 mixer's tensor (name inside the mixer) as llama.cpp's converter stores it: conv1d
    [C, 1, K] squeezed to [C, K], A as -exp(A_log) and D as columns [n_heads, 1], the grouped norm
    [n_groups, d_inner / n_groups]; any other tensor unchanged."""
    if name == "conv1d.weight":
        return w[:, 0, :]
    if name == "A_log":
        return -np.exp(w.astype(np.float64)).astype(np.float32)[:, None]
    if name == "D":
        return w[:, None]
    if name == "norm.weight":
        return w.reshape(n_groups, d_inner // n_groups)
    return w


def save_hf(model, tok, out_dir: Path) -> Path:
    return moe.save_hf(model, tok, out_dir)


def gguf_tensors(hf_dir: Path, c) -> dict:
    out, experts = {}, bool(c.num_local_experts)
    d_inner = c.mamba_expand * c.hidden_size
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
        if name in top:
            out[top[name]] = w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        p = f"blk.{layer}."
        if rest in ("block_sparse_moe.input_linear.weight", "block_sparse_moe.experts.gate_up_proj"):
            moe.add_fused_experts(out, p, "gate_up_proj", w)
            continue
        if rest in ("block_sparse_moe.output_linear.weight", "block_sparse_moe.experts.down_proj"):
            out[p + "ffn_down_exps.weight"] = w
            continue
        sfx = "_shexp" if experts else ""
        if rest == "shared_mlp.input_linear.weight":
            half = w.shape[0] // 2
            out[f"{p}ffn_gate{sfx}.weight"], out[f"{p}ffn_up{sfx}.weight"] = w[:half], w[half:]
            continue
        if rest == "shared_mlp.output_linear.weight":
            out[f"{p}ffn_down{sfx}.weight"] = w
            continue
        if rest.startswith("mamba."):
            w = mixer_tensor_to_gguf(rest[len("mamba."):], w, c.mamba_n_groups, d_inner)
        elif rest == "self_attn.q_proj.weight":
            w = mf.permute_qk_for_gguf(w, c.num_attention_heads)
        elif rest == "self_attn.k_proj.weight":
            w = mf.permute_qk_for_gguf(w, c.num_key_value_heads)
        out[p + _LAYER[rest]] = w
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, c, tok, extra_meta=None) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-granite-4.0-h")
    d_inner = c.mamba_expand * c.hidden_size
    meta = {
        "add_block_count": c.num_hidden_layers, "add_embedding_length": c.hidden_size,
        "add_context_length": 256 if c.position_embedding_type == "rope" else 2 ** 20,   # (the converter's NoPE value)
        "add_feed_forward_length": c.intermediate_size, "add_head_count": c.num_attention_heads,
        "add_head_count_kv": [c.num_key_value_heads if t in ("attention", "full_attention") else 0
                              for t in c.layer_types],
        "add_rope_freq_base": 10000.0, "add_layer_norm_rms_eps": c.rms_norm_eps, "add_vocab_size": c.vocab_size,
        "add_attention_scale": c.attention_multiplier, "add_embedding_scale": c.embedding_multiplier,
        "add_residual_scale": c.residual_multiplier, "add_logit_scale": c.logits_scaling,
        "add_expert_shared_feed_forward_length": c.shared_intermediate_size,
        "add_ssm_conv_kernel": c.mamba_d_conv, "add_ssm_state_size": c.mamba_d_state,
        "add_ssm_group_count": c.mamba_n_groups, "add_ssm_inner_size": d_inner,
        "add_ssm_time_step_rank": c.mamba_n_heads,
        # llama.cpp's switch for RoPE (its converter sets it for Bamba; here: whether the model uses it)
        "add_rope_scaling_finetuned": c.position_embedding_type == "rope",
    }
    if c.num_local_experts:
        meta.update(add_expert_count=c.num_local_experts, add_expert_used_count=c.num_experts_per_tok)
    meta.update(extra_meta or {})
    for key, value in meta.items():
        if value is not None:
            getattr(w, key)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in gguf_tensors(hf_dir, c).items():
        keep = t.ndim == 1 or t.shape[-1] % 32 or name.endswith(("ssm_conv1d.weight", "ffn_gate_inp.weight",
                                                                  "ssm_a", "ssm_d", "ssm_norm.weight"))
        if keep or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes rounded (not the convolution
    kernels, the router and the per-head / per-group vectors, which the GGUF keeps F32)."""
    return moe.rounded_reference(model, type_name, kept=_KEPT_F32)


def half_weight_reference(model, type_name: str = "Q8_0"):
    """quantized_reference with the quantized matrices also rounded to half, as Metal's prefill GEMM
    stages them (activations stay f32): the reference for its prefix rows where a routing choice
    sits so near a tie that the half rounding flips it."""
    ref = quantized_reference(model, type_name)
    sd = ref.state_dict()
    for name, w in sd.items():
        if w.ndim >= 2 and w.shape[0] > 1 and not name.endswith(_KEPT_F32):
            sd[name] = w.half().float()
    ref.load_state_dict(sd)
    return ref


FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0")


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "granitehybrid")
