"""transformers 5's fused expert tensors (what it saves where no conversion back to per-expert
names exists, Mistral 4's checkpoints among them) -> the engine's expert stacks, zero-copy:

  mlp.experts.gate_up_proj  [E, 2 * ffn, hidden]  each expert's gate rows, then its up rows
  mlp.experts.down_proj     [E, hidden, ffn]
  (Gemma 4: experts.* directly under the layer; llama.cpp's ffn_gate_up_exps likewise: split_gate_up)

Each expert's gate (and up) rows are one contiguous byte range of the mapped file, so each stack
is an ExpertList of views, one per expert, at one stride: nothing is copied. (gpt-oss's fused
tensors are transposed and interleaved instead: gpt_oss_experts.py.)
"""
from __future__ import annotations

import re

from .errors import ModelFormatError
from .ggml_types import row_nbytes
from .weights import ExpertList, WeightTensor

FUSED_EXPERTS_RE = re.compile(
    r"^model\.layers\.(\d+)\.(?:(?:mlp|block_sparse_moe|feed_forward)\.)?experts\.(gate_up_proj|down_proj)$")


def _experts(t: WeightTensor, name: str, row0: int, rows: int) -> ExpertList:
    """Rows row0 .. row0 + rows of each expert of a 3-D tensor [E, R, cols], as views."""
    n_expert, all_rows, cols = t.shape
    per_row = row_nbytes(t.type_id, cols)
    views = [WeightTensor(name, t.data[(e * all_rows + row0) * per_row:(e * all_rows + row0 + rows) * per_row],
                          t.type_id, (rows, cols), t.source) for e in range(n_expert)]
    return ExpertList(name, views, t.source)


def split_gate_up(t: WeightTensor, gate_name: str, up_name: str) -> tuple:
    """A 3-D [E, 2 * ffn, cols] stack of each expert's gate rows then its up rows (llama.cpp's
    ffn_gate_up_exps) as its gate and up ExpertLists, zero-copy."""
    ffn = t.shape[1] // 2
    return _experts(t, gate_name, 0, ffn), _experts(t, up_name, ffn, ffn)


def fused_expert_stacks(layer: int, parts: dict, source: str) -> dict:
    """parts: one layer's {"gate_up_proj", "down_proj"} 3-D WeightTensors -> canonical name ->
    ExpertList for ffn_gate_exps, ffn_up_exps and ffn_down_exps."""
    if set(parts) != {"gate_up_proj", "down_proj"}:
        raise ModelFormatError(f"{source}: layer {layer}: mlp.experts needs gate_up_proj and down_proj, found "
                               f"{sorted(parts)}")
    gu, dn = parts["gate_up_proj"], parts["down_proj"]
    if len(gu.shape) != 3 or len(dn.shape) != 3 or gu.shape[1] % 2 or \
            tuple(dn.shape) != (gu.shape[0], gu.shape[2], gu.shape[1] // 2):
        raise ModelFormatError(f"{source}: layer {layer}: mlp.experts.gate_up_proj {list(gu.shape)} and down_proj "
                               f"{list(dn.shape)} do not fit [E, 2 * ffn, hidden] and [E, hidden, ffn]")
    ffn, p = gu.shape[1] // 2, f"blk.{layer}."
    return {p + "ffn_gate_exps.weight": _experts(gu, p + "ffn_gate_exps.weight", 0, ffn),
            p + "ffn_up_exps.weight": _experts(gu, p + "ffn_up_exps.weight", ffn, ffn),
            p + "ffn_down_exps.weight": _experts(dn, p + "ffn_down_exps.weight", 0, dn.shape[1])}
