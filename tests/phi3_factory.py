"""Tiny random Phi-3 / Phi-4 models (transformers' Phi3ForCausalLM), written as real checkpoints are:
  - an HF directory: config.json + model.safetensors (fused qkv_proj and gate_up_proj) +
    tokenizer.json + tokenizer_config.json with a Phi chat template + generation_config.json
  - GGUF files laid out as llama.cpp's convert_hf_to_gguf.py writes arch "phi3": fused
    blk.N.attn_qkv.weight and blk.N.ffn_up.weight (gate rows, then up rows), no Q/K permutation
    (phi3 rotates NeoX-style), rope.dimension_count = partial_rotary_factor * head_dim,
    attention.sliding_window (0 for none), rope.scaling.original_context_length, and for
    LongRoPE rope_factors_long.weight / rope_factors_short.weight (F32) with
    rope.scaling.attn_factor = sqrt(1 + ln(s) / ln(original)).

Nothing here imports forgert: this module is the reference side of the tests.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import model_factory as mf

ENDOFTEXT = "<|endoftext|>"
# Each vocabulary's special tokens (ids from 0, in this order): Phi-3's turn markers, or Phi-4's
# ChatML-like ones. <|endoftext|> is the EOS; the turn's end is a second stop token.
PHI3_SPECIALS = (ENDOFTEXT, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
PHI4_SPECIALS = (ENDOFTEXT, "<|im_start|>", "<|im_sep|>", "<|im_end|>")

# Phi-3 / Phi-3.5 / Phi-4-mini style: "<|user|>\n...<|end|>\n"
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Phi-4 (14B) style: "<|im_start|>user<|im_sep|>...<|im_end|>"
PHI4_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)


@dataclass(frozen=True)
class PhiSpec:
    name: str
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    tie_embeddings: bool
    rope_theta: float
    seed: int
    template: str
    end_of_turn: str                    # the template's end-of-turn token (a stop token)
    specials: tuple                     # the vocabulary's special tokens
    partial_rotary_factor: float = 1.0
    longrope: bool = False
    original_ctx: int | None = None     # LongRoPE's pre-extension context (None: n_ctx)
    sliding_window: int | None = None
    n_ctx: int = 256                    # max_position_embeddings
    rms_eps: float = 1e-5
    init_range: float = 0.1
    legacy_rope_config: bool = False   # model_factory.save_hf_dir's switch; Phi keeps transformers 5's spelling

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def arch(self) -> str:
        return "phi3"


SPECS = {
    # Phi-4 (14B) style: no RoPE scaling, full rotary, theta 2.5e5, untied, GQA 4/2.
    "phi4_plain": PhiSpec(name="phi4_plain", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
                          tie_embeddings=False, rope_theta=250000.0, seed=11, template=PHI4_TEMPLATE,
                          end_of_turn="<|im_end|>", specials=PHI4_SPECIALS),
    # Phi-4-mini style: LongRoPE (original context 64 of 256, so n_ctx 256 takes the long factors
    # and the cos/sin scale is sqrt(1 + ln 4 / ln 64)), partial rotary 0.75 (24 of 32 dims), tied.
    "phi4_mini_longrope": PhiSpec(name="phi4_mini_longrope", hidden=128, n_layers=3, n_heads=4, n_kv_heads=2,
                                  ffn=192, tie_embeddings=True, rope_theta=10000.0, seed=12,
                                  template=PHI3_TEMPLATE, end_of_turn="<|end|>", specials=PHI3_SPECIALS,
                                  partial_rotary_factor=0.75,
                                  longrope=True, original_ctx=64),
    # Phi-3-mini style: LongRoPE on full rotary and a sliding window shorter than the test sequences.
    "phi3_window": PhiSpec(name="phi3_window", hidden=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn=128,
                           tie_embeddings=False, rope_theta=10000.0, seed=13, template=PHI3_TEMPLATE,
                           end_of_turn="<|end|>", specials=PHI3_SPECIALS, longrope=True, original_ctx=64, sliding_window=40),
}


def longrope_factor_lists(spec: PhiSpec) -> tuple[list, list]:
    """(short, long) divisors, one per rotated pair. Far from 1 (long) and from each other, so a
    loader that drops them, or picks the wrong set, is far off."""
    rng = np.random.default_rng(spec.seed + 77)
    n = spec.rope_dim // 2
    short = (1.0 + 0.5 * rng.random(n)).round(4)
    long = (short * np.linspace(1.0, 16.0, n)).round(4)
    return short.tolist(), long.tolist()


def attn_factor(spec: PhiSpec) -> float:
    """The converter's rope.scaling.attn_factor (transformers' default attention_factor)."""
    scale = spec.n_ctx / spec.original_ctx
    return math.sqrt(1 + math.log(scale) / math.log(spec.original_ctx)) if scale > 1.0 else 1.0


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(specials: tuple, vocab_size: int = 320) -> Tokenizer:
    """The factory's byte-level BPE with a Phi vocabulary's special tokens (each one id)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([mf._TOKENIZER_CORPUS] * 4, trainer=trainer)
    return tok


def tokenizer_tables(tok: Tokenizer, specials: tuple) -> tuple[list[str], list[int], list[str]]:
    tokens, _, merges = mf.tokenizer_tables(tok)
    types = [3 if t in specials else 1 for t in tokens]   # 3: control
    return tokens, types, merges


# ----------------------------------------------------------------------------- HF model

def hf_config(spec: PhiSpec, vocab_size: int):
    from transformers import Phi3Config
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta,
            "partial_rotary_factor": spec.partial_rotary_factor}
    extra = {}
    if spec.longrope:
        short, long = longrope_factor_lists(spec)
        rope.update(rope_type="longrope", short_factor=short, long_factor=long,
                    original_max_position_embeddings=spec.original_ctx)
        extra["original_max_position_embeddings"] = spec.original_ctx
    tok_ids = {t: i for i, t in enumerate(spec.specials)}   # the trainer puts specials first
    return Phi3Config(
        vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=spec.ffn,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_kv_heads,
        max_position_embeddings=spec.n_ctx, rms_norm_eps=spec.rms_eps, tie_word_embeddings=spec.tie_embeddings,
        initializer_range=spec.init_range, bos_token_id=tok_ids[ENDOFTEXT], eos_token_id=tok_ids[ENDOFTEXT],
        pad_token_id=tok_ids[ENDOFTEXT], rope_parameters=rope, sliding_window=spec.sliding_window, **extra)


def build_hf_model(spec: PhiSpec, vocab_size: int):
    from transformers import Phi3ForCausalLM
    torch.manual_seed(spec.seed)
    model = Phi3ForCausalLM(hf_config(spec, vocab_size)).float().eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(spec.seed + 1000)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    return model


def save_hf_dir(model, spec: PhiSpec, tok: Tokenizer, out_dir: Path, dtype: str) -> Path:
    out_dir = mf.save_hf_dir(model, spec, tok, out_dir, dtype)
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT, "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": spec.template,
    }, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps({
        "eos_token_id": [tok.token_to_id(ENDOFTEXT), tok.token_to_id(spec.end_of_turn)],
    }))
    return out_dir


# ----------------------------------------------------------------------------- GGUF

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight", "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_tensors(model, spec: PhiSpec) -> dict[str, np.ndarray]:
    """GGUF-named float32 tensors: the fused ones kept fused, as the converter does."""
    out = {}
    for hf_name, w in mf.hf_state_numpy(model).items():
        if hf_name in _GGUF_NAMES:
            name = _GGUF_NAMES[hf_name]
        else:
            parts = hf_name.split(".")   # model.layers.{i}.<module>.<proj>.weight
            name = f"blk.{parts[2]}.{_GGUF_NAMES['.'.join(parts[3:])]}"
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    if spec.longrope:
        short, long = longrope_factor_lists(spec)
        out["rope_factors_long.weight"] = np.asarray(long, dtype=np.float32)
        out["rope_factors_short.weight"] = np.asarray(short, dtype=np.float32)
    return out


def write_gguf(model, spec: PhiSpec, tok: Tokenizer, path: Path, type_name: str,
               tensors: dict[str, np.ndarray] | None = None) -> Path:
    tensors = gguf_tensors(model, spec) if tensors is None else tensors
    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_name(f"tiny-{spec.name}")
    w.add_context_length(spec.n_ctx)
    w.add_rope_scaling_orig_ctx_len(spec.original_ctx or spec.n_ctx)
    w.add_embedding_length(spec.hidden)
    w.add_feed_forward_length(spec.ffn)
    w.add_block_count(spec.n_layers)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_rope_dimension_count(int(spec.partial_rotary_factor * spec.hidden) // spec.n_heads)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}[type_name])
    w.add_sliding_window(spec.sliding_window or 0)
    if spec.longrope:
        w.add_rope_scaling_attn_factors(attn_factor(spec))

    mf.add_bpe_vocab(w, tokenizer_tables(tok, spec.specials), tok.token_to_id(ENDOFTEXT), tok.token_to_id(ENDOFTEXT),
                     chat_template=spec.template)

    for name, t in tensors.items():
        data, qtype = mf.encode_tensor(t, type_name, name)
        w.add_tensor(name, data, raw_dtype=qtype)
    return mf.write_and_close(w, path)


def gguf_reference_model(tm: mf.TinyModel, type_name: str, path: Path | None = None):
    """transformers' own GGUF loader (dequantizing with the gguf package), f32, of the factory's
    file of that type (or of `path`). Its phi3 reader skips rope.dimension_count and the LongRoPE
    tensors, so the original config is passed in."""
    from transformers import AutoModelForCausalLM
    path = Path(path or tm.gguf_files[type_name])
    m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                             config=tm.model.config)
    return m.eval()


def make_tiny_model(spec: PhiSpec, root: Path, tok: Tokenizer | None = None, hf_dtypes=("F32", "F16"),
                    gguf_types=("F32", "F16", "Q8_0")) -> mf.TinyModel:
    tok = tok or build_tokenizer(spec.specials)
    model = build_hf_model(spec, tok.get_vocab_size())
    root = Path(root) / spec.name
    root.mkdir(parents=True, exist_ok=True)
    tm = mf.TinyModel(spec=spec, model=model, tokenizer=tok, root=root)
    for dt in hf_dtypes:
        tm.hf_dirs[dt] = save_hf_dir(model, spec, tok, root / f"hf-{dt}", dt)
    for t in gguf_types:
        tm.gguf_files[t] = write_gguf(model, spec, tok, root / f"{spec.name}-{t}.gguf", t)
    return tm
