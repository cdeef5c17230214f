"""`forgert quantize` to the K-quant, Q5 and IQ4 types and llama.cpp's mixes (quants_k.py,
quant_mix.py), against independent references: the gguf package decodes every block written,
llama.cpp's own quantizers set the round-trip error to reach, and the mix table below is written
by hand from llama.cpp's src/llama-quant.cpp."""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


def reference_tensor() -> np.ndarray:
    """float32 [256, 1024]: N(0, 1) with 64 outliers of 8-20 sigma, the tensor the RMS constants
    were measured on (bench/llamacpp_quant_rms.py)."""
    rng = np.random.default_rng(20261201)
    x = rng.standard_normal((256, 1024)).astype(np.float32)
    at = rng.choice(x.size, 64, replace=False)
    x.reshape(-1)[at] = (rng.uniform(8, 20, 64) * rng.choice([-1, 1], 64)).astype(np.float32)
    return x


# RMS of (dequantize(quantize(x)) - x) on reference_tensor() with llama.cpp's quantizers, as
# `llama-quantize` runs them without an importance matrix: bench/llamacpp_quant_rms.py built
# ggml/src/ggml-quants.c of the llama.cpp source in shared/peers (generic C, no -march=native)
# and decoded its blocks with gguf.quants.dequantize. forgert's figures (its searches add and
# divide in ggml's order; against ggml_quantize_chunk of libggml-base built from that source):
# ratio to llama.cpp's 1.0000 for every type; blocks byte-identical 100% (Q5_0, Q5_1, Q2_K,
# Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS), 99.9% (Q3_K).
LLAMACPP_RMS = {"Q5_0": 0.048013, "Q5_1": 0.039895, "Q2_K": 0.306027, "Q3_K": 0.159922, "Q4_K": 0.075455,
                "Q5_K": 0.038132, "Q6_K": 0.019483, "IQ4_NL": 0.082722, "IQ4_XS": 0.083622}
BITS_PER_WEIGHT = {"Q5_0": 5.5, "Q5_1": 6.0, "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5,
                   "Q6_K": 6.5625, "IQ4_NL": 4.5, "IQ4_XS": 4.25}


def quantize(name: str, x: np.ndarray) -> np.ndarray:
    from forgert import ggml_types
    from forgert.gguf_export import ALL_QUANTIZERS as QUANTIZERS
    return QUANTIZERS[getattr(ggml_types, name)](x).reshape(x.shape[0], -1)


def round_trip(name: str, x: np.ndarray) -> np.ndarray:
    return gguf.quants.dequantize(quantize(name, x), T[name]).reshape(x.shape)


@pytest.mark.parametrize("name", list(LLAMACPP_RMS))
def test_round_trip_error_matches_llamacpp(name):
    """Within 0.01% of llama.cpp's RMS error (measured: within 0.0012%, about the table's rounding), at the
    type's bits per weight."""
    x = reference_tensor()
    data = quantize(name, x)
    assert data.nbytes * 8 / x.size == BITS_PER_WEIGHT[name]
    rms = float(np.sqrt(np.mean((round_trip(name, x) - x) ** 2)))
    assert abs(rms / LLAMACPP_RMS[name] - 1) < 1e-4, f"{name}: rms {rms:.6f}, llama.cpp {LLAMACPP_RMS[name]:.6f}"


@pytest.mark.parametrize("name", ["Q5_0", "Q5_1"])
def test_q5_blocks_equal_the_gguf_package_reference(name):
    """Q5_0 / Q5_1 have no search: the bytes are ggml's reference quantizer's, as gguf-py writes them."""
    x = reference_tensor()[:64]
    np.testing.assert_array_equal(quantize(name, x).reshape(-1), gguf.quants.quantize(x, T[name]).reshape(-1))


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e3, 1e-20])
def test_mxfp4_blocks_equal_the_gguf_package_reference(scale):
    """MXFP4 (mxfp4_moe's expert type) has no search either: ggml's quantize_row_mxfp4_ref, as
    gguf-py writes it, at scales whose exponent bytes span small, large and subnormal values, and
    with all-zero blocks."""
    x = reference_tensor()[:64] * np.float32(scale)
    x[3] = 0.0
    x[5, 40:72] = 0.0
    np.testing.assert_array_equal(quantize("MXFP4", x).reshape(-1), gguf.quants.quantize(x, T.MXFP4).reshape(-1))


@pytest.mark.parametrize("name", list(LLAMACPP_RMS))
def test_degenerate_blocks(name):
    """All-zero, constant, one-spike and denormal-scale rows decode without NaN, zeros exactly."""
    x = np.zeros((6, 512), np.float32)
    x[1] = 0.75                       # constant
    x[2, 300] = -3.0                  # one spike in a zero row
    x[3] = 1e-30                      # far below f16's range: decodes to 0
    x[4, ::2], x[4, 1::2] = 1.0, -1.0
    x[5] = np.linspace(-2, 2, 512)
    y = round_trip(name, x)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[0], 0)
    np.testing.assert_allclose(y[3], 0, atol=1e-6)
    for row in (1, 2, 4, 5):          # within a few levels of the type's step
        err = np.abs(y[row] - x[row]).max() / np.abs(x[row]).max()
        assert err < 0.35, f"{name} row {row}: max error {err:.3f} of the row's max"


def test_k_quants_refuse_partial_super_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize("Q4_K", np.zeros((2, 576), np.float32))


# ----------------------------------------------------------------------------- mix rules

# llama.cpp's choices (src/llama-quant.cpp, llama_tensor_get_type_impl) for a dense model of 8
# layers with 4 query heads per KV head, untied, rows of whole super-blocks. Per mix: attn_v and
# ffn_down per layer, then attn_output, the other matrices (attn_q/k, ffn_gate/up),
# output.weight, token_embd.weight. Codes: "6" = Q6_K (and so on for 2..5), "x" IQ4_XS,
# "n" IQ4_NL, "40"/"41"/"50"/"51"/"80" Q4_0/Q4_1/Q5_0/Q5_1/Q8_0.
# use_more_bits(i, 8) holds for layers 0, 3, 6, 7 (the first and last eighth, every third
# between); n_layer/8 = 1 and n_layer/16 = 0.
# Checked against llama.cpp itself: bench/llamacpp_quant_mixes.py (libllama built from
# /work/shared/peers/llama.cpp-src.tar.xz, the llama.cpp llama-cpp-python 0.3.36 vendors: ggml
# 0.25.3, src/llama-quant.cpp git blob 821b4798) writes SPEC_8 below, and a tied twin, in every
# mix with llama_model_quantize, and forgert's files have the same type and shape for every
# tensor, in the same order (bench/results/llamacpp_quant_mixes.md).
MIX_TABLE_8_LAYERS = {
    #          attn_v             ffn_down           attn_output others output token_embd
    "q2_k":   ("4 4 4 4 4 4 4 4", "3 3 3 3 3 3 3 3", "3", "2", "6", "2"),
    "q3_k_s": ("3 3 3 3 3 3 3 3", "3 3 3 3 3 3 3 3", "3", "3", "6", "3"),
    "q3_k_m": ("5 5 4 4 4 4 4 4", "4 4 4 4 4 4 4 4", "4", "3", "6", "3"),
    "q3_k_l": ("5 5 5 5 5 5 5 5", "5 5 5 5 5 5 5 5", "5", "3", "6", "3"),
    "q4_k_s": ("5 5 5 5 4 4 4 4", "5 4 4 4 4 4 4 4", "4", "4", "6", "4"),
    "q4_k_m": ("6 4 4 6 4 4 6 6", "6 4 4 6 4 4 6 6", "4", "4", "6", "4"),
    "q5_k_s": ("5 5 5 5 5 5 5 5", "5 5 5 5 5 5 5 5", "5", "5", "6", "5"),
    "q5_k_m": ("6 5 5 6 5 5 6 6", "6 5 5 6 5 5 6 6", "5", "5", "6", "5"),
    "q6_k":   ("6 6 6 6 6 6 6 6", "6 6 6 6 6 6 6 6", "6", "6", "6", "6"),
    "iq4_xs": ("5 5 5 5 5 5 5 5", "5 x x x x x x x", "x", "x", "6", "x"),
    "iq4_nl": ("5 5 5 5 5 5 5 5", "5 n n n n n n n", "n", "n", "6", "n"),
    "q4_0":   ("40 40 40 40 40 40 40 40", "40 40 40 40 40 40 40 40", "40", "40", "6", "40"),
    "q4_1":   ("41 41 41 41 41 41 41 41", "41 41 41 41 41 41 41 41", "41", "41", "6", "41"),
    "q5_0":   ("50 50 50 50 50 50 50 50", "50 50 50 50 50 50 50 50", "50", "50", "6", "50"),
    "q5_1":   ("51 51 51 51 51 51 51 51", "51 51 51 51 51 51 51 51", "51", "51", "6", "51"),
    "q8_0":   ("80 80 80 80 80 80 80 80", "80 80 80 80 80 80 80 80", "80", "80", "80", "80"),
}
CODES = {"2": "Q2_K", "3": "Q3_K", "4": "Q4_K", "5": "Q5_K", "6": "Q6_K", "x": "IQ4_XS", "n": "IQ4_NL",
         "40": "Q4_0", "41": "Q4_1", "50": "Q5_0", "51": "Q5_1", "80": "Q8_0"}
LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def expected_types(mix: str, n_layers: int = 8) -> dict:
    """{tensor name: type name} from the hand-written table."""
    attn_v, ffn_down, attn_output, other, output, token_embd = MIX_TABLE_8_LAYERS[mix]
    out = {"output.weight": CODES[output], "token_embd.weight": CODES[token_embd]}
    for i in range(n_layers):
        for m in LAYER_MATRICES:
            code = {"attn_v": attn_v.split()[i], "ffn_down": ffn_down.split()[i],
                    "attn_output": attn_output}.get(m, other)
            out[f"blk.{i}.{m}.weight"] = CODES[code]
    return out


def planned_types(mix: str, names, cols: int = 256, n_gqa: int = 4, pure: bool = False) -> dict:
    from forgert.ggml_types import type_name
    from forgert.quant_mix import MixPlanner
    planner = MixPlanner(mix, names, n_layers=8, n_gqa=n_gqa, pure=pure)
    return {n: type_name(planner.type_for(n, (256, cols))) for n in names}


@pytest.mark.parametrize("mix", list(MIX_TABLE_8_LAYERS))
def test_mix_rules_match_llamacpp_table(mix):
    want = expected_types(mix)
    names = ["token_embd.weight"] + [f"blk.{i}.{m}.weight" for i in range(8) for m in LAYER_MATRICES] + ["output.weight"]
    assert planned_types(mix, names) == want


def test_mix_rules_depend_on_gqa_ties_and_row_width():
    names = ["token_embd.weight"] + [f"blk.{i}.{m}.weight" for i in range(8) for m in LAYER_MATRICES]
    # 2 query heads per KV head: Q2_K's attn_v is Q3_K, IQ4's stays IQ4 (llama.cpp needs n_gqa >= 4)
    assert planned_types("q2_k", names, n_gqa=2)["blk.3.attn_v.weight"] == "Q3_K"
    assert planned_types("iq4_xs", names, n_gqa=2)["blk.3.attn_v.weight"] == "IQ4_XS"
    # no output.weight: the tied token embeddings take output's rule
    assert planned_types("q4_k_m", names)["token_embd.weight"] == "Q6_K"
    assert planned_types("q8_0", names)["token_embd.weight"] == "Q8_0"
    # rows of 576 (SmolLM2): output's rule gives Q8_0; Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
    # IQ4_XS -> IQ4_NL, Q2_K / Q3_K -> Q4_0 (tensor_type_fallback)
    q4km = planned_types("q4_k_m", names, cols=576)
    assert (q4km["token_embd.weight"], q4km["blk.0.attn_q.weight"], q4km["blk.0.attn_v.weight"]) == ("Q8_0", "Q5_0", "Q8_0")
    assert planned_types("q5_k_s", names, cols=576)["blk.1.ffn_up.weight"] == "Q5_1"
    assert planned_types("iq4_xs", names, cols=576)["blk.1.ffn_up.weight"] == "IQ4_NL"
    assert planned_types("q3_k_s", names, cols=576)["blk.1.ffn_up.weight"] == "Q4_0"
    # rows of 48: no block fits but F16's
    assert planned_types("q4_k_m", names, cols=48)["blk.1.ffn_up.weight"] == "F16"
    # --pure: the type everywhere
    assert set(planned_types("q4_k_m", names, pure=True).values()) == {"Q4_K"}


# Mixture-of-experts models (llama_tensor_get_type with n_expert > 1): the expert stacks take the
# dense rules of their category (ffn_down_exps the ffn_down column, its layer read from the name),
# the router ffn_gate_inp is not quantized (files of real MoEs checked against llama.cpp:
# test_quantize_moe.test_types_match_llamacpp). Exactly 8 experts: attn_v and attn_k Q8_0 in every
# mix, attn_output this column (Q5_K in the listed low-bit mixes, the mix's type elsewhere).
MOE8_ATTN_OUTPUT = {"q2_k": "5", "q3_k_s": "5", "q3_k_m": "5", "q3_k_l": "3", "q4_k_s": "5", "q4_k_m": "5",
                    "q5_k_s": "5", "q5_k_m": "5", "q6_k": "6", "iq4_xs": "5", "iq4_nl": "5", "q4_0": "40",
                    "q4_1": "41", "q5_0": "50", "q5_1": "51", "q8_0": "80"}
MOE_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps",
                "ffn_down_exps")


@pytest.mark.parametrize("n_expert", [4, 8])
@pytest.mark.parametrize("mix", list(MIX_TABLE_8_LAYERS))
def test_moe_mix_rules_match_llamacpp(mix, n_expert):
    from forgert import ggml_types
    from forgert.ggml_types import F16, MXFP4, type_name
    from forgert.quant_mix import MixPlanner
    attn_v, ffn_down, attn_output, other, output, token_embd = MIX_TABLE_8_LAYERS[mix]
    # ffn_down_exps planned last layer first: its layer is the name's, not its place in the order
    names = ["token_embd.weight", "output.weight"] + [f"blk.{i}.{m}.weight" for i in range(8) for m in MOE_MATRICES
                                                      if m != "ffn_down_exps"]
    names += [f"blk.{i}.ffn_down_exps.weight" for i in reversed(range(8))]
    planner = MixPlanner(mix, names, n_layers=8, n_gqa=4, n_expert=n_expert)
    got = {n: type_name(planner.type_for(n, (n_expert, 256, 256) if "_exps." in n else (256, 256))) for n in names}
    want = {"output.weight": CODES[output], "token_embd.weight": CODES[token_embd]}
    for i in range(8):
        p = f"blk.{i}."
        want.update({p + "attn_q.weight": CODES[other], p + "ffn_gate_exps.weight": CODES[other],
                     p + "ffn_up_exps.weight": CODES[other], p + "ffn_gate_inp.weight": "F32",
                     p + "ffn_down_exps.weight": CODES[ffn_down.split()[i]]})
        if n_expert == 8:
            want.update({p + "attn_k.weight": "Q8_0", p + "attn_v.weight": "Q8_0",
                         p + "attn_output.weight": CODES[MOE8_ATTN_OUTPUT[mix]]})
        else:
            want.update({p + "attn_k.weight": CODES[other], p + "attn_v.weight": CODES[attn_v.split()[i]],
                         p + "attn_output.weight": CODES[attn_output]})
    assert got == want
    # MXFP4 expert stacks (gpt-oss) are re-quantized like any others, as llama.cpp does with
    # allow_requantize; an F16 router, and a one-row matrix (Qwen2-MoE's shared-expert gate, a
    # vector to ggml), keep their type
    assert planner.type_for("blk.0.ffn_up_exps.weight", (n_expert, 256, 256), source_type=MXFP4) == \
        getattr(ggml_types, CODES[other])
    assert planner.type_for("blk.0.ffn_gate_inp.weight", (n_expert, 256), source_type=F16) == F16
    assert planner.type_for("blk.0.ffn_gate_inp_shexp.weight", (1, 256), source_type=F16) == F16


def test_tensors_are_planned_in_llamacpp_order():
    """llama.cpp's loader sorts tensors by layer number, then name (weight_name_comparer), and
    counts layers for its mixes in that order: a source listing blk.10 before blk.2 changes
    nothing."""
    from forgert.gguf_export import llamacpp_tensor_order
    names = ["token_embd.weight", "blk.0.ffn_down.weight", "blk.1.attn_v.weight", "blk.10.attn_k.weight",
             "blk.10.attn_norm.weight", "blk.2.ffn_up.weight", "output_norm.weight", "blk.0.attn_q.weight",
             "rope_freqs.weight"]
    assert sorted(names, key=llamacpp_tensor_order) == [
        "output_norm.weight", "rope_freqs.weight", "token_embd.weight", "blk.0.attn_q.weight",
        "blk.0.ffn_down.weight", "blk.1.attn_v.weight", "blk.2.ffn_up.weight", "blk.10.attn_k.weight",
        "blk.10.attn_norm.weight"]


# ----------------------------------------------------------------------------- files written

# 8 layers so the layer rules show; rows of 256 and 512 (whole super-blocks); GQA 8/2.
SPEC_8 = mf.TinySpec(name="llama_8l", arch="llama", hidden=256, n_layers=8, n_heads=8, n_kv_heads=2, ffn=256,
                     tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=21)
FILE_TYPES = {"q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16,
              "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9,
              "q8_0": 7}
# Round-trip error bound per type: the worst nmse (sum (y - x)^2 / sum x^2) over this model's
# matrices, measured 9.1e-2 / 2.3e-2 / 5.3e-3 / 1.3e-3 / 3.2e-4 / 5.9e-3 / 6.0e-3 / 7.6e-3 / 6.3e-3 /
# 1.9e-3 / 1.5e-3 / 3.0e-5 for Q2_K / Q3_K / Q4_K / Q5_K / Q6_K / IQ4_NL / IQ4_XS / Q4_0 / Q4_1 / Q5_0 /
# Q5_1 / Q8_0; bounds about 3x those.
NMSE_BOUND = {"Q2_K": 0.25, "Q3_K": 0.07, "Q4_K": 0.016, "Q5_K": 4e-3, "Q6_K": 1e-3, "IQ4_NL": 0.018, "IQ4_XS": 0.018,
              "Q4_0": 0.023, "Q4_1": 0.019, "Q5_0": 6e-3, "Q5_1": 4.5e-3, "Q8_0": 1e-4}


@pytest.fixture(scope="module")
def llama_8l(tmp_path_factory, tiny_tokenizer):
    return mf.make_tiny_model(SPEC_8, tmp_path_factory.mktemp("mix"), tiny_tokenizer, hf_dtypes=("F32",),
                              gguf_types=())


@pytest.mark.parametrize("mix", list(FILE_TYPES))
def test_quantize_writes_the_mix(llama_8l, tmp_path, mix, capsys):
    """From the HF checkpoint: gguf's reader sees llama.cpp's type per tensor and file_type, and
    every tensor decodes (gguf.quants.dequantize) to the checkpoint's weights within its type's error."""
    from forgert.cli import main
    out = tmp_path / f"{mix}.gguf"
    assert main(["quantize", str(llama_8l.path("hf-F32")), str(out), "--type", mix]) == 0
    assert "tensors" in capsys.readouterr().err
    reader = gguf.GGUFReader(out)
    assert int(reader.fields["general.file_type"].contents()) == FILE_TYPES[mix]
    ref = mf.gguf_tensors(llama_8l.model, SPEC_8)     # GGUF names, llama Q/K permuted, f32
    want = expected_types(mix)
    for t in reader.tensors:
        x = ref[t.name]
        if x.ndim == 1:
            assert t.tensor_type == T.F32, t.name
            continue
        assert t.tensor_type.name == want[t.name], t.name
        y = gguf.quants.dequantize(t.data, t.tensor_type).reshape(x.shape)
        nmse = float(np.sum((y - x) ** 2) / np.sum(x ** 2))
        assert nmse < NMSE_BOUND[t.tensor_type.name], f"{t.name} {t.tensor_type.name}: nmse {nmse:.3g}"


def test_quantize_pure_and_refusals(llama_8l, tmp_path, capsys):
    from forgert.cli import main
    out = tmp_path / "pure.gguf"
    assert main(["quantize", str(llama_8l.path("hf-F32")), str(out), "--type", "Q4_K_M", "--pure"]) == 0
    types = {t.tensor_type.name for t in gguf.GGUFReader(out).tensors if len(t.shape) == 2}
    assert types == {"Q4_K"}
    capsys.readouterr()
    for refused, why in (("iq2_xs", "importance matrix"), ("tq1_0", "ternary"), ("q2_k_s", "importance matrix")):
        with pytest.raises(SystemExit):
            main(["quantize", str(llama_8l.path("hf-F32")), str(tmp_path / "no.gguf"), "--type", refused])
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", str(llama_8l.path("hf-F32")), str(tmp_path / "no.gguf"), "--type", "q7_k"])
    assert "unknown type" in capsys.readouterr().err
    assert not (tmp_path / "no.gguf").exists()
