"""Tiny random Gemma 2 and Gemma 3 (text) models for the end-to-end tests, saved as HF
directories and as GGUF the way llama.cpp's convert_hf_to_gguf.py writes them (Gemma2Model /
Gemma3Model: arch gemma2 / gemma3, norm weights written as w + 1, no Q/K permutation, no
output.weight when tied, key_length / value_length, soft-capping and sliding-window keys,
Gemma 3's linear RoPE scaling of the global layers).

Kept apart from model_factory.py (the Llama/Qwen2 factory) and reusing its tokenizer, GGUF
encoding and reference helpers. Nothing here imports forgert.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer

import model_factory as mf

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"

# Gemma 2's published template: no system role, "model" for the assistant.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Gemma 3's (text part): a system message is folded into the first user turn.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


@dataclass(frozen=True)
class GemmaSpec:
    name: str
    arch: str                  # "gemma2" | "gemma3"
    hidden: int = 64           # sqrt(64) = 8 is exact in every float dtype (embedding scale)
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32         # q_dim 128 != hidden, as in the real models (head_dim 256)
    ffn: int = 128
    sliding_window: int = 8    # far shorter than the test sequences
    attn_softcap: float | None = None
    final_softcap: float | None = None
    rope_theta: float = 10000.0          # global layers
    rope_local_theta: float = 10000.0    # Gemma 3's local layers
    rope_scaling: dict | None = None     # Gemma 3's global layers
    seed: int = 21
    init_range: float = 0.1
    rms_eps: float = 1e-6
    n_ctx: int = 256

    @property
    def template(self) -> str:
        return GEMMA2_TEMPLATE if self.arch == "gemma2" else GEMMA3_TEMPLATE


SPECS = {
    # Gemma 2: local, global, local, global; caps small enough to bend this tiny model's scores
    # and logits (Gemma 2 2B uses 50 and 30 on much larger ones).
    "gemma2": GemmaSpec(name="gemma2", arch="gemma2", n_layers=4, attn_softcap=2.0, final_softcap=3.0, seed=21),
    # Gemma 3: five local layers and a global one, RoPE 10k local / 1M x linear 8 global.
    "gemma3": GemmaSpec(name="gemma3", arch="gemma3", n_layers=6, rope_theta=1e6, rope_local_theta=1e4,
                        rope_scaling={"rope_type": "linear", "factor": 8.0}, seed=22),
}


def build_tokenizer() -> Tokenizer:
    """model_factory's tiny byte-level BPE plus Gemma's turn markers as special tokens."""
    tok = mf.build_tokenizer()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (START_OF_TURN, END_OF_TURN)])
    return tok


def build_hf_model(spec: GemmaSpec, vocab_size: int):
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig
    common = dict(
        vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=spec.ffn,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_kv_heads,
        head_dim=spec.head_dim, max_position_embeddings=spec.n_ctx, rms_norm_eps=spec.rms_eps,
        initializer_range=spec.init_range, tie_word_embeddings=True, sliding_window=spec.sliding_window,
        # GGUF has no key for it: llama.cpp scales by 1/sqrt(head_dim) (the non-27B models)
        query_pre_attn_scalar=spec.head_dim,
        final_logit_softcapping=spec.final_softcap, attn_logit_softcapping=spec.attn_softcap,
        bos_token_id=0, eos_token_id=1, pad_token_id=0,
    )
    torch.manual_seed(spec.seed)
    if spec.arch == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common))
    else:
        cfg = Gemma3TextConfig(**common, rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": spec.rope_local_theta},
            "full_attention": {**(spec.rope_scaling or {"rope_type": "default"}), "rope_theta": spec.rope_theta},
        })
        model = Gemma3ForCausalLM(cfg)
    model = model.float().eval()
    # Random norm weights (HF initialises them to zero, i.e. 1 + 0): a loader that forgets the
    # (1 + w) or adds it twice is then visible.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn_like(p) * 0.3)
    return model


def save_hf_dir(model, spec: GemmaSpec, tok: Tokenizer, out_dir: Path, dtype: str) -> Path:
    tdtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    out_dir.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    copy.deepcopy(model).to(tdtype).save_pretrained(out_dir)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": mf.BOS_TOKEN, "eos_token": mf.EOS_TOKEN, "add_bos_token": True,
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": spec.template,
    }, indent=2))
    # as the Gemma checkpoints: generation stops at <eos> and at <end_of_turn>
    (out_dir / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.token_to_id(mf.BOS_TOKEN),
        "eos_token_id": [tok.token_to_id(mf.EOS_TOKEN), tok.token_to_id(END_OF_TURN)],
    }))
    return out_dir


_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    parts = hf_name.split(".")   # model.layers.{i}.<sub>
    return f"blk.{parts[2]}.{_GGUF_LAYER_NAMES['.'.join(parts[3:])]}"


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The converter's tensors: lm_head skipped (tied), norm weights + 1 (Gemma2Model /
    Gemma3Model.modify_tensors), nothing permuted."""
    out = {}
    for hf_name, w in model.state_dict().items():
        if hf_name == "lm_head.weight" or "rotary_emb" in hf_name:
            continue
        w = w.detach().float().numpy()
        if hf_name.endswith("norm.weight"):
            w = w + 1
        out[gguf_name(hf_name)] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def tokenizer_tables(tok: Tokenizer):
    tokens, types, merges = mf.tokenizer_tables(tok)
    control = {mf.BOS_TOKEN, mf.EOS_TOKEN, START_OF_TURN, END_OF_TURN}
    return tokens, [3 if t in control else ty for t, ty in zip(tokens, types)], merges


def write_gguf(model, spec: GemmaSpec, tok: Tokenizer, path: Path, type_name: str,
               tensors: dict | None = None) -> Path:
    tensors = gguf_tensors(model) if tensors is None else tensors
    w = gguf.GGUFWriter(str(path), spec.arch)
    w.add_name(f"tiny-{spec.name}")
    w.add_context_length(spec.n_ctx)
    w.add_embedding_length(spec.hidden)
    w.add_block_count(spec.n_layers)
    w.add_feed_forward_length(spec.ffn)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_sliding_window(spec.sliding_window)
    w.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7}[type_name])
    if spec.arch == "gemma2":
        w.add_attn_logit_softcapping(spec.attn_softcap)
        w.add_final_logit_softcapping(spec.final_softcap)
    else:
        w.add_rope_freq_base(spec.rope_theta)          # the global layers' base
        if spec.final_softcap:
            w.add_final_logit_softcapping(spec.final_softcap)
        if spec.rope_scaling and spec.rope_scaling["rope_type"] == "linear":   # global layers only
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(spec.rope_scaling["factor"])
    mf.add_bpe_vocab(w, tokenizer_tables(tok), tok.token_to_id(mf.BOS_TOKEN), tok.token_to_id(mf.EOS_TOKEN),
                     add_bos=True, chat_template=spec.template)
    for name, t in tensors.items():
        data, qtype = mf.encode_tensor(t, type_name, name)
        w.add_tensor(name, data, raw_dtype=qtype)
    return mf.write_and_close(w, path)


@dataclass
class TinyGemma:
    spec: GemmaSpec
    model: object
    tokenizer: Tokenizer
    hf_dirs: dict
    gguf_files: dict

    def path(self, fmt: str) -> Path:
        kind, t = fmt.split("-", 1)
        return self.hf_dirs[t] if kind == "hf" else self.gguf_files[t]


def make_tiny_gemma(spec: GemmaSpec, root: Path, hf_dtypes=("F32", "F16"), gguf_types=("F32", "F16", "Q8_0")):
    tok = build_tokenizer()
    model = build_hf_model(spec, tok.get_vocab_size())
    root = Path(root) / spec.name
    root.mkdir(parents=True, exist_ok=True)
    hf = {dt: save_hf_dir(model, spec, tok, root / f"hf-{dt}", dt) for dt in hf_dtypes}
    gg = {t: write_gguf(model, spec, tok, root / f"{spec.name}-{t}.gguf", t) for t in gguf_types}
    return TinyGemma(spec, model, tok, hf, gg)


# ----------------------------------------------------------------------------- references

def with_f16_kv(model):
    """Gemma's eager attention (soft-capping applies there) with K and V rounded to f16, as
    forgert's KV cache stores them; everything else f32."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward
    return mf.use_attention(model, "forgert_f16_kv_gemma", mf.f16_kv(eager_attention_forward))


def gguf_dequantized_model(tm: TinyGemma, type_name: str):
    """The HF model holding the GGUF file's weights as the `gguf` package dequantizes them
    (norm weights back to HF's w by subtracting the converter's 1), computing in f32."""
    from gguf.quants import dequantize
    reverse = {gguf_name(n): n for n in tm.model.state_dict() if n != "lm_head.weight" and "rotary" not in n}
    m = copy.deepcopy(tm.model).eval()
    params = dict(m.named_parameters())
    seen = set()
    with torch.no_grad():
        for t in gguf.GGUFReader(str(tm.gguf_files[type_name])).tensors:
            shape = [int(d) for d in reversed(t.shape.tolist())]
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
            if t.name.endswith("norm.weight"):
                w = w - 1
            params[reverse[t.name]].copy_(torch.from_numpy(w.copy()))
            seen.add(reverse[t.name])
    missing = set(params) - seen - {"lm_head.weight"}
    assert not missing, f"GGUF {type_name} lacks {sorted(missing)}"
    return m


def reference(tm: TinyGemma, fmt: str):
    """The f32 transformers model forgert's file of format fmt should match (f16 KV)."""
    kind, t = fmt.split("-", 1)
    m = mf.storage_rounded_model(tm.model, t) if kind == "hf" else gguf_dequantized_model(tm, t)
    return with_f16_kv(m)
