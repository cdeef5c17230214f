"""Tiny random mixtures of experts with shared experts and leading dense layers, the routers after
Mixtral's: GLM-4.5 (transformers' Glm4MoeForCausalLM: DeepSeek V3's sigmoid router) and ERNIE 4.5
MoE (Ernie4_5_MoeForCausalLM: a softmax router with a selection bias). Each is saved as an HF
directory (per-expert tensors, as transformers saves them; GLM-4.5's with a multi-token-prediction
layer after the model's own, as its checkpoints carry one) and as GGUFs in llama.cpp's layout
(convert_hf_to_gguf.py's Glm4MoeModel / Ernie4_5MoeModel: expert stacks, the router's selection
bias as exp_probs_b.bias, GLM-4.5's feed-forward norm named post_attention_norm and its MTP block
as an extra blk.N with its nextn.* tensors, counted in block_count and named by
nextn_predict_layers).

Nothing here imports forgert: this module is the reference side of the tests.
"""
from __future__ import annotations

import re
import types
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file, save_file

import model_factory as mf
import moe_factory as moe

# HF name (per layer) -> GGUF name: moe_factory's (attention, norms, routers), and these models' own.
_LAYER = {
    **moe.LAYER_NAMES,
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    # the MTP layer's own tensors (llama.cpp's NEXTN_*)
    "eh_proj.weight": "nextn.eh_proj.weight", "enorm.weight": "nextn.enorm.weight",
    "hnorm.weight": "nextn.hnorm.weight", "shared_head.norm.weight": "nextn.shared_head_norm.weight",
    "embed_tokens.weight": "nextn.embed_tokens.weight", "shared_head.head.weight": "nextn.shared_head_head.weight",
    "mlp.moe_statics.e_score_correction_bias": "exp_probs_b.bias",   # ERNIE 4.5's, [1, n_expert]
    # DeepSeek V2 / V3's latent attention
    "self_attn.q_a_proj.weight": "attn_q_a.weight", "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight", "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight", "self_attn.kv_b_proj.weight": "attn_kv_b.weight",
    "block_sparse_moe.e_score_correction_bias": "exp_probs_b.bias",   # MiniMax-M2's
}
# GLM-4.5's converter names the MLP's input norm post_attention_norm (llama.cpp's glm4moe layout)
_RENAMED = {"glm4moe": {"ffn_norm.weight": "post_attention_norm.weight"}}
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\."
                     r"(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_STACK = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps",
          "w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}

# name -> (arch, builder arguments). "glm4moe": GLM-4.5's layout (per-head QK-norm, 8 experts in 2
# groups of which 1 is chosen, top 2 renormalised, weights times 2.5, one shared expert, layer 0
# dense); "glm4moe-air": GLM-4.5-Air's (no QK-norm, no groups, the weights not renormalised);
# "ernie4_5-moe": ERNIE-4.5-21B-A3B's (8 experts, top 2 by softmax plus the selection bias,
# renormalised, one shared expert, layer 0 dense, tied embeddings).
MODELS = {
    "glm4moe": ("glm4moe", dict(qk_norm=True, n_group=2, topk_group=1, norm_topk=True, scale=2.5, seed=41)),
    "glm4moe-air": ("glm4moe", dict(qk_norm=False, n_group=1, topk_group=1, norm_topk=False, scale=1.5, seed=42,
                                    n_expert=4)),
    "ernie4_5-moe": ("ernie4_5-moe", dict(seed=43)),
    # "deepseek-v2-lite": DeepSeek-V2-Lite's layout (latent attention without Q's low rank, YaRN x4
    # over an original context of 16 with mscale 0.707, a softmax router not renormalised, one
    # shared expert, layer 0 dense); "deepseek-v3": V3's (Q's low rank, the sigmoid router with its
    # bias, 2 groups of which 1 is chosen, renormalised, times 2.5, an MTP layer in the files).
    "deepseek-v2-lite": ("deepseek2", dict(version=2, seed=44)),
    "deepseek-v3": ("deepseek2", dict(version=3, seed=45, q_lora=64, n_group=2, topk_group=1, scale=2.5)),
    # "glm4moe-lite": GLM-4.7-Flash's (V3's latent attention and router, value heads wider than
    # the rope part, weights times 1.8, mlp_layer_types).
    "glm4moe-lite": ("deepseek2", dict(version="glm4_moe_lite", seed=46, q_lora=64, v=48, scale=1.8)),
    # "minimax-m2": MiniMax-M2's (whole-row QK-norm, half of each head rotated, 8 experts top 2 by
    # sigmoid plus the selection bias, renormalised; no shared expert, no dense layer).
    "minimax-m2": ("minimax-m2", dict(seed=47)),
    # "mistral4": Mistral 4's (V3's latent attention, Llama 4's query temperature past YaRN's
    # original context of 16, a softmax router choosing 2 of 4 groups, renormalised).
    "mistral4": ("deepseek2", dict(version="mistral4", seed=48, q_lora=64, n_group=4, topk_group=2, scale=1.5)),
}


def build(name: str, vocab: int):
    arch, kwargs = MODELS[name]
    return {"glm4moe": build_glm4moe, "ernie4_5-moe": build_ernie4_5_moe, "deepseek2": build_deepseek,
            "minimax-m2": build_minimax_m2}[arch](vocab, **kwargs)


def cache_reference(name: str, model):
    """The model with forgert's KV cache modelled (moe_factory.formats_fixture): f16 K and V rows
    (model_factory.with_f16_kv), or for latent attention (deepseek2) the f16 latent rows forgert
    caches instead: transformers caches the same compressed pair (the normed latent, the roped
    shared key) and expands it per head in expand_kv, so both are rounded to f16 there, and the
    attention is Llama's eager one over the expansions (f32, not rounded again)."""
    if MODELS[name][0] != "deepseek2":
        return mf.with_f16_kv(model)
    from transformers.models.llama.modeling_llama import eager_attention_forward
    def expand_f16(self, latent, key):
        return type(self).expand_kv(self, latent.half().float(), key.half().float())

    for layer in model.model.layers:   # a bound method: a deep copy of the model binds its own module
        layer.self_attn.expand_kv = types.MethodType(expand_f16, layer.self_attn)
    return mf.use_attention(model, "forgert_f32_kv", eager_attention_forward)


def _randomise_biases(model, seed, bias_std):
    """Biases away from 0 (zeros would hide a dropped one), and the router's selection bias
    large enough to change which experts are chosen."""
    gen = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                p.copy_(bias_std * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def build_glm4moe(vocab: int, hidden=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32, ffn=96, moe_ffn=32,
                  n_expert=8, top_k=2, n_shared=1, first_dense=1, n_group=1, topk_group=1, scale=1.0, norm_topk=True,
                  qk_norm=False, seed=41, router_scale=0.5):
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM
    torch.manual_seed(seed)
    cfg = Glm4MoeConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, moe_intermediate_size=moe_ffn,
                        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                        head_dim=head_dim, partial_rotary_factor=0.5, n_routed_experts=n_expert,
                        num_experts_per_tok=top_k, n_shared_experts=n_shared, first_k_dense_replace=first_dense,
                        n_group=n_group, topk_group=topk_group, routed_scaling_factor=scale, norm_topk_prob=norm_topk,
                        use_qk_norm=qk_norm, attention_bias=True, max_position_embeddings=256, rms_norm_eps=1e-5,
                        initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                        tie_word_embeddings=False, num_nextn_predict_layers=1)
    return _randomise_biases(moe._randomise(Glm4MoeForCausalLM(cfg), seed, router_scale), seed, 0.3)


def build_ernie4_5_moe(vocab: int, hidden=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32, ffn=96, moe_ffn=32,
                       n_expert=8, top_k=2, n_shared=1, first_moe=1, seed=43, router_scale=0.5):
    """The selection bias is added to softmax probabilities (about 1 / n_expert): std 0.05."""
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM
    torch.manual_seed(seed)
    cfg = Ernie4_5_MoeConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                             moe_intermediate_size=moe_ffn, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                             num_key_value_heads=n_kv_heads, head_dim=head_dim, num_experts=n_expert,
                             num_experts_per_tok=top_k, moe_num_shared_experts=n_shared,
                             moe_layer_start_index=first_moe, max_position_embeddings=256, rms_norm_eps=1e-5,
                             initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                             tie_word_embeddings=True)
    return _randomise_biases(moe._randomise(Ernie4_5_MoeForCausalLM(cfg), seed, router_scale), seed, 0.05)


def build_deepseek(vocab: int, version: int, hidden=64, n_layers=3, n_heads=4, ffn=96, moe_ffn=32, n_expert=8, top_k=2,
                   n_shared=1, first_dense=1, kv_lora=32, q_lora=None, nope=32, rope=16, v=32, n_group=1,
                   topk_group=1, scale=1.0, seed=44, router_scale=0.5):
    """DeepSeek V2 (YaRN, as V2-Lite) or V3. Widths are multiples of 32 where a Q8_0 row needs it."""
    from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM,
                              Glm4MoeLiteConfig, Glm4MoeLiteForCausalLM, Mistral4Config, Mistral4ForCausalLM)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, moe_intermediate_size=moe_ffn,
                  num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                  kv_lora_rank=kv_lora, q_lora_rank=q_lora, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                  v_head_dim=v, n_routed_experts=n_expert, num_experts_per_tok=top_k, n_shared_experts=n_shared,
                  first_k_dense_replace=first_dense, routed_scaling_factor=scale, max_position_embeddings=256,
                  rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                  tie_word_embeddings=False)
    if version == 2:
        cfg = DeepseekV2Config(topk_method="greedy", rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}, **common)
        return _randomise_biases(moe._randomise(DeepseekV2ForCausalLM(cfg), seed, router_scale), seed, 0.3)
    if version == "mistral4":
        cfg = Mistral4Config(n_group=n_group, topk_group=topk_group, norm_topk_prob=True, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
            **common)
        return _randomise_biases(moe._randomise(Mistral4ForCausalLM(cfg), seed, router_scale), seed, 0.3)
    if version == "glm4_moe_lite":
        common.pop("first_k_dense_replace")
        cfg = Glm4MoeLiteConfig(n_group=n_group, topk_group=topk_group, norm_topk_prob=True,
                                mlp_layer_types=["dense"] * first_dense + ["sparse"] * (n_layers - first_dense),
                                **common)
        cfg.num_nextn_predict_layers = 1   # GLM-4.7-Flash's checkpoint has one after its layers
        return _randomise_biases(moe._randomise(Glm4MoeLiteForCausalLM(cfg), seed, router_scale), seed, 0.3)
    cfg = DeepseekV3Config(n_group=n_group, topk_group=topk_group, norm_topk_prob=True, num_nextn_predict_layers=1,
                           **common)
    return _randomise_biases(moe._randomise(DeepseekV3ForCausalLM(cfg), seed, router_scale), seed, 0.3)


def build_minimax_m2(vocab: int, hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, moe_ffn=32, n_expert=8,
                     top_k=2, rotary_dim=16, seed=47, router_scale=0.5):
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM
    torch.manual_seed(seed)
    cfg = MiniMaxM2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=moe_ffn, num_hidden_layers=n_layers,
                          num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=head_dim,
                          num_local_experts=n_expert, num_experts_per_tok=top_k, rotary_dim=rotary_dim,
                          max_position_embeddings=256, rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=0,
                          eos_token_id=1, pad_token_id=None, tie_word_embeddings=False)
    return _randomise_biases(moe._randomise(MiniMaxM2ForCausalLM(cfg), seed, router_scale), seed, 0.3)


def save_hf(model, tok, out_dir: Path) -> Path:
    """The HF directory; a GLM-4.5's with a multi-token-prediction layer after the model's own
    (model.layers.<n_layers>.*: a decoder layer's tensors plus eh_proj, enorm, hnorm and
    shared_head) as its checkpoints have, and num_nextn_predict_layers 1 in its config."""
    d = moe.save_hf(model, tok, out_dir)
    if model.config.model_type not in ("glm4_moe", "deepseek_v3", "glm4_moe_lite"):
        return d
    sd = load_file(str(d / "model.safetensors"))
    n, dim = model.config.num_hidden_layers, model.config.hidden_size
    rng = np.random.default_rng(7)
    last = f"model.layers.{n - 1}."
    for name, w in list(sd.items()):
        if name.startswith(last):
            sd[f"model.layers.{n}." + name[len(last):]] = rng.standard_normal(w.shape).astype(np.float32)
    for part, shape in (("eh_proj.weight", (dim, 2 * dim)), ("enorm.weight", (dim,)), ("hnorm.weight", (dim,)),
                        ("shared_head.norm.weight", (dim,)), ("embed_tokens.weight", (model.config.vocab_size, dim))):
        sd[f"model.layers.{n}.{part}"] = rng.standard_normal(shape).astype(np.float32)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def gguf_tensors(hf_dir: Path, arch: str) -> dict:
    """GGUF-named float32 tensors; expert stacks [n_expert, rows, cols]. No Q/K permutation (GLM-4.5
    rotates halves as HF does; ERNIE 4.5's HF checkpoints already rotate adjacent pairs)."""
    out, experts = {}, {}
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        fused = _FUSED.match(name)
        if fused:   # transformers 5's fused experts (Mistral 4 saves them so)
            moe.add_fused_experts(out, f"blk.{fused.group(1)}.", fused.group(2), w)
            continue
        m = _EXPERT.match(name)
        if m:
            experts.setdefault(f"blk.{m.group(1)}.{_STACK[m.group(3)]}.weight", {})[int(m.group(2))] = w
            continue
        top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
        if name in top:
            out[top[name]] = w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        gname = _LAYER[rest]
        out[f"blk.{layer}.{_RENAMED.get(arch, {}).get(gname, gname)}"] = w.reshape(-1) if w.shape[0] == 1 else w
    moe.stack_experts(out, experts)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _glm4moe_meta(c, mtp: bool) -> dict:
    """Glm4MoeModel's keys (GGUFWriter method -> value): partial rotary, DeepSeek V3's router, the
    MTP block counted in block_count."""
    return {
        "add_block_count": c.num_hidden_layers + (1 if mtp else 0),
        "add_rope_dimension_count": int(c.head_dim * c.rope_parameters["partial_rotary_factor"]),
        "add_expert_count": c.n_routed_experts, "add_expert_shared_count": c.n_shared_experts,
        "add_leading_dense_block_count": c.first_k_dense_replace,
        "add_expert_weights_scale": float(c.routed_scaling_factor), "add_expert_weights_norm": bool(c.norm_topk_prob),
        "add_expert_gating_func": gguf.ExpertGatingFuncType.SIGMOID, "add_nextn_predict_layers": 1 if mtp else 0,
        **({"add_expert_group_count": c.n_group, "add_expert_group_used_count": c.topk_group} if c.n_group > 1 else {}),
    }


def _ernie4_5_moe_meta(c, mtp: bool) -> dict:
    """Ernie4_5MoeModel's keys: the shared experts' summed width, the MoE layers' step and start."""
    return {
        "add_block_count": c.num_hidden_layers, "add_expert_count": c.moe_num_experts,
        "add_expert_shared_feed_forward_length": c.moe_intermediate_size * c.moe_num_shared_experts,
        "add_interleave_moe_layer_step": c.moe_layer_interval,
        "add_leading_dense_block_count": c.moe_layer_start_index,
    }


def _deepseek2_meta(c, mtp: bool) -> dict:
    """DeepseekV2Model's keys (the legacy layout: attn_kv_b whole, key_length the query head)."""
    v3 = c.model_type not in ("deepseek_v2", "mistral4")   # V3's sigmoid router (GLM-4.7-Flash's too)
    grouped = getattr(c, "n_group", None) and c.n_group > 1 and c.model_type != "deepseek_v2"
    rope = c.rope_parameters
    return {
        "add_block_count": c.num_hidden_layers + (1 if mtp and v3 else 0), "add_key_length": c.qk_head_dim,
        "add_value_length": c.v_head_dim, "add_rope_dimension_count": c.qk_rope_head_dim,
        "add_kv_lora_rank": c.kv_lora_rank, "add_q_lora_rank": c.q_lora_rank or None,
        "add_expert_count": c.n_routed_experts, "add_expert_shared_count": c.n_shared_experts,
        "add_leading_dense_block_count": (c.mlp_layer_types.count("dense") if getattr(c, "mlp_layer_types", None)
                                          else c.first_k_dense_replace),
        "add_expert_weights_scale": float(c.routed_scaling_factor),
        "add_expert_weights_norm": bool(getattr(c, "norm_topk_prob", False)),
        "add_expert_gating_func": gguf.ExpertGatingFuncType.SIGMOID if v3 else gguf.ExpertGatingFuncType.SOFTMAX,
        "add_nextn_predict_layers": 1 if mtp and v3 else None,
        **({"add_expert_group_count": c.n_group, "add_expert_group_used_count": c.topk_group} if grouped else {}),
        **({"add_attn_temperature_scale": rope["llama_4_scaling_beta"],
            "add_attn_temperature_length": rope["original_max_position_embeddings"]}
           if rope.get("llama_4_scaling_beta") else {}),
        **({"add_rope_scaling_type": gguf.RopeScalingType.YARN, "add_rope_scaling_factor": rope["factor"],
            "add_rope_scaling_orig_ctx_len": rope["original_max_position_embeddings"],
            "add_rope_scaling_yarn_log_mul": 0.1 * rope["mscale_all_dim"]} if rope.get("rope_type") == "yarn" else {}),
    }


def _minimax_m2_meta(c, mtp: bool) -> dict:
    """MiniMaxM2Model's keys: the experts as wide as feed_forward_length, the sigmoid router."""
    return {"add_block_count": c.num_hidden_layers, "add_expert_count": c.num_local_experts,
            "add_expert_feed_forward_length": c.intermediate_size,
            "add_rope_dimension_count": int(c.head_dim * c.rope_parameters["partial_rotary_factor"]),
            "add_expert_gating_func": gguf.ExpertGatingFuncType.SIGMOID}


def split_kv_b(tensors: dict, model_cfg) -> dict:
    """The newer converters' layout of latent attention: attn_kv_b split into attn_k_b [heads,
    kv_lora, nope] (each head's K rows transposed) and attn_v_b [heads, v, kv_lora]."""
    c, out = model_cfg, {}
    for name, w in tensors.items():
        if not name.endswith("attn_kv_b.weight"):
            out[name] = w
            continue
        per_head = w.reshape(c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        out[name.replace("attn_kv_b", "attn_k_b")] = np.ascontiguousarray(
            per_head[:, :c.qk_nope_head_dim].transpose(0, 2, 1))
        out[name.replace("attn_kv_b", "attn_v_b")] = np.ascontiguousarray(per_head[:, c.qk_nope_head_dim:])
    return out


# GGUFWriter method -> the key it writes, for the keys llama.cpp reads as one value or one per layer
_PER_LAYER_KEYS = {"add_expert_feed_forward_length": gguf.Keys.LLM.EXPERT_FEED_FORWARD_LENGTH,
                   "add_expert_used_count": gguf.Keys.LLM.EXPERT_USED_COUNT,
                   "add_feed_forward_length": gguf.Keys.LLM.FEED_FORWARD_LENGTH,
                   "add_head_count": gguf.Keys.Attention.HEAD_COUNT,
                   "add_head_count_kv": gguf.Keys.Attention.HEAD_COUNT_KV}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, model_cfg, tok, mtp: bool = True,
               extra_meta=None, drop: tuple = (), split_mla: bool = False, file_arch: str | None = None,
               mtp_blocks: str = "all") -> Path:
    """The GGUF as llama.cpp's converter writes it. A GLM-4.5's block_count counts the MTP block;
    mtp=False leaves that block out (block_count the model's own, nextn_predict_layers 0).
    extra_meta (GGUFWriter method -> value) adds or replaces keys (a list: one value per layer,
    written as an array, for the keys in _PER_LAYER_KEYS); tensors whose names end with
    one of `drop` are left out. split_mla: DeepSeek's attn_kv_b written split (split_kv_b), with
    the key and value lengths of the latent and the heads' own under key_length_mla /
    value_length_mla, and one KV head, as the newer converters write it. file_arch: the name the
    file gives the architecture (its keys' prefix), where it is another name for `arch` (llama.cpp's
    mistral4 is its deepseek2). mtp_blocks (with mtp): "all" the tensors; "trunk" the model's own
    layers, the MTP block's keys kept and its tensors left out; "mtp" the MTP block without the
    model's own layers (the embedding and output kept): the two halves llama.cpp's loader accepts."""
    c = model_cfg
    tensors = {n: t for n, t in gguf_tensors(hf_dir, arch).items() if not (drop and n.endswith(drop))}
    if split_mla:
        tensors = split_kv_b(tensors, c)
        extra_meta = {"add_key_length": c.kv_lora_rank + c.qk_rope_head_dim, "add_value_length": c.kv_lora_rank,
                      "add_key_length_mla": c.qk_head_dim, "add_value_length_mla": c.v_head_dim,
                      "add_head_count_kv": 1, **(extra_meta or {})}
    if not mtp or arch != "glm4moe" and c.model_type == "deepseek_v2":
        tensors = {n: t for n, t in tensors.items() if not n.startswith(f"blk.{c.num_hidden_layers}.")}
    mtp_block = f"blk.{c.num_hidden_layers}."
    if mtp_blocks == "trunk":
        tensors = {n: t for n, t in tensors.items() if not n.startswith(mtp_block)}
    elif mtp_blocks == "mtp":
        tensors = {n: t for n, t in tensors.items() if not n.startswith("blk.") or n.startswith(mtp_block)}
    w = gguf.GGUFWriter(str(path), file_arch or arch)
    w.add_name(f"tiny-{arch}")
    rope = c.rope_parameters
    meta = {
        "add_context_length": 256, "add_embedding_length": c.hidden_size, "add_feed_forward_length": c.intermediate_size,
        "add_expert_feed_forward_length": getattr(c, "moe_intermediate_size", None), "add_key_length": c.head_dim,
        "add_value_length": c.head_dim, "add_head_count": c.num_attention_heads,
        "add_head_count_kv": c.num_attention_heads if arch == "deepseek2" else c.num_key_value_heads, "add_rope_freq_base": float(rope["rope_theta"]),
        "add_layer_norm_rms_eps": c.rms_norm_eps, "add_vocab_size": c.vocab_size,
        "add_expert_used_count": c.num_experts_per_tok,
        **{"glm4moe": _glm4moe_meta, "ernie4_5-moe": _ernie4_5_moe_meta, "deepseek2": _deepseek2_meta,
           "minimax-m2": _minimax_m2_meta}[arch](c, mtp),
        **(extra_meta or {}),
    }
    for key, value in meta.items():
        if isinstance(value, list) and key in _PER_LAYER_KEYS:   # one value per layer, as llama.cpp's get_key_or_arr reads these keys
            w.add_array(_PER_LAYER_KEYS[key].format(arch=file_arch or arch), value)
        elif value is not None:
            getattr(w, key)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in tensors.items():
        if t.ndim == 1 or name.endswith("ffn_gate_inp.weight") or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes (all 2-D tensors but the router) rounded."""
    return moe.rounded_reference(model, type_name, kept=("mlp.gate.weight",))


FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0")


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "routed_moe")
