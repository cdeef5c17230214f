"""Tiny random Nemotron-H models (transformers' NemotronHForCausalLM: blocks of one Mamba2 mixer, NoPE
attention or a ReLU-squared MLP each), saved as an HF directory and as GGUFs in llama.cpp's
nemotron_h layout, written here after its converter (NemotronHModel over GraniteHybridModel)
independently of forgert: one blk.N per block, each block's norm as attn_norm; head_count_kv (0 but
for attention) and feed_forward_length (0 but for an MLP) per block; the Mamba2 tensors as for
Granite 4.0-H (mamba2_factory: ssm_a = -exp(A_log) and ssm_d [n_heads, 1], ssm_norm [n_groups,
d_inner / n_groups], conv1d squeezed); q / k rows permuted as for llama; layer_norm_epsilon.

Nemotron 3 (nemotron_h_moe, "E" blocks) after the same converter's MoE branch: feed_forward_length
moe_intermediate_size for each MoE block; expert_count / expert_used_count /
expert_feed_forward_length / expert_shared_feed_forward_length / expert_shared_count /
expert_weights_norm / expert_weights_scale / expert_group_count and moe_latent_size; the experts
stacked [E, rows, cols] as ffn_up_exps / ffn_down_exps (no gate), the router ffn_gate_inp and its
e_score_correction_bias as exp_probs_b.bias, the shared expert ffn_up_shexp / ffn_down_shexp, the
latent projections ffn_latent_down / ffn_latent_up; a multi-token-prediction block appended as
blk.<block_count - 1> with nextn_predict_layers (HF: mtp.layers.*), which neither transformers nor
forgert runs. The converter writes no expert_group_used_count; a model with n_group > 1 gets one
here (topk_group), which llama.cpp reads.

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
import mamba2_factory as mamba2
import moe_factory as moe

_BLOCK = {
    "norm.weight": "attn_norm.weight",
    "mixer.in_proj.weight": "ssm_in.weight", "mixer.conv1d.weight": "ssm_conv1d.weight",
    "mixer.conv1d.bias": "ssm_conv1d.bias", "mixer.dt_bias": "ssm_dt.bias", "mixer.A_log": "ssm_a",
    "mixer.D": "ssm_d", "mixer.norm.weight": "ssm_norm.weight", "mixer.out_proj.weight": "ssm_out.weight",
    "mixer.q_proj.weight": "attn_q.weight", "mixer.k_proj.weight": "attn_k.weight",
    "mixer.v_proj.weight": "attn_v.weight", "mixer.o_proj.weight": "attn_output.weight",
    "mixer.up_proj.weight": "ffn_up.weight", "mixer.down_proj.weight": "ffn_down.weight",
    "mixer.gate.weight": "ffn_gate_inp.weight", "mixer.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mixer.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mixer.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    "mixer.fc1_latent_proj.weight": "ffn_latent_down.weight", "mixer.fc2_latent_proj.weight": "ffn_latent_up.weight",
}
_EXPERT = re.compile(r"^mixer\.experts\.(\d+)\.(up|down)_proj\.weight$")
# name -> (GGUF arch, builder arguments): every kind of pairing of blocks into forgert's layers: a
# Mamba2 block and an attention block each followed by an MLP, a Mamba2 block followed by another,
# and attention last without an MLP.
MODELS = {"nemotron-h": ("nemotron_h", dict(seed=91, pattern="M-M*-MM-*")),
          # Nemotron 3 Nano's layout: experts after Mamba2 and attention blocks, mixers alone between;
          # sigmoid router with a selection bias, renormalised, times routed_scaling_factor
          "nemotron-3-nano": ("nemotron_h_moe", dict(seed=93, pattern="MEM*EMM*E", moe=dict(
              n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
              moe_shared_expert_intermediate_size=96, routed_scaling_factor=2.5, norm_topk_prob=True))),
          # Nemotron 3 Super's latent MoE, group-limited routing (2 of 4 groups), unnormalised
          # weights, and a multi-token-prediction block in the files
          "nemotron-3-super": ("nemotron_h_moe", dict(seed=95, pattern="ME*EMEM*E", mtp=True, moe=dict(
              n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, moe_latent_size=32,
              moe_shared_expert_intermediate_size=96, routed_scaling_factor=1.5, norm_topk_prob=False,
              n_group=4, topk_group=2)))}
_KEPT_F32 = ("conv1d.weight", "mixer.gate.weight")


def build(name: str, vocab: int):
    from transformers import NemotronHConfig, NemotronHForCausalLM
    _, kw = MODELS[name]
    torch.manual_seed(kw["seed"])
    cfg = NemotronHConfig(
        vocab_size=vocab, hidden_size=64, hybrid_override_pattern=kw["pattern"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16, n_groups=2,
        ssm_state_size=16, conv_kernel=4, chunk_size=16, layer_norm_epsilon=1e-5, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.1, **kw.get("moe", {}),
        # no EOS for transformers' generate: its min_new_tokens would hide a greedy EOS that ignore_eos keeps
        bos_token_id=0, eos_token_id=None, pad_token_id=None)
    model = moe._randomise(NemotronHForCausalLM(cfg), kw["seed"], 0.5)
    gen = torch.Generator().manual_seed(kw["seed"] + 3000)
    with torch.no_grad():
        mamba2.randomise_mixer_constants(model, gen)
        for mod in model.modules():
            if hasattr(mod, "e_score_correction_bias"):   # a selection bias that changes some choices
                mod.e_score_correction_bias.copy_(0.1 * torch.randn(mod.e_score_correction_bias.shape, generator=gen))
    model._with_mtp = bool(kw.get("mtp"))
    return model


MTP_TENSORS = {   # a multi-token-prediction head's tensors as Nemotron 3's checkpoints name them (not run)
    "mtp.layers.0.enorm.weight": (1,), "mtp.layers.0.hnorm.weight": (1,), "mtp.layers.0.eh_proj.weight": (1, 2),
    "mtp.layers.0.norm.weight": (1,), "mtp.layers.0.mixer.q_proj.weight": (1, 1),
    "mtp.layers.1.norm.weight": (1,), "mtp.layers.1.final_layernorm.weight": (1,),
}


def save_hf(model, tok, out_dir: Path) -> Path:
    out = moe.save_hf(model, tok, out_dir)
    if getattr(model, "_with_mtp", False):   # an MTP head in the checkpoint, as Nemotron 3's have: a shard
        from safetensors.numpy import save_file   # of its own (the model's shard kept as transformers wrote it)
        import json
        h = model.config.hidden_size
        rng = np.random.default_rng(7)
        mtp = {name: rng.standard_normal(tuple(h * d for d in shape)).astype(np.float32)
               for name, shape in MTP_TENSORS.items()}
        save_file(mtp, str(out / "model-mtp.safetensors"), metadata={"format": "pt"})
        weight_map = {name: "model.safetensors" for name in load_file(str(out / "model.safetensors"))}
        weight_map.update({name: "model-mtp.safetensors" for name in mtp})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        cfg = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**cfg, "num_nextn_predict_layers": 1}))
    return out


def gguf_tensors(hf_dir: Path, c) -> dict:
    out, experts = {}, {}
    d_inner = c.mamba_num_heads * c.mamba_head_dim
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        if name.startswith("mtp."):   # the converter's MTP block: one block after the model's
            continue
        top = re.sub(r"^(backbone|model)\.", "", name)
        if top in ("embeddings.weight", "norm_f.weight", "lm_head.weight"):
            out[{"embeddings.weight": "token_embd.weight", "norm_f.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}[top]] = w
            continue
        block, rest = re.match(r"^layers\.(\d+)\.(.+)$", top).groups()
        e = _EXPERT.match(rest)
        if e:
            experts.setdefault(f"blk.{block}.ffn_{e.group(2)}_exps.weight", {})[int(e.group(1))] = w
            continue
        if rest.startswith("mixer."):   # a Mamba2 mixer's tensors as the converter stores them
            w = mamba2.mixer_tensor_to_gguf(rest[len("mixer."):], w, c.n_groups, d_inner)
        if rest == "mixer.q_proj.weight":
            w = mf.permute_qk_for_gguf(w, c.num_attention_heads)
        elif rest == "mixer.k_proj.weight":
            w = mf.permute_qk_for_gguf(w, c.num_key_value_heads)
        out[f"blk.{block}.{_BLOCK[rest]}"] = w
    moe.stack_experts(out, experts)
    if _mtp_of(hf_dir):   # the MTP block's tensors (llama.cpp's names), never read
        b, h = len(c.layers_block_type), c.hidden_size
        rng = np.random.default_rng(8)
        for name, shape in (("attn_norm.weight", (h,)), ("nextn.eh_proj.weight", (h, 2 * h)),
                            ("nextn.enorm.weight", (h,)), ("nextn.hnorm.weight", (h,)), ("attn_q.weight", (h, h))):
            out[f"blk.{b}.{name}"] = rng.standard_normal(shape).astype(np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _mtp_of(hf_dir: Path) -> int:
    import json
    return int(json.loads((hf_dir / "config.json").read_text()).get("num_nextn_predict_layers", 0) or 0)


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, c, tok, extra_meta=None, arrays=None) -> Path:
    """extra_meta: writer method -> value (None: not written); arrays: key (after "<arch>.") -> list,
    written as an array in place of any scalar of that key."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-nemotron-h")
    kinds = list(c.layers_block_type)
    moe_arch = arch == "nemotron_h_moe"
    ffn_kind, ffn = ("moe", c.moe_intermediate_size) if moe_arch else ("mlp", c.intermediate_size)
    ff = [ffn if k == ffn_kind else 0 for k in kinds]
    kv = [c.num_key_value_heads if k == "full_attention" else 0 for k in kinds]
    mtp = _mtp_of(hf_dir) if moe_arch else 0
    if mtp:   # the converter's MTP block: attention and MoE both, after the model's blocks
        ff, kv = ff + [ffn], kv + [c.num_key_value_heads]
    meta = {
        "add_block_count": len(ff), "add_context_length": 2 ** 20, "add_embedding_length": c.hidden_size,
        "add_feed_forward_length": ff,
        "add_head_count": c.num_attention_heads,
        "add_head_count_kv": kv,
        "add_key_length": c.head_dim, "add_value_length": c.head_dim,
        "add_rope_freq_base": 10000.0, "add_layer_norm_eps": c.layer_norm_epsilon, "add_vocab_size": c.vocab_size,
        "add_ssm_conv_kernel": c.conv_kernel, "add_ssm_state_size": c.ssm_state_size,
        "add_ssm_group_count": c.n_groups, "add_ssm_inner_size": c.mamba_num_heads * c.mamba_head_dim,
        "add_ssm_time_step_rank": c.mamba_num_heads, "add_rope_scaling_finetuned": False,
    }
    if moe_arch:
        meta.update({
            "add_expert_used_count": c.num_experts_per_tok, "add_expert_feed_forward_length": c.moe_intermediate_size,
            "add_expert_shared_feed_forward_length": c.moe_shared_expert_intermediate_size,
            "add_expert_count": c.n_routed_experts, "add_expert_shared_count": c.n_shared_experts,
            "add_expert_weights_norm": c.norm_topk_prob, "add_expert_weights_scale": float(c.routed_scaling_factor),
            "add_expert_group_count": c.n_group, "add_moe_latent_size": c.moe_latent_size,
            "add_expert_group_used_count": c.topk_group if c.n_group > 1 else None,
            "add_nextn_predict_layers": mtp or None})
    meta.update(extra_meta or {})
    for key, value in meta.items():
        if value is not None:
            getattr(w, key)(value)
    for key, values in (arrays or {}).items():
        if f"{arch}.{key}" in w.kv_data[0]:
            del w.kv_data[0][f"{arch}.{key}"]
        w.add_array(f"{arch}.{key}", values)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in gguf_tensors(hf_dir, c).items():
        keep = t.ndim == 1 or t.shape[-1] % 32 or name.endswith(("ssm_conv1d.weight", "ssm_a", "ssm_d",
                                                                  "ssm_norm.weight", "ffn_gate_inp.weight"))
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
