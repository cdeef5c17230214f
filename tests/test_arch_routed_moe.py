"""The mixtures of experts with shared experts and leading dense layers (tests/routed_moe_factory.py:
GLM-4.5 and GLM-4.5-Air, glm4moe; ERNIE 4.5 MoE, ernie4_5-moe; DeepSeek V2-Lite, V3 and
GLM-4.7-Flash and Mistral 4 with latent attention, deepseek2; MiniMax-M2, minimax-m2) against
transformers: logits on prefill and decode, as HF F32 and
GGUF F32 / Q8_0, on the CPU and emulated Metal, and 32 greedy tokens.

Bounds are tests/test_arch_moe.py's (the same kernels and paths). The references model forgert's
cache (routed_moe_factory.cache_reference): f16 K / V rows, or for the latent models the f16 latent
rows forgert caches (transformers' own latent cache, rounded where it is expanded). Against plain
f32 transformers the latent rows' f16 rounding alone moves the tiny models' logits by up to
1.5e-3 / 8e-4 (max_rel / rms_rel), and flips an expert choice at one of Mistral 4's 24 decode
positions (max_rel 0.21): a property of the cache's precision, which transformers shows as much
as forgert. Measured here, latent models (64-token prefill, 24 decode steps), max_rel / rms_rel:
  F32 (HF and GGUF), CPU and Metal: 7.6e-5 / 4.4e-5 (bounds 5e-4 / 2.5e-4; the other models 1.44e-4 / 9.0e-5)
  Q8_0, CPU prefill 7.9e-4 / 5.2e-4, decode 9.5e-4 / 5.5e-4 (bounds 3e-3 / 2e-3)
  Q8_0, Metal 1.4e-3 / 8.0e-4 (bounds 5e-3 / 4e-3); argmax agreement 1.0 (bound 0.95)
"""
from __future__ import annotations

import pytest

import arch_e2e as ae
import model_factory as mf
import routed_moe_factory as rmf
from conftest import backend_params, require_backend
from test_arch_moe import bounds
from test_e2e_tiny import compare_logits

models = rmf.models_fixture()
NAMES = list(rmf.MODELS)


ids_for = ae.factory_ids   # (the shared checks' prompts)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", rmf.FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_prefill_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_prefill(forgert, files, refs, fmt, backend, model.config.vocab_size, rmf.MODELS[name][0], bounds(fmt, False, backend), name)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", rmf.FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_decode_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_decode(forgert, files, refs, fmt, backend, model.config.vocab_size, bounds(fmt, True, backend), name)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("name", ["glm4moe", "ernie4_5-moe", "deepseek-v2-lite", "deepseek-v3", "glm4moe-lite", "minimax-m2",
                                  "mistral4"])
def test_greedy_32_tokens_equal_transformers(forgert, models, name, fmt):
    model, files, refs = models(name)
    ae.check_factory_greedy(forgert, files, refs, fmt, model.config.vocab_size)


def check_export(forgert, models, name: str, tmp_path):
    """`forgert quantize` of model `name`'s HF directory to an F32 GGUF runs as transformers does;
    returns the gguf package's reader of the file, for the caller's checks of its keys."""
    import gguf
    from forgert.gguf_export import export_gguf
    model, files, refs = models(name)
    out = tmp_path / f"{name}-exported.gguf"
    export_gguf(str(files["hf-F32"]), str(out), "f32", log=lambda msg: None)
    ids = ids_for(model.config.vocab_size, 48, 6)
    compare_logits(forgert.Model(str(out), backend="cpu").logits(ids), mf.reference_logits(refs["hf-F32"], ids),
                   **bounds("hf-F32", False), what=f"{name} exported")
    return gguf.GGUFReader(str(out))

