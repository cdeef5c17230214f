"""End to end through `forgert quantize`: tiny random Llama and Qwen2 checkpoints (F32 safetensors,
hidden 256: whole K-quant super-blocks) written by forgert in llama.cpp's Q4_K_M, Q5_K_M, Q6_K,
Q3_K_M and Q2_K mixes, then run by forgert on the CPU (prefill and decode) and on emulated Metal,
against transformers' own GGUF loader reading the same file (it dequantizes with the gguf
package), in f32 with forgert's f16 KV cache modelled. Bounds: test_e2e_tiny.py's per kernel
path (measured values beside each test). The IQ4_XS and IQ4_NL mixes run the same tests where
forgert runs IQ4 weights (ggml_types.SUPPORTED; branch iq4) and are skipped before that, their
files then checked for types and blocks only (tests/test_quantize_kquants.py).

Both models have 2 layers, so llama.cpp's use_more_bits picks layer 1: Q4_K_M gives its attn_v
and ffn_down Q6_K and layer 0's Q4_K; Q3_K_M gives the first two attn_v Q5_K; Q2_K (GQA 2 and 4)
gives attn_v Q3_K / Q4_K, ffn_down and attn_output Q3_K; IQ4_XS / IQ4_NL give attn_v Q5_K at GQA 4
(Qwen2); output.weight is Q6_K throughout."""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
from test_e2e_kquants import SPECS
from test_e2e_tiny import assert_follows_reference, bounds_for, compare_logits, decode_logits, token_ids

MIXES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ4_NL"]
CASES = [pytest.param((spec, mix), id=f"{spec}-{mix}") for spec in ("llama_kq", "qwen2_kq") for mix in MIXES]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    """spec name -> TinyModel with its F32 HF directory (built once per module)."""
    root, cache = tmp_path_factory.mktemp("mixes"), {}

    def get(spec):
        if spec not in cache:
            cache[spec] = mf.make_tiny_model(SPECS[spec], root, tiny_tokenizer, hf_dtypes=("F32",), gguf_types=())
        return cache[spec]
    return get


@pytest.fixture(scope="module", params=CASES)
def case(request, checkpoints):
    """(TinyModel with gguf_files[mix] written by `forgert quantize`, mix, transformers reference)."""
    from forgert.cli import main
    spec, mix = request.param
    tm = checkpoints(spec)
    out = tm.root / f"{spec}-forgert-{mix}.gguf"
    assert main(["quantize", str(tm.path("hf-F32")), str(out), "--type", mix, "--force"]) == 0
    tm.gguf_files[mix] = out
    return tm, mix, mf.with_f16_kv(mf.gguf_reference_model(tm, mix))


def test_file_has_the_k_quant_types(case):
    import gguf
    tm, mix, _ = case
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tm.gguf_files[mix]).tensors}
    gqa4 = tm.spec.n_heads // tm.spec.n_kv_heads >= 4
    base = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q3_K_M": "Q3_K", "Q2_K": "Q2_K", "IQ4_XS": "IQ4_XS",
            "IQ4_NL": "IQ4_NL"}[mix]
    assert types["output.weight"] == "Q6_K"
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_up.weight"] == base
    layer1_v = {"Q4_K_M": "Q6_K", "Q5_K_M": "Q6_K", "Q6_K": "Q6_K", "Q3_K_M": "Q5_K",
                "Q2_K": "Q4_K" if gqa4 else "Q3_K", "IQ4_XS": "Q5_K" if gqa4 else "IQ4_XS",
                "IQ4_NL": "Q5_K" if gqa4 else "IQ4_NL"}[mix]
    assert types["blk.1.attn_v.weight"] == layer1_v


def test_logits_match_transformers(forgert, case):
    """Prefill of 128 tokens (CPU: f32 GEMM over dequantized panels; bound 1e-3 / 5e-4). Measured
    max_rel (avx512-vnni; Llama then Qwen2, each Q4_K_M, Q5_K_M, Q6_K, Q3_K_M, Q2_K): 6.6e-5 1.8e-4
    1.1e-4 1.3e-4 3.7e-4 / 7.5e-5 5.4e-5 3.1e-5 1.4e-4 8.2e-5; IQ4_XS, IQ4_NL (merged with branch iq4):
    8.4e-5 1.3e-4 / 4.0e-5 5.2e-5; rms_rel <= 8.4e-5; argmax 1.0. Those are all-GEMM figures: since the
    row classes (docs/design.md "Batch invariance") the rows at positions below 15 take the decode
    kernels, and every later row attends to their K/V, so the prompt is held to the decode path's
    bounds (3e-3 / 2e-3; measured on avx512-vnni: Llama Q4_K_M max_rel 1.02e-3, rms_rel 5.4e-4, the
    largest; the test below measures the decode path alone at 4.3e-4 - 7.4e-4)."""
    tm, mix, reference = case
    fmt = f"gguf-{mix}"
    ids = token_ids(tm, 128, 2)
    out = forgert.Model(str(tm.path(fmt)), backend="cpu").logits(ids)
    compare_logits(out, mf.reference_logits(reference, ids), **bounds_for(fmt, n_tokens=1),
                   what=f"{tm.spec.name} {mix} prefill")


def test_decode_logits_match_transformers(forgert, case):
    """One token per forward (CPU: the K-quant dots against two-part int8 activations; bound 3e-3 /
    2e-3). Measured max_rel 6.0e-4 7.2e-4 6.9e-4 5.0e-4 4.3e-4 / 7.4e-4 5.5e-4 5.8e-4 6.3e-4 6.6e-4,
    IQ4_XS, IQ4_NL 3.9e-4 5.6e-4 / 4.6e-4 6.8e-4; rms_rel <= 6.3e-4, argmax 1.0."""
    tm, mix, reference = case
    fmt = f"gguf-{mix}"
    ids = token_ids(tm, 32, 3)
    out = decode_logits(forgert.Model(str(tm.path(fmt)), backend="cpu"), ids)
    compare_logits(out, mf.reference_logits(reference, ids), **bounds_for(fmt, n_tokens=1),
                   what=f"{tm.spec.name} {mix} decode")


@pytest.mark.metal
def test_metal_greedy_matches_cpu_and_transformers(forgert, case, metal_reason):
    """Emulated Metal and the CPU pick the same greedy tokens, and each is the reference's argmax
    given its history up to near-ties (the Metal bound of max|logit|)."""
    if metal_reason is not None:
        pytest.skip(metal_reason)
    tm, mix, reference = case
    fmt = f"gguf-{mix}"
    prompt = token_ids(tm, 12, 4)
    cpu = forgert.Model(str(tm.path(fmt)), backend="cpu").generate(prompt, max_tokens=4, temperature=0.0,
                                                                     ignore_eos=True).tokens
    metal = forgert.Model(str(tm.path(fmt)), backend="metal", n_ctx=64)
    assert metal.backend == "metal"
    toks = list(metal.generate(prompt, max_tokens=4, temperature=0.0, ignore_eos=True).tokens)
    assert toks == list(cpu)
    ref = mf.reference_logits(reference, prompt + toks)
    tol = bounds_for(fmt, backend="metal")["max_rel"] * np.abs(ref).max()
    assert_follows_reference(ref, len(prompt), toks, tol, f"{tm.spec.name} {mix} metal")
