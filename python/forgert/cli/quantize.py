"""`forgert quantize IN OUT --type q8_0|q4_0|q4_1|f16|f32`: write a GGUF of another weight type."""
from __future__ import annotations

import os
import sys

from .common import UserError, resolve_model_path


def add_parser(subparsers):
    p = subparsers.add_parser("quantize", help="write a GGUF with Q8_0/Q4_0/Q4_1/F16/F32 weights",
                              description="Convert a GGUF or an HF model directory (F32/F16/BF16 "
                                          "safetensors) into a GGUF of the chosen weight type. Norms "
                                          "and biases stay F32.")
    p.add_argument("input", help="a .gguf file, an HF model directory, or hf:ORG/NAME[/FILE]")
    p.add_argument("output", help="the .gguf file to write")
    p.add_argument("--type", "-t", required=True, choices=["q8_0", "q4_0", "q4_1", "f16", "f32"],
                   type=str.lower)
    p.add_argument("--force", "-f", action="store_true", help="overwrite OUTPUT if it exists")
    return p


def run(args) -> int:
    from ..gguf_export import export_gguf
    from .progress import ProgressBar
    source = resolve_model_path(args.input)
    if not os.path.exists(source):
        raise UserError(f"input not found: {args.input}")
    if os.path.exists(args.output) and not args.force:
        raise UserError(f"{args.output} exists; pass --force to overwrite it")
    tmp = args.output + ".partial"
    bar = None

    def progress(done, total):    # per tensor, on stderr
        nonlocal bar
        bar = bar or ProgressBar(f"quantizing to {args.type}", total)
        bar.update(done, "tensors")

    try:
        counts = export_gguf(source, tmp, args.type, progress=progress)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB): {summary}", file=sys.stderr)
    return 0
