"""OLMo 2 (GGUF arch `olmo2`, HF `olmo2`: AllenAI's OLMo 2 1B-32B): Llama without pre-norms. The
projections read the residual stream itself; an RMSNorm on each sub-layer's output comes before
its residual add (post_attention_norm, post_ffw_norm), and its QK-norm normalises the whole Q and
K projections (weights [q_dim] and [kv_dim], not one head's). A tiny random Olmo2ForCausalLM as
an HF directory and as GGUF against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("olmo2")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_whole_row_qk_norm_is_visible(tm):
    """Its QK-norm is over the whole projection: the same weights normalised per head (one
    head's weights repeated, as a Qwen3-style reading would) move the logits far beyond the
    F32 bound, so the checks above tell the two apart."""
    import torch
    per_head = ae.with_config(tm)
    with torch.no_grad():
        for layer in per_head.model.layers:
            attn = layer.self_attn
            for norm, proj, n in ((attn.q_norm, attn.q_proj, tm.spec.n_heads), (attn.k_norm, attn.k_proj,
                                                                                 tm.spec.n_kv_heads)):
                orig_forward = norm.forward
                w = norm.weight

                def head_wise(x, w=w, n=n, eps=norm.variance_epsilon):
                    xs = x.float().reshape(*x.shape[:-1], n, -1)
                    xs = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + eps)
                    return (w * xs.reshape(x.shape)).to(x.dtype)
                norm.forward = head_wise
    ae.assert_visible(tm.model, per_head, ae.token_ids(tm, 32, 1))


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_norms(forgert, tm, fmt):
    info = forgert.Model(str(tm.path(fmt)), backend="cpu").info()
    assert info["arch"] == "olmo2"
    assert "norms on each sub-layer's output only (no pre-norms)" in info["features"]
    assert "QK-norm (RMSNorm over all of Q and over all of K)" in info["features"]


def test_gguf_has_no_pre_norms(tm):
    """The factory's GGUF holds llama.cpp's olmo2 tensors (read back by the gguf package): no
    attn_norm / ffn_norm, post norms, and [q_dim] / [kv_dim] QK-norm weights."""
    import gguf
    shapes = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(tm.gguf_files["F32"])).tensors}
    assert not [n for n in shapes if n.endswith(("attn_norm.weight", "ffn_norm.weight"))]
    s = tm.spec
    assert shapes["blk.0.post_attention_norm.weight"] == [s.hidden] and shapes["blk.0.post_ffw_norm.weight"] == [s.hidden]
    assert shapes["blk.1.attn_q_norm.weight"] == [s.n_heads * s.head_dim]
    assert shapes["blk.1.attn_k_norm.weight"] == [s.n_kv_heads * s.head_dim]
