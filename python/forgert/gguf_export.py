"""Write a GGUF (F32/F16/Q8_0/Q4_0/Q4_1) from a GGUF or an HF directory of F32/F16/BF16 weights.

Matrices get the target type; norms, biases and other 1-D tensors stay F32. From HF directories
the llama Q/K rows are permuted for GGUF's adjacent-pair RoPE (as llama.cpp's converter does), and
the metadata and tokenizer (byte-level BPE only) are written under llama.cpp's key names.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from .errors import ModelFormatError
from .ggml_types import F16, F32, Q4_0, Q4_1, Q8_0, type_name
from .loader import load_model
from .quants import QUANTIZERS, dequantize
from .rope import base_inv_freqs, llama3_scaled

TARGET_TYPES = {"f32": F32, "f16": F16, "q8_0": Q8_0, "q4_0": Q4_0, "q4_1": Q4_1}
# llama.cpp's general.file_type (LLAMA_FTYPE_*) for each target
_FILE_TYPES = {F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 7}
_SKIP_KEYS = ("general.architecture", "general.file_type", "general.alignment")


def permute_for_adjacent_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF half-split rows -> GGUF adjacent-pair rows, per head (llama.cpp's `permute`).
    w: [n_heads * head_dim, ...] (weights) or [n_heads * head_dim] (biases)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _is_1d(name: str) -> bool:
    return name.endswith("norm.weight") or name.endswith(".bias") or name == "rope_freqs.weight"


def _tensor_plan(loaded):
    """(name, WeightTensor, permute_heads or None) in a stable order."""
    cfg = loaded.config
    permute = loaded.format == "safetensors" and cfg.arch == "llama"
    for name, w in loaded.weights.items():
        heads = None
        if permute and (".attn_q." in name or ".attn_k." in name):
            heads = cfg.n_heads if ".attn_q." in name else cfg.n_kv_heads
        yield name, w, heads


def _copy_gguf_metadata(writer, g, gguf):
    for key, value in g.metadata.items():
        if key in _SKIP_KEYS:
            continue
        vtype = g.metadata_types[key]
        if isinstance(vtype, tuple):
            sub = gguf.GGUFValueType(vtype[1])
            if sub == gguf.GGUFValueType.ARRAY:
                raise ModelFormatError(f"{g.name}: nested array metadata '{key}' cannot be copied")
            values = value.tolist() if isinstance(value, np.ndarray) else list(value)
            writer.add_key_value(key, values, gguf.GGUFValueType.ARRAY, sub_type=sub)
        else:
            writer.add_key_value(key, value, gguf.GGUFValueType(vtype))


def _pre_tokenizer_name(tok_json: dict, source: str) -> str:
    from .tokenizer_build import PRE_TOKENIZER_SPLITS
    text = json.dumps(tok_json.get("pre_tokenizer"))
    if '"Digits"' in text and '"individual_digits": true' in text:
        return "smollm"
    for name in ("llama-bpe", "qwen2"):
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
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tj, loaded.name))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tok.bos_id is not None:
        writer.add_bos_token_id(tok.bos_id)
    if tok.eos_id is not None:
        writer.add_eos_token_id(tok.eos_id)
    writer.add_add_bos_token(tok.add_bos)
    if loaded.chat_template:
        writer.add_chat_template(loaded.chat_template)


def _write_hf_metadata(writer, loaded, gguf):
    c = loaded.config
    writer.add_name(loaded.name)
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.ffn_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_eps)
    writer.add_rope_dimension_count(c.head_dim)
    if c.head_dim != c.dim // c.n_heads:
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    writer.add_vocab_size(c.vocab)
    if c.sliding_window:
        # GGUF's key windows every layer; Qwen2's max_window_layers has no GGUF form.
        if c.sliding_window_from:
            raise ModelFormatError(f"{loaded.name}: sliding-window attention from layer {c.sliding_window_from} "
                                   "on cannot be written to GGUF")
        writer.add_sliding_window(c.sliding_window)
    kind = (c.rope_scaling or {}).get("type")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(c.rope_scaling["factor"])
    elif kind == "llama3":
        # llama.cpp stores Llama 3 scaling as per-frequency divisors in rope_freqs.weight
        base = base_inv_freqs(c.rope_theta, c.head_dim)
        r = c.rope_scaling
        scaled = llama3_scaled(base, r["factor"], r["low_freq_factor"], r["high_freq_factor"],
                               r["original_max_position_embeddings"])
        writer.add_tensor("rope_freqs.weight", (base / scaled).astype(np.float32))
    _write_hf_tokenizer(writer, loaded)


def export_gguf(src, dst, target: str, log=None) -> dict:
    """Write `dst`; returns {tensor type name: count}. log(str) receives notes (default stderr)."""
    import gguf
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if target not in TARGET_TYPES:
        raise ValueError(f"--type must be one of {', '.join(TARGET_TYPES)}, got {target!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("the output must be a different file from the input")
    target_id = TARGET_TYPES[target]
    loaded = load_model(src)
    writer = gguf.GGUFWriter(os.fspath(dst), loaded.config.arch)
    if loaded.format == "gguf":
        _copy_gguf_metadata(writer, loaded.handle, gguf)
    else:
        _write_hf_metadata(writer, loaded, gguf)
    writer.add_file_type(_FILE_TYPES[target_id])

    counts, warned = {}, False
    for name, w, heads in _tensor_plan(loaded):
        rows, cols = w.shape
        want = F32 if _is_1d(name) else target_id
        if want in QUANTIZERS and cols % 32:
            log(f"note: {name} has {cols} columns, not a multiple of 32: kept as F16")
            want = F16
        # raw: data holds the tensor's bytes in the target type's layout (copied, or quantized)
        raw = w.type_id == want and heads is None
        if raw:
            data = np.asarray(w.data)
        else:
            if w.type_id in QUANTIZERS and not warned:
                log(f"note: re-quantizing {type_name(w.type_id)} weights loses precision; "
                    f"quantize from F32/F16/BF16 weights when you can")
                warned = True
            x = dequantize(w.data, w.type_id, rows, cols)
            if heads is not None:
                x = permute_for_adjacent_rope(x.reshape(-1) if rows == 1 else x, heads).reshape(rows, cols)
            raw = want in QUANTIZERS
            if raw:
                data = QUANTIZERS[want](x)
            else:
                data = x.astype(np.float32 if want == F32 else np.float16)
        shape_ne = [cols] if rows == 1 and _is_1d(name) else [cols, rows]
        if raw:
            # bytes shaped [rows, row bytes]: the writer turns that into the element shape
            b = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            b = b if len(shape_ne) == 1 else b.reshape(rows, -1)
            writer.add_tensor(name, b, raw_shape=b.shape, raw_dtype=gguf.GGMLQuantizationType(want))
        else:
            writer.add_tensor(name, data.reshape(list(reversed(shape_ne))))
        counts[type_name(want)] = counts.get(type_name(want), 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts
