"""Seed-OSS (GGUF arch `seed_oss`, HF `seed_oss`: ByteDance Seed-OSS-36B): Llama with q/k/v (and,
where attention_out_bias is set, output) biases and RoPE over the two halves of each head (llama.cpp's
NEOX type); its GGUF names the feed-forward norm post_attention_norm. A tiny random
SeedOssForCausalLM with every bias as an HF directory and as GGUF against transformers, on the CPU
and emulated Metal."""
from __future__ import annotations

import arch_e2e as ae

tm, reference = ae.model_fixtures("seed_oss")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_gguf_names_the_ffn_norm_as_llama_cpp(tm):
    import gguf
    names = {t.name for t in gguf.GGUFReader(str(tm.gguf_files["F32"])).tensors}
    assert "blk.0.post_attention_norm.weight" in names and "blk.0.ffn_norm.weight" not in names
    assert {"blk.1.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias", "blk.1.attn_output.bias"} <= names


def test_biases_are_visible(tm):
    """The biases matter: the same model with them zeroed moves the logits far beyond the F32 bound."""
    import torch
    plain = ae.with_config(tm)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
    ae.assert_visible(tm.model, plain, ae.token_ids(tm, 32, 1))
