"""Greedy decode without its logits: Backend::matmul_argmax on Metal runs the staged GEMV with the
argmax fused on (mul_mv_argmax_staged_<type>: each threadgroup leaves one (value, index) candidate;
argmax_partials picks each token's), so the output projection's logits are never written nor read
back. Held here against NumPy's argmax of the unfused logits (metal.matmul: the same kernel's row
sums, so engineered ties are exact ties and NaN rows are NaN), for every weight type the staged GEMV
serves (MXFP4 too), at 32- and 256-row threadgroups (several threadgroups, a partial last one), with ties
across lanes, simdgroups and threadgroups and with NaN rows, under the emulator's three thread
orders; the fallbacks (GEMM rows, FORGERT_METAL_FUSED_ARGMAX=0, the direct GEMVs) likewise.

The rule, everywhere (src/shaders/argmax.h, core/backend.h, the CPU backend; in NumPy
tests/argmax_reference.py): the first index of the largest value, but -1 for a row holding a NaN,
else -2 for one holding +inf, else -3 for one with nothing above -inf.
"""
from __future__ import annotations

import numpy as np
import pytest

from argmax_reference import INF, NAN, NONE, argmax_reference
from test_metal_ops import (BF16, F16, F32, IQ1_M, IQ4_NL, IQ4_XS, LATTICE_TYPES, Q2_K, Q3_K, Q4_0, Q4_1,  # noqa: F401
                            Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, SUPER_BLOCK_TYPES, WEIGHT_TYPES, core, cpu, metal,
                            rng, weight_bytes)

pytestmark = pytest.mark.metal

# Byte offset of each block's f16 scale d (quant_blocks.h): a NaN there makes the row's logit NaN.
SCALE_OFFSET = {Q8_0: 0, Q4_0: 0, Q4_1: 0, Q5_0: 0, Q5_1: 0, IQ4_NL: 0, IQ4_XS: 0, Q4_K: 0, Q5_K: 0,
                Q2_K: 80, Q3_K: 108, Q6_K: 208, **{t: 0 for t in LATTICE_TYPES.values() if t != IQ1_M}}
F16_NAN = np.array([np.nan], np.float16).view(np.uint8)


MXFP4 = 39  # blocks of 32: an E8M0 scale byte (every value finite: no NaN row), 16 bytes of nibbles


def mxfp4_bytes(r: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    blocks = r.integers(0, 256, (rows * cols // 32, 17)).astype(np.uint8)
    blocks[:, 0] = r.integers(118, 123, len(blocks))  # scales 2^-10 .. 2^-6: |w| < 0.1
    return blocks.reshape(-1)


def make_nan_row(w_rows: np.ndarray, dtype: int, row: int) -> None:
    """Row `row` of the raw weights (uint8 [rows, row bytes]) gives a NaN logit."""
    if dtype == F32:
        w_rows[row, 0:4] = np.array([np.nan], np.float32).view(np.uint8)
    elif dtype in (F16, BF16):  # bf16 NaN: the top half of an f32 NaN
        w_rows[row, 0:2] = F16_NAN if dtype == F16 else np.array([np.nan], np.float32).view(np.uint8)[2:4]
    elif dtype == IQ1_M:  # its d's 4 nibbles: the top nibbles of the scale words (bytes 49, 51, 53, 55)
        nan = int(F16_NAN.view(np.uint16)[0])
        for k in range(4):
            w_rows[row, 49 + 2 * k] = (w_rows[row, 49 + 2 * k] & 0x0F) | ((nan >> (4 * k)) & 0xF) << 4
    else:
        w_rows[row, SCALE_OFFSET[dtype]:SCALE_OFFSET[dtype] + 2] = F16_NAN


ROWS = 601  # 19 threadgroups of 32 rows (4 a simdgroup), or 3 of 256 (8 a simdgroup), the last partial; odd: token rows 4 mod 8 apart
TIES = [5, 6, 13, 290, 599]  # a copy of the best row: a simdgroup's neighbours, another simdgroup,
                             # another threadgroup at both sizes, the partial last threadgroup


@pytest.mark.parametrize("tg_rows", ["32", "256"])
@pytest.mark.parametrize("wtype", list(WEIGHT_TYPES) + ["mxfp4", "f32-unaligned"])
def test_fused_argmax_matches_numpy_on_unfused_logits(metal, monkeypatch, wtype, tg_rows):
    monkeypatch.setenv("FORGERT_METAL_GEMV_TG_ROWS", tg_rows)
    dtype = MXFP4 if wtype == "mxfp4" else WEIGHT_TYPES[wtype.split("-")[0]]
    cols = 256 if dtype in SUPER_BLOCK_TYPES else 131 if "unaligned" in wtype else 128
    r = rng("fused_argmax", wtype)
    w = mxfp4_bytes(r, ROWS, cols) if dtype == MXFP4 else weight_bytes(r, dtype, ROWS, cols).copy()
    w_rows = w.reshape(ROWS, -1)
    x = r.standard_normal((3, cols), dtype=np.float32)

    def check(what):
        # Each token alone takes the fused kernel; the three together the multi-token GEMV and
        # argmax_f32 (the fused kernel serves lone decode rows only): both follow the rule.
        logits = metal.matmul(w, dtype, ROWS, cols, x)
        got = np.concatenate([metal.matmul_argmax(w, dtype, ROWS, cols, x[i:i + 1]) for i in range(len(x))])
        np.testing.assert_array_equal(got, argmax_reference(logits), err_msg=what)
        np.testing.assert_array_equal(metal.matmul_argmax(w, dtype, ROWS, cols, x), got, err_msg=what)
        return logits, got

    # Ties: token 0's best row copied into TIES (rows on both sides of it, in every position a
    # candidate meets another): they are exact ties, and the lowest index wins.
    best = int(argmax_reference(metal.matmul(w, dtype, ROWS, cols, x[:1]))[0])
    w_rows[TIES] = w_rows[best]
    logits, got = check("ties")
    assert np.all(logits[0, TIES] == logits[0, best]), "the copied rows are not exact ties"
    assert got[0] == min(TIES + [best])

    # A NaN row (a NaN weight scale) in the partial last threadgroup: every token's logits hold a
    # NaN there, so every token reads -1 (MXFP4 has no NaN weights: token 2's x all NaN alone).
    if dtype != MXFP4:
        make_nan_row(w_rows, dtype, ROWS - 1)
    x[2] = np.nan
    logits, got = check("nan")
    assert np.isnan(logits[2]).all()
    assert got.tolist() == ([NAN] * 3 if dtype != MXFP4 else [got[0], got[1], NAN])


@pytest.mark.parametrize("tg_rows", ["32", "256"])
@pytest.mark.parametrize("wtype", ["f32", "q8_0"])
def test_fused_argmax_sentinel_from_every_place(metal, monkeypatch, wtype, tg_rows):
    """A lone NaN (f32: then a lone +inf) logit row in each place the fused reduction treats
    differently (a simdgroup's first and last rows, the next simdgroup, a threadgroup's last row and
    the next threadgroup's first, the partial last threadgroup): the lone decode row reads -1
    (-2), from the fused kernel and from matmul + argmax_f32 alike; the clean matrix its argmax."""
    monkeypatch.setenv("FORGERT_METAL_GEMV_TG_ROWS", tg_rows)
    dtype = WEIGHT_TYPES[wtype]
    r = rng("fused_argmax_sentinels", wtype)
    clean = weight_bytes(r, dtype, ROWS, 128).copy()
    x = np.abs(r.standard_normal((1, 128), dtype=np.float32)) + 0.1   # > 0: an inf weight gives +inf
    assert metal.matmul_argmax(clean, dtype, ROWS, 128, x)[0] == argmax_reference(metal.matmul(clean, dtype, ROWS, 128, x))[0] >= 0
    bad = [(NAN, "nan")] + ([(INF, "inf")] if dtype == F32 else [])
    for row in [0, 3, 4, 31, 32, 255, 256, 511, 512, ROWS - 1]:
        for code, kind in bad:
            w = clean.copy()
            w_rows = w.reshape(ROWS, -1)
            if kind == "nan":
                make_nan_row(w_rows, dtype, row)
            else:
                w_rows[row, 0:4] = np.array([np.inf], np.float32).view(np.uint8)
            logits = metal.matmul(w, dtype, ROWS, 128, x)
            assert argmax_reference(logits)[0] == code
            assert metal.matmul_argmax(w, dtype, ROWS, 128, x)[0] == code, f"{kind} in row {row}"


@pytest.mark.parametrize("path", ["gemm", "fusion-off", "direct"])
def test_unfused_paths_keep_the_rule(metal, monkeypatch, path):
    """Rows the fused kernel does not serve: 9 tokens (the GEMM, by row count), fusion turned off,
    the direct GEMVs; each gives the argmax of its own logits (matmul of the same rows)."""
    if path == "fusion-off":
        monkeypatch.setenv("FORGERT_METAL_FUSED_ARGMAX", "0")
    elif path == "direct":
        monkeypatch.setenv("FORGERT_METAL_GEMV", "direct")
    r = rng("fused_argmax_paths", path)
    w = weight_bytes(r, Q8_0, ROWS, 128).copy()
    w[:] = w.reshape(ROWS, -1)[[i % 37 for i in range(ROWS)]].reshape(-1)  # every row repeated: ties
    x = r.standard_normal((9 if path == "gemm" else 3, 128), dtype=np.float32)
    logits = metal.matmul(w, Q8_0, ROWS, 128, x)
    got = metal.matmul_argmax(w, Q8_0, ROWS, 128, x)
    np.testing.assert_array_equal(got, argmax_reference(logits))
    assert np.all(got < 37)


def test_fused_argmax_env_rejects_bad_values(metal, monkeypatch):
    monkeypatch.setenv("FORGERT_METAL_FUSED_ARGMAX", "yes")
    with pytest.raises(ValueError, match="FORGERT_METAL_FUSED_ARGMAX must be 0 or 1"):
        metal.matmul_argmax(np.zeros(64 * 64, np.float32).view(np.uint8), F32, 64, 64, np.ones((1, 64), np.float32))


def test_fused_argmax_one_row_matrix(metal):
    """A one-row output (no room for a candidate in its logits row) takes matmul + argmax."""
    w = np.array([[2.0] * 64], np.float32).view(np.uint8).reshape(-1)
    assert metal.matmul_argmax(w, F32, 1, 64, np.ones((2, 64), np.float32)).tolist() == [0, 0]


def nan_rule_rows(cols: int) -> np.ndarray:
    x = np.random.default_rng(cols).standard_normal((8, cols)).astype(np.float32)
    x[0, 0] = np.nan                        # NaN first: -1
    x[1, :] = np.nan                        # all NaN: -1
    x[2, :] = -np.inf                       # all -inf: -3
    x[3, :] = np.nan
    x[3, 1::2] = -np.inf                    # NaN and -inf only: -1
    x[4, :] = -np.inf
    x[4, cols - 1] = -3.0                   # the one finite value, after -infs: its index
    x[5, :] = 7.0
    x[5, 0] = np.nan                        # ties after a NaN: -1
    x[6, cols // 3:] = np.inf               # +inf: -2
    x[7, :] = 7.0                           # ties: the first
    return x


@pytest.mark.parametrize("cols", [3, 40, 2048, 9000])
def test_argmax_nan_rule(metal, cpu, cols):
    """argmax_f32 and the CPU argmax follow the rule on rows of NaN and infinities (2048: every
    thread of the 1024-wide threadgroup has values; 9000: the CPU's 8192-column blocks)."""
    x = nan_rule_rows(cols)
    want = argmax_reference(x)
    assert want.tolist() == [NAN, NAN, NONE, NAN, cols - 1, NAN, INF, 0]
    np.testing.assert_array_equal(metal.argmax(x), want)
    np.testing.assert_array_equal(cpu.argmax(x), want)


# --------------------------------------------------------------------------- whole models

GEN_CASES = ["llama_tied-Q8_0", "llama3_untied-F16", "llama_kq-Q6_K", "llama_kq-Q4_K"]


@pytest.fixture(scope="module")
def output_type_models(tiny_models, tiny_tokenizer, tmp_path_factory):
    """get(case) -> a GGUF whose output projection has the case's type: tied Q8_0 embeddings
    (SmolLM2's), an untied F16 output, and a hidden-256 Llama in the Q4_K_M mix (output Q6_K, as
    llama.cpp's mixes write it) or with a Q4_K output."""
    import gguf
    import kquant_writer as kw
    import model_factory as mf
    from test_e2e_kquants import SPECS as KQ_SPECS
    root = tmp_path_factory.mktemp("fused_argmax")
    made = {}

    def get(case):
        name, out_type = case.split("-")
        if case not in made:
            if name in mf.SPECS:
                made[case] = tiny_models(name).path(f"gguf-{out_type}")
            else:
                def overrides(tensors):  # the Q4_K_M mix (output Q6_K), or with a Q4_K output
                    over = kw.mix_overrides(tensors, "Q4_K_M")
                    if out_type == "Q4_K":
                        over["output.weight"] = (kw.quantize_q4_k(tensors["output.weight"]),
                                                 gguf.GGMLQuantizationType.Q4_K)
                    return over
                made[case] = mf.make_mix_model(KQ_SPECS[name], root / out_type, tiny_tokenizer, case,
                                               overrides).path(f"gguf-{case}")
        return made[case]

    return get


def output_type_id(path) -> int:
    from forgert.gguf import GGUFFile
    t = GGUFFile(str(path)).tensors
    return (t["output.weight"] if "output.weight" in t else t["token_embd.weight"]).type_id


@pytest.mark.parametrize("case", GEN_CASES)
def test_greedy_generation_same_with_fusion_on_and_off(forgert, output_type_models, monkeypatch, metal_reason, case):
    """Greedy decoding (the pipelined loop: step t+1 reads step t's token on the device) gives the
    same tokens with the fused argmax as with matmul + argmax_f32, token for token."""
    if metal_reason is not None:
        pytest.skip(metal_reason)
    path = output_type_models(case)
    assert output_type_id(path) == {"Q8_0": Q8_0, "F16": F16, "Q6_K": Q6_K, "Q4_K": Q4_K}[case.split("-")[1]]
    m = forgert.Model(str(path), backend="metal")
    prompt = [int(t) for t in np.random.default_rng(5).integers(3, m.vocab_size, 6)]
    fused = m.generate(prompt, max_tokens=24, temperature=0.0, ignore_eos=True).tokens
    monkeypatch.setenv("FORGERT_METAL_FUSED_ARGMAX", "0")
    m.reset()
    unfused = m.generate(prompt, max_tokens=24, temperature=0.0, ignore_eos=True).tokens
    assert len(fused) == 24 and fused == unfused


@pytest.mark.parametrize("case", ["llama_tied-Q8_0", "llama_kq-Q6_K"])
def test_batch_argmax_is_numpy_argmax_of_the_logits(forgert, output_type_models, metal_reason, case):
    """A batch of decode rows and a prompt whose last row is a prefix row (position 19: the GEMM,
    then argmax_f32) in one pass: each entry's greedy token is NumPy's argmax of the logits the same
    pass gives (forward_batch), the fused GEMV's rows and the GEMM's alike."""
    if metal_reason is not None:
        pytest.skip(metal_reason)
    from forgert import _core
    from forgert.loader import load_model
    model = load_model(str(output_type_models(case)))
    eng = _core.Engine(model.config.core_dict(64), model.core_tensors, backend="metal", max_batch=64, n_slots=3)
    r = np.random.default_rng(9)
    ids = lambda n: r.integers(3, model.config.vocab, n).astype(np.int32)  # noqa: E731
    prompts = {0: ids(20), 1: ids(3), 2: ids(5)}
    for s, p in prompts.items():
        eng.forward_batch([(s, p, 0)])
    for entries in ([(1, ids(1), 3), (2, ids(1), 5), (0, ids(1), 20)],          # three decode rows
                    [(0, ids(20), 0), (1, ids(1), 3), (2, ids(4), 5)]):         # a prefix row among them
        logits = np.asarray(eng.forward_batch(entries))
        got = np.asarray(eng.forward_batch_argmax(entries))   # the same rows again: the same K/V
        np.testing.assert_array_equal(got, argmax_reference(logits))


# --------------------------------------------------------------------------- traffic

@pytest.mark.parametrize("wtype", ["q8_0", "q6_K", "q4_K", "q4_1", "f16"])
def test_fused_gemv_reads_what_the_gemv_reads(traffic_core, traffic_ops, wtype):
    """An output projection of 20480 rows (80 threadgroups of 256 rows, as at any vocabulary of
    20480 or more) at one token: the fused kernel makes the unfused GEMV's loads, byte for byte and
    line for line, and stores 8 B per threadgroup (640 B) where the GEMV stored 4 B per row (80 KB);
    argmax_partials reads those 640 B (argmax_f32 would read the 80 KB)."""
    dtype = WEIGHT_TYPES[wtype]
    rows, cols = 20480, 256
    r = np.random.default_rng(3)
    w = weight_bytes(r, dtype, rows, cols)
    x = r.standard_normal((1, cols), dtype=np.float32)
    traffic_ops.matmul(w, dtype, rows, cols, x)
    (plain,) = traffic_core.emulator_traffic()
    traffic_ops.matmul_argmax(w, dtype, rows, cols, x)
    fused, pick = traffic_core.emulator_traffic()
    assert (plain["kernel"], fused["kernel"], pick["kernel"]) == (
        "mul_mv_staged_" + wtype, "mul_mv_argmax_staged_" + wtype, "argmax_partials")
    assert fused["threadgroups"] == 80 and fused["threads_per_threadgroup"] == 1024
    for f in ("read_needed", "read_requested", "load_lines64", "load_lines64_min", "load_lines128",
              "load_lines128_min"):
        assert fused[f] == plain[f], f
    assert plain["write_needed"] == 4 * rows and fused["write_needed"] == fused["write_requested"] == 8 * 80
    assert (pick["read_needed"], pick["write_needed"]) == (8 * 80, 4)
    assert fused["tg_wavefronts"] <= 1.02 * fused["tg_wavefronts_min"]  # measured 1.000 (as the GEMV)


def test_several_decode_rows_take_the_multi_token_gemv(traffic_core, traffic_ops):
    """Several decode rows skip the fused kernel (one token per threadgroup: each row would request
    the output matrix again) for the multi-token GEMV, then argmax_f32 over the written logits:
    the weights are requested about once for the 4 rows (measured 1.043x one row's fused GEMV; a
    kernel per row would be ~4x), the logits written and read once each."""
    rows, cols, n = 20480, 256, 4
    r = np.random.default_rng(5)
    w = weight_bytes(r, WEIGHT_TYPES["q8_0"], rows, cols)
    x = r.standard_normal((n, cols), dtype=np.float32)
    traffic_ops.matmul_argmax(w, WEIGHT_TYPES["q8_0"], rows, cols, x[:1])
    one, _ = traffic_core.emulator_traffic()
    traffic_ops.matmul_argmax(w, WEIGHT_TYPES["q8_0"], rows, cols, x)
    gemv, pick = traffic_core.emulator_traffic()
    assert (one["kernel"], gemv["kernel"], pick["kernel"]) == (
        "mul_mv_argmax_staged_q8_0", "mul_mv_tokens_q8_0", "argmax_f32")
    assert gemv["read_requested"] <= 1.1 * one["read_requested"], gemv["read_requested"] / one["read_requested"]
    assert gemv["write_needed"] == 4 * rows * n and pick["read_needed"] == 4 * rows * n


def greedy_steps(core, m, prompt):
    """The dispatches of a greedy prefill and of the decode step after it (each ends in an argmax
    kernel: argmax_f32, or argmax_partials after the fused GEMV), as bench/metal/traffic.py cuts them."""
    core.emulator_traffic()
    m.reset()
    m.generate(prompt, max_tokens=2, temperature=0.0, ignore_eos=True)
    log = core.emulator_traffic()
    ends = [i for i, d in enumerate(log) if d["kernel"].startswith("argmax")]
    assert len(ends) == 2, [d["kernel"] for d in log]
    return log[ends[0] + 1:ends[1] + 1]


def needed(step):
    return sum(d["read_needed"] + d["write_needed"] for d in step)


def test_greedy_step_no_longer_moves_the_logits(forgert, output_type_models, monkeypatch, traffic_core):
    """A greedy decode step of the tied-Q8_0 Llama (vocab 320: ten 32-row threadgroups in the output
    GEMV) with and without fusion: the same dispatches but for the last two, which no longer write
    the logits (4 B a row) nor read them back; they write and read a candidate per threadgroup
    (8 B) instead. Needed bytes drop by exactly 2 x 4 x 320 - 2 x 8 x 10 = 2400 B (hand count;
    measured the same); everything else in the step moves the same bytes."""
    core = traffic_core
    core.set_emulator_traffic(True)
    try:
        m = forgert.Model(str(output_type_models("llama_tied-Q8_0")), backend="metal")
    finally:
        core.set_emulator_traffic(False)
    prompt = [7, 11, 13, 17]
    vocab = m.vocab_size
    fused = greedy_steps(core, m, prompt)
    monkeypatch.setenv("FORGERT_METAL_FUSED_ARGMAX", "0")
    unfused = greedy_steps(core, m, prompt)

    assert [d["kernel"] for d in fused[:-2]] == [d["kernel"] for d in unfused[:-2]]
    assert [needed([d]) for d in fused[:-2]] == [needed([d]) for d in unfused[:-2]]
    gemv, pick = fused[-2:]
    gemv_off, argmax_off = unfused[-2:]
    assert (gemv["kernel"], pick["kernel"]) == ("mul_mv_argmax_staged_q8_0", "argmax_partials")
    assert (gemv_off["kernel"], argmax_off["kernel"]) == ("mul_mv_staged_q8_0", "argmax_f32")
    n_tg = gemv["threadgroups"]
    assert vocab == 320 and n_tg == 10   # gemv_tg_rows: 32-row threadgroups below 5120 rows at one token
    assert gemv["read_needed"] == gemv_off["read_needed"]              # the weights and x, once
    assert gemv["write_needed"] == 8 * n_tg and gemv_off["write_needed"] == 4 * vocab
    assert (pick["read_needed"], pick["write_needed"]) == (8 * n_tg, 4)
    assert (argmax_off["read_needed"], argmax_off["write_needed"]) == (4 * vocab, 4)
    assert needed(unfused) - needed(fused) == 2 * 4 * vocab - 2 * 8 * n_tg
