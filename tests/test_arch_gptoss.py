"""gpt-oss end to end: a tiny random GptOssForCausalLM (8 experts, top-4, 4 layers alternating a
WINDOW-key sliding window and full attention, attention sinks, biases on q/k/v/o, the router and
every expert, clamped SwiGLU, YaRN) as a GGUF in llama.cpp's layout (arch "gpt-oss"), its logits
against transformers (eager attention, K/V rounded to f16 as the engine's cache) through prefill
and decode on the CPU and emulated Metal, with test_arch_moe's bounds.

Measured (F32): CPU prefill 8.3e-6 max_rel / 4.1e-6 rms_rel, decode 1.0e-5 / 4.1e-6; emulated
Metal prefill 4.9e-5 / 1.5e-5, decode 1.3e-5 / 4.6e-6; argmax agreement 1.0 -> F32_BOUNDS
(5e-4 / 2.5e-4). The model exercises what it claims: 7% of the gate values exceed 7 and 14% of
the up values lie outside +-7 (both clamps act), and a reference without the sinks (Llama's eager
attention) misses by max_rel 1.3.
"""
from __future__ import annotations

import numpy as np
import pytest

import gptoss_factory as gf
import model_factory as mf
from conftest import backend_params
from test_arch_moe import F32_BOUNDS, engine, ids_for
from test_e2e_tiny import compare_logits

BACKENDS = backend_params()


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("gptoss")
    vocab = tiny_tokenizer.get_vocab_size()
    model = gf.build_gpt_oss(vocab)
    files = {"gguf-F32": gf.write_gguf(model, root / "m-F32.gguf", "F32", tiny_tokenizer)}
    return files, gf.with_f16_kv(model), vocab


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_oss_prefill_logits_match_transformers(forgert, gpt_oss, metal_reason, backend):
    files, ref, vocab = gpt_oss
    ids = ids_for(vocab, 40, 1)   # 5x the window
    out = np.asarray(engine(forgert, files["gguf-F32"], backend, metal_reason).forward(ids, 0, True))
    compare_logits(out, mf.reference_logits(ref, ids), **F32_BOUNDS, what=f"gpt-oss gguf-F32 {backend} prefill")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_oss_decode_logits_match_transformers(forgert, gpt_oss, metal_reason, backend):
    files, ref, vocab = gpt_oss
    ids = ids_for(vocab, 20, 2)
    eng = engine(forgert, files["gguf-F32"], backend, metal_reason)
    out = np.concatenate([np.asarray(eng.forward(ids[i:i + 1], i)).reshape(1, -1) for i in range(len(ids))])
    compare_logits(out, mf.reference_logits(ref, ids), **F32_BOUNDS, what=f"gpt-oss gguf-F32 {backend} decode")
