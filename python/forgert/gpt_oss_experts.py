"""gpt-oss's Hugging Face expert tensors (transformers' GptOssExperts) -> the engine's expert stacks.

transformers keeps each layer's experts fused, and transposed against the engine's layout:
  mlp.experts.gate_up_proj        [E, hidden, 2 * ffn]  gate in the even columns, up in the odd
  mlp.experts.gate_up_proj_bias   [E, 2 * ffn]          interleaved the same way
  mlp.experts.down_proj           [E, ffn, hidden]
  mlp.experts.down_proj_bias      [E, hidden]
or, as OpenAI ships gpt-oss (quantization_config.quant_method "mxfp4"), the two matrices as MXFP4,
one row per output (so gate rows are the even rows, up rows the odd):
  mlp.experts.gate_up_proj_blocks [E, 2 * ffn, hidden / 32, 16]  uint8, 32 E2M1 codes a block:
                                  code 2i in byte i's low nibble, 2i + 1 in its high nibble
  mlp.experts.gate_up_proj_scales [E, 2 * ffn, hidden / 32]      uint8, E8M0: 2^(s - 127)
  mlp.experts.down_proj_blocks    [E, hidden, ffn / 32, 16], down_proj_scales [E, hidden, ffn / 32]
The engine takes llama.cpp's layout (convert_hf_to_gguf's GptOssModel splits the same way):
ffn_{gate,up}_exps [E, ffn, hidden], ffn_down_exps [E, hidden, ffn], their biases [E, ffn] /
[E, hidden], and MXFP4 as ggml's block (the scale byte, then code j in byte j's low nibble and code
j + 16 in its high nibble; the same E2M1 codes and scale). Neither layout is a view of the other,
so the stacks are copies, in the file's own type.
"""
from __future__ import annotations

import re

import numpy as np

from .errors import ModelFormatError
from .ggml_types import BF16, F16, F32, MXFP4
from .weights import WeightTensor

# model.layers.N.mlp.experts.<part>: the tensors this module turns into the engine's stacks
FUSED_EXPERT_RE = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.((?:gate_up|down)_proj(?:_bias|_blocks|_scales)?)$")
_STORAGE = {F32: np.float32, F16: np.uint16, BF16: np.uint16}   # element bits, copied as they are
_MXFP4_BLOCK = 32


def _stack(name, values: np.ndarray, type_id: int, shape: tuple, source: str) -> WeightTensor:
    data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    return WeightTensor(name, data, type_id, tuple(int(d) for d in shape), source)


def _ggml_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF MXFP4 blocks [..., G, 16] and scales [..., G] -> ggml block_mxfp4 bytes [..., G * 17]."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], _MXFP4_BLOCK)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    out = np.concatenate([scales[..., None], qs], axis=-1)                 # [..., G, 17]
    return out.reshape(*blocks.shape[:-2], -1)


def _float_stacks(prefix, gate_up: WeightTensor, down: WeightTensor):
    """gate_up [E, hidden, 2 * ffn], down [E, ffn, hidden], F32/F16/BF16 -> the three weight stacks."""
    if gate_up.type_id not in _STORAGE or down.type_id != gate_up.type_id:
        raise ModelFormatError(f"{gate_up.source}: gpt-oss experts must be F32, F16 or BF16 (both matrices "
                               f"alike), got {gate_up.type_name} and {down.type_name}")
    n_expert, hidden, ffn2 = gate_up.shape
    if ffn2 % 2 or tuple(down.shape) != (n_expert, ffn2 // 2, hidden):
        raise ModelFormatError(f"{gate_up.source}: {prefix}: gate_up_proj {list(gate_up.shape)} and down_proj "
                               f"{list(down.shape)} do not fit [E, hidden, 2 * ffn] and [E, ffn, hidden]")
    ffn, t, src = ffn2 // 2, gate_up.type_id, gate_up.source
    gu = gate_up.data.view(_STORAGE[t]).reshape(gate_up.shape)
    dn = down.data.view(_STORAGE[t]).reshape(down.shape)
    return {
        prefix + "ffn_gate_exps.weight": _stack(prefix + "ffn_gate_exps.weight", gu[:, :, 0::2].transpose(0, 2, 1), t,
                                                (n_expert, ffn, hidden), src),
        prefix + "ffn_up_exps.weight": _stack(prefix + "ffn_up_exps.weight", gu[:, :, 1::2].transpose(0, 2, 1), t,
                                              (n_expert, ffn, hidden), src),
        prefix + "ffn_down_exps.weight": _stack(prefix + "ffn_down_exps.weight", dn.transpose(0, 2, 1), t,
                                                (n_expert, hidden, ffn), src),
    }


def _mxfp4_stacks(prefix, parts: dict, source: str):
    """The *_blocks / *_scales pairs (uint8) -> the three MXFP4 weight stacks."""
    out = {}
    for hf, (gate, up) in (("gate_up_proj", ("ffn_gate_exps.weight", "ffn_up_exps.weight")),
                           ("down_proj", ("ffn_down_exps.weight", None))):
        blocks, scales = parts.get(hf + "_blocks"), parts.get(hf + "_scales")
        if blocks is None or scales is None:
            raise ModelFormatError(f"{source}: {prefix}: mlp.experts.{hf} needs both _blocks and _scales")
        (b, b_shape), (s, s_shape) = blocks, scales
        if len(b_shape) != 4 or b_shape[3] != 16 or tuple(s_shape) != tuple(b_shape[:3]):
            raise ModelFormatError(f"{source}: {prefix}: mlp.experts.{hf}_blocks {list(b_shape)} and _scales "
                                   f"{list(s_shape)} are not [E, rows, cols / 32, 16] and [E, rows, cols / 32]")
        packed = _ggml_mxfp4(b.reshape(b_shape), s.reshape(s_shape))     # [E, rows, G * 17]
        n_expert, rows, groups = b_shape[:3]
        cols = groups * _MXFP4_BLOCK
        if up is None:
            out[prefix + gate] = _stack(prefix + gate, packed, MXFP4, (n_expert, rows, cols), source)
            continue
        if rows % 2:
            raise ModelFormatError(f"{source}: {prefix}: gate_up_proj has an odd number of rows ({rows})")
        out[prefix + gate] = _stack(prefix + gate, packed[:, 0::2], MXFP4, (n_expert, rows // 2, cols), source)
        out[prefix + up] = _stack(prefix + up, packed[:, 1::2], MXFP4, (n_expert, rows // 2, cols), source)
    return out


def _bias_stacks(prefix, gate_up_bias: WeightTensor, down_bias: WeightTensor):
    """gate_up_proj_bias [E, 2 * ffn] (interleaved), down_proj_bias [E, hidden] -> three bias stacks."""
    t, src = gate_up_bias.type_id, gate_up_bias.source
    if t not in _STORAGE:
        raise ModelFormatError(f"{src}: {prefix}: expert biases must be F32, F16 or BF16, got {gate_up_bias.type_name}")
    n_expert, ffn2 = gate_up_bias.shape
    gub = gate_up_bias.data.view(_STORAGE[t]).reshape(n_expert, ffn2)
    return {
        prefix + "ffn_gate_exps.bias": _stack(prefix + "ffn_gate_exps.bias", gub[:, 0::2], t, (n_expert, ffn2 // 2), src),
        prefix + "ffn_up_exps.bias": _stack(prefix + "ffn_up_exps.bias", gub[:, 1::2], t, (n_expert, ffn2 // 2), src),
        prefix + "ffn_down_exps.bias": down_bias,
    }


def expert_stacks(layer: int, parts: dict, source: str) -> dict:
    """parts: one layer's mlp.experts.* tensors, part name -> WeightTensor (floats, shapes as
    stored) or (uint8 array, shape) for MXFP4 blocks / scales. -> canonical name -> WeightTensor
    for the layer's expert weight and bias stacks."""
    prefix = f"blk.{layer}."
    if "gate_up_proj_blocks" in parts or "down_proj_blocks" in parts:
        out = _mxfp4_stacks(prefix, parts, source)
    elif "gate_up_proj" in parts and "down_proj" in parts:
        out = _float_stacks(prefix, parts["gate_up_proj"], parts["down_proj"])
    else:
        raise ModelFormatError(f"{source}: layer {layer}: mlp.experts needs gate_up_proj and down_proj "
                               f"(or their MXFP4 _blocks and _scales); found {sorted(parts)}")
    if "gate_up_proj_bias" not in parts or "down_proj_bias" not in parts:
        raise ModelFormatError(f"{source}: layer {layer}: mlp.experts lacks gate_up_proj_bias or down_proj_bias")
    down_bias = parts["down_proj_bias"]
    down_bias = WeightTensor(prefix + "ffn_down_exps.bias", down_bias.data, down_bias.type_id, down_bias.shape,
                             down_bias.source)
    out.update(_bias_stacks(prefix, parts["gate_up_proj_bias"], down_bias))
    return out
