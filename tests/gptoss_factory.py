"""A tiny random gpt-oss (transformers' GptOssForCausalLM, eager attention) and its GGUF in
llama.cpp's layout for arch "gpt-oss" (convert_hf_to_gguf.py's GptOssModel): the fused HF expert
tensors mlp.experts.gate_up_proj [E, hidden, 2 * ffn] (gate in the even columns, up in the odd:
GptOssExperts._apply_gate) split and transposed into ffn_gate_exps / ffn_up_exps [E, ffn, hidden],
down_proj [E, ffn, hidden] transposed into ffn_down_exps [E, hidden, ffn], their biases split
the same way; self_attn.sinks -> attn_sinks.weight; post_attention_layernorm -> post_attention_norm
(the feed-forward's input norm); Q/K rows not permuted (NEOX RoPE). Nothing here imports forgert.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

import model_factory as mf

_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.sinks": "attn_sinks.weight",
    "mlp.router.weight": "ffn_gate_inp.weight", "mlp.router.bias": "ffn_gate_inp.bias",
}
WINDOW = 8   # shorter than the tests' sequences


def build_gpt_oss(vocab: int, hidden=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, ffn=64, n_expert=8,
                  top_k=4, seed=41, router_scale=0.3, layer_types=None):
    """Layers alternate sliding (window WINDOW) and full attention; YaRN x32 over 4096 as gpt-oss
    (truncate on: llama.cpp always rounds the correction range to whole pairs). Weights large
    enough that both SwiGLU clamps act, every bias and sink away from 0. layer_types: HF's
    ("sliding_attention" / "full_attention" per layer) in place of the alternation."""
    from transformers import GptOssConfig, GptOssForCausalLM
    torch.manual_seed(seed)
    cfg = GptOssConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=n_layers,
                       num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=head_dim,
                       num_local_experts=n_expert, num_experts_per_tok=top_k, sliding_window=WINDOW,
                       max_position_embeddings=131072, rms_norm_eps=1e-5, initializer_range=0.1,
                       bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                        "truncate": True, "original_max_position_embeddings": 4096,
                                        "rope_theta": 150000.0},
                       attn_implementation="eager", **({"layer_types": layer_types} if layer_types else {}))
    model = GptOssForCausalLM(cfg).float().eval()
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("router.weight"):   # well-separated router logits (no near-ties)
                p.copy_(router_scale * torch.randn(p.shape, generator=gen))
            elif name.endswith("gate_up_proj"):    # |gate| and |up| past 7 at times: the clamps act
                p.copy_(0.6 * torch.randn(p.shape, generator=gen))
            elif name.endswith("down_proj"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("bias", "sinks")):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def with_f16_kv(model):
    """The model switched to gpt-oss's own eager attention (sinks included) over K and V rounded
    to float16, as forgert's KV cache holds them (model_factory.with_f16_kv's Llama eager
    attention would drop the sinks). An attention module with `given_kv` set attends over those
    (K, V) instead of its own; one with `seen_kv` (a list) appends its f32 (K, V) before rounding."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward
    rounded = mf.f16_kv(eager_attention_forward)

    def attention(module, query, key, value, attention_mask, **kwargs):
        # key, value: [batch, n_kv_heads, n, head_dim], after RoPE
        if getattr(module, "seen_kv", None) is not None:
            module.seen_kv.append((key.detach().clone(), value.detach().clone()))
        if getattr(module, "given_kv", None) is not None:
            return eager_attention_forward(module, query, *module.given_kv, attention_mask, **kwargs)
        return rounded(module, query, key, value, attention_mask, **kwargs)

    return mf.use_attention(model, "forgert_f16_kv_sinks", attention)


def _attentions(model):
    return [layer.self_attn for layer in model.model.layers]


def reference_kv(model, ids) -> np.ndarray:
    """f32 [n_layers, 2 (K, V), len(ids), n_kv_heads * head_dim]: what a with_f16_kv model's
    layers compute for K (after RoPE) and V before rounding them, in Engine.kv_save's layout."""
    for a in _attentions(model):
        a.seen_kv = []
    try:
        mf.reference_logits(model, ids)
        kv = [[t[0].transpose(0, 1).reshape(len(ids), -1).numpy() for t in a.seen_kv[0]] for a in _attentions(model)]
    finally:
        for a in _attentions(model):
            a.seen_kv = None
    return np.asarray(kv, np.float32)


def logits_over_cache(model, ids, kv: np.ndarray) -> np.ndarray:
    """Logits of a with_f16_kv model whose every layer attends over the given cache instead of
    its own K/V: kv is f16 [n_layers, 2, len(ids), n_kv_heads * head_dim] (Engine.kv_save's)."""
    heads, head_dim = model.config.num_key_value_heads, model.config.head_dim
    as_heads = lambda rows: torch.from_numpy(rows.astype(np.float32)).reshape(len(ids), heads, head_dim).transpose(0, 1)[None]
    for a, layer_kv in zip(_attentions(model), kv):
        a.given_kv = (as_heads(layer_kv[0]), as_heads(layer_kv[1]))
    try:
        return mf.reference_logits(model, ids)
    finally:
        for a in _attentions(model):
            a.given_kv = None


def gguf_tensors(model) -> dict:
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for l in range(model.config.num_hidden_layers):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        for hf, g in _LAYER.items():
            out[b + g] = sd[p + hf]
        gu, gub = sd[p + "mlp.experts.gate_up_proj"], sd[p + "mlp.experts.gate_up_proj_bias"]
        out[b + "ffn_gate_exps.weight"] = gu[:, :, 0::2].transpose(0, 2, 1)   # [E, ffn, hidden]
        out[b + "ffn_up_exps.weight"] = gu[:, :, 1::2].transpose(0, 2, 1)
        out[b + "ffn_gate_exps.bias"] = gub[:, 0::2]                          # [E, ffn]
        out[b + "ffn_up_exps.bias"] = gub[:, 1::2]
        out[b + "ffn_down_exps.weight"] = sd[p + "mlp.experts.down_proj"].transpose(0, 2, 1)  # [E, hidden, ffn]
        out[b + "ffn_down_exps.bias"] = sd[p + "mlp.experts.down_proj_bias"]  # [E, hidden]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _keeps_f32(name: str, w: np.ndarray) -> bool:
    # 1-D tensors, biases (2-D expert biases too), the router and the sinks stay F32 (convert_hf_to_gguf).
    return w.ndim == 1 or name.endswith((".bias", "ffn_gate_inp.weight", "attn_sinks.weight"))


def _quant_type(name: str, type_name: str, expert_type: str | None):
    return gguf.GGMLQuantizationType[expert_type if expert_type and "_exps.weight" in name else type_name]


def write_gguf(model, path: Path, type_name: str, tok, expert_type: str | None = None,
               chat_template: str | None = None, extra_meta=None) -> Path:
    """type_name for every matrix but the F32 ones (_keeps_f32); expert_type, when given, for the
    expert stacks instead (gpt-oss ships MXFP4 experts). extra_meta: GGUFWriter method -> value,
    keys llama.cpp's gpt-oss loader reads beyond these (attention.sliding_window_pattern,
    rope.freq_base_swa)."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_name("tiny-gpt-oss")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_expert_feed_forward_length(c.intermediate_size)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    rope = c.rope_parameters
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(float(rope["factor"]))
    w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    w.add_sliding_window(c.sliding_window)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_expert_count(c.num_local_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    for method, value in (extra_meta or {}).items():
        getattr(w, method)(value)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1, chat_template=chat_template)
    for name, t in gguf_tensors(model).items():
        qtype = _quant_type(name, type_name, expert_type)
        if _keeps_f32(name, t) or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, type_name: str, expert_type: str | None = None):
    """A copy of the model whose every matrix the GGUF quantizes holds gguf.quants' dequantization
    of the bytes written (the experts mapped back to HF's fused, interleaved, transposed layout)."""
    import copy
    ref = copy.deepcopy(model)
    rounded = {}
    for name, t in gguf_tensors(model).items():
        qtype = _quant_type(name, type_name, expert_type)
        if _keeps_f32(name, t) or qtype == gguf.GGMLQuantizationType.F32:
            continue
        rounded[name] = gguf.quants.dequantize(gguf.quants.quantize(t, qtype), qtype).reshape(t.shape)
    sd = ref.state_dict()
    put = lambda hf, w: sd[hf].copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
    with torch.no_grad():
        for hf, g in (("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight")):
            if g in rounded:
                put(hf, rounded[g])
        for l in range(model.config.num_hidden_layers):
            p, b = f"model.layers.{l}.", f"blk.{l}."
            for hf, g in _LAYER.items():
                if b + g in rounded:
                    put(p + hf, rounded[b + g])
            gu = sd[p + "mlp.experts.gate_up_proj"].numpy().copy()
            if b + "ffn_gate_exps.weight" in rounded:
                gu[:, :, 0::2] = rounded[b + "ffn_gate_exps.weight"].transpose(0, 2, 1)
                gu[:, :, 1::2] = rounded[b + "ffn_up_exps.weight"].transpose(0, 2, 1)
                put(p + "mlp.experts.gate_up_proj", gu)
                put(p + "mlp.experts.down_proj", rounded[b + "ffn_down_exps.weight"].transpose(0, 2, 1))
    return ref


def save_hf(model, tok, out_dir: Path, dtype: str = "F32") -> Path:
    """The model as GptOssForCausalLM.save_pretrained writes it (fused interleaved gate_up_proj,
    per-expert biases, sinks), every tensor in dtype (F32, F16 or BF16)."""
    spec = type("Spec", (), {"legacy_rope_config": False})()
    return mf.save_hf_dir(model, spec, tok, out_dir, dtype)


def _hf_mxfp4(w: np.ndarray):
    """w f32 [E, rows, cols] -> HF MXFP4 (blocks uint8 [E, rows, cols / 32, 16], scales uint8
    [E, rows, cols / 32]): ggml's MXFP4 quantization (gguf.quants) with its codes re-packed as
    HF's (code 2i in byte i's low nibble, 2i + 1 in its high; ggml puts code j and j + 16 in byte j)."""
    e, rows, cols = w.shape
    q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.MXFP4).reshape(e, rows, cols // 32, 17)
    scales, qs = q[..., 0], q[..., 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)                 # [E, rows, G, 32] in order
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(blocks), np.ascontiguousarray(scales)


def save_hf_mxfp4(model, tok, out_dir: Path) -> Path:
    """An F32 save_hf directory whose expert matrices are replaced by MXFP4 _blocks / _scales
    in the form OpenAI ships gpt-oss (quantization_config quant_method mxfp4): rows are the
    outputs, gate_up_proj's gate rows even and up rows odd."""
    import json
    from safetensors.numpy import load_file, save_file
    save_hf(model, tok, out_dir, "F32")
    sd = load_file(str(out_dir / "model.safetensors"))
    for l in range(model.config.num_hidden_layers):
        p = f"model.layers.{l}.mlp.experts."
        for part in ("gate_up_proj", "down_proj"):
            w = sd.pop(p + part)                                          # [E, in, out]
            sd[p + part + "_blocks"], sd[p + part + "_scales"] = _hf_mxfp4(np.ascontiguousarray(w.transpose(0, 2, 1)))
    save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn",
                                                                                      "model.layers.*.mlp.router",
                                                                                      "model.embed_tokens", "lm_head"]}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


def mxfp4_hf_reference(model, hf_dir: Path):
    """A copy of the model whose expert matrices are transformers' own dequantization
    (integrations.mxfp4.convert_moe_packed_tensors) of the directory's _blocks / _scales."""
    import copy
    from safetensors.numpy import load_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    ref, sd = copy.deepcopy(model), load_file(str(hf_dir / "model.safetensors"))
    params = ref.state_dict()
    with torch.no_grad():
        for l in range(model.config.num_hidden_layers):
            p = f"model.layers.{l}.mlp.experts."
            for part in ("gate_up_proj", "down_proj"):
                w = convert_moe_packed_tensors(torch.from_numpy(sd[p + part + "_blocks"]),
                                               torch.from_numpy(sd[p + part + "_scales"]), dtype=torch.float32)
                params[p + part].copy_(w)                                 # [E, in, out]
    return ref


def router_margins(model, ids) -> np.ndarray:
    """f32 [len(ids)]: each token's smallest gap, over the layers, between its top_k-th and
    (top_k + 1)-th router logit in the model: how far its expert choice is from a tie."""
    k, gaps = model.config.num_experts_per_tok, []

    def record(router, inputs, _):
        x = inputs[0].reshape(-1, inputs[0].shape[-1])
        top = torch.nn.functional.linear(x, router.weight, router.bias).sort(-1, descending=True).values
        gaps.append((top[:, k - 1] - top[:, k]).detach().numpy())

    hooks = [layer.mlp.router.register_forward_hook(record) for layer in model.model.layers]
    try:
        mf.reference_logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return np.min(gaps, axis=0)
