"""Tiny random mixture-of-experts models for end-to-end tests: a transformers model (Mixtral,
Qwen3-MoE) saved as an HF directory (per-expert tensors, as transformers saves them) and as
GGUFs in llama.cpp's layout (convert_hf_to_gguf.py: experts stacked into 3-D ffn_*_exps tensors
[n_expert, rows, cols], the router ffn_gate_inp kept F32, llama's Q/K rows permuted).

References: the f32 transformers model, or for a quantized GGUF the same model with every matrix
replaced by gguf.quants' dequantization of the bytes written. Nothing here imports forgert.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file, save_file

import model_factory as mf

# HF name (per layer) -> GGUF name, for everything but the experts.
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight$")
_STACK = {"w1": "ffn_gate_exps", "gate_proj": "ffn_gate_exps", "w3": "ffn_up_exps", "up_proj": "ffn_up_exps",
          "w2": "ffn_down_exps", "down_proj": "ffn_down_exps"}


def build_mixtral(vocab: int, hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=96, n_expert=4, top_k=2,
                  seed=11, router_scale=0.5):
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(seed)
    cfg = MixtralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=n_layers,
                        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, num_local_experts=n_expert,
                        num_experts_per_tok=top_k, max_position_embeddings=256, rms_norm_eps=1e-5,
                        initializer_range=0.1, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
                        sliding_window=None)
    return _randomise(MixtralForCausalLM(cfg), seed, router_scale)


def build_qwen3_moe(vocab: int, hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, ffn=128, moe_ffn=64,
                    n_expert=8, top_k=2, norm_topk_prob=True, seed=21, router_scale=0.5):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, moe_intermediate_size=moe_ffn,
                         num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                         head_dim=head_dim, num_experts=n_expert, num_experts_per_tok=top_k,
                         norm_topk_prob=norm_topk_prob, max_position_embeddings=256, rms_norm_eps=1e-6,
                         initializer_range=0.1, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    return _randomise(Qwen3MoeForCausalLM(cfg), seed, router_scale)


def build_qwen2_moe(vocab: int, hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, moe_ffn=64, shared_ffn=96,
                    n_expert=4, top_k=2, seed=31, router_scale=0.5):
    """Qwen2-MoE: Qwen2 attention (QKV biases), unnormalised top-k, a sigmoid-gated shared expert."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2MoeConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, moe_intermediate_size=moe_ffn,
                         shared_expert_intermediate_size=shared_ffn, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, num_experts=n_expert,
                         num_experts_per_tok=top_k, norm_topk_prob=False, max_position_embeddings=256,
                         rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
                         tie_word_embeddings=False)
    model = _randomise(Qwen2MoeForCausalLM(cfg), seed, router_scale)
    gen = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():   # biases and the shared expert's gate away from 0 (zeros would hide a dropped one)
        for name, p in model.named_parameters():
            if name.endswith(".bias") or name.endswith("shared_expert_gate.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def _randomise(model, seed, router_scale):
    """Norm weights around 1 (a dropped or swapped norm shows) and a router with well-separated
    logits (so f32 summation order cannot flip a near-tie of the k-th and k+1-th expert)."""
    model = model.float().eval()
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("gate.weight") and p.ndim == 2 and p.shape[0] < p.shape[1]:   # the router
                p.copy_(router_scale * torch.randn(p.shape, generator=gen))
    return model


def save_hf(model, tok, out_dir: Path) -> Path:
    spec = type("Spec", (), {"legacy_rope_config": False})()
    return mf.save_hf_dir(model, spec, tok, out_dir, "F32")


def hf_tensors(hf_dir: Path) -> dict:
    return load_file(str(hf_dir / "model.safetensors"))


def gguf_tensors(hf_dir: Path, arch: str, n_heads: int, n_kv_heads: int) -> dict:
    """GGUF-named float32 tensors; expert stacks [n_expert, rows, cols]."""
    sd, out, experts = hf_tensors(hf_dir), {}, {}
    for name, w in sd.items():
        m = _EXPERT.match(name)
        if m:
            experts.setdefault(f"blk.{m.group(1)}.{_STACK[m.group(3)]}.weight", {})[int(m.group(2))] = w
            continue
        if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            out[{"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}[name]] = w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        gname = f"blk.{layer}.{LAYER_NAMES[rest]}"
        if arch == "llama" and rest == "self_attn.q_proj.weight":
            w = mf.permute_qk_for_gguf(w, n_heads)
        elif arch == "llama" and rest == "self_attn.k_proj.weight":
            w = mf.permute_qk_for_gguf(w, n_kv_heads)
        out[gname] = w
    for gname, parts in experts.items():
        out[gname] = np.stack([parts[e] for e in range(len(parts))])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _keeps_f32(name: str, w: np.ndarray) -> bool:
    # 1-D tensors, and the router (convert_hf_to_gguf keeps FFN_GATE_INP in F32).
    return w.ndim == 1 or name.endswith(("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight"))


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, model_cfg, tok, extra_meta=None) -> Path:
    c = model_cfg
    tensors = gguf_tensors(hf_dir, arch, c.num_attention_heads, c.num_key_value_heads)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-moe")
    w.add_context_length(256)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    if getattr(c, "moe_intermediate_size", None):
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
    if getattr(c, "shared_expert_intermediate_size", None):
        w.add_expert_shared_feed_forward_length(c.shared_expert_intermediate_size)
    if getattr(c, "head_dim", None):
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    rope = getattr(c, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    # extra_meta: GGUFWriter method name -> value, added or replacing these defaults.
    meta = {"add_expert_count": getattr(c, "num_local_experts", None) or c.num_experts,
            "add_expert_used_count": c.num_experts_per_tok, **(extra_meta or {})}
    for key, value in meta.items():
        getattr(w, key)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in tensors.items():
        if _keeps_f32(name, t) or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, hf_dir: Path, type_name: str, out_dir: Path):
    """The HF model with every matrix the GGUF quantizes replaced by gguf.quants' dequantization
    of its bytes (Q/K permutation only reorders rows, so rounding the unpermuted rows is the same)."""
    from transformers import AutoModelForCausalLM
    qtype = gguf.GGMLQuantizationType[type_name]
    sd = hf_tensors(hf_dir)
    rounded = {}
    for name, w in sd.items():
        router = name.endswith(("block_sparse_moe.gate.weight", "mlp.gate.weight", "shared_expert_gate.weight"))
        if w.ndim == 2 and not router:
            w = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
        rounded[name] = np.ascontiguousarray(w, dtype=np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(rounded, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text((hf_dir / "config.json").read_text())
    return AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()


def hf_name_of(gguf_name: str, n_expert: int) -> list:
    """The HF tensor names a GGUF tensor holds: one, or for an expert stack one per expert
    (Qwen-MoE's mlp.experts.E.*_proj; Mixtral's are asked for with its own names by the caller)."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return [top[gguf_name]]
    _, layer, rest = gguf_name.split(".", 2)
    stack = rest[:-len(".weight")]
    if stack in _STACK.values():
        return [(f"model.layers.{layer}", e, stack) for e in range(n_expert)]
    return [f"model.layers.{layer}.{hf}" for hf, g in LAYER_NAMES.items() if g == rest]


def dequantized_reference(hf_dir: Path, gguf_path: Path, arch: str, model_cfg, out_dir: Path):
    """The HF model whose every tensor is the gguf package's dequantization of the GGUF's bytes
    (its own reader and dequantizers), llama's Q/K rows permuted back: what a runtime reading the
    file exactly would compute."""
    from transformers import AutoModelForCausalLM
    sd = hf_tensors(hf_dir)
    mixtral = any(".block_sparse_moe." in n for n in sd)
    n_expert = getattr(model_cfg, "num_local_experts", None) or model_cfg.num_experts
    out = {}
    for t in gguf.GGUFReader(str(gguf_path)).tensors:
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape.tolist()))) if w.ndim > 1 else w
        for hf in hf_name_of(t.name, n_expert):
            if isinstance(hf, tuple):     # one expert of a stack
                prefix, e, stack = hf
                part = [k for k, v in _STACK.items() if v == stack and (k.startswith("w") == mixtral)][0]
                block = "block_sparse_moe" if mixtral else "mlp"
                out[f"{prefix}.{block}.experts.{e}.{part}.weight"] = w[e]
                continue
            if hf not in sd:
                continue
            v = w.reshape(sd[hf].shape)
            if arch == "llama" and hf.endswith("q_proj.weight"):
                v = mf.unpermute_qk_from_gguf(v, model_cfg.num_attention_heads)
            elif arch == "llama" and hf.endswith("k_proj.weight"):
                v = mf.unpermute_qk_from_gguf(v, model_cfg.num_key_value_heads)
            out[hf] = np.ascontiguousarray(v, dtype=np.float32)
    missing = set(sd) - set(out)
    assert not missing, f"{gguf_path.name} lacks {sorted(missing)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text((hf_dir / "config.json").read_text())
    return AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()


def formats_fixture(factory, root_name: str):
    """A module-scoped pytest fixture `models` over a factory module (routed_moe_factory,
    qwen35_factory: its MODELS name -> (GGUF arch, arguments), build, save_hf, write_gguf and
    quantized_reference; optionally extra_files(name, hf_dir, dir, model, tokenizer) -> {format:
    (path, reference)} and cache_reference(name, model), the model with forgert's cache modelled
    (default model_factory.with_f16_kv), and tokenizer() -> its own tokenizers.Tokenizer (default the tiny
    byte-level BPE)): get(name) -> (transformers model, files by format (hf-F32, gguf-F32,
    gguf-Q8_0 and the extra ones), float32 references by format, the f16 KV cache modelled), each
    model built once."""
    import pytest

    @pytest.fixture(scope="module")
    def models(tmp_path_factory, tiny_tokenizer):
        root = tmp_path_factory.mktemp(root_name)
        cache = {}
        own = getattr(factory, "tokenizer", None)
        tok = own() if own else tiny_tokenizer

        def get(name):
            if name not in cache:
                arch = factory.MODELS[name][0]
                model = factory.build(name, tok.get_vocab_size())
                hf_dir = factory.save_hf(model, tok, root / name / "hf")
                files = {"hf-F32": hf_dir}
                for t in ("F32", "Q8_0"):
                    files[f"gguf-{t}"] = factory.write_gguf(hf_dir, root / name / f"m-{t}.gguf", t, arch,
                                                            model.config, tok)
                cached = getattr(factory, "cache_reference", None)
                kv = (lambda m: cached(name, m)) if cached else mf.with_f16_kv
                refs = {"hf-F32": kv(model), "gguf-F32": kv(model),
                        "gguf-Q8_0": kv(factory.quantized_reference(model, "Q8_0"))}
                extra = getattr(factory, "extra_files", None)   # further GGUF layouts of the same model
                for fmt, (path, ref) in (extra(name, hf_dir, root / name, model, tok) if extra else {}).items():
                    files[fmt], refs[fmt] = path, kv(ref)
                cache[name] = (model, files, refs)
            return cache[name]

        return get

    return models


def rounded_reference(model, type_name: str, kept=(), skipped=()):
    """The transformers model with every matrix a GGUF of type_name quantizes replaced by
    gguf.quants' round trip of it, row blocks of 32 (3-D fused expert stacks row by row, as the
    GGUF's per-expert stacks): every tensor of two or more rows but those whose names end with one
    of `kept` (what the GGUF keeps F32: routers, convolution kernels) or contain one of `skipped`."""
    qtype = gguf.GGMLQuantizationType[type_name]
    rounded = {}
    for name, w in model.state_dict().items():
        w = w.detach().float().numpy()
        if w.ndim >= 2 and w.shape[0] > 1 and not name.endswith(tuple(kept)) and not any(x in name for x in skipped):
            w = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
        rounded[name] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    ref = type(model)(model.config).float().eval()
    ref.load_state_dict(rounded)
    return ref


def add_fused_experts(out: dict, prefix: str, part: str, w: np.ndarray) -> None:
    """transformers 5's fused expert tensors of one layer (prefix "blk.N.") as GGUF stacks into out:
    gate_up_proj [E, 2 ffn, hidden] holds each expert's gate rows, then its up rows."""
    if part == "gate_up_proj":
        half = w.shape[1] // 2
        out[prefix + "ffn_gate_exps.weight"], out[prefix + "ffn_up_exps.weight"] = w[:, :half], w[:, half:]
    else:
        out[prefix + "ffn_down_exps.weight"] = w


def stack_experts(out: dict, experts: dict) -> None:
    """Per-expert matrices {stack name: {expert: [rows, cols]}} as GGUF stacks [E, rows, cols] into out."""
    for name, parts in experts.items():
        out[name] = np.stack([parts[e] for e in range(len(parts))])

