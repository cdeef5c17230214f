"""llama.cpp's quantization mixes (src/llama-quant.cpp, llama_tensor_get_type): which weight type
each matrix of a Llama-family model gets under each `forgert quantize --type`, and the file's
`general.file_type` (LLAMA_FTYPE_*), so a file has the size and quality llama.cpp's would.

A mix has a default type for most matrices and promotes the sensitive ones: the output matrix
(and tied token embeddings, which serve as it) to Q6_K, some layers' attn_v / ffn_down /
attn_output to more bits. Layers are counted as llama.cpp counts them: attn_v and ffn_down
tensors in the order they are planned, which gguf_export makes llama.cpp's (by layer number). A matrix whose rows are not whole blocks of its type
falls back as llama.cpp's tensor_type_fallback does (Q4_K -> Q5_0, Q6_K -> Q8_0, IQ4_XS ->
IQ4_NL, ...; F16 if even that does not fit).

What llama.cpp never quantizes keeps its type (tensor_allows_quantization): the MoE router
ffn_gate_inp, and any matrix of one row (ggml counts its dimensions up to the last one above 1,
so Qwen2-MoE's shared-expert gate ffn_gate_inp_shexp [1, hidden] is a vector to it).

Mixture-of-experts models: an expert stack ffn_*_exps [n_expert, rows, cols] is planned as one
matrix of `cols` columns (each expert's rows are quantized as a 2-D matrix's); its layer is read
from its name, not counted. Models of exactly 8 experts (Mixtral 8x7B's count) give attn_v and
attn_k Q8_0 and, in the lower-bit mixes, attn_output Q5_K. Expert stacks already in MXFP4
(gpt-oss) are re-quantized to the mix's type like any other, as llama.cpp does; mxfp4_moe
(LLAMA_FTYPE_MOSTLY_MXFP4_MOE) writes every expert stack MXFP4 and every other matrix Q8_0.
Falcon's rules are not here: forgert runs no Falcon models.

Checked tensor by tensor against llama.cpp's own quantizer by bench/llamacpp_quant_mixes.py
(results in bench/results/llamacpp_quant_mixes.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from .ggml_types import (F16, F32, GGML_TYPES, IQ4_NL, IQ4_XS, MXFP4, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1,
                         Q5_K, Q6_K, Q8_0)


@dataclass(frozen=True)
class Mix:
    file_type: int      # general.file_type (llama.h LLAMA_FTYPE_MOSTLY_*)
    default: int        # the ggml type of matrices no rule promotes


MIXES = {
    "f32": Mix(0, F32), "f16": Mix(1, F16), "q4_0": Mix(2, Q4_0), "q4_1": Mix(3, Q4_1), "q8_0": Mix(7, Q8_0),
    "q5_0": Mix(8, Q5_0), "q5_1": Mix(9, Q5_1), "q2_k": Mix(10, Q2_K), "q3_k_s": Mix(11, Q3_K),
    "q3_k_m": Mix(12, Q3_K), "q3_k_l": Mix(13, Q3_K), "q4_k_s": Mix(14, Q4_K), "q4_k_m": Mix(15, Q4_K),
    "q5_k_s": Mix(16, Q5_K), "q5_k_m": Mix(17, Q5_K), "q6_k": Mix(18, Q6_K), "iq4_nl": Mix(25, IQ4_NL),
    "iq4_xs": Mix(30, IQ4_XS), "mxfp4_moe": Mix(38, MXFP4),
}

# tensor_type_fallback: a type whose blocks do not divide the row -> one with 32-weight blocks
_FALLBACK = {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0, IQ4_XS: IQ4_NL}


def block_size(type_id: int) -> int:
    return GGML_TYPES[type_id][1]


def fits(type_id: int, cols: int) -> bool:
    return cols % block_size(type_id) == 0


def fallback(type_id: int, cols: int) -> int:
    """The type llama.cpp writes when rows of `cols` weights are not whole blocks of type_id."""
    if fits(type_id, cols):
        return type_id
    smaller = _FALLBACK.get(type_id, type_id)
    return smaller if fits(smaller, cols) else F16


def category(name: str) -> str:
    """llama.cpp's tensor_get_category, for the tensor names of dense models."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for part, cat in (("attn_qkv.weight", "attn_v"), ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                      ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"),
                      ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


def is_router(name: str) -> bool:
    """The MoE router, which llama.cpp never quantizes (by name; Qwen2-MoE's ffn_gate_inp_shexp
    is not it, but is one row wide: see quantizable)."""
    return name.endswith("ffn_gate_inp.weight")


def quantizable(name: str, shape) -> bool:
    """llama.cpp's tensor_allows_quantization for the tensors of the models forgert runs: weights
    (not biases, not norms, not the router) of at least two dimensions as ggml counts them (up to
    the last one above 1: [1, cols] and [1, 1, cols] are vectors). shape: (rows, cols) or
    (n_expert, rows, cols)."""
    n_dims = max((i + 1 for i, n in enumerate(reversed(tuple(shape))) if n > 1), default=1)
    return (n_dims >= 2 and name.endswith("weight") and "_norm.weight" not in name and not is_router(name)
            and "ssm_conv1d" not in name)   # Qwen3.5's convolution kernels stay F32, as llama-quantize leaves them


def layer_of(name: str) -> int:
    """N of a blk.N.* tensor name."""
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "blk" or not parts[1].isdigit():
        raise ValueError(f"cannot tell the layer of tensor '{name}'")
    return int(parts[1])


# Mixes whose attn_output llama.cpp raises to Q5_K in 8-expert models.
_MOE8_ATTN_OUTPUT_Q5_K = ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m", "iq4_nl", "iq4_xs")


def _use_more_bits(i: int, n: int) -> bool:
    """The first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class MixPlanner:
    """type_for(name, shape) for each matrix of a model, called in llama.cpp's order (by layer).

    names: every tensor name of the model (whether output.weight exists decides whether the
    token embeddings are tied). n_gqa: attention heads per KV head. large_70b: llama.cpp's
    LLM_TYPE_70B (its 80-layer Llama 2/3 and Qwen2), whose attn_v gets Q5_K over Q3_K / Q4_K.
    n_expert: experts per MoE layer (0 for dense models)."""

    def __init__(self, mix: str, names, n_layers: int, n_gqa: int, large_70b: bool = False, pure: bool = False,
                 n_expert: int = 0):
        if mix not in MIXES:
            raise ValueError(f"unknown mix {mix!r}; one of {', '.join(MIXES)}")
        self.mix, self.default = mix, MIXES[mix].default
        self.n_layers, self.n_gqa, self.large_70b, self.pure = n_layers, n_gqa, large_70b, pure
        self.n_expert = n_expert
        names = list(names)
        self.tied = "output.weight" not in names
        self.n_attn_v = sum(category(n) == "attn_v" for n in names)
        self.i_attn_v = self.i_ffn_down = 0

    def type_for(self, name: str, shape, source_type: int = F32) -> int:
        """shape: (rows, cols), or (n_expert, rows, cols) for an expert stack. source_type: the
        tensor's type in the input, which what llama.cpp does not quantize keeps."""
        if not quantizable(name, shape):
            return source_type
        cols = shape[-1]
        if self.default in (F32, F16):
            return self.default
        t = self.default if self.pure else self._rule(name, cols, is_expert_stack=len(shape) == 3 and shape[0] > 1)
        return fallback(t, cols)

    def _rule(self, name: str, cols: int, is_expert_stack: bool) -> int:
        mix, t, cat = self.mix, self.default, category(name)
        if cat == "output" or (self.tied and cat == "token_embd"):
            if mix == "mxfp4_moe" or not fits(t, cols):
                return Q8_0
            return Q6_K if t != Q8_0 else Q8_0
        if mix == "mxfp4_moe":      # experts MXFP4, every other matrix Q8_0
            return MXFP4 if is_expert_stack else Q8_0
        if cat == "attn_v":
            i, n = self.i_attn_v, self.n_attn_v
            self.i_attn_v += 1
            if mix == "q2_k":
                t = Q4_K if self.n_gqa >= 4 else Q3_K
            elif mix == "q3_k_m":
                t = Q5_K if i < 2 else Q4_K
            elif mix == "q3_k_l":
                t = Q5_K
            elif mix in ("iq4_nl", "iq4_xs") and self.n_gqa >= 4:
                t = Q5_K
            elif mix in ("q4_k_m", "q5_k_m") and _use_more_bits(i, n):
                t = Q6_K
            elif mix == "q4_k_s" and i < 4:
                t = Q5_K
            if self.large_70b and t in (Q3_K, Q4_K):
                t = Q5_K
            return Q8_0 if self.n_expert == 8 else t
        if cat == "attn_k":
            return Q8_0 if self.n_expert == 8 else t
        if cat == "ffn_down":
            # MoE files need not hold a layer's tensors together, so the layer comes from the name
            i, n = (layer_of(name) if self.n_expert > 1 else self.i_ffn_down), self.n_layers
            self.i_ffn_down += 1
            if mix == "q2_k":
                return Q3_K
            if mix == "q3_k_m":
                return Q5_K if i < n // 16 else Q4_K
            if mix == "q3_k_l":
                return Q5_K
            if mix == "q4_k_m":
                return Q6_K if _use_more_bits(i, n) else t
            if mix in ("iq4_nl", "iq4_xs"):     # no importance matrix
                return Q5_K if i < n // 8 else t
            if mix == "q5_k_m":
                return Q6_K if _use_more_bits(i, n) else t
            if mix == "q4_k_s":
                return Q5_K if i < n // 8 else t
            return t
        if cat == "attn_output":
            if self.n_expert == 8:
                return Q5_K if mix in _MOE8_ATTN_OUTPUT_Q5_K else t
            return {"q2_k": Q3_K, "q3_k_m": Q4_K, "q3_k_l": Q5_K}.get(mix, t)
        return t
