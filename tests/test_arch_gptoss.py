"""gpt-oss end to end: a tiny random GptOssForCausalLM (8 experts, top-4, 4 layers alternating a
WINDOW-key sliding window and full attention, attention sinks, biases on q/k/v/o, the router and
every expert, clamped SwiGLU, YaRN) as a GGUF in llama.cpp's layout (arch "gpt-oss"), its logits
against transformers (eager attention, K/V rounded to f16 as the engine's cache) through prefill
and decode on the CPU and emulated Metal, with test_arch_moe's bounds.

Measured (router_scale 0.3), max_rel / rms_rel:
  F32: prefill CPU 1.8e-6 / 9.7e-7, Metal 1.1e-5 / 5.1e-6; decode 3.6e-4 / 1.0e-4 on both (decode
    and prefill of the engine differ from token 5 on, identically on CPU and Metal; likely f16 K/V
    roundings flipped by GEMV vs GEMM summation order, amplified by this model's large clamped
    activations, as test_arch_moe notes for qwen3moe - not proven) -> F32_BOUNDS 5e-4 / 2.5e-4.
  Q8_0: CPU prefill 7.0e-4 / 3.4e-4, decode 1.3e-3 / 5.4e-4; Metal prefill 3.3e-3 / 1.4e-3,
    decode 5.1e-6 / 2.7e-6. Q8_0 with MXFP4 experts: CPU 6.3e-4 / 1.3e-3 (prefill / decode max),
    Metal 2.2e-3 / 1.2e-5 -> test_arch_moe's Q8_0 bounds.
  With router_scale 1.0 or 2.0 single tokens' top-4 sit within 0.002 of the 5th expert and
  F32 decode misses by 2.2e-3 (carried over: see the branch's report).
The model exercises what it claims: at router_scale 0.5, 7% of the gate values exceed 7 and 14%
of the up values lie outside +-7 (both clamps act), and a reference without the sinks (Llama's
eager attention) misses by max_rel 1.3.
"""
from __future__ import annotations

import numpy as np
import pytest

import gptoss_factory as gf
import model_factory as mf
from conftest import backend_params
from test_arch_moe import bounds, engine, ids_for
from test_e2e_tiny import compare_logits

BACKENDS = backend_params()
# format -> (type of the matrices, type of the expert stacks or None: the same)
FORMATS = {"gguf-F32": ("F32", None), "gguf-Q8_0": ("Q8_0", None), "gguf-Q8_0-MXFP4": ("Q8_0", "MXFP4")}


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("gptoss")
    vocab = tiny_tokenizer.get_vocab_size()
    model = gf.build_gpt_oss(vocab)
    files, refs = {}, {}
    for fmt, (qtype, expert_type) in FORMATS.items():
        files[fmt] = gf.write_gguf(model, root / f"m-{fmt}.gguf", qtype, tiny_tokenizer, expert_type)
        refs[fmt] = gf.with_f16_kv(gf.quantized_reference(model, qtype, expert_type) if qtype != "F32" else model)
    return files, refs, vocab


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt_oss_prefill_logits_match_transformers(forgert, gpt_oss, metal_reason, fmt, backend):
    files, refs, vocab = gpt_oss
    ids = ids_for(vocab, 40, 1)   # 5x the window
    out = np.asarray(engine(forgert, files[fmt], backend, metal_reason).forward(ids, 0, True))
    compare_logits(out, mf.reference_logits(refs[fmt], ids), **bounds(fmt, False, backend),
                   what=f"gpt-oss {fmt} {backend} prefill")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt_oss_decode_logits_match_transformers(forgert, gpt_oss, metal_reason, fmt, backend):
    files, refs, vocab = gpt_oss
    ids = ids_for(vocab, 20, 2)
    eng = engine(forgert, files[fmt], backend, metal_reason)
    out = np.concatenate([np.asarray(eng.forward(ids[i:i + 1], i)).reshape(1, -1) for i in range(len(ids))])
    compare_logits(out, mf.reference_logits(refs[fmt], ids), **bounds(fmt, True, backend),
                   what=f"gpt-oss {fmt} {backend} decode")
