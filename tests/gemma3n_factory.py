"""Tiny random Gemma 3n text models (transformers' Gemma3nForCausalLM), saved as an HF directory and
as GGUFs in llama.cpp's gemma3n layout, written here after its converter (Gemma3NModel)
independently of forgert: norm weights as they are (Gemma 3n's norms multiply by w), the AltUp
projections of the streams past the first stacked into altup_proj.weight / altup_unembd_proj.weight
[N - 1, dim, dim], the layers' AltUp and LAuReL tensors under blk.N.altup_* / laurel_*, the AltUp
coefficients and router kept F32, altup.num_inputs / altup.active_idx, shared_kv_layers,
embedding_length_per_layer_input, sliding_window_pattern one bool per layer, and each layer's
activation_sparsity_scale the normal quantile of its sparsity (-inf for a dense layer).

Nothing here imports forgert: this module is the reference side of the tests.
"""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file

import gemma4_factory as g4
import model_factory as mf
import moe_factory as moe

_LAYER = {
    **g4.LAYER_NAMES,
    "altup.correct_output_scale": "altup_correct_scale.weight",
    "altup.correction_coefs.weight": "altup_correct_coef.weight",
    "altup.prediction_coefs.weight": "altup_predict_coef.weight",
    "altup.modality_router.weight": "altup_router.weight", "altup.router_norm.weight": "altup_router_norm.weight",
    "laurel.linear_left.weight": "laurel_l.weight", "laurel.linear_right.weight": "laurel_r.weight",
    "laurel.post_laurel_norm.weight": "laurel_post_norm.weight",
}
# kept F32 in the GGUF: AltUp's coefficients (a handful of columns) and router
_KEPT_F32 = ("altup.correction_coefs.weight", "altup.prediction_coefs.weight", "altup.modality_router.weight")
_GLOBAL = g4.GLOBAL_NAMES
_STREAMS = re.compile(r"^model\.altup_(projections|unembed_projections)\.(\d+)\.weight$")
SLIDING, FULL = "sliding_attention", "full_attention"
# "gemma3n": E2B's features on 5 layers: 4 AltUp streams, LAuReL of rank 32, per-layer embeddings of
# 32 per layer, the last two layers (a sliding and a full one) sharing the K/V of layers 1 and 2,
# the first two layers' gates sparse at 0.6 (a cut visible on a 96-wide gate), per-layer MLP widths.
# "gemma3n-2": 2 streams, no sparsity, no KV sharing, no scale on the corrected stream.
MODELS = {
    "gemma3n": ("gemma3n", dict(seed=71, types=[SLIDING, SLIDING, FULL, SLIDING, FULL], altup=4, shared=2,
                                sparsity=[0.6, 0.6, 0.0, 0.0, 0.0], ffn=[96, 96, 128, 96, 128], correct_scale=True)),
    "gemma3n-2": ("gemma3n", dict(seed=72, types=[SLIDING, FULL, SLIDING, FULL], altup=2, shared=0,
                                  sparsity=[0.0] * 4, ffn=96, correct_scale=False)),
    # the published checkpoints' per-layer table of the text vocabulary only: its last 40 ids look up row 0
    "gemma3n-pv": ("gemma3n", dict(seed=73, types=[SLIDING, FULL, SLIDING, FULL], altup=2, shared=0,
                                   sparsity=[0.0] * 4, ffn=96, correct_scale=True, ple_cut=40)),
}
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, WINDOW, PLE, RANK = 64, 4, 2, 32, 8, 32, 32
SWA_THETA, FULL_THETA = 10_000.0, 1_000_000.0


def text_config(name: str, vocab: int, **changes):
    from transformers import Gemma3nTextConfig
    kw = MODELS[name][1]
    args = dict(vocab_size=vocab, vocab_size_per_layer_input=vocab - kw.get("ple_cut", 0), hidden_size=HIDDEN, intermediate_size=kw["ffn"],
                num_hidden_layers=len(kw["types"]), num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                head_dim=HEAD_DIM, layer_types=list(kw["types"]), sliding_window=WINDOW,
                max_position_embeddings=256, rms_norm_eps=1e-6, hidden_size_per_layer_input=PLE,
                num_kv_shared_layers=kw["shared"], altup_num_inputs=kw["altup"], altup_active_idx=0,
                altup_correct_scale=kw["correct_scale"], laurel_rank=RANK,
                activation_sparsity_pattern=list(kw["sparsity"]), final_logit_softcapping=10.0,
                tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=0,
                rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": SWA_THETA},
                                 FULL: {"rope_type": "default", "rope_theta": FULL_THETA}})
    args.update(changes)
    return Gemma3nTextConfig(**args)


def build(name: str, vocab: int):
    from transformers import Gemma3nForCausalLM
    kw = MODELS[name][1]
    torch.manual_seed(kw["seed"])
    model = Gemma3nForCausalLM(text_config(name, vocab)).float().eval()
    gen = torch.Generator().manual_seed(kw["seed"] + 1000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("q_norm.weight", "k_norm.weight")):
                # scores scaled by 1, not 1/sqrt(d): QK-norm weights around 0.4 keep them near +-4
                # (as gemma4_factory), where one f16 rounding of a cached key moves no logit far
                p.copy_(0.4 + 0.1 * torch.randn(p.shape, generator=gen))
            elif pname.endswith(("norm.weight", "correct_output_scale")):
                # Gemma 3n multiplies by w: around 1, random (a + 1 would show; the output scale's
                # init of 0 would hide the per-layer inputs' gate)
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif pname.endswith(("correction_coefs.weight", "prediction_coefs.weight")):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def save_hf(model, tok, out_dir: Path) -> Path:
    return moe.save_hf(model, tok, out_dir)


def gguf_tensors(hf_dir: Path) -> dict:
    out, streams = {}, {}
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        if name in _GLOBAL:
            if _GLOBAL[name]:
                out[_GLOBAL[name]] = w
            continue
        m = _STREAMS.match(name)
        if m:   # the converter stacks each kind's per-stream projections into one tensor
            kind = "altup_proj.weight" if m.group(1) == "projections" else "altup_unembd_proj.weight"
            streams.setdefault(kind, {})[int(m.group(2))] = w
            continue
        layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)$", name).groups()
        out[f"blk.{layer}.{_LAYER[rest]}"] = w
    for kind, parts in streams.items():
        out[kind] = np.stack([parts[i] for i in range(len(parts))])
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(hf_dir: Path, path: Path, type_name: str, arch: str, c, tok, extra_meta=None, vocab=None) -> Path:
    """vocab: (tokenizer tables, chat template), or None for the tiny BPE's own."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-gemma3n")
    ffn = c.intermediate_size
    meta = {
        "add_block_count": c.num_hidden_layers, "add_context_length": c.max_position_embeddings,
        "add_embedding_length": c.hidden_size,
        "add_feed_forward_length": ffn if len(set(ffn)) > 1 else ffn[0],
        "add_head_count": c.num_attention_heads, "add_head_count_kv": c.num_key_value_heads,
        "add_layer_norm_rms_eps": c.rms_norm_eps,
        "add_rope_freq_base": float(c.rope_parameters[FULL]["rope_theta"]),
        "add_rope_freq_base_swa": float(c.rope_parameters[SLIDING]["rope_theta"]),
        "add_sliding_window": c.sliding_window, "add_sliding_window_pattern": [t == SLIDING for t in c.layer_types],
        "add_key_length": c.head_dim, "add_value_length": c.head_dim,
        "add_shared_kv_layers": c.num_kv_shared_layers,
        "add_embedding_length_per_layer_input": c.hidden_size_per_layer_input,
        "add_altup_active_idx": c.altup_active_idx, "add_altup_num_inputs": c.altup_num_inputs,
        # each layer's normal quantile of its sparsity, as the converter computes it (-inf for 0)
        "add_activation_sparsity_scale": [torch.distributions.normal.Normal(0, 1).icdf(
            torch.tensor(s, dtype=torch.float32)).item() for s in c.activation_sparsity_pattern],
        "add_final_logit_softcapping": c.final_logit_softcapping,
    }
    meta.update(extra_meta or {})
    for key, value in meta.items():
        if value is not None:
            getattr(w, key)(value)
    if vocab is None:
        mf.add_bpe_vocab(w, mf.tokenizer_tables(tok), 0, 1)
    else:
        mf.add_bpe_vocab(w, vocab[0], tok.token_to_id(mf.BOS_TOKEN), tok.token_to_id(mf.EOS_TOKEN), add_bos=True,
                         chat_template=vocab[1])
    qtype = gguf.GGMLQuantizationType[type_name]
    kept = tuple(_LAYER[k] for k in _KEPT_F32)
    for name, t in gguf_tensors(hf_dir).items():
        if t.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32 or name.endswith(kept):
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    return mf.write_and_close(w, path)


def quantized_reference(model, type_name: str):
    """The transformers model with every matrix the GGUF quantizes rounded (moe_factory's)."""
    return moe.rounded_reference(model, type_name, kept=_KEPT_F32)


FORMATS = ("hf-F32", "gguf-F32", "gguf-Q8_0")


def models_fixture():
    """The module-scoped fixture `models` over this module's MODELS (moe_factory.formats_fixture)."""
    import sys
    return moe.formats_fixture(sys.modules[__name__], "gemma3n")
