"""Granite MoE (GGUF arch `granitemoe`, HF `granitemoe`: IBM Granite 3.x 1B-A400M / 3B-A800M):
Granite's four multipliers (tests/test_arch_granite.py) over Mixtral-style experts, a softmax over
the top-k router logits, the residual multiplier scaling the experts' weighted sum. The HF
checkpoint keeps each layer's experts in two 3-D tensors (input_linear: gate rows then up rows per
expert; output_linear), read zero-copy (python/forgert/granite_experts.py). A tiny random
GraniteMoeForCausalLM (4 experts, top 2, every multiplier far from 1) as an HF directory and as a
GGUF in llama.cpp's layout, against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import arch_e2e as ae
import model_factory as mf
from conftest import backend_params, require_backend
from test_e2e_tiny import FLOAT_BOUNDS, compare_logits, decode_logits

MULTIPLIERS = {"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.1,
               "logits_scaling": 4.0}
N_HEADS, N_KV = 4, 2


def build(vocab: int):
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM
    torch.manual_seed(51)
    model = GraniteMoeForCausalLM(GraniteMoeConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=None,
        initializer_range=0.1, **MULTIPLIERS)).float().eval()
    gen = torch.Generator().manual_seed(52)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "router" in name:   # spread router logits so the top-2 choice is clear
                p.mul_(4.0)
    return model


def gguf_tensors(model) -> dict:
    """llama.cpp's granitemoe tensors: its converter splits input_linear into the gate and up
    stacks and permutes Q/K as for Llama."""
    out = {}
    for name, t in model.state_dict().items():
        w = t.detach().float().numpy()
        if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            out[{"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}[name]] = w
            continue
        layer, rest = name.split(".")[2], ".".join(name.split(".")[3:])
        p = f"blk.{layer}."
        if rest == "block_sparse_moe.experts.gate_up_proj":
            ffn = w.shape[1] // 2
            out[p + "ffn_gate_exps.weight"], out[p + "ffn_up_exps.weight"] = w[:, :ffn], w[:, ffn:]
        elif rest == "block_sparse_moe.experts.down_proj":
            out[p + "ffn_down_exps.weight"] = w
        elif rest == "block_sparse_moe.router.weight":
            out[p + "ffn_gate_inp.weight"] = w
        elif rest == "self_attn.q_proj.weight":
            out[p + "attn_q.weight"] = mf.permute_qk_for_gguf(w, N_HEADS)
        elif rest == "self_attn.k_proj.weight":
            out[p + "attn_k.weight"] = mf.permute_qk_for_gguf(w, N_KV)
        else:
            out[p + {"self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                     "input_layernorm.weight": "attn_norm.weight",
                     "post_attention_layernorm.weight": "ffn_norm.weight"}[rest]] = w
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(model, tok, path):
    c = model.config
    w = gguf.GGUFWriter(str(path), "granitemoe")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_expert_feed_forward_length(c.intermediate_size)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(c.hidden_size // N_HEADS)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_expert_count(c.num_local_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_float32("granitemoe.embedding_scale", MULTIPLIERS["embedding_multiplier"])
    w.add_float32("granitemoe.residual_scale", MULTIPLIERS["residual_multiplier"])
    w.add_float32("granitemoe.attention.scale", MULTIPLIERS["attention_multiplier"])
    w.add_float32("granitemoe.logit_scale", MULTIPLIERS["logits_scaling"])
    w.add_vocab_size(c.vocab_size)
    mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    for name, t in gguf_tensors(model).items():
        w.add_tensor(name, t)
    return mf.write_and_close(w, path)


@pytest.fixture(scope="module")
def granitemoe(tmp_path_factory, tiny_tokenizer):
    model = build(tiny_tokenizer.get_vocab_size())
    root = tmp_path_factory.mktemp("granitemoe")
    spec = type("Spec", (), {"legacy_rope_config": False})()
    files = {"hf-F32": mf.save_hf_dir(model, spec, tiny_tokenizer, root / "hf", "F32"),
             "gguf-F32": write_gguf(model, tiny_tokenizer, root / "m.gguf")}
    return model, files


def ids_of(model, n, seed):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, n).tolist()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
def test_logits_match_transformers(forgert, granitemoe, metal_reason, fmt, backend):
    require_backend(backend, metal_reason)
    model, files = granitemoe
    ref = mf.with_f16_kv(model)
    m = forgert.Model(str(files[fmt]), backend=backend)
    assert m.info()["arch"] == "granitemoe"
    ids = ids_of(model, 40, 1)
    compare_logits(m.logits(ids), mf.reference_logits(ref, ids), **FLOAT_BOUNDS, what=f"granitemoe {fmt} {backend}")
    ids = ids_of(model, 12, 2)
    m2 = forgert.Model(str(files[fmt]), backend=backend)
    compare_logits(decode_logits(m2, ids), mf.reference_logits(ref, ids), **FLOAT_BOUNDS,
                   what=f"granitemoe {fmt} {backend} decode")


def test_residual_multiplier_on_experts_is_visible(granitemoe):
    """The residual multiplier reaches the experts' sum: the same weights with it at 1 move the
    logits far beyond the F32 bound."""
    import copy
    model, _ = granitemoe
    cfg = copy.deepcopy(model.config)
    cfg.residual_multiplier = 1.0
    plain = type(model)(cfg).float().eval()
    plain.load_state_dict(model.state_dict())
    ae.assert_visible(model, plain, ids_of(model, 32, 3))


def test_expert_stacks_are_views_of_the_checkpoint(granitemoe):
    """input_linear's gate and up halves are per-expert row ranges of the mapped file (no copy)."""
    from forgert.loader import load_model
    from forgert.weights import ExpertList
    _, files = granitemoe
    lm = load_model(files["hf-F32"])
    gate = lm.weights["blk.0.ffn_gate_exps.weight"]
    assert isinstance(gate, ExpertList) and gate.shape == (4, 48, 64)
    base = gate.experts[0].data
    while getattr(base, "base", None) is not None:
        base = base.base
    assert not isinstance(base, np.ndarray) or not base.flags.owndata


def test_quantize_from_hf_dir(forgert, granitemoe, tmp_path):
    """`forgert quantize` of the HF directory: the multipliers and the expert stacks as llama.cpp's
    converter writes them, running as transformers does."""
    from forgert.gguf_export import export_gguf
    model, files = granitemoe
    out = tmp_path / "exported.gguf"
    export_gguf(str(files["hf-F32"]), str(out), "f32", log=lambda msg: None)
    m = forgert.Model(str(out), backend="cpu")
    assert m.info()["arch"] == "granitemoe"
    ids = ids_of(model, 40, 4)
    compare_logits(m.logits(ids), mf.reference_logits(mf.with_f16_kv(model), ids), **FLOAT_BOUNDS,
                   what="granitemoe exported")
