"""Write a GGUF in one of llama.cpp's weight mixes (quant_mix.py: F32, F16, Q8_0, Q4_0/1, Q5_0/1, the
K-quant mixes Q2_K..Q6_K, IQ4_NL/XS) from a GGUF (of any type forgert reads, K-quants included) or
an HF directory of F32/F16/BF16 weights.

Matrices get the mix's type for them; norms, biases and other 1-D tensors stay F32. Mixture-of-experts
expert stacks [n_expert, rows, cols] are quantized expert by expert, each as a 2-D matrix, and
written as one 3-D tensor, as llama.cpp writes them. From HF directories
the llama Q/K rows are permuted for GGUF's adjacent-pair RoPE (as llama.cpp's converter does), and
the metadata and tokenizer (byte-level BPE only) are written under llama.cpp's key names.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from . import deltanet
from .config import GGUF_PERMUTED_QK_ARCHS, SMOLLM3_NO_ROPE_INTERVAL
from .gemma import GEMMA_ARCHS
from .gemma import gguf_metadata as gemma_gguf_metadata
from .chat_templates import GGUF_DEFAULT_KEY, GGUF_NAMED_KEY, GGUF_NAMES_KEY
from .errors import ModelFormatError
from .ggml_types import BF16, F16, F32, row_nbytes, type_name
from .gguf import ARRAY, BOOL, INT32, STRING
from .gguf_writer import GGUFWriter
from .loader import gguf_layer_name, load_model
from .quant_mix import MIXES, MixPlanner, quantizable
from .quants_k import QUANTIZERS as SEARCH_QUANTIZERS
from .quants import QUANTIZERS, dequantize
from .rope import base_inv_freqs, llama3_scaled, rope_freqs, yarn_mscale
from .weights import ExpertList

TARGET_TYPES = tuple(MIXES)
ALL_QUANTIZERS = {**QUANTIZERS, **SEARCH_QUANTIZERS}    # ggml type id -> float32 [rows, cols] -> bytes
_SKIP_KEYS = ("general.architecture", "general.file_type", "general.alignment")


def permute_for_adjacent_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF half-split rows -> GGUF adjacent-pair rows, per head (llama.cpp's `permute`).
    w: [n_heads * head_dim, ...] (weights) or [n_heads * head_dim] (biases)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_ROPE_FACTOR_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def _is_1d(name: str) -> bool:
    """Vectors (and gpt-oss's per-expert bias rows), which stay F32."""
    return (name.endswith(("norm.weight", ".bias", ".attn_sinks.weight")) or name in _ROPE_FACTOR_TENSORS)


def _tensor_plan(loaded):
    """(name, WeightTensor, transform or None) in a stable order. transform(x) -> x rearranged as
    llama.cpp's converter writes the tensor, x float32 [rows, cols] as the source holds it: an HF
    source's Q/K rows permuted for adjacent-pair RoPE, Qwen3.5's value heads tiled."""
    cfg = loaded.config
    permute = loaded.format == "safetensors" and cfg.arch in GGUF_PERMUTED_QK_ARCHS   # llama.cpp's NORM rope type
    for name, w in loaded.weights.items():
        if loaded.format == "safetensors":   # canonical names -> the arch's own GGUF names (Seed-OSS, GLM-4.5)
            name = gguf_layer_name(cfg.arch, name)
        transform = None
        if permute and (".attn_q." in name or ".attn_k." in name):
            heads = cfg.n_heads if ".attn_q." in name else cfg.n_kv_heads
            transform = lambda x, heads=heads: permute_for_adjacent_rope(x.reshape(-1) if x.shape[0] == 1 else x,
                                                                         heads).reshape(x.shape)
        elif loaded.format == "safetensors" and cfg.has_layer_kind("gated_delta_net"):
            transform = deltanet.gguf_value_head_order(cfg, name)
        yield name, w, transform


def _copy_gguf_metadata(writer, g):
    for key, value in g.metadata.items():
        if key in _SKIP_KEYS:
            continue
        vtype = g.metadata_types[key]
        if isinstance(vtype, tuple) and vtype[1] == ARRAY:
            raise ModelFormatError(f"{g.name}: nested array metadata '{key}' cannot be copied")
        writer.add(key, vtype, value)


def _pre_tokenizer_name(tok_json: dict, source: str) -> str:
    from .tokenizer_build import PRE_TOKENIZER_SPLITS
    text = json.dumps(tok_json.get("pre_tokenizer"))
    if '"Digits"' in text and '"individual_digits": true' in text:
        return "smollm"
    for name in ("llama-bpe", "qwen2", "qwen35"):
        if json.dumps(PRE_TOKENIZER_SPLITS[name][0])[1:-1] in text:
            return name
    pre = tok_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "default"
    raise ModelFormatError(f"{source}: cannot tell which GGUF pre-tokenizer matches tokenizer.json's "
                           f"pre_tokenizer; quantize from a GGUF of this model instead")


def _write_hf_tokenizer(writer, loaded):
    tok = loaded.tokenizer
    tj = json.loads(tok.hf.to_str())
    model = tj.get("model", {})
    if model.get("type") != "BPE" or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise ModelFormatError(f"{loaded.name}: only byte-level BPE tokenizers (GPT-2 style) can be "
                               f"written to GGUF; quantize from a GGUF of this model instead")
    n = tok.hf.get_vocab_size(with_added_tokens=True)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n      # UNUSED until filled
    for piece, i in tok.hf.get_vocab(with_added_tokens=True).items():
        if 0 <= i < n:
            tokens[i], types[i] = piece, 1
    for i, added in tok.hf.get_added_tokens_decoder().items():
        if 0 <= i < n:
            types[i] = 3 if added.special else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_str("tokenizer.ggml.model", "gpt2")
    writer.add_str("tokenizer.ggml.pre", _pre_tokenizer_name(tj, loaded.name))
    writer.add("tokenizer.ggml.tokens", (ARRAY, STRING), tokens)
    writer.add("tokenizer.ggml.token_type", (ARRAY, INT32), types)
    writer.add("tokenizer.ggml.merges", (ARRAY, STRING), merges)
    if tok.bos_id is not None:
        writer.add_u32("tokenizer.ggml.bos_token_id", tok.bos_id)
    if tok.eos_id is not None:
        writer.add_u32("tokenizer.ggml.eos_token_id", tok.eos_id)
    writer.add("tokenizer.ggml.add_bos_token", BOOL, bool(tok.add_bos))
    if loaded.chat_template:
        writer.add_str(GGUF_DEFAULT_KEY, loaded.chat_template)
    if loaded.named_chat_templates:   # as llama.cpp's converter writes them (chat_templates.py)
        writer.add(GGUF_NAMES_KEY, (ARRAY, STRING), sorted(loaded.named_chat_templates))
        for name, text in sorted(loaded.named_chat_templates.items()):
            writer.add_str(GGUF_NAMED_KEY.format(name=name), text)


def _write_hf_expert_metadata(writer, c):
    """convert_hf_to_gguf's MoE keys. Mixtral is arch llama, whose experts are as wide as
    feed_forward_length and always renormalised; the Qwen MoEs say both."""
    arch = c.arch
    writer.add_u32(f"{arch}.expert_count", c.n_expert)
    writer.add_u32(f"{arch}.expert_used_count", c.n_expert_used)
    if arch != "llama" or c.expert_ffn_dim != c.ffn_dim:
        writer.add_u32(f"{arch}.expert_feed_forward_length", c.expert_ffn_dim)
    if arch in ("glm4moe", "deepseek2"):   # DeepSeek's router keys, as Glm4MoeModel / DeepseekV2Model write them
        writer.add_u32(f"{arch}.expert_shared_count", c.shared_ffn_dim // c.expert_ffn_dim)
        writer.add_u32(f"{arch}.leading_dense_block_count", c.n_dense_lead)
        writer.add_f32(f"{arch}.expert_weights_scale", c.expert_weights_scale)
        writer.add_u32(f"{arch}.expert_gating_func", 2 if c.router == "sigmoid" else 1)
        writer.add_u32(f"{arch}.nextn_predict_layers", 0)   # the MTP layers are not read, so not written
        if c.expert_groups > 1:
            writer.add_u32(f"{arch}.expert_group_count", c.expert_groups)
            writer.add_u32(f"{arch}.expert_group_used_count", c.expert_groups_used)
    elif c.shared_ffn_dim:
        writer.add_u32(f"{arch}.expert_shared_feed_forward_length", c.shared_ffn_dim)
    if arch == "minimax-m2":   # MiniMaxM2Model's: the sigmoid router
        writer.add_u32(f"{arch}.expert_gating_func", 2)
    if arch == "ernie4_5-moe":   # Ernie4_5MoeModel's: every layer from the leading dense ones is MoE
        writer.add_u32(f"{arch}.interleave_moe_layer_step", 1)
        writer.add_u32(f"{arch}.leading_dense_block_count", c.n_dense_lead)
    if arch != "llama":
        writer.add(f"{arch}.expert_weights_norm", BOOL, bool(c.expert_norm_topk))
    elif not c.expert_norm_topk:
        raise ModelFormatError(f"{arch}: experts without renormalisation have no GGUF form for architecture llama")


def _write_local_layers(writer, arch: str, window: int, windows: list) -> None:
    """A hybrid model's window and which layers are local (one bool per layer), as llama.cpp's
    converters write them."""
    writer.add_u32(f"{arch}.attention.sliding_window", window)
    writer.add(f"{arch}.attention.sliding_window_pattern", (ARRAY, BOOL), [w > 0 for w in windows])


def _write_hf_metadata(writer, loaded):
    """llama.cpp's keys for an HF config; returns extra F32 tensors {name: values} (Llama 3's
    rope_freqs.weight)."""
    c, arch = loaded.config, loaded.config.arch
    writer.add_str("general.name", loaded.name)
    for key, value in (("context_length", c.context_length), ("embedding_length", c.dim),
                       ("block_count", c.n_layers), ("feed_forward_length", c.ffn_dim),
                       ("attention.head_count", c.n_heads), ("attention.head_count_kv", c.n_kv_heads)):
        writer.add_u32(f"{arch}.{key}", value)
    writer.add_f32(f"{arch}.rope.freq_base", c.rope_theta)
    eps_key = "layer_norm_epsilon" if c.norm_kind == "layer" else "layer_norm_rms_epsilon"
    writer.add_f32(f"{arch}.attention.{eps_key}", c.rms_eps)
    writer.add_u32(f"{arch}.rope.dimension_count", c.rope_dim or c.head_dim)
    if arch == "smollm3":   # GGUF smollm3 has no key for its NoPE layers: llama.cpp fixes every fourth
        fixed = [-1 if (i + 1) % SMOLLM3_NO_ROPE_INTERVAL == 0 else 0 for i in range(c.n_layers)]
        if c.layer_rope != fixed:
            raise ModelFormatError(f"{loaded.name}: NoPE layers {c.layer_rope} differ from every fourth layer, the "
                                   f"only pattern a GGUF of architecture 'smollm3' can hold")
    if c.mla_kv_lora:   # latent attention, in the layout with attn_kv_b whole (llama.cpp reads both)
        writer.add_u32(f"{arch}.attention.key_length", c.head_dim)
        writer.add_u32(f"{arch}.attention.value_length", c.mla_v_head_dim)
        writer.add_u32(f"{arch}.attention.kv_lora_rank", c.mla_kv_lora)
        if c.mla_q_lora:
            writer.add_u32(f"{arch}.attention.q_lora_rank", c.mla_q_lora)
    elif c.head_dim != c.dim // c.n_heads:
        writer.add_u32(f"{arch}.attention.key_length", c.head_dim)
        writer.add_u32(f"{arch}.attention.value_length", c.head_dim)
    writer.add_u32(f"{arch}.vocab_size", c.vocab)
    if arch in ("command-r", "cohere2"):   # Cohere's converter: the factor the logits are multiplied by
        writer.add_f32(f"{arch}.logit_scale", 1.0 / c.logit_scale)
    if arch in ("granite", "granitemoe"):   # its converter's four multipliers
        writer.add_f32(f"{arch}.logit_scale", c.logit_scale)
        writer.add_f32(f"{arch}.residual_scale", c.residual_scale)
        writer.add_f32(f"{arch}.embedding_scale", c.embed_scale)
        writer.add_f32(f"{arch}.attention.scale", c.attn_scale or c.head_dim ** -0.5)
    if c.attn_temperature is not None:   # mistral3's query temperature (its floor: YaRN's original context)
        writer.add_f32(f"{arch}.attention.temperature_scale", c.attn_temperature[0])
        if arch == "deepseek2":   # llama.cpp's deepseek2 reads the floor from here, not YaRN's context
            writer.add_u32(f"{arch}.attention.temperature_length", c.attn_temperature[1])
    if c.n_expert:
        _write_hf_expert_metadata(writer, c)
    if c.has_layer_kind("gated_delta_net"):   # Qwen3.5: Qwen3_5TextModel's keys (its norms written as 1 + w: the loader's shift)
        for key, value in deltanet.gguf_metadata(c).items():
            if isinstance(value, list):
                writer.add(f"{arch}.{key}", (ARRAY, INT32), value)
            else:
                writer.add_u32(f"{arch}.{key}", value)
    windows = c.windows()
    if arch in GEMMA_ARCHS:   # llama.cpp's gemma keys; its converter writes the norms as 1 + w (the loader's shift)
        for key, value in gemma_gguf_metadata(c, loaded.name).items():
            if isinstance(value, list):
                writer.add(f"{arch}.{key}", (ARRAY, BOOL), value)
            elif isinstance(value, int):
                writer.add_u32(f"{arch}.{key}", value)
            else:
                writer.add_f32(f"{arch}.{key}", value)
    elif arch in ("exaone4", "cohere2"):
        if c.layer_rope is not None:   # hybrid
            _write_local_layers(writer, arch, c.sliding_window, windows)
    elif arch == "olmo2" and any(windows):   # OLMo 3: llama.cpp's olmo2 gives local layers unscaled RoPE
        local_freqs = rope_freqs(c.rope_theta, c.rotated_dims, None, c.context_length)
        if not np.allclose(c.rope_freqs[0], local_freqs, rtol=1e-6, atol=0):
            raise ModelFormatError(f"{loaded.name}: local layers whose RoPE base differs from the global "
                                   f"layers' have no GGUF form here")
        _write_local_layers(writer, arch, max(windows), windows)
    elif any(windows):
        # GGUF's llama/qwen2 key windows every layer; Qwen2's max_window_layers and interleaved
        # local/global layers have no GGUF form there.
        if len(set(windows)) > 1:
            raise ModelFormatError(f"{loaded.name}: per-layer attention windows {windows} cannot be written to "
                                   f"a GGUF of architecture '{arch}' (its sliding_window key windows every layer)")
        writer.add_u32(f"{arch}.attention.sliding_window", windows[0])
    elif arch == "phi3":
        writer.add_u32(f"{arch}.attention.sliding_window", 0)   # phi3's converter writes 0 for none
    extra = {}
    kind = (c.rope_scaling or {}).get("type")
    if kind == "linear":
        writer.add_str(f"{arch}.rope.scaling.type", "linear")
        writer.add_f32(f"{arch}.rope.scaling.factor", c.rope_scaling["factor"])
    elif kind == "llama3":
        # llama.cpp stores Llama 3 scaling as per-frequency divisors in rope_freqs.weight
        base = base_inv_freqs(c.rope_theta, c.head_dim)
        r = c.rope_scaling
        scaled = llama3_scaled(base, r["factor"], r["low_freq_factor"], r["high_freq_factor"],
                               r["original_max_position_embeddings"])
        extra["rope_freqs.weight"] = (base / scaled).astype(np.float32)
    elif kind == "yarn":
        # The keys llama.cpp reads; its attention factor is 0.1 ln(factor) + 1 times
        # rope.scaling.attn_factor, so a config's own attention_factor is written as that ratio.
        r = c.rope_scaling
        if not r.get("truncate", True):
            raise ModelFormatError(f"{loaded.name}: YaRN with truncate=false has no GGUF form (llama.cpp "
                                   f"always truncates the correction range)")
        writer.add_str(f"{arch}.rope.scaling.type", "yarn")
        writer.add_f32(f"{arch}.rope.scaling.factor", r["factor"])
        writer.add_u32(f"{arch}.rope.scaling.original_context_length", r["original_max_position_embeddings"])
        writer.add_f32(f"{arch}.rope.scaling.yarn_beta_fast", r["beta_fast"])
        writer.add_f32(f"{arch}.rope.scaling.yarn_beta_slow", r["beta_slow"])
        ratio = c.rope_attn_factor / yarn_mscale(r["factor"])
        if arch == "mistral3" and r["factor"] > 1:
            # its converter's form: mscale_all_dim as yarn_log_multiplier, the attention factor being
            # yarn_mscale(factor) / yarn_mscale(factor, mscale_all_dim) (1 for Ministral 3's 1 and 1)
            writer.add_f32(f"{arch}.rope.scaling.yarn_log_multiplier",
                           (yarn_mscale(r["factor"]) / c.rope_attn_factor - 1.0) / (0.1 * math.log(r["factor"])))
        elif arch == "deepseek2":   # its converter's form: 0.1 mscale_all_dim (cos and sin keep a factor of 1)
            if abs(c.rope_attn_factor - 1.0) > 1e-6 or not r.get("mscale_all_dim"):
                raise ModelFormatError(f"{loaded.name}: DeepSeek YaRN whose mscale differs from mscale_all_dim has "
                                       f"no GGUF form (llama.cpp takes them equal)")
            writer.add_f32(f"{arch}.rope.scaling.yarn_log_multiplier", 0.1 * r["mscale_all_dim"])
        elif abs(ratio - 1.0) > 1e-7:
            writer.add_f32(f"{arch}.rope.scaling.attn_factor", ratio)
    elif kind == "longrope":
        # llama.cpp's phi3 form: both divisor sets as tensors, the cos/sin scale and original context as keys
        r = c.rope_scaling
        writer.add_u32(f"{arch}.rope.scaling.original_context_length", r["original_max_position_embeddings"])
        writer.add_f32(f"{arch}.rope.scaling.attn_factor", r["attn_factor"])
        extra["rope_factors_long.weight"] = np.asarray(r["long_factor"], dtype=np.float32)
        extra["rope_factors_short.weight"] = np.asarray(r["short_factor"], dtype=np.float32)
    elif kind is not None:
        raise ModelFormatError(f"{loaded.name}: RoPE scaling '{kind}' has no GGUF form (llama.cpp has no "
                               f"{kind} scaling); run the HF directory itself")
    _write_hf_tokenizer(writer, loaded)
    return extra


def _expert_matrices(w):
    """An expert stack (a 3-D GGUF tensor or HF's per-expert ExpertList) -> [(bytes, rows, cols)]
    per expert, in expert order."""
    if isinstance(w, ExpertList):
        return [(e.data, e.shape[0], e.shape[1]) for e in w.experts]
    n_expert, rows, cols = w.shape
    size = row_nbytes(w.type_id, cols) * rows     # one expert's bytes
    data = np.asarray(w.data).reshape(-1)
    return [(data[e * size:(e + 1) * size], rows, cols) for e in range(n_expert)]


def _tensor_bytes(name, w, transform, want, warn_requantize) -> np.ndarray:
    """The bytes of weight `w` in type `want` (copied, or dequantized and re-encoded)."""
    if len(w.shape) == 3:   # expert by expert: ggml quantizes whole rows, so a stack is its experts' bytes in order
        return np.concatenate([_matrix_bytes(data, w.type_id, rows, cols, None, want, warn_requantize)
                               for data, rows, cols in _expert_matrices(w)])
    rows, cols = w.shape
    return _matrix_bytes(w.data, w.type_id, rows, cols, transform, want, warn_requantize)


def _matrix_bytes(data, type_id, rows, cols, transform, want, warn_requantize) -> np.ndarray:
    if type_id == want and transform is None:
        return np.asarray(data).reshape(-1)
    if type_id not in (F32, F16, BF16):   # any quantized source, K-quants included
        warn_requantize()
    x = dequantize(data, type_id, rows, cols)
    if transform is not None:
        x = np.ascontiguousarray(transform(x), dtype=np.float32)
    if want in ALL_QUANTIZERS:
        return ALL_QUANTIZERS[want](x)
    return x.astype(np.float32 if want == F32 else np.float16)


def llamacpp_tensor_order(name: str) -> tuple:
    """Sort key of llama.cpp's model loader (weight_name_comparer), the order llama-quantize
    writes tensors and counts layers in for its mixes: by layer number (tensors outside the
    layers first), then by name."""
    parts = name.split(".")
    layer = int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else -1
    return layer, name


def _is_llamacpp_70b(cfg) -> bool:
    """llama.cpp's LLM_TYPE_70B among the architectures forgert runs (its mixes give it more attn_v bits)."""
    return cfg.n_layers == 80 and (cfg.arch == "qwen2" or (cfg.arch == "llama" and cfg.n_heads != cfg.n_kv_heads))


def plan_types(loaded, target: str, pure: bool = False) -> list:
    """[(name, WeightTensor, transform or None, ggml type id)]: the tensors export_gguf writes
    for mix `target`, in llama.cpp's order (by layer, then name), each with its type."""
    plan = sorted(_tensor_plan(loaded), key=lambda entry: llamacpp_tensor_order(entry[0]))
    cfg = loaded.config
    planner = MixPlanner(target, [name for name, _, _ in plan], cfg.n_layers, cfg.n_heads // cfg.n_kv_heads,
                         large_70b=_is_llamacpp_70b(cfg), pure=pure, n_expert=cfg.n_expert)
    out = []
    for name, w, transform in plan:
        # an HF source's router and experts are converted to F32 first, as convert_hf_to_gguf writes them
        source_type = w.type_id if loaded.format == "gguf" else F32
        out.append((name, w, transform, F32 if _is_1d(name) else planner.type_for(name, tuple(w.shape), source_type)))
    return out


def export_gguf(src, dst, target: str, log=None, progress=None, pure: bool = False) -> dict:
    """Write `dst` in mix `target` (quant_mix.MIXES; pure: every matrix in the mix's default type,
    as llama-quantize --pure); returns {tensor type name: count}. log(str) receives notes
    (default stderr); progress(done, total) is called after each tensor is written."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if target not in TARGET_TYPES:
        raise ValueError(f"--type must be one of {', '.join(TARGET_TYPES)}, got {target!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("the output must be a different file from the input")
    loaded = load_model(src)
    if loaded.config.arch == "gpt-oss" and loaded.format != "gguf":
        raise ModelFormatError(f"{loaded.name}: gpt-oss HF directories cannot be quantized (their GGUF metadata "
                               f"and attention sinks are not written); quantize a GGUF of gpt-oss instead")
    if loaded.config.arch == "gemma4" and loaded.format != "gguf":
        raise ModelFormatError(f"{loaded.name}: Gemma 4 HF directories cannot be quantized yet (llama.cpp's per-layer "
                               f"head widths, rope_freqs and layer scalars are not written); quantize a GGUF of it, "
                               f"or run the directory itself")
    if loaded.config.arch == "gemma3n" and loaded.format != "gguf":
        raise ModelFormatError(f"{loaded.name}: Gemma 3n HF directories cannot be quantized yet (llama.cpp's altup.* "
                               f"keys, stacked altup_proj / altup_unembd_proj and activation sparsity are not "
                               f"written); quantize a GGUF of it, or run the directory itself")
    if loaded.config.arch in ("lfm2", "lfm2moe") and loaded.format != "gguf":
        raise ModelFormatError(f"{loaded.name}: LFM2 HF directories cannot be quantized yet (llama.cpp's per-layer "
                               f"head_count_kv and its final-norm name are not written); quantize a GGUF of it, or "
                               f"run the directory itself")
    if loaded.config.arch in ("granitehybrid", "nemotron_h", "nemotron_h_moe") and loaded.format != "gguf":
        raise ModelFormatError(f"{loaded.name}: Granite 4.0-H and Nemotron-H / Nemotron 3 HF directories cannot be "
                               f"quantized yet (llama.cpp's ssm.* keys, per-block arrays and ssm_a / ssm_d layout are "
                               f"not written); quantize a GGUF of it, or run the directory itself")
    writer = GGUFWriter(loaded.config.arch)
    if loaded.format == "gguf":
        _copy_gguf_metadata(writer, loaded.handle)
        extra = {}
    else:
        extra = _write_hf_metadata(writer, loaded)
    writer.add_u32("general.file_type", MIXES[target].file_type)

    # producers[i]() -> bytes of the i-th tensor added to the writer
    producers, counts = [], {}
    for name, values in extra.items():
        writer.add_tensor(name, [values.size], F32)
        producers.append(lambda values=values: values)
    warned = []

    def warn_requantize():
        if not warned:
            log("note: re-quantizing quantized weights loses precision; "
                "quantize from F32/F16/BF16 weights when you can")
            warned.append(True)

    for name, w, transform, want in plan_types(loaded, target, pure):
        cols = w.shape[-1]
        if want == F16 and MIXES[target].default != F16 and quantizable(name, w.shape):
            log(f"note: {name} has {cols} columns, not a multiple of 32: kept as F16")
        ne = [int(n) for n in reversed(w.shape)]    # GGUF order: columns first
        while len(ne) > 1 and ne[-1] == 1:          # as ggml_n_dims counts them (llama.cpp writes [cols] for [1, cols])
            ne.pop()
        writer.add_tensor(name, ne, want)
        producers.append(lambda name=name, w=w, transform=transform, want=want:
                         _tensor_bytes(name, w, transform, want, warn_requantize))
        counts[type_name(want)] = counts.get(type_name(want), 0) + 1
    writer.write(dst, lambda i: producers[i](), progress)
    return counts
