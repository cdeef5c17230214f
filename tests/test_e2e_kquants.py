"""End to end with K-quant weights: tiny random Llama and Qwen2 models (hidden 256: K-quant rows are whole
256-weight super-blocks) written in llama.cpp's Q4_K_M mix - Q4_K for most matrices, Q6_K for
attn_v, ffn_down and output (tests/kquant_writer.py) - and a Llama of hidden 192, whose
hidden-wide matrices take llama.cpp's fallbacks (Q5_0, and Q8_0 for attn_v / output) as
SmolLM2's do; both models also in the Q5_K_M mix (Q5_K in place of Q4_K, falling back to
Q5_1) - against transformers' own GGUF loader,
which dequantizes with the gguf package, in f32 with forgert's f16 KV cache modelled.
The bounds are test_e2e_tiny.py's per kernel path (measured values beside each test). The
quantization itself moves the random Llama's logits by 0.84 of max|logit| from the f32 HF
model, so the reference is the dequantized model, not the HF one. Measured values: Llama, then
Qwen2, then the Q5_0-fallback Llama (hidden 192), then in Q5_K_M the Llama and the hidden-192 Llama."""
from __future__ import annotations

import numpy as np
import pytest

import kquant_writer as kw
import model_factory as mf
from test_e2e_tiny import assert_follows_reference, bounds_for, compare_logits, decode_logits, logit_errors, token_ids

SPECS = {
    "llama_kq": mf.TinySpec(name="llama_kq", arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2,
                            ffn=512, tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=11),
    # Qwen2: q/k/v biases (they stay F32), GQA 8/2, head_dim 32.
    "qwen2_kq": mf.TinySpec(name="qwen2_kq", arch="qwen2", hidden=256, n_layers=2, n_heads=8, n_kv_heads=2,
                            ffn=768, tie_embeddings=False, rope_theta=1000000.0, rms_eps=1e-6, seed=12),
    # SmolLM2's shape problem: hidden 192 is no whole super-block, so the hidden-wide matrices
    # fall back to Q5_0 (Q8_0 for attn_v and output); ffn_down (512 wide) stays Q6_K.
    "llama_q5": mf.TinySpec(name="llama_q5", arch="llama", hidden=192, n_layers=2, n_heads=3, n_kv_heads=1,
                            ffn=512, tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=13),
}
SPEC = SPECS["llama_kq"]
# (model, mix): Q5_K_M is Q5_K where Q4_K_M has Q4_K (its fallback for partial rows: Q5_1).
CASES = [("llama_kq", "Q4_K_M"), ("qwen2_kq", "Q4_K_M"), ("llama_q5", "Q4_K_M"), ("llama_kq", "Q5_K_M"),
         ("llama_q5", "Q5_K_M")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def kq_case(request, tmp_path_factory, tiny_tokenizer):
    spec, mix = request.param
    tm = mf.make_mix_model(SPECS[spec], tmp_path_factory.mktemp("kq"), tiny_tokenizer, mix,
                           lambda tensors: kw.mix_overrides(tensors, mix))
    return tm, mix


@pytest.fixture(scope="module")
def kq(kq_case):
    return kq_case[0]


@pytest.fixture(scope="module")
def mix(kq_case):
    return kq_case[1]


@pytest.fixture(scope="module")
def fmt(mix):
    return f"gguf-{mix}"


@pytest.fixture(scope="module")
def reference(kq, mix):
    return mf.with_f16_kv(mf.gguf_reference_model(kq, mix))


def test_writer_blocks_decode_to_the_weights():
    """The test-side quantizer writes blocks that gguf's decoder reads back as the weights, to
    within 2-bit / 3-bit / 4-bit / 5-bit / 6-bit rounding (measured nmse 0.11 / 2.4e-2 / 6.1e-3 /
    1.5e-3 / 3.7e-4)."""
    import gguf
    x = (np.random.default_rng(0).standard_normal((64, 512)) * 0.1).astype(np.float32)
    for quantize, qtype, bound in ((kw.quantize_q2_k, gguf.GGMLQuantizationType.Q2_K, 0.25),
                                   (kw.quantize_q3_k, gguf.GGMLQuantizationType.Q3_K, 6e-2),
                                   (kw.quantize_q4_k, gguf.GGMLQuantizationType.Q4_K, 2e-2),
                                   (kw.quantize_q5_k, gguf.GGMLQuantizationType.Q5_K, 5e-3),
                                   (kw.quantize_q6_k, gguf.GGMLQuantizationType.Q6_K, 1.5e-3)):
        y = gguf.quants.dequantize(quantize(x), qtype).reshape(x.shape)
        assert np.sum((y - x) ** 2) / np.sum(x ** 2) < bound, qtype.name


def test_file_has_the_mix(kq, mix, fmt):
    from forgert.gguf import GGUFFile
    types = {name: t.type_id for name, t in GGUFFile(kq.path(fmt)).tensors.items()}
    # else llama.cpp's fallbacks: Q6_K -> Q8_0, Q4_K -> Q5_0, Q5_K -> Q5_1
    whole = kq.spec.hidden % 256 == 0
    base = {"Q4_K_M": 12 if whole else 6, "Q5_K_M": 13 if whole else 7}[mix]
    assert types["blk.1.ffn_down.weight"] == 14
    assert types["blk.0.attn_v.weight"] == types["output.weight"] == (14 if whole else 8)
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_gate.weight"] == types["token_embd.weight"] == base


def test_logits_match_transformers(forgert, kq, fmt, reference):
    """Prefill of 128 tokens. Every row through the f32 GEMM over dequantized K-quant panels (before
    the row classes) measured max_rel
    9.3e-5 / 5.1e-5 / 1.1e-4 / 2.4e-4 / 8.8e-5, rms_rel 3.8e-5 / 1.5e-5 / 4.8e-5 / 5.5e-5 / 2.2e-5
    (avx512-vnni; the generic set's int8 path: max_rel 1.4e-3 / 1.1e-3 / 1.1e-3 / 1.0e-3 / 7.8e-4,
    rms_rel 7.2e-4 / 6.5e-4 / 5.5e-4 / 6.0e-4 / 4.5e-4, bound 3e-3 / 2e-3), argmax 1.0. Since the
    row classes (docs/design.md "Batch invariance") the rows at positions below 15 take the decode
    kernels whatever the chunk, and every later row attends to their K/V: the whole prompt is held
    to the decode path's bounds (avx512-vnni measured max_rel 7.8e-4 / 1.0e-3 / 7.1e-4 / 6.8e-4 /
    4.7e-4, rms_rel 5.4e-4 / 5.7e-4 / 3.1e-4 / 5.2e-4 / 2.6e-4: the decode path's error, where the
    all-GEMM prefill had the figures above)."""
    ids = token_ids(kq, 128, 2)
    m = forgert.Model(str(kq.path(fmt)), backend="cpu")
    out = m.logits(ids)
    compare_logits(out, mf.reference_logits(reference, ids), **bounds_for(fmt, n_tokens=1), what=f"{fmt} prefill")


def test_decode_logits_match_transformers(forgert, kq, fmt, reference):
    """One token per forward (CPU: K-quant sub-block dots against two-part int8 activations).
    Measured max_rel 1.3e-3 / 8.9e-4 / 7.3e-4 / 8.5e-4 / 6.3e-4, rms_rel 6.2e-4 / 6.1e-4 / 4.7e-4 /
    5.8e-4 / 4.9e-4, argmax 1.0 (bound 3e-3 / 2e-3)."""
    ids = token_ids(kq, 48, 2)
    out = decode_logits(forgert.Model(str(kq.path(fmt)), backend="cpu"), ids)
    compare_logits(out, mf.reference_logits(reference, ids), **bounds_for(fmt, n_tokens=1), what=f"{fmt} decode")


def test_batched_decode_equals_each_sequence_alone(forgert, kq, fmt):
    """Continuous batching: five sequences decoding together (the x86 sets' few-token K-quant
    kernels: a tile of 4 tokens and one of 1) give each one the logits it gets decoding alone, bit for
    bit (each (row, token) runs the one-token kernel's float operations in its order). Each
    prompt is prefilled in its own pass, in the batch engine and alone, so the caches match."""
    from forgert import _core
    from forgert.loader import load_model
    model = load_model(str(kq.path(fmt)))
    engine = lambda n_slots: _core.Engine(model.config.core_dict(64), model.core_tensors, backend="cpu",  # noqa: E731
                                          n_threads=1, max_batch=64, n_slots=n_slots)
    batch, alone = engine(5), {s: engine(1) for s in range(5)}
    pos = {}
    for s, n in enumerate([9, 2, 5, 7, 3]):
        ids = np.asarray(token_ids(kq, n, 10 + s), np.int32)
        batch.forward_batch([(s, ids, 0)])
        alone[s].forward(ids, 0)
        pos[s] = n
    nxt = {s: int(t) for s, t in enumerate(token_ids(kq, 5, 20))}
    for step in range(4):
        entries = [(s, np.array([nxt[s]], np.int32), pos[s]) for s in range(5)]
        got = batch.forward_batch(entries)
        for row, (s, toks, p) in enumerate(entries):
            ref = np.asarray(alone[s].forward(toks, p)).reshape(-1)
            assert np.array_equal(got[row], ref), f"step {step} slot {s}: max |diff| {np.abs(got[row] - ref).max()}"
            nxt[s], pos[s] = int(np.argmax(ref)), p + 1


@pytest.mark.metal
def test_metal_logits_match_transformers(forgert, kq, fmt, reference, metal_reason):
    """Emulated Metal: prefill (simdgroup GEMM on half tiles), then greedy decode steps (GEMV).
    Measured max_rel 2.0e-3 / 1.6e-3 / 1.5e-3 / 1.8e-3 / 1.6e-3, rms_rel 1.2e-3 / 1.3e-3 / 1.3e-3 /
    1.3e-3 / 1.3e-3, argmax 1.0 (bound 5e-3 / 4e-3)."""
    if metal_reason is not None:
        pytest.skip(metal_reason)
    m = forgert.Model(str(kq.path(fmt)), backend="metal")
    assert m.backend == "metal"
    prompt = token_ids(kq, 24, 4)
    toks = list(m.generate(prompt, max_tokens=6, temperature=0.0, ignore_eos=True).tokens)
    ids = prompt + toks
    ref = mf.reference_logits(reference, ids)
    compare_logits(m.logits(ids), ref, **bounds_for(fmt, backend="metal"), what=f"{fmt} metal")
    tol = bounds_for(fmt, backend="metal")["max_rel"] * np.abs(ref).max()
    assert_follows_reference(ref, len(prompt), toks, tol, f"{fmt} metal")


def test_quantize_reads_k_quant_files(kq, fmt, tmp_path, capsys):
    """`forgert quantize` takes a Q4_K_M / Q5_K_M file as input: every matrix is gguf's dequantization of
    the source, re-encoded (f16 here: exact to f16 rounding), with the re-quantizing note."""
    import gguf
    from forgert.cli import main
    from forgert.gguf import GGUFFile
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(kq.path(fmt)), str(out), "--type", "f16"]) == 0
    assert "re-quantizing" in capsys.readouterr().err
    src, dst = GGUFFile(kq.path(fmt)), GGUFFile(out)
    for name, info in src.tensors.items():
        if info.type_id not in (6, 7, 12, 13, 14):
            continue
        want = gguf.quants.dequantize(np.asarray(src.tensor_data(name)), gguf.GGMLQuantizationType(info.type_id))
        got = np.asarray(dst.tensor_data(name)).view(np.float16).reshape(want.shape)
        np.testing.assert_array_equal(got, want.astype(np.float16), err_msg=name)
