"""Hugging Face model directories: config.json + *.safetensors (maybe sharded) + tokenizer files.

We parse safetensors headers ourselves (8-byte little-endian header length, then JSON) and expose
each tensor zero-copy as a uint8 view of the mmap'd shard. Only F32, F16 and BF16 are accepted, and
U8 for gpt-oss's MXFP4 expert blocks and scales (gpt_oss_experts.py repacks those).
"""
from __future__ import annotations

import json
import mmap
import os
import re
import struct

import numpy as np

from . import deltanet, gemma3n, gemma4, lfm2, mamba2, nemotron_h, qwen3next
from .errors import ModelFormatError
from .ggml_types import BF16, F16, F32
from .fused_experts import FUSED_EXPERTS_RE, fused_expert_stacks
from .gpt_oss_experts import FUSED_EXPERT_RE, expert_stacks
from .granite_experts import GRANITE_EXPERT_RE, granite_part, granite_stacks
from .vision_language import LANGUAGE_MODEL_TYPES, language_config, language_tensor_name
from .weights import ExpertList, WeightTensor, first_overlap

U8 = None   # a raw-bytes tensor: no engine type of its own (gpt-oss's MXFP4 _blocks / _scales)
_DTYPES = {"F32": (F32, 4), "F16": (F16, 2), "BF16": (BF16, 2), "U8": (U8, 1)}
_MAX_HEADER = 100 * 1024 * 1024

# HF Llama/Mistral/Qwen2/Qwen3/SmolLM3/Phi-3 names -> canonical GGUF names
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "model.norm.bias": "output_norm.bias",   # StarCoder2's LayerNorm
    "lm_head.weight": "output.weight",
    **lfm2.HF_GLOBAL_NAMES,   # LFM2's final norm
    **gemma4.HF_GLOBAL_NAMES,  # Gemma 4's per-layer embeddings (refused by its config)
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",     # Qwen3: RMSNorm of each head of Q / K
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    # mixture of experts: the router, and Qwen2-MoE's shared expert with its gate
    "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "block_sparse_moe.router.layer.weight": "ffn_gate_inp.weight",   # Granite MoE's router (and transformers
    "block_sparse_moe.router.weight": "ffn_gate_inp.weight",         # 5's in-memory name for it)
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    # Phi-3's fused projections, named as llama.cpp's converter names them (fused_tensors.py splits them)
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
}
_FUSED_HF_SUFFIXES = ("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight")
# Gemma 2 / 3 name their four norms differently: post_attention_layernorm is the norm of the
# attention output (a post-norm), pre_feedforward_layernorm the one before the MLP.
_GEMMA_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",     # Gemma 3: RMSNorm of each head of Q / K
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
# gpt-oss: post_attention_layernorm is the feed-forward's input norm under llama.cpp's name; its
# experts (mlp.experts.*, fused) go to gpt_oss_experts.py.
_GPT_OSS_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "self_attn.sinks": "attn_sinks.weight",
    "mlp.router.weight": "ffn_gate_inp.weight",
    "mlp.router.bias": "ffn_gate_inp.bias",
}
# OLMo 2 and EXAONE 4 have no pre-norms: post_attention_layernorm normalises the attention
# output, post_feedforward_layernorm the MLP's (their QK-norms keep Qwen3's names).
_POST_NORM_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
# GLM-4: the attention output's norm is post_self_attn_layernorm, the MLP's post_mlp_layernorm;
# post_attention_layernorm is the MLP's input norm, as in Llama.
_GLM4_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_self_attn_layernorm.weight": "post_attention_norm.weight",
    "post_mlp_layernorm.weight": "post_ffw_norm.weight",
}
# StarCoder2: LayerNorms with biases, and a plain MLP (c_fc up, c_proj down) with biases
_STARCODER2_LAYER_NAMES = {
    **_LAYER_NAMES,
    "input_layernorm.bias": "attn_norm.bias",
    "post_attention_layernorm.bias": "ffn_norm.bias",
    "mlp.c_fc.weight": "ffn_up.weight", "mlp.c_fc.bias": "ffn_up.bias",
    "mlp.c_proj.weight": "ffn_down.weight", "mlp.c_proj.bias": "ffn_down.bias",
}
# Nemotron: LayerNorms with biases
_NEMOTRON_LAYER_NAMES = {**_LAYER_NAMES, "input_layernorm.bias": "attn_norm.bias",
                         "post_attention_layernorm.bias": "ffn_norm.bias"}
# GLM-4.5: DeepSeek V3's router with its selection bias, and shared experts (plural) without a gate
_GLM4_MOE_LAYER_NAMES = {
    **_LAYER_NAMES,
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}
# ERNIE 4.5 MoE: the same shared experts, its selection bias in moe_statics ([1, n_expert])
_ERNIE4_5_MOE_LAYER_NAMES = {**_GLM4_MOE_LAYER_NAMES,
                             "mlp.moe_statics.e_score_correction_bias": "exp_probs_b.bias"}
del _ERNIE4_5_MOE_LAYER_NAMES["mlp.gate.e_score_correction_bias"]
# DeepSeek V2 / V3: latent attention's projections and norms (mla.py expands kv_b_proj)
_DEEPSEEK_LAYER_NAMES = {
    **_GLM4_MOE_LAYER_NAMES,
    "self_attn.q_a_proj.weight": "attn_q_a.weight", "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight", "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight", "self_attn.kv_b_proj.weight": "attn_kv_b.weight",
}
# MiniMax-M2: Mixtral's names, its router's selection bias beside the experts
_MINIMAX_M2_LAYER_NAMES = {**_LAYER_NAMES, "block_sparse_moe.e_score_correction_bias": "exp_probs_b.bias"}
# Qwen3.5: Qwen3's attention, the recurrent layers' linear_attn.* (deltanet.py), Qwen2-MoE's experts
_QWEN3_5_LAYER_NAMES = {**_LAYER_NAMES, **deltanet.HF_LAYER_NAMES}
# Qwen3-Next: Qwen3.5's, with the recurrent layers' input projections fused (qwen3next.py)
_QWEN3_NEXT_LAYER_NAMES = {**_QWEN3_5_LAYER_NAMES, **qwen3next.HF_LAYER_NAMES}
_LFM2_LAYER_NAMES = {**_LAYER_NAMES, **lfm2.HF_LAYER_NAMES}
_LFM2_MOE_LAYER_NAMES = {**_LFM2_LAYER_NAMES, **lfm2.HF_MOE_LAYER_NAMES}
# Granite 4.0-H: Granite MoE's names, the Mamba2 layers' mamba.* and the shared MLP (mamba2.py)
_GRANITE_HYBRID_LAYER_NAMES = {**_LAYER_NAMES, **mamba2.HF_LAYER_NAMES}
_LAYER_NAMES_BY_MODEL_TYPE = {"granitemoehybrid": _GRANITE_HYBRID_LAYER_NAMES, "glm4": _GLM4_LAYER_NAMES, "qwen3_5_text": _QWEN3_5_LAYER_NAMES, "lfm2": _LFM2_LAYER_NAMES,
                              "lfm2_moe": _LFM2_MOE_LAYER_NAMES,
                              "qwen3_5_moe_text": _QWEN3_5_LAYER_NAMES, "qwen3_next": _QWEN3_NEXT_LAYER_NAMES, "glm4_moe": _GLM4_MOE_LAYER_NAMES,
                              "minimax_m2": _MINIMAX_M2_LAYER_NAMES,
                              "deepseek_v2": _DEEPSEEK_LAYER_NAMES, "deepseek_v3": _DEEPSEEK_LAYER_NAMES,
                              "glm4_moe_lite": _DEEPSEEK_LAYER_NAMES, "mistral4": _DEEPSEEK_LAYER_NAMES,
                              "ernie4_5_moe": _ERNIE4_5_MOE_LAYER_NAMES, "starcoder2": _STARCODER2_LAYER_NAMES,
                              "nemotron": _NEMOTRON_LAYER_NAMES, "gemma2": _GEMMA_LAYER_NAMES, "gemma3_text": _GEMMA_LAYER_NAMES,
                              gemma4.HF_TEXT_TYPE: {**_GEMMA_LAYER_NAMES, **gemma4.HF_LAYER_NAMES},
                              gemma3n.HF_TEXT_TYPE: {**_GEMMA_LAYER_NAMES, **gemma3n.HF_LAYER_NAMES},
                              "gpt_oss": _GPT_OSS_LAYER_NAMES, "olmo2": _POST_NORM_LAYER_NAMES,
                              "olmo3": _POST_NORM_LAYER_NAMES, "exaone4": _POST_NORM_LAYER_NAMES}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# EXAONE 3 / 3.5 checkpoints keep their own GPT-2-like names (transformers maps them to Llama's)
_EXAONE_GLOBAL_NAMES = {"transformer.wte.weight": "token_embd.weight", "transformer.ln_f.weight": "output_norm.weight",
                        "lm_head.weight": "output.weight"}
_EXAONE_LAYER_RE = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_EXAONE_LAYER_NAMES = {
    "ln_1.weight": "attn_norm.weight", "ln_2.weight": "ffn_norm.weight",
    "attn.attention.q_proj.weight": "attn_q.weight", "attn.attention.k_proj.weight": "attn_k.weight",
    "attn.attention.v_proj.weight": "attn_v.weight", "attn.attention.out_proj.weight": "attn_output.weight",
    "mlp.c_fc_0.weight": "ffn_gate.weight", "mlp.c_fc_1.weight": "ffn_up.weight", "mlp.c_proj.weight": "ffn_down.weight",
}
# One expert's matrix (Mixtral's w1/w3/w2, Qwen-MoE's gate/up/down_proj) -> the GGUF stack it is a part of.
_EXPERT_RE = re.compile(r"^(?:block_sparse_moe|mlp|feed_forward)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)"
                        r"\.weight$")
_EXPERT_STACKS = {"w1": "ffn_gate_exps.weight", "gate_proj": "ffn_gate_exps.weight",
                  "w3": "ffn_up_exps.weight", "up_proj": "ffn_up_exps.weight",
                  "w2": "ffn_down_exps.weight", "down_proj": "ffn_down_exps.weight"}
# Buffers some checkpoints carry that hold nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def canonical_name(hf_name: str, model_type: str | None = None):
    """Canonical name for an HF tensor name; (stack name, expert index) for one expert's matrix;
    None for ignorable buffers; KeyError if unknown."""
    if hf_name.endswith(_IGNORED_SUFFIXES):
        return None
    if model_type == "exaone":
        if hf_name in _EXAONE_GLOBAL_NAMES:
            return _EXAONE_GLOBAL_NAMES[hf_name]
        m = _EXAONE_LAYER_RE.match(hf_name)
        if m and m.group(2) in _EXAONE_LAYER_NAMES:
            return f"blk.{m.group(1)}.{_EXAONE_LAYER_NAMES[m.group(2)]}"
    if model_type in nemotron_h.HF_MODEL_TYPES and hf_name.startswith(nemotron_h.HF_MTP_PREFIX):
        return None   # Nemotron 3's multi-token-prediction block, not run (nor by transformers)
    if model_type in nemotron_h.HF_MODEL_TYPES and nemotron_h.hf_name(hf_name):   # backbone.*, per block
        return nemotron_h.hf_name(hf_name)
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    if model_type == gemma3n.HF_TEXT_TYPE and gemma3n.hf_stream_name(hf_name):   # one AltUp stream's projection
        return gemma3n.hf_stream_name(hf_name)
    layer_names = _LAYER_NAMES_BY_MODEL_TYPE.get(model_type, _LAYER_NAMES)
    m = _LAYER_RE.match(hf_name)
    if m and m.group(2) in layer_names:
        return f"blk.{m.group(1)}.{layer_names[m.group(2)]}"
    e = _EXPERT_RE.match(m.group(2)) if m else None
    if e:
        return f"blk.{m.group(1)}.{_EXPERT_STACKS[e.group(2)]}", int(e.group(1))
    raise KeyError(hf_name)


class SafetensorsFile:
    """One mmap'd .safetensors file: name -> (dtype id, shape, uint8 view)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ModelFormatError(f"{self.name}: truncated: {size} bytes, too small for a safetensors header")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.file_size = size
        try:
            self.tensors = self._parse()
        except Exception:
            self._mm.close()
            raise

    def _fail(self, problem):
        raise ModelFormatError(f"{self.name}: {problem}")

    def _parse(self):
        (header_len,) = struct.unpack_from("<Q", self._mm, 0)
        if header_len > min(self.file_size - 8, _MAX_HEADER):
            self._fail(f"header length {header_len} is larger than the file ({self.file_size} bytes)")
        try:
            header = json.loads(bytes(self._mm[8:8 + header_len]))
        except (ValueError, UnicodeDecodeError) as e:
            self._fail(f"header is not valid JSON ({e})")
        if not isinstance(header, dict):
            self._fail("header is not a JSON object")
        base = 8 + header_len
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            except (TypeError, KeyError, ValueError):
                self._fail(f"tensor '{name}' has a malformed header entry")
            if dtype not in _DTYPES:
                self._fail(f"tensor '{name}' has dtype {dtype}; forgert reads F32, F16 and BF16 safetensors "
                           f"(and U8 MXFP4 blocks of gpt-oss experts)")
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                self._fail(f"tensor '{name}' has a malformed shape {shape!r}")
            type_id, itemsize = _DTYPES[dtype]
            n = int(np.prod(shape, dtype=object)) if shape else 1
            if not (isinstance(begin, int) and isinstance(end, int)) or end - begin != n * itemsize or begin < 0:
                self._fail(f"tensor '{name}' data_offsets {[begin, end]} do not match its "
                           f"shape {shape} of {dtype}")
            if base + end > self.file_size:
                self._fail(f"truncated: tensor '{name}' needs bytes {base + begin}..{base + end} "
                           f"but the file has {self.file_size}")
            tensors[name] = (type_id, tuple(shape), base + begin, end - begin)
        overlap = first_overlap((offset, nbytes, name) for name, (_, _, offset, nbytes) in tensors.items())
        if overlap:   # (safetensors' own rule)
            self._fail(f"tensors '{overlap[0]}' and '{overlap[1]}' overlap: their data_offsets share bytes")
        return tensors

    def view(self, name) -> np.ndarray:
        _, _, offset, nbytes = self.tensors[name]
        return np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=offset)


def _mtp_layers(config) -> range:
    """The layer indices of a checkpoint's multi-token-prediction layers (num_nextn_predict_layers
    after num_hidden_layers: GLM-4.5, DeepSeek V3), empty when it has none or the keys are not
    integers (config_from_hf reports those)."""
    if not isinstance(config, dict):
        return range(0)
    n, extra = config.get("num_hidden_layers"), config.get("num_nextn_predict_layers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (n, extra)):
        return range(0)
    return range(n, n + extra)


def _load_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"{os.path.basename(os.path.dirname(path)) or path}: {what} not found") from None
    except ValueError as e:
        raise ModelFormatError(f"{os.path.basename(path)}: not valid JSON ({e})") from None


def _refuse_peft_adapter(path: str, name: str) -> None:
    """A PEFT adapter directory (adapter_config.json, no config.json) is not a model: said so, with
    what to do, rather than 'config.json not found'."""
    adapter = os.path.join(path, "adapter_config.json")
    if os.path.exists(os.path.join(path, "config.json")) or not os.path.exists(adapter):
        return
    try:
        with open(adapter, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    base = cfg.get("base_model_name_or_path")
    raise ModelFormatError(f"{name}: a PEFT adapter ({cfg.get('peft_type', 'adapter_config.json')}"
                           f"{f' for {base}' if base else ''}), not a model: forgert does not apply adapters; "
                           "merge it into its base model (PEFT's merge_and_unload, then save_pretrained) and "
                           "load the merged directory")


def _check_quantization(config, name: str) -> None:
    """A checkpoint quantized by a method forgert does not read (GPTQ, AWQ, bitsandbytes, FP8 /
    compressed-tensors, ...) is refused by its config.json's quantization_config, naming the
    method, before its packed tensors would be refused one by one. gpt-oss's MXFP4 experts are
    read (config.py checks that one)."""
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if quant is None or config.get("model_type") == "gpt_oss":
        return
    method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else repr(quant)
    raise ModelFormatError(f"{name}/config.json: the checkpoint is quantized (quantization_config quant_method "
                           f"{method!r}), which forgert does not read; it reads F32, F16 and BF16 checkpoints: "
                           f"use the model's unquantized repository, or a GGUF of it (Q4_K_M, Q8_0, ...)")


class HFModelDir:
    """A Hugging Face model directory, its tensors mapped to canonical names."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.name = os.path.basename(os.path.normpath(self.path))
        _refuse_peft_adapter(self.path, self.name)
        self.config = self._object(_load_json(os.path.join(self.path, "config.json"), "config.json"), "config.json")
        if not isinstance(self.config.get("model_type"), (str, type(None))):
            raise ModelFormatError(f"{self.name}/config.json: model_type must be a string, "
                                   f"got {self.config['model_type']!r}")
        _check_quantization(self.config, self.name)
        vision_language = isinstance(self.config, dict) and self.config.get("model_type") in LANGUAGE_MODEL_TYPES
        if vision_language:   # its language model, on text (vision_language.py)
            self.config = language_config(self.config, f"{self.name}/config.json")
        self.files = [SafetensorsFile(p) for p in self._shard_paths()]
        self.tensors = {}        # canonical name -> WeightTensor, or ExpertList for an expert stack
        self.fused = set()       # canonical names of fused tensors (Phi-3's qkv_proj, gate_up_proj)
        experts = {}             # stack name -> {expert index: WeightTensor}
        fused_experts = {}       # gpt-oss: layer -> {mlp.experts part: WeightTensor, or (uint8, shape)}
        granite_experts = {}     # Granite MoE: layer -> {"input" | "output": 3-D WeightTensor}
        fused_3d = {}            # transformers 5's fused experts: layer -> {"gate_up_proj" | "down_proj": 3-D WeightTensor}
        model_type = self.config.get("model_type") if isinstance(self.config, dict) else None
        mtp = _mtp_layers(self.config)
        for sf in self.files:
            for file_name, (type_id, shape, _, _) in sf.tensors.items():
                hf_name = language_tensor_name(file_name) if vision_language else file_name
                if hf_name is None or (model_type in deltanet.HF_TEXT_TYPES and
                                       hf_name.startswith(deltanet.HF_SKIPPED_PREFIXES)):
                    continue   # the vision tower and projector; Qwen3.5's multi-token-prediction block
                layer = _LAYER_RE.match(hf_name)
                if layer and int(layer.group(1)) in mtp:
                    continue   # a multi-token-prediction layer (GLM-4.5's), which transformers does not run either
                granite = GRANITE_EXPERT_RE.match(hf_name) if model_type in ("granitemoe", "granitemoehybrid") else None
                if granite:
                    layer_parts = granite_experts.setdefault(int(granite.group(1)), {})
                    if granite_part(granite) in layer_parts:
                        raise ModelFormatError(f"{sf.name}: tensor '{hf_name}' appears in more than one file")
                    layer_parts[granite_part(granite)] = WeightTensor(hf_name, sf.view(file_name), type_id, tuple(shape),
                                                                 sf.name)
                    continue
                fused = FUSED_EXPERT_RE.match(hf_name) if model_type == "gpt_oss" else None
                if fused:
                    layer_parts = fused_experts.setdefault(int(fused.group(1)), {})
                    if fused.group(2) in layer_parts:
                        raise ModelFormatError(f"{sf.name}: tensor '{hf_name}' appears in more than one file")
                    is_raw = fused.group(2).endswith(("_blocks", "_scales"))
                    if is_raw != (type_id is U8):
                        raise ModelFormatError(f"{sf.name}: tensor '{hf_name}' must be "
                                               f"{'U8' if is_raw else 'F32, F16 or BF16'}")
                    layer_parts[fused.group(2)] = ((sf.view(file_name), tuple(shape)) if is_raw else
                                                   WeightTensor(hf_name, sf.view(file_name), type_id, tuple(shape), sf.name))
                    continue
                fused5 = FUSED_EXPERTS_RE.match(hf_name) if model_type not in ("gpt_oss", "granitemoe", "granitemoehybrid") else None
                if fused5 and len(shape) == 3 and type_id is not U8:
                    layer_parts = fused_3d.setdefault(int(fused5.group(1)), {})
                    if fused5.group(2) in layer_parts:
                        raise ModelFormatError(f"{sf.name}: tensor '{hf_name}' appears in more than one file")
                    layer_parts[fused5.group(2)] = WeightTensor(hf_name, sf.view(file_name), type_id, tuple(shape),
                                                               sf.name)
                    continue
                if type_id is U8:
                    raise ModelFormatError(f"{sf.name}: tensor '{hf_name}' has dtype U8; forgert reads F32, F16 and "
                                           f"BF16 safetensors (and U8 MXFP4 blocks of gpt-oss experts)")
                try:
                    name = canonical_name(hf_name, model_type)
                except KeyError:
                    raise ModelFormatError(f"{sf.name}: unexpected tensor '{hf_name}' "
                                           f"(not part of a {model_type or 'Llama'} model as forgert knows it)") from None
                if name is None:
                    continue
                index = None
                if isinstance(name, tuple):   # one expert of a stack
                    name, index = name
                if (name in self.tensors if index is None else index in experts.get(name, {})):
                    raise ModelFormatError(f"{sf.name}: tensor '{hf_name}' appears in more than one file")
                if len(shape) == 1:
                    shape2 = (1, shape[0])
                elif len(shape) == 2:
                    shape2 = tuple(shape)
                elif name.endswith((".ssm_conv1d.weight", ".shortconv.conv.weight")) and len(shape) == 3 and shape[1] == 1:
                    shape2 = (shape[0], shape[2])   # Qwen3.5's and LFM2's depthwise conv1d [C, 1, K] as [C, K]
                else:
                    raise ModelFormatError(f"{sf.name}: tensor '{hf_name}' has {len(shape)} dimensions {list(shape)}")
                t = WeightTensor(name, sf.view(file_name), type_id, shape2, sf.name)
                if index is None:
                    self.tensors[name] = t
                    if hf_name.endswith(_FUSED_HF_SUFFIXES):
                        self.fused.add(name)
                else:
                    experts.setdefault(name, {})[index] = t
        for name, parts in experts.items():
            if sorted(parts) != list(range(len(parts))):
                missing = sorted(set(range(max(parts) + 1)) - set(parts))
                raise ModelFormatError(f"{self.name}: '{name}' lacks experts {missing}")
            shapes = {tuple(p.shape) for p in parts.values()}
            if len(shapes) != 1:
                raise ModelFormatError(f"{self.name}: the experts of '{name}' differ in shape {sorted(shapes)}")
            self.tensors[name] = ExpertList(name, [parts[i] for i in range(len(parts))], parts[0].source)
        for layer, parts in fused_experts.items():
            self.tensors.update(expert_stacks(layer, parts, self.name))
        for layer, parts in granite_experts.items():
            self.tensors.update(granite_stacks(layer, parts, self.name))
        for layer, parts in fused_3d.items():
            self.tensors.update(fused_expert_stacks(layer, parts, self.name))

    def _shard_paths(self):
        index = os.path.join(self.path, "model.safetensors.index.json")
        if os.path.exists(index):
            weight_map = _load_json(index, "model.safetensors.index.json").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ModelFormatError(f"{os.path.basename(index)}: no weight_map")
            names = sorted(set(weight_map.values()))
            for n in names:
                if os.path.basename(n) != n or not os.path.exists(os.path.join(self.path, n)):
                    raise ModelFormatError(f"{self.name}: shard '{n}' listed in the index is missing")
            return [os.path.join(self.path, n) for n in names]
        shards = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
        if not shards:
            raise ModelFormatError(f"{self.name}: no .safetensors files in the directory")
        return [os.path.join(self.path, f) for f in shards]

    def read_json(self, filename):
        """An optional JSON file of the directory, or None."""
        p = os.path.join(self.path, filename)
        return self._object(_load_json(p, filename), filename) if os.path.exists(p) else None

    def _object(self, value, filename) -> dict:
        if not isinstance(value, dict):
            raise ModelFormatError(f"{self.name}/{filename}: not a JSON object (it holds a {type(value).__name__})")
        return value
