"""Granite MoE's Hugging Face expert tensors -> the engine's expert stacks, zero-copy.

transformers' GraniteMoe keeps each layer's experts in two 3-D tensors:
  block_sparse_moe.input_linear.weight   [E, 2 * ffn, hidden]: expert e's gate rows, then its up rows
  block_sparse_moe.output_linear.weight  [E, hidden, ffn]
output_linear is the engine's ffn_down_exps stack as it is. The gate and up halves of input_linear
are not contiguous across experts, so each becomes a list of per-expert row ranges (ExpertList):
a row range of one expert's matrix is a contiguous slice of the mapped bytes, never a copy.
"""
from __future__ import annotations

import re

from .errors import ModelFormatError
from .ggml_types import row_nbytes
from .weights import ExpertList, WeightTensor

# The checkpoints' names, and transformers 5's in-memory ones (experts.gate_up_proj / down_proj)
GRANITE_EXPERT_RE = re.compile(
    r"^model\.layers\.(\d+)\.block_sparse_moe\.(input_linear\.weight|output_linear\.weight|experts\.gate_up_proj|"
    r"experts\.down_proj)$")
_PART = {"input_linear.weight": "input", "experts.gate_up_proj": "input", "output_linear.weight": "output",
         "experts.down_proj": "output"}


def granite_part(match) -> str:
    """"input" or "output": which of the two tensors a GRANITE_EXPERT_RE match is."""
    return _PART[match.group(2)]


def granite_stacks(layer: int, parts: dict, source: str) -> dict:
    """parts: {"input": WeightTensor [E, 2 * ffn, hidden], "output": WeightTensor [E, hidden, ffn]}
    -> {canonical name: ExpertList or 3-D WeightTensor} for ffn_{gate,up,down}_exps."""
    prefix = f"blk.{layer}."
    inp, out = parts.get("input"), parts.get("output")
    if inp is None or out is None:
        raise ModelFormatError(f"{source}: layer {layer} needs both block_sparse_moe.input_linear and output_linear")
    if len(inp.shape) != 3 or len(out.shape) != 3:
        raise ModelFormatError(f"{source}: layer {layer}'s expert tensors must be 3-D, got {list(inp.shape)} and "
                               f"{list(out.shape)}")
    n_expert, ffn2, hidden = inp.shape
    if ffn2 % 2 or tuple(out.shape) != (n_expert, hidden, ffn2 // 2):
        raise ModelFormatError(f"{source}: layer {layer}: input_linear {list(inp.shape)} and output_linear "
                               f"{list(out.shape)} do not fit [E, 2 * ffn, hidden] and [E, hidden, ffn]")
    ffn, stride = ffn2 // 2, row_nbytes(inp.type_id, hidden)
    half = ffn * stride

    def rows(e: int, first: int, name: str) -> WeightTensor:
        start = e * 2 * half + first * half
        return WeightTensor(name, inp.data[start:start + half], inp.type_id, (ffn, hidden), inp.source)

    gate, up = prefix + "ffn_gate_exps.weight", prefix + "ffn_up_exps.weight"
    return {
        gate: ExpertList(gate, [rows(e, 0, gate) for e in range(n_expert)], inp.source),
        up: ExpertList(up, [rows(e, 1, up) for e in range(n_expert)], inp.source),
        prefix + "ffn_down_exps.weight": WeightTensor(prefix + "ffn_down_exps.weight", out.data, out.type_id,
                                                      tuple(out.shape), out.source),
    }
