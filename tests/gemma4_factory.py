"""Tiny random Gemma 4 text models (transformers' Gemma4ForCausalLM), saved as an HF directory and as
GGUFs in llama.cpp's gemma4 layout, written here after its converter (Gemma4Model, on Gemma3Model)
independently of forgert: norm weights as they are (no + 1: Gemma 4's norms multiply by w),
key_length / value_length the global layers' head width and key_length_swa / value_length_swa the
sliding layers', head_count_kv one value per layer where the global layers have their own count,
rope.freq_base the global layers' base and freq_base_swa the sliding layers', rope.dimension_count
the global head width (proportional RoPE through rope_freqs.weight: 1 for the rotating pairs, 1e30
for the others), sliding_window_pattern one bool per layer, layer_scalar as
blk.N.layer_output_scale.weight, no attn_v on the layers whose V is K's projection; the vocabulary a
tiny Gemma-style one (gemma_tokenizer) written as tokenizer.ggml.model "gemma4" through the gguf
package's LlamaHfVocab / SpecialVocab, as Gemma4Model.set_vocab does.

Nothing here imports forgert: this module is the reference side of the tests.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file

import model_factory as mf
import moe_factory as moe

# A layer's tensors shared with Gemma 3n (gemma3n_factory): attention, sandwich norms, the MLP and
# the per-layer input's gate and projection.
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "per_layer_input_gate.weight": "inp_gate.weight", "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
}
_LAYER = {
    **LAYER_NAMES,
    "layer_scalar": "layer_output_scale.weight",
    # the MoE block (Gemma4Model.modify_tensors / filter_tensors)
    "router.proj.weight": "ffn_gate_inp.weight", "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale", "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight", "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
}
_KEPT_F32 = ("router.proj.weight",)   # the router stays F32 in the GGUF (ffn_gate_inp)
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": None, "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
           "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
           "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight"}
SLIDING, FULL = "sliding_attention", "full_attention"
# name -> (GGUF arch, builder arguments). "gemma4": the 31B's shape on 6 layers (two groups of two
# sliding layers and a global one): sliding heads 32 wide, global heads 64 wide with one KV head
# whose V is K's projection (attention_k_eq_v), proportional RoPE on a quarter of the global
# pairs, a final soft cap small enough to bend this model's logits. "gemma4-plain": global heads
# 64 wide with v_proj and the sliding layers' KV head count, the last layer global only.
# "gemma4-e": E2B's features on 6 layers: per-layer embeddings of 32 per layer, the last two layers
# (a sliding and a global one) sharing the K/V of layers 2 and 3, their MLPs twice as wide.
# "gemma4-moe": 26B-A4B's layers on 4: a dense MLP beside 4 GeGLU experts, top 2, the router's scale
# and per-expert scales random.
MODELS = {
    "gemma4": ("gemma4", dict(seed=91, types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL], k_eq_v=True,
                              global_kv=1, softcap=5.0)),
    "gemma4-plain": ("gemma4", dict(seed=92, types=[SLIDING, FULL, SLIDING, SLIDING, SLIDING, FULL], k_eq_v=False,
                                    global_kv=None, softcap=None)),
    "gemma4-e": ("gemma4", dict(seed=93, types=[SLIDING, SLIDING, SLIDING, FULL, SLIDING, FULL], k_eq_v=False,
                                global_kv=None, softcap=10.0, ple=32, shared=2, double_wide=True)),
    "gemma4-moe": ("gemma4", dict(seed=94, types=[SLIDING, FULL, SLIDING, FULL], k_eq_v=True, global_kv=1,
                                  softcap=30.0, moe=(4, 2, 32))),
}
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, GLOBAL_HEAD_DIM, FFN, WINDOW = 64, 4, 2, 32, 64, 96, 8
SWA_THETA, FULL_THETA, PARTIAL = 10_000.0, 1_000_000.0, 0.25


# The tiny Gemma-style tokenizer (gemma_tokenizer): Gemma's special tokens at Gemma's ids, the chat
# tokens (the converter writes the visible ones USER_DEFINED), newline runs as tokenizer.json's added
# tokens, the 256 <0xXX> byte pieces, then pieces learnt from a small corpus.
PAD, EOS, BOS, UNK, MASK = "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"
TURN_OPEN, TURN_CLOSE = "<|turn>", "<turn|>"
VISIBLE = ("<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>')
NEWLINE_RUNS = ("\n\n", "\n\n\n")
_CORPUS = (mf._TOKENIZER_CORPUS
           + "def main():\n    if ready:\n        return  value\n\tindent\twith\ttabs\n"
           + "Spaces  between   words    and a line.\nAnother line of text follows here.\n")


def gemma_tokenizer() -> "Tokenizer":
    """A tiny tokenizer laid out as Gemma's tokenizer.json (what transformers' GemmaTokenizer builds):
    BPE with byte fallback, spaces replaced by U+2581 before it, no pre-split, no prefix space; a
    decoder turning U+2581 back into spaces and <0xXX> pieces into bytes; <bos> put first. The merges are learnt on
    words split before their U+2581 runs, newlines alone (no merge builds a newline run: the runs are
    added tokens, matched whole, as Gemma's user-defined pieces are)."""
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                            trainers)
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizers.Replace(" ", "\u2581")
    learner.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581*[^\u2581\n]+|\u2581+|\n"), behavior="isolated")
    learner.train_from_iterator([_CORPUS] * 4, trainer=trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learnt = json.loads(learner.to_str())["model"]
    fixed = [PAD, EOS, BOS, UNK, MASK, TURN_OPEN, TURN_CLOSE, *VISIBLE, *NEWLINE_RUNS]
    fixed += [f"<0x{b:02X}>" for b in range(256)]
    vocab = {t: i for i, t in enumerate(fixed)}
    for piece in sorted(learnt["vocab"], key=learnt["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (PAD, EOS, BOS, UNK, MASK, TURN_OPEN, TURN_CLOSE, *VISIBLE)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NEWLINE_RUNS])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    return tok


tokenizer = gemma_tokenizer   # moe_factory.formats_fixture's hook: the models use this vocabulary


def text_config(name: str, vocab: int, **changes):
    from transformers import Gemma4TextConfig
    kw = MODELS[name][1]
    args = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=len(kw["types"]),
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                global_head_dim=GLOBAL_HEAD_DIM, num_global_key_value_heads=kw["global_kv"],
                attention_k_eq_v=kw["k_eq_v"], layer_types=list(kw["types"]), sliding_window=WINDOW,
                max_position_embeddings=256, rms_norm_eps=1e-6, hidden_size_per_layer_input=kw.get("ple", 0),
                vocab_size_per_layer_input=vocab, num_kv_shared_layers=kw.get("shared", 0),
                use_double_wide_mlp=kw.get("double_wide", False), enable_moe_block="moe" in kw,
                num_experts=kw["moe"][0] if "moe" in kw else None,
                top_k_experts=kw["moe"][1] if "moe" in kw else None,
                moe_intermediate_size=kw["moe"][2] if "moe" in kw else None,
                final_logit_softcapping=kw["softcap"], tie_word_embeddings=True, initializer_range=0.1,
                bos_token_id=2, eos_token_id=1, pad_token_id=0,
                rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": SWA_THETA},
                                 FULL: {"rope_type": "proportional", "partial_rotary_factor": PARTIAL,
                                        "rope_theta": FULL_THETA}})
    args.update(changes)
    return Gemma4TextConfig(**args)


def build(name: str, vocab: int):
    from transformers import Gemma4ForCausalLM
    kw = MODELS[name][1]
    torch.manual_seed(kw["seed"])
    model = Gemma4ForCausalLM(text_config(name, vocab)).float().eval()
    gen = torch.Generator().manual_seed(kw["seed"] + 1000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("q_norm.weight", "k_norm.weight")):
                # Gemma 4 scales scores by 1, not 1/sqrt(d): with QK-norm weights around 1 this tiny model's
                # scores reach +-30, where one f16 rounding of a cached key that lands the other way
                # (f32 summation order) moves a logit 5e-4: around 0.4 they stay near +-4
                p.copy_(0.4 + 0.1 * torch.randn(p.shape, generator=gen))
            elif pname.endswith(("norm.weight", "router.scale", "per_expert_scale")):
                # Gemma 4 multiplies by w: around 1, random (a + 1 would show)
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif pname.endswith("router.proj.weight"):   # well-separated logits: f32 order flips no near-tie
                p.copy_(2.0 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for layer in model.model.layers:   # layer_scalar: a buffer, 1 in the init; random so it shows
            layer.layer_scalar.copy_(0.6 + 0.8 * torch.rand(1, generator=gen))
    return model


def save_tokenizer_config(out_dir: Path, chat_template=None) -> None:
    """Gemma's tokenizer_config.json: GemmaTokenizer, its special tokens (the chat ones among them), BOS
    added."""
    cfg = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK, "mask_token": MASK,
           "extra_special_tokens": [TURN_OPEN, TURN_CLOSE, *VISIBLE],
           "add_bos_token": True, "add_eos_token": False, "tokenizer_class": "GemmaTokenizer"}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg))


def save_hf(model, tok, out_dir: Path, chat_template=None) -> Path:
    out = moe.save_hf(model, tok, out_dir)
    save_tokenizer_config(out, chat_template)
    return out


def add_gemma4_vocab(w, hf_dir: Path) -> None:
    """The tokenizer keys as llama.cpp's converter writes them (Gemma4Model.set_vocab), through the
    gguf package's own readers of the HF directory: LlamaHfVocab's pieces, scores and types (BYTE for
    <0xXX>, CONTROL for special tokens, NORMAL for the rest) with the visible chat tokens
    USER_DEFINED, SpecialVocab's merges, special ids and chat template, no space prefix, BOS added."""
    vocab = gguf.LlamaHfVocab(hf_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(gguf.TokenType.USER_DEFINED if text.decode() in VISIBLE else kind)
    w.add_tokenizer_model("gemma4")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True).add_to_gguf(w)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(True)


def gguf_tensors(hf_dir: Path) -> dict:
    out = {}
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        if name in GLOBAL_NAMES:
            if GLOBAL_NAMES[name]:
                out[GLOBAL_NAMES[name]] = w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        out[f"blk.{layer}.{_LAYER[rest]}"] = w
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, c, tok=None, extra_meta=None) -> Path:
    """The vocabulary is hf_dir's tokenizer (tok unused: moe_factory.formats_fixture's signature)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-gemma4")
    swa = [t == SLIDING for t in c.layer_types]
    # Each layer's shape from the config's per-layer views (the converter reads global_head_dim and
    # num_global_key_value_heads from config.json; transformers 5 keeps them in per_layer_config).
    layer = [c.per_layer_config[i] for i in range(c.num_hidden_layers)]
    hd_full = next(layer[i].head_dim for i, s in enumerate(swa) if not s)
    hd_swa = next(layer[i].head_dim for i, s in enumerate(swa) if s)
    kv = [layer[i].num_key_value_heads for i in range(c.num_hidden_layers)]
    full = c.rope_parameters[FULL]
    meta = {
        "add_block_count": c.num_hidden_layers, "add_context_length": c.max_position_embeddings,
        "add_embedding_length": c.hidden_size,
        # one width per layer where the sharing layers' MLPs are double-wide (Gemma4Model's n_ff_arr)
        "add_feed_forward_length": ([c.intermediate_size * (2 if i >= c.num_hidden_layers - c.num_kv_shared_layers
                                                            else 1) for i in range(c.num_hidden_layers)]
                                    if c.use_double_wide_mlp and c.num_kv_shared_layers else c.intermediate_size),
        "add_head_count": c.num_attention_heads, "add_layer_norm_rms_eps": c.rms_norm_eps,
        "add_rope_freq_base": float(full["rope_theta"]),
        "add_rope_freq_base_swa": float(c.rope_parameters[SLIDING]["rope_theta"]),
        "add_sliding_window": c.sliding_window, "add_sliding_window_pattern": swa,
        "add_key_length": hd_full, "add_value_length": hd_full,
        "add_key_length_swa": hd_swa, "add_value_length_swa": hd_swa,
        "add_head_count_kv": kv if len(set(kv)) > 1 else kv[0],   # an array only where the global count differs
        "add_rope_dimension_count": hd_full, "add_rope_dimension_count_swa": hd_swa,
        "add_shared_kv_layers": c.num_kv_shared_layers,
        "add_embedding_length_per_layer_input": c.hidden_size_per_layer_input or 0,
        "add_final_logit_softcapping": c.final_logit_softcapping,
    }
    if c.enable_moe_block:
        meta.update(add_expert_count=c.num_experts, add_expert_used_count=c.top_k_experts,
                    add_expert_feed_forward_length=c.moe_intermediate_size)
    meta.update(extra_meta or {})
    for key, value in meta.items():
        if value is not None:
            getattr(w, key)(value)
    add_gemma4_vocab(w, hf_dir)
    n_rot = int(hd_full * full["partial_rotary_factor"] / 2)
    w.add_tensor("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (hd_full // 2 - n_rot), dtype=np.float32))
    qtype = gguf.GGMLQuantizationType[type_name]
    for name, t in gguf_tensors(hf_dir).items():
        if t.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32 or name.endswith("ffn_gate_inp.weight"):
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


# Gemma 4's chat template, the text part as the published one lays it out: a system (or developer)
# message in its own turn, "model" for the assistant, turns closed by <turn|>.
GEMMA4_TEMPLATE = """{{- bos_token -}}
{%- if messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\n' + messages[0]['content'] | trim + '<turn|>\n' -}}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\n' + message['content'] | trim + '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
{%- endif -%}"""


def write_chat_files(name: str, root: Path) -> tuple:
    """A tiny model of `name` with gemma_tokenizer()'s vocabulary as an HF directory (its template in
    tokenizer_config.json, generation stopping at <eos> and <turn|> as the checkpoints' generation
    config says) and an F32 GGUF (its template, no eot_token_id: llama.cpp finds <turn|> by text)."""
    tok = gemma_tokenizer()
    model = build(name, tok.get_vocab_size())
    hf = save_hf(model, tok, root / "hf", chat_template=GEMMA4_TEMPLATE)
    (hf / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.token_to_id(BOS), "eos_token_id": [tok.token_to_id(EOS), tok.token_to_id(TURN_CLOSE)]}))
    gg = write_gguf(hf, root / "m.gguf", "F32", "gemma4", model.config)
    return tok, hf, gg


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes rounded (moe_factory's)."""
    return moe.rounded_reference(model, type_name, kept=_KEPT_F32)


FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0")


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "gemma4")
