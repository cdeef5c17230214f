"""Tiny random Qwen3.5 models (transformers' Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM and the
vision-language Qwen3_5ForConditionalGeneration): three Gated DeltaNet layers to one gated
attention layer. Each is saved as an HF directory and as GGUFs in llama.cpp's qwen35 / qwen35moe
layout, written here after the converter (conversion/qwen.py, Qwen3NextModel and
_LinearAttentionVReorderBase), independently of forgert:
  - the value heads reordered from HF's grouped order (key head k's value heads together) to the
    tiled order (value head v of every key head together) in the V rows of attn_qkv and the V
    channels of ssm_conv1d, the rows of attn_gate, ssm_alpha, ssm_beta, the entries of ssm_a and
    ssm_dt.bias, and the input columns of ssm_out;
  - ssm_a = -exp(A_log); every norm weight stored as 1 + w except the gated output norm (ssm_norm);
  - conv1d [C, 1, K] as [C, K]; the MLP's input norm named post_attention_norm;
  - ssm_conv1d, ssm_alpha / ssm_beta and the routers kept F32 (as llama-quantize leaves them).

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
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "linear_attn.in_proj_qkv.weight": "attn_qkv.weight", "linear_attn.in_proj_z.weight": "attn_gate.weight",
    "linear_attn.in_proj_b.weight": "ssm_beta.weight", "linear_attn.in_proj_a.weight": "ssm_alpha.weight",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight", "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.A_log": "ssm_a", "linear_attn.norm.weight": "ssm_norm.weight",
    "linear_attn.out_proj.weight": "ssm_out.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}
_FUSED = re.compile(r"^mlp\.experts\.(gate_up_proj|down_proj)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_STACK = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
# HF tensors the GGUF keeps F32 whatever its type (so the quantized reference does not round them)
_KEPT_F32 = ("linear_attn.conv1d.weight", "linear_attn.in_proj_a.weight", "linear_attn.in_proj_b.weight",
             "mlp.gate.weight", "mlp.shared_expert_gate.weight")

# name -> (GGUF arch, builder arguments): "qwen35": Qwen3.5's dense layout (4 layers: 3 recurrent,
# then attention; 2 key heads, 4 value heads); "qwen35moe": Qwen3.5-MoE's (8 experts top 2,
# renormalised, a gated shared expert); "qwen35-vl": the dense model saved as the vision-language
# checkpoint Qwen3.5's releases are (model.language_model.*, a vision tower, an MTP block mtp.*),
# its GGUFs with the MTP block as llama.cpp's converter writes it (an extra blk.N, counted in
# block_count and named by nextn_predict_layers).
MODELS = {
    "qwen35": ("qwen35", dict(seed=61)),
    "qwen35moe": ("qwen35moe", dict(seed=62, moe=True)),
    "qwen35-vl": ("qwen35", dict(seed=63, vision=True)),
}
FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0")


def text_config_kwargs(vocab: int, moe_layers: bool, hidden=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                       ffn=96, k_heads=2, v_heads=4, k_dim=32, v_dim=32):
    """Widths are multiples of 32 where a Q8_0 row needs it, and the value heads whole blocks of
    32 columns (ssm_out's columns move by heads, which rounding row blocks of 32 must not notice)."""
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=n_layers,
              num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=head_dim,
              linear_conv_kernel_dim=4, linear_key_head_dim=k_dim, linear_value_head_dim=v_dim,
              linear_num_key_heads=k_heads, linear_num_value_heads=v_heads, max_position_embeddings=256,
              rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=None,
              tie_word_embeddings=False,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                               "mrope_section": [2, 1, 1], "mrope_interleaved": True})
    if moe_layers:
        kw.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64)
    return kw


def _randomise_recurrence(model, seed):
    """Decays and write strengths away from their initial values (A_log, dt_bias), so a swapped or
    misread per-head parameter shows."""
    gen = torch.Generator().manual_seed(seed + 3000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(0.2 + 2.0 * torch.rand(p.shape, generator=gen)))
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def build(name: str, vocab: int):
    from transformers import (Qwen3_5Config, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration,
                              Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3_5TextConfig)
    arch, kw = MODELS[name]
    torch.manual_seed(kw["seed"])
    text = text_config_kwargs(vocab, kw.get("moe", False))
    if kw.get("moe"):
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**text))
    elif kw.get("vision"):
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text["hidden_size"],
                      patch_size=4, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16)
        model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision))
    else:
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**text))
    return _randomise_recurrence(moe._randomise(model, kw["seed"], 0.5), kw["seed"])


def text_config(model):
    return model.config.text_config if hasattr(model.config, "text_config") else model.config


def save_hf(model, tok, out_dir: Path) -> Path:
    """The HF directory; a vision-language model's with a multi-token-prediction block (mtp.*, as
    Qwen3.5's checkpoints carry one), which transformers does not load either."""
    d = moe.save_hf(model, tok, out_dir)
    if hasattr(model.config, "text_config"):
        add_hf_mtp(d, model.config.text_config.hidden_size)
    return d


def add_hf_mtp(d: Path, dim: int) -> None:
    """A multi-token-prediction block (mtp.*, as Qwen3.5's and Qwen3-Next's checkpoints carry one)
    added to the HF directory d's model.safetensors."""
    from safetensors.numpy import save_file
    sd = load_file(str(d / "model.safetensors"))
    rng = np.random.default_rng(8)
    for part, shape in (("fc.weight", (dim, 2 * dim)), ("norm.weight", (dim,)), ("pre_fc_norm_hidden.weight", (dim,)),
                        ("layers.0.input_layernorm.weight", (dim,)), ("layers.0.mlp.up_proj.weight", (32, dim))):
        sd["mtp." + part] = rng.standard_normal(shape).astype(np.float32)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def add_gguf_mtp(tensors: dict, meta: dict, n_layers: int, dim: int) -> None:
    """The MTP block as llama.cpp's converter writes it: an attention layer's tensors (the last
    layer's, randomised) as an extra blk.N with its nextn.* ones, counted in block_count and named
    by nextn_predict_layers."""
    rng = np.random.default_rng(9)
    last = f"blk.{n_layers - 1}."
    for name, t in list(tensors.items()):
        if name.startswith(last):
            tensors[f"blk.{n_layers}." + name[len(last):]] = rng.standard_normal(t.shape).astype(np.float32)
    for part, shape in (("nextn.eh_proj.weight", (dim, 2 * dim)), ("nextn.enorm.weight", (dim,)),
                        ("nextn.hnorm.weight", (dim,))):
        tensors[f"blk.{n_layers}.{part}"] = rng.standard_normal(shape).astype(np.float32)
    meta.update(add_block_count=n_layers + 1, add_nextn_predict_layers=1)


def _v_order(c) -> np.ndarray:
    """gguf head i holds HF head order[i]: HF groups a key head's value heads, llama.cpp tiles them."""
    per_k = c.linear_num_value_heads // c.linear_num_key_heads
    return np.arange(c.linear_num_value_heads).reshape(c.linear_num_key_heads, per_k).T.reshape(-1)


def _heads(w: np.ndarray, order: np.ndarray, width: int, axis: int = 0) -> np.ndarray:
    """w with its blocks of `width` along axis (one per value head) in `order`."""
    idx = (order[:, None] * width + np.arange(width)[None, :]).reshape(-1)
    return np.take(w, idx, axis=axis)


def _language_name(name: str):
    """A vision-language checkpoint's language-model tensor under the text model's name; None for the rest."""
    for prefix, text in (("model.language_model.", "model."), ("lm_head.", "lm_head.")):
        if name.startswith(prefix):
            return text + name[len(prefix):]
    return None if name.startswith(("model.visual.", "mtp.")) else name


def gguf_tensors(hf_dir: Path, c) -> dict:
    """GGUF-named float32 tensors in llama.cpp's layout (the module docstring's transforms)."""
    order, kd, vd = _v_order(c), c.linear_key_head_dim, c.linear_value_head_dim
    q_rows = 2 * c.linear_num_key_heads * kd
    out, experts = {}, {}
    for hf_name, w in load_file(str(hf_dir / "model.safetensors")).items():
        name = _language_name(hf_name)
        if name is None:
            continue
        top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
        if name in top:
            out[top[name]] = w + 1.0 if name == "model.norm.weight" else w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        p = f"blk.{layer}."
        expert = _EXPERT.match(rest)
        if expert:   # one expert's matrix: the GGUF stacks them [n_expert, rows, cols]
            experts.setdefault(f"{p}{_STACK[expert.group(2)]}.weight", {})[int(expert.group(1))] = w
            continue
        fused = _FUSED.match(rest)
        if fused:   # transformers 5's fused experts
            moe.add_fused_experts(out, p, fused.group(1), w)
            continue
        if rest == "linear_attn.in_proj_qkv.weight":
            w = np.concatenate([w[:q_rows], _heads(w[q_rows:], order, vd)])
        elif rest == "linear_attn.conv1d.weight":
            w = w[:, 0, :]
            w = np.concatenate([w[:q_rows], _heads(w[q_rows:], order, vd)])
        elif rest == "linear_attn.in_proj_z.weight":
            w = _heads(w, order, vd)
        elif rest in ("linear_attn.in_proj_a.weight", "linear_attn.in_proj_b.weight", "linear_attn.dt_bias"):
            w = w[order]
        elif rest == "linear_attn.A_log":
            w = -np.exp(w[order])
        elif rest == "linear_attn.out_proj.weight":
            w = _heads(w, order, vd, axis=1)
        elif rest.endswith("norm.weight") and rest != "linear_attn.norm.weight":
            w = w + 1.0   # zero-centred norms: the file stores 1 + w
        out[p + _LAYER[rest]] = w.reshape(-1) if w.ndim == 2 and w.shape[0] == 1 else w
    moe.stack_experts(out, experts)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, model_cfg, tok, extra_meta=None) -> Path:
    """The GGUF as llama.cpp's converter writes it (Qwen3_5TextModel / Qwen3_5MoeTextModel's keys)."""
    c = model_cfg.text_config if hasattr(model_cfg, "text_config") else model_cfg
    rope = c.rope_parameters
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    sections = list(rope["mrope_section"]) + [0]
    meta = {
        "add_block_count": c.num_hidden_layers, "add_context_length": 256, "add_embedding_length": c.hidden_size,
        "add_feed_forward_length": c.intermediate_size, "add_head_count": c.num_attention_heads,
        "add_head_count_kv": c.num_key_value_heads, "add_key_length": c.head_dim, "add_value_length": c.head_dim,
        "add_rope_freq_base": float(rope["rope_theta"]),
        "add_rope_dimension_count": int(c.head_dim * rope["partial_rotary_factor"]),
        "add_rope_dimension_sections": sections, "add_layer_norm_rms_eps": c.rms_norm_eps,
        "add_vocab_size": c.vocab_size, "add_ssm_conv_kernel": c.linear_conv_kernel_dim,
        "add_ssm_state_size": c.linear_key_head_dim, "add_ssm_group_count": c.linear_num_key_heads,
        "add_ssm_time_step_rank": c.linear_num_value_heads,
        "add_ssm_inner_size": c.linear_num_value_heads * c.linear_value_head_dim, "add_full_attention_interval": 4,
    }
    if arch == "qwen35moe":
        meta.update(add_expert_count=c.num_experts, add_expert_used_count=c.num_experts_per_tok,
                    add_expert_feed_forward_length=c.moe_intermediate_size,
                    add_expert_shared_feed_forward_length=c.shared_expert_intermediate_size)
    tensors = gguf_tensors(hf_dir, c)
    if hasattr(model_cfg, "text_config"):   # the vision-language checkpoint's GGUF, with its MTP block
        add_gguf_mtp(tensors, meta, c.num_hidden_layers, c.hidden_size)
    meta.update(extra_meta or {})
    for key, value in meta.items():
        if value is not None:
            getattr(w, key)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    kept = ("ssm_conv1d.weight", "ssm_alpha.weight", "ssm_beta.weight", "ffn_gate_inp.weight")
    for name, t in tensors.items():
        if t.ndim == 1 or name.endswith(kept) or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes rounded (its reordering moves
    whole rows, or whole 32-column blocks of ssm_out, so it rounds the same values)."""
    return moe.rounded_reference(model, type_name, kept=_KEPT_F32, skipped=("visual.",))


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "qwen35")
