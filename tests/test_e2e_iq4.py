"""End to end with IQ4 weights: tiny random Llamas written in llama.cpp's IQ4_XS and IQ4_NL mixes
without an importance matrix (tests/iq4_writer.py, after src/llama-quant.cpp): Q6_K output,
Q5_K attn_v (4 query heads per KV head), the mix's type everywhere else (Q5_K ffn_down in the
first n_layer / 8 layers: none of 2; test_mix_promotes_early_ffn_down checks the rule). A Llama of hidden 192 in the IQ4_XS mix takes the
fallbacks of rows that are not whole super-blocks (IQ4_NL; Q5_1 for attn_v, Q8_0 for the output),
keeping IQ4_XS for ffn_down (512 wide). Against transformers' own GGUF loader, which dequantizes with the gguf
package, in f32 with forgert's f16 KV cache modelled; the bounds are test_e2e_tiny.py's per
kernel path (measured values beside each test: the IQ4_XS Llama, the IQ4_NL Llama, the
hidden-192 Llama). The greedy tokens of the CPU and of emulated Metal are the same."""
from __future__ import annotations

import numpy as np
import pytest

import iq4_writer
import model_factory as mf
from test_e2e_tiny import assert_follows_reference, bounds_for, compare_logits, decode_logits, token_ids

IQ4_NL, IQ4_XS, Q5_1, Q5_K, Q6_K, Q8_0 = 20, 23, 7, 13, 14, 8

SPECS = {
    "llama_iq4": mf.TinySpec(name="llama_iq4", arch="llama", hidden=256, n_layers=2, n_heads=8, n_kv_heads=2,
                             ffn=512, tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=21),
    # hidden 192: no whole super-block, so IQ4_XS rows fall back to IQ4_NL (the output to Q8_0)
    "llama_iq4_192": mf.TinySpec(name="llama_iq4_192", arch="llama", hidden=192, n_layers=2, n_heads=4,
                                 n_kv_heads=1, ffn=512, tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5,
                                 seed=22),
}
CASES = [("llama_iq4", "IQ4_XS"), ("llama_iq4", "IQ4_NL"), ("llama_iq4_192", "IQ4_XS")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def iq_case(request, tmp_path_factory, tiny_tokenizer):
    spec, mix = SPECS[request.param[0]], request.param[1]
    tm = mf.make_mix_model(spec, tmp_path_factory.mktemp("iq4"), tiny_tokenizer, mix,
                           lambda tensors: iq4_writer.mix_overrides(tensors, mix, spec.n_heads, spec.n_kv_heads))
    return tm, mix


@pytest.fixture(scope="module")
def iq(iq_case):
    return iq_case[0]


@pytest.fixture(scope="module")
def fmt(iq_case):
    return f"gguf-{iq_case[1]}"


@pytest.fixture(scope="module")
def reference(iq, iq_case):
    return mf.with_f16_kv(mf.gguf_reference_model(iq, iq_case[1]))


def test_writer_blocks_decode_to_the_weights():
    """The test-side quantizer writes blocks that gguf's decoder reads back as the weights, to
    within 4-bit rounding (measured nmse 6.4e-3 / 6.5e-3)."""
    import gguf
    x = (np.random.default_rng(0).standard_normal((64, 512)) * 0.1).astype(np.float32)
    for quantize, qtype in ((iq4_writer.quantize_iq4_nl, gguf.GGMLQuantizationType.IQ4_NL),
                            (iq4_writer.quantize_iq4_xs, gguf.GGMLQuantizationType.IQ4_XS)):
        y = gguf.quants.dequantize(quantize(x), qtype).reshape(x.shape)
        assert np.sum((y - x) ** 2) / np.sum(x ** 2) < 2e-2, qtype.name


def test_mix_promotes_early_ffn_down():
    """llama.cpp's IQ4 mixes give ffn_down Q5_K in the first n_layer / 8 layers (16 layers: 0, 1)."""
    import gguf
    rng = np.random.default_rng(3)
    tensors = {f"blk.{i}.ffn_down.weight": rng.standard_normal((8, 256)).astype(np.float32) for i in range(16)}
    types = {name: t for name, (_, t) in iq4_writer.mix_overrides(tensors, "IQ4_XS", 4, 4).items()}
    want = {f"blk.{i}.ffn_down.weight": gguf.GGMLQuantizationType.Q5_K if i < 2 else gguf.GGMLQuantizationType.IQ4_XS
            for i in range(16)}
    assert types == want


def test_file_has_the_mix(iq, fmt):
    from forgert.gguf import GGUFFile
    types = {name: t.type_id for name, t in GGUFFile(iq.path(fmt)).tensors.items()}
    whole = iq.spec.hidden % 256 == 0
    base = {"gguf-IQ4_XS": IQ4_XS if whole else IQ4_NL, "gguf-IQ4_NL": IQ4_NL}[fmt]
    assert types["output.weight"] == (Q6_K if whole else Q8_0)
    assert types["blk.0.attn_v.weight"] == (Q5_K if whole else Q5_1)   # 4 query heads per KV head
    # ffn_down is 512 wide: IQ4_XS rows in the IQ4_XS mix, whatever the hidden size
    assert types["blk.0.ffn_down.weight"] == types["blk.1.ffn_down.weight"] == (IQ4_XS if fmt == "gguf-IQ4_XS" else IQ4_NL)
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_gate.weight"] == types["token_embd.weight"] == base


def test_logits_match_transformers(forgert, iq, fmt, reference):
    """Prefill of 128 tokens (CPU: f32 GEMM over dequantized panels). Measured max_rel 7.8e-5 /
    2.4e-4 / 2.3e-4, rms_rel 2.7e-5 / 8.7e-5 / 7.1e-5 (avx512-vnni, avx2 alike; the generic set's
    int8 path: max_rel 8.5e-4 / 6.8e-4 / 5.8e-4, rms_rel 5.2e-4 / 5.0e-4 / 4.3e-4, bound 3e-3 / 2e-3),
    argmax 1.0."""
    ids = token_ids(iq, 128, 2)
    out = forgert.Model(str(iq.path(fmt)), backend="cpu").logits(ids)
    compare_logits(out, mf.reference_logits(reference, ids), **bounds_for(fmt), what=f"{fmt} prefill")


def test_decode_logits_match_transformers(forgert, iq, fmt, reference):
    """One token per forward (CPU: integer dots of table values against two-part int8
    activations). Measured max_rel 5.6e-4 / 1.0e-3 / 4.8e-4, rms_rel 4.1e-4 / 4.4e-4 / 3.7e-4,
    argmax 1.0 (bound 3e-3 / 2e-3)."""
    ids = token_ids(iq, 48, 2)
    out = decode_logits(forgert.Model(str(iq.path(fmt)), backend="cpu"), ids)
    compare_logits(out, mf.reference_logits(reference, ids), **bounds_for(fmt, n_tokens=1), what=f"{fmt} decode")


@pytest.mark.metal
def test_metal_logits_and_greedy_tokens(forgert, iq, fmt, reference, metal_reason):
    """Emulated Metal: prefill (simdgroup GEMM on half tiles), then greedy decode steps (GEMV):
    logits against transformers (measured max_rel 1.7e-3 / 2.2e-3 / 1.7e-3, rms_rel 1.3e-3 /
    1.3e-3 / 1.2e-3, argmax 1.0; bound 5e-3 / 4e-3), and the same greedy tokens as the CPU."""
    if metal_reason is not None:
        pytest.skip(metal_reason)
    m = forgert.Model(str(iq.path(fmt)), backend="metal")
    assert m.backend == "metal"
    prompt = token_ids(iq, 24, 4)
    toks = list(m.generate(prompt, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)
    cpu_toks = list(forgert.Model(str(iq.path(fmt)), backend="cpu").generate(
        prompt, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)
    assert toks == cpu_toks
    ids = prompt + toks
    ref = mf.reference_logits(reference, ids)
    compare_logits(m.logits(ids), ref, **bounds_for(fmt, backend="metal"), what=f"{fmt} metal")
    tol = bounds_for(fmt, backend="metal")["max_rel"] * np.abs(ref).max()
    assert_follows_reference(ref, len(prompt), toks, tol, f"{fmt} metal")


def test_quantize_reads_iq4_files(iq, fmt, tmp_path, capsys):
    """`forgert quantize` takes an IQ4_XS / IQ4_NL file as input: every IQ4 matrix is gguf's
    dequantization of the source, re-encoded (f16 here: exact to f16 rounding)."""
    import gguf
    from forgert.cli import main
    from forgert.gguf import GGUFFile
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(iq.path(fmt)), str(out), "--type", "f16"]) == 0
    src, dst = GGUFFile(iq.path(fmt)), GGUFFile(out)
    checked = 0
    for name, info in src.tensors.items():
        if info.type_id not in (IQ4_NL, IQ4_XS):
            continue
        want = gguf.quants.dequantize(np.asarray(src.tensor_data(name)), gguf.GGMLQuantizationType(info.type_id))
        got = np.asarray(dst.tensor_data(name)).view(np.float16).reshape(want.shape)
        np.testing.assert_array_equal(got, want.astype(np.float16), err_msg=name)
        checked += 1
    assert checked > 0
