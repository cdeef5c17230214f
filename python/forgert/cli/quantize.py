"""`forgert quantize IN OUT --type MIX`: write a GGUF in one of llama.cpp's weight mixes."""
from __future__ import annotations

import argparse
import os
import sys

from ..quant_mix import MIXES
from .common import UserError, resolve_model_path

# Types llama.cpp writes that forgert does not, and why (a clear refusal, not argparse's list).
REFUSED = {
    **dict.fromkeys(("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m"),
                    "the IQ1-IQ3 types need an importance matrix (llama-quantize --imatrix), which "
                    "forgert does not compute: it reads and runs such files but does not write them"),
    **dict.fromkeys(("tq1_0", "tq2_0"), "the ternary types are for ternary-trained models (BitNet), which "
                                        "forgert does not run"),
    "q2_k_s": "Q2_K_S needs an importance matrix",
}


def mix_name(text: str) -> str:
    name = text.lower()
    if name in REFUSED:
        raise argparse.ArgumentTypeError(f"{text} is not written by forgert: {REFUSED[name]}")
    if name not in MIXES:
        raise argparse.ArgumentTypeError(f"unknown type {text!r}; one of {', '.join(MIXES)}")
    return name


def add_parser(subparsers):
    p = subparsers.add_parser("quantize", help="write a GGUF in one of llama.cpp's weight mixes (Q4_K_M, Q8_0, ...)",
                              description="Convert a GGUF or an HF model directory (F32/F16/BF16 "
                                          "safetensors) into a GGUF of the chosen weight mix, with "
                                          "llama.cpp's rules for which tensors get more bits (output, "
                                          "some attn_v / ffn_down layers). Norms, biases and MoE routers stay F32; "
                                          "expert stacks are quantized expert by expert (mxfp4_moe: "
                                          "experts MXFP4, every other matrix Q8_0).")
    p.add_argument("input", help="a .gguf file, an HF model directory, or hf:ORG/NAME[/FILE]")
    p.add_argument("output", help="the .gguf file to write")
    p.add_argument("--type", "-t", required=True, type=mix_name, metavar="TYPE",
                   help=f"one of {', '.join(MIXES)}")
    p.add_argument("--pure", action="store_true",
                   help="every matrix in the type itself: no promoted tensors (llama-quantize --pure)")
    p.add_argument("--force", "-f", action="store_true", help="overwrite OUTPUT if it exists")
    return p


def run(args) -> int:
    from ..gguf_export import export_gguf
    from .progress import ProgressBar
    source = resolve_model_path(args.input)
    if not os.path.exists(source):
        raise UserError(f"input not found: {args.input}")
    if os.path.isdir(args.output):
        raise UserError(f"{args.output} is a directory; name the .gguf file to write")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise UserError(f"cannot write {args.output}: its directory does not exist")
    if os.path.exists(args.output) and not args.force:
        raise UserError(f"{args.output} exists; pass --force to overwrite it")
    tmp = args.output + ".partial"
    bar = None

    def progress(done, total):    # per tensor, on stderr
        nonlocal bar
        bar = bar or ProgressBar(f"quantizing to {args.type}", total)
        bar.update(done, "tensors")

    try:
        counts = export_gguf(source, tmp, args.type, progress=progress, pure=args.pure)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB): {summary}", file=sys.stderr)
    return 0
