"""Compare `forgert quantize` with llama.cpp's own quantizer (llama_model_quantize, what
llama-quantize calls) mix by mix: tensor types, order and identical bytes. Not run by CI (CI has
no llama.cpp); the mix tables in tests/test_quantize_kquants.py and tests/test_quantize_moe.py and
the SmolLM2 figures in tests/test_e2e_smollm2_quantized.py were checked with it.

    cmake -S LLAMA -B LLAMA/build -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TOOLS=OFF \\
          -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
          -DLLAMA_BUILD_SERVER=OFF && cmake --build LLAMA/build --target llama
    python bench/llamacpp_quant_mixes.py LLAMA [--out results.md] [--version TEXT] [--mixes q4_k_m,...] [model.gguf ...]

Default sources (F32 GGUFs in llama.cpp's layout, written by the tests' factories): tiny 8-layer
Llamas, tied and untied; 8-layer MoEs: Mixtral with 8 experts (llama.cpp's 8-expert rules),
Qwen3-MoE with 4, Qwen2-MoE with 4 and a shared expert; a 4-layer gpt-oss (8 experts, MXFP4 expert
stacks as gpt-oss ships them, hidden 320 so the K-quants fall back on its hidden-wide rows as on
the real model's 2880); 8-layer Qwen3.5s, dense and MoE (qwen35_sources; their run on the lent
host: bench/results/llamacpp_quant_mixes_qwen35.md). Every mix of forgert's MIXES is asked of both; a side that refuses says why.
Other sources must be GGUFs (llama.cpp quantizes only those); quantized ones are re-quantized
(allow_requantize).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
if importlib.util.find_spec("forgert") is None:     # an installed forgert wins, as in tests/conftest.py
    sys.path.insert(0, str(REPO / "python"))

DRIVER = r"""
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char ** argv) {
    if (argc < 4) { fprintf(stderr, "usage: IN OUT FTYPE\n"); return 2; }
    llama_backend_init();
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = (enum llama_ftype) atoi(argv[3]);
    p.allow_requantize = true;
    return llama_model_quantize(argv[1], argv[2], &p) != 0;
}
"""


def build_driver(llama: Path, out_dir: Path) -> Path:
    src, exe = out_dir / "quantize_driver.c", out_dir / "quantize_driver"
    src.write_text(DRIVER)
    subprocess.run(["cc", "-O1", str(src), f"-I{llama}/include", f"-I{llama}/ggml/include", f"-L{llama}/build/bin",
                    "-lllama", "-lggml", "-lggml-base", "-o", str(exe)], check=True)
    return exe


def tiny_sources(out_dir: Path) -> list:
    import model_factory as mf
    from test_quantize_kquants import SPEC_8
    tied = mf.TinySpec(name="llama_8l_tied", arch="llama", hidden=256, n_layers=8, n_heads=4, n_kv_heads=2, ffn=256,
                       tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-5, seed=22)
    dense = [mf.make_tiny_model(spec, out_dir, hf_dtypes=(), gguf_types=("F32",)).path("gguf-F32")
             for spec in (SPEC_8, tied)]
    return dense + moe_sources(out_dir) + [gpt_oss_source(out_dir)] + qwen35_sources(out_dir)


def moe_sources(out_dir: Path) -> list:
    """8-layer MoEs with whole K-quant super-blocks, expert stacks in llama.cpp's 3-D layout: 8
    experts (llama.cpp's 8-expert attn_v / attn_k / attn_output rules), 4, and 4 with a shared
    expert (its 1-row gate ffn_gate_inp_shexp beside the router)."""
    import model_factory as mf
    import moe_factory as moe
    from test_quantize_moe import MODELS_8_LAYERS
    tok = mf.build_tokenizer()
    out = []
    for name, (build, kwargs, arch, meta) in MODELS_8_LAYERS.items():
        model = build(tok.get_vocab_size(), **kwargs)
        hf_dir = moe.save_hf(model, tok, out_dir / name / "hf")
        out.append(moe.write_gguf(hf_dir, out_dir / f"{name}.gguf", "F32", arch, model.config, tok, extra_meta=meta))
    return out


def qwen35_sources(out_dir: Path) -> list:
    """8-layer Qwen3.5s of hidden 256 (whole K-quant super-blocks), dense and with 8 experts and a
    shared expert, as F16 GGUFs in llama.cpp's qwen35 / qwen35moe layout (tests/qwen35_factory.py):
    attn_qkv counted as attn_v by the mixes, ssm_conv1d left F32."""
    import torch
    import model_factory as mf
    import moe_factory as moe
    import qwen35_factory as qf
    from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3_5TextConfig
    tok, out = mf.build_tokenizer(), []
    for name, experts in (("qwen35_8l_h256", False), ("qwen35moe_8l_h256", True)):
        torch.manual_seed(5)
        kw = qf.text_config_kwargs(tok.get_vocab_size(), experts, hidden=256, n_layers=8, n_heads=4, n_kv_heads=2,
                                   head_dim=64, ffn=512, k_heads=2, v_heads=4, k_dim=64, v_dim=64)
        kw["rope_parameters"]["mrope_section"] = [4, 2, 2]
        if experts:
            kw.update(moe_intermediate_size=256, shared_expert_intermediate_size=256)
        model = (Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**kw)) if experts else
                 Qwen3_5ForCausalLM(Qwen3_5TextConfig(**kw)))
        model = qf._randomise_recurrence(moe._randomise(model, 5, 0.5), 5)
        hf_dir = qf.save_hf(model, tok, out_dir / name / "hf")
        out.append(qf.write_gguf(hf_dir, out_dir / f"{name}.gguf", "F16", "qwen35moe" if experts else "qwen35",
                                 model.config, tok))
    return out


def gpt_oss_source(out_dir: Path) -> Path:
    import gptoss_factory as gf
    import model_factory as mf
    from test_quantize_moe import GPT_OSS_320
    model = gf.build_gpt_oss(mf.build_tokenizer().get_vocab_size(), **GPT_OSS_320)
    return gf.write_gguf(model, out_dir / "gptoss_8x_h320.gguf", "F32", mf.build_tokenizer(), "MXFP4")


def run_llamacpp(driver: Path, env: dict, src: Path, dst: Path, file_type: int):
    """None, or llama.cpp's reason for refusing (the last lines it logged)."""
    r = subprocess.run([str(driver), str(src), str(dst), str(file_type)], env=env, capture_output=True, text=True)
    if r.returncode == 0:
        return None
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    return " / ".join(lines[-2:]) or f"exit {r.returncode}"


def run_forgert(src: Path, dst: Path, mix: str):
    """None, or forgert's reason for refusing (its error message)."""
    import contextlib
    import io
    from forgert.cli import main as forgert_main
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = forgert_main(["quantize", str(src), str(dst), "--type", mix, "--force"])
    except SystemExit as e:
        rc = e.code
    if rc == 0:
        return None
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {rc}"


def compare(theirs: Path, ours: Path, src: Path) -> dict:
    """same: same types and order; tensors / blocks: the fractions of tensors, and of the quantized
    tensors' blocks, that are byte-identical; err_ratio: forgert's rms error over llama.cpp's, both
    against the source's values, over the quantized tensors; diffs: difference lines."""
    import gguf
    a, b = gguf.GGUFReader(theirs).tensors, gguf.GGUFReader(ours).tensors
    source = {t.name: t for t in gguf.GGUFReader(src).tensors}
    types_a = [(t.name, t.tensor_type.name) for t in a]
    types_b = [(t.name, t.tensor_type.name) for t in b]
    diffs = []
    if [n for n, _ in types_a] != [n for n, _ in types_b]:
        diffs.append(f"order or names differ: llama.cpp {[n for n, _ in types_a][:4]}..., "
                     f"forgert {[n for n, _ in types_b][:4]}...")
    tb = dict(types_b)
    diffs += [f"{n}: llama.cpp {t}, forgert {tb.get(n, 'absent')}" for n, t in types_a if tb.get(n) != t]
    if len(a) != len(b):
        return dict(same=False, tensors=0.0, blocks=None, err_ratio=None, diffs=diffs)
    same_tensors, same_blocks, n_blocks, sse = [], 0, 0, np.zeros(2)
    for x, y in zip(a, b):
        bx, by = np.asarray(x.data).view(np.uint8).reshape(-1), np.asarray(y.data).view(np.uint8).reshape(-1)
        if x.shape.tolist() != y.shape.tolist():
            diffs.append(f"{x.name}: llama.cpp shape {x.shape.tolist()}, forgert {y.shape.tolist()}")
        same_tensors.append(x.shape.tolist() == y.shape.tolist() and np.array_equal(bx, by))
        if x.tensor_type != y.tensor_type or x.tensor_type.name in ("F32", "F16", "BF16") or bx.size != by.size:
            continue
        block_bytes = gguf.GGML_QUANT_SIZES[x.tensor_type][1]
        same_blocks += int(np.all(bx.reshape(-1, block_bytes) == by.reshape(-1, block_bytes), axis=1).sum())
        n_blocks += bx.size // block_bytes
        s = source[x.name]
        ref = gguf.quants.dequantize(np.asarray(s.data), s.tensor_type).reshape(-1).astype(np.float64)
        for i, t in enumerate((x, y)):
            sse[i] += np.sum((gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(-1) - ref) ** 2)
    return dict(same=not diffs, tensors=float(np.mean(same_tensors)),
                blocks=same_blocks / n_blocks if n_blocks else None,
                err_ratio=float(np.sqrt(sse[1] / sse[0])) if sse[0] > 0 else None, diffs=diffs)


def main() -> int:
    from forgert.quant_mix import MIXES
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("llama", type=Path, help="llama.cpp source tree with build/bin/libllama.so")
    ap.add_argument("models", nargs="*", type=Path, help="GGUF sources (default: the tiny models above)")
    ap.add_argument("--out", type=Path, help="write a markdown report here")
    ap.add_argument("--version", default="", help="the llama.cpp source's version, for the report")
    ap.add_argument("--mixes", default=",".join(MIXES), help="comma-separated mixes (default: all of forgert's)")
    args = ap.parse_intermixed_args()
    rows, details = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        driver = build_driver(args.llama, tmp)
        env = {**os.environ, "LD_LIBRARY_PATH": str(args.llama / "build/bin")}
        sources = args.models or tiny_sources(tmp)
        for src in sources:
            for mix in args.mixes.split(","):
                spec = MIXES[mix]
                theirs, ours = tmp / f"llamacpp-{mix}.gguf", tmp / f"forgert-{mix}.gguf"
                for p in (theirs, ours):
                    p.unlink(missing_ok=True)
                why_not_theirs = run_llamacpp(driver, env, src, theirs, spec.file_type)
                why_not_ours = run_forgert(src, ours, mix)
                if why_not_theirs or why_not_ours:
                    verdict = ("both refuse" if why_not_theirs and why_not_ours else
                               "DIFFER: only llama.cpp refuses" if why_not_theirs else "DIFFER: only forgert refuses")
                    figures = ("-", "-", "-")
                    details.append((src.name, mix, [f"llama.cpp: {why_not_theirs or 'writes it'}",
                                                    f"forgert: {why_not_ours or 'writes it'}"]))
                else:
                    c = compare(theirs, ours, src)
                    verdict = "same types, order and shapes" if c["same"] else f"DIFFER in {len(c['diffs'])} tensors"
                    figures = (f"{c['tensors']:.0%}", "-" if c["blocks"] is None else f"{c['blocks']:.2%}",
                                  "-" if c["err_ratio"] is None else f"{c['err_ratio']:.4f}")
                    if c["diffs"]:
                        details.append((src.name, mix, c["diffs"]))
                rows.append((src.name, mix, verdict, figures))
                print(f"{src.name} {mix:9} {verdict}; byte-identical: tensors {figures[0]}, blocks "
                      f"{figures[1]}; error ratio {figures[2]}", flush=True)
    for name, mix, lines in details:
        print(f"\n{name} {mix}:\n  " + "\n  ".join(lines[:40]))
    if args.out:
        write_report(args.out, args, rows, details)
    return 1 if any("DIFFER" in r[2] for r in rows) else 0


def write_report(path: Path, args, rows, details):
    from importlib.metadata import version
    agree = sum(r[2].startswith("same") for r in rows)
    text = ["# `forgert quantize` vs llama.cpp's quantizer, tensor by tensor", "",
            f"llama.cpp: {args.version or args.llama}; libllama built with -DGGML_NATIVE=OFF and called through "
            f"llama_model_quantize (allow_requantize, no importance matrix). forgert {version('forgert')}, gguf "
            f"{version('gguf')}. Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs. Written "
            f"by `bench/llamacpp_quant_mixes.py` on {datetime.date.today()}.", "",
            f"**{agree} of {len(rows)} (source, mix) pairs: every tensor of llama.cpp's type and shape, in "
            f"llama.cpp's order.**", "",
            "Each source is quantized by both to every mix forgert offers; *same types, order and shapes* means "
            "every tensor has llama.cpp's type and shape and the files list the tensors in the same order. "
            "Byte-identical tensors: the share of all tensors (F32 ones included) whose bytes and shape are "
            "equal; blocks: the share of the quantized tensors' blocks that are byte-identical; error ratio: "
            "forgert's rms error against the source's values over llama.cpp's, over the quantized tensors. "
            "Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / MXFP4 round without a search; the K-quant and IQ4 scale "
            "searches add and divide in the order of ggml's C, so their blocks are llama.cpp's too, but for "
            "a few Q3_K blocks (its search_scale_q3 still sums pairwise): the tensors below 100% are Q3_K "
            "tensors with a block or two that differ, at the same error.", "",
            "| source | mix | verdict | tensors byte-identical | blocks byte-identical | error ratio forgert / llama.cpp |",
            "|---|---|---|---:|---:|---:|"]
    text += [f"| {s} | {m} | {v} | {b[0]} | {b[1]} | {b[2]} |" for s, m, v, b in rows]
    if details:
        text += ["", "## Refusals and differences", ""]
        for name, mix, lines in details:
            text += [f"- {name} {mix}: " + "; ".join(lines[:12]) + (" ..." if len(lines) > 12 else "")]
    path.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    sys.exit(main())
