"""GGUFs whose attention projections are fused into blk.N.attn_qkv, as convert_hf_to_gguf.py
--fuse-qkv (and llama.cpp's scripts/fuse_qkv_gguf.py) writes them: Q's rows (after the Llama
permutation), then K's, then V's, the biases likewise in attn_qkv.bias. llama.cpp's
create_tensor_qkv reads them for every architecture it loads that way (src/llama-model.cpp);
forgert split them only for phi3 and glm4 and refused them elsewhere as an unknown tensor. Each
fused file gives exactly the logits of the file with them apart (the parts are the same bytes),
which the arch tests hold to transformers."""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
from forgert import ModelFormatError

# llama (permuted Q/K), qwen2 (q/k/v biases), llama with an output bias too, OLMo 2 (QK-norm),
# EXAONE 4 (QK-norm, NoPE global layers), Seed-OSS (biases, its own norm name)
SPECS = ["llama_tied", "qwen2_tied", "llama_bias", "olmo2", "exaone4", "seed_oss"]


def fuse_qkv(tensors: dict) -> dict:
    """tensors with each layer's attn_q / attn_k / attn_v (weights, biases) as one attn_qkv; a
    layer without K and V of its own (Gemma 3n's K/V-sharing layers) keeps its attn_q."""
    out = {}
    for name, t in tensors.items():
        for kind in ("weight", "bias"):
            p = name[:name.rindex("attn_")] if ".attn_" in name else ""
            if f"{p}attn_k.{kind}" not in tensors:
                continue
            if name.endswith(f".attn_q.{kind}"):
                out[f"{p}attn_qkv.{kind}"] = np.concatenate([t, tensors[f"{p}attn_k.{kind}"],
                                                            tensors[f"{p}attn_v.{kind}"]], axis=0)
                break
            if name.endswith((f".attn_k.{kind}", f".attn_v.{kind}")):
                break
        else:
            out[name] = t
    return out


def _spec(name):
    return mf.LLAMA_BIAS if name == "llama_bias" else mf.ALL_SPECS[name]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_tokenizer):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = mf.make_tiny_model(_spec(name), tmp_path_factory.mktemp(name), tiny_tokenizer,
                                             hf_dtypes=(), gguf_types=("F32",))
        return cache[name]
    return get


@pytest.mark.parametrize("type_name", ["F32", "Q8_0"])
@pytest.mark.parametrize("name", SPECS)
def test_fused_qkv_runs_as_the_file_with_them_apart(forgert, built, tmp_path, name, type_name):
    tm = built(name)
    apart = mf.gguf_tensors(tm.model, tm.spec)
    fused = fuse_qkv(apart)
    assert any(n.endswith("attn_qkv.weight") for n in fused) and not any(n.endswith("attn_k.weight") for n in fused)
    if tm.spec.attention_bias or tm.spec.arch in ("qwen2", "seed_oss"):
        assert any(n.endswith("attn_qkv.bias") for n in fused)
    p_apart = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "apart.gguf", type_name, tensors=apart)
    p_fused = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "fused.gguf", type_name, tensors=fused)
    ids = np.random.default_rng(3).integers(0, tm.vocab, 24)
    want = forgert.Model(str(p_apart), backend="cpu").logits(ids)
    np.testing.assert_array_equal(forgert.Model(str(p_fused), backend="cpu").logits(ids), want)


def test_fused_qkv_of_the_wrong_height_is_refused(forgert, built, tmp_path):
    tm = built("llama_tied")
    fused = fuse_qkv(mf.gguf_tensors(tm.model, tm.spec))
    fused["blk.0.attn_qkv.weight"] = fused["blk.0.attn_qkv.weight"][:-16]
    p = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "short.gguf", "F32", tensors=fused)
    with pytest.raises(ModelFormatError, match=r"tensor 'blk\.0\.attn_qkv\.weight' has 112 rows, expected "
                                               r"64 \(blk\.0\.attn_q\.weight\) \+ 32 .* \+ 32"):
        forgert.Model(str(p), backend="cpu")


def test_fused_qkv_beside_its_parts_is_refused(forgert, built, tmp_path):
    tm = built("llama_tied")
    apart = mf.gguf_tensors(tm.model, tm.spec)
    both = {**fuse_qkv(apart), "blk.1.attn_k.weight": apart["blk.1.attn_k.weight"]}
    p = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "both.gguf", "F32", tensors=both)
    with pytest.raises(ModelFormatError, match=r"tensor 'blk\.1\.attn_k\.weight' given both on its own and inside "
                                               r"'blk\.1\.attn_qkv\.weight'"):
        forgert.Model(str(p), backend="cpu")


def test_fused_qkv_file_requantizes(forgert, built, tmp_path):
    """`forgert quantize` of a fused file writes the file's tensors (attn_qkv kept fused, as
    llama.cpp's llama-quantize does), and the result runs as the unfused file quantized alike."""
    from forgert.gguf import GGUFFile
    from forgert.gguf_export import export_gguf
    tm = built("qwen2_tied")
    apart = mf.gguf_tensors(tm.model, tm.spec)
    outs = {}
    for kind, tensors in (("apart", apart), ("fused", fuse_qkv(apart))):
        src = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / f"{kind}.gguf", "F32", tensors=tensors)
        outs[kind] = tmp_path / f"{kind}-q8.gguf"
        export_gguf(str(src), str(outs[kind]), "q8_0", log=lambda msg: None)
    assert "blk.0.attn_qkv.weight" in GGUFFile(outs["fused"]).tensors
    ids = np.random.default_rng(4).integers(0, tm.vocab, 24)
    want = forgert.Model(str(outs["apart"]), backend="cpu").logits(ids)
    np.testing.assert_array_equal(forgert.Model(str(outs["fused"]), backend="cpu").logits(ids), want)
