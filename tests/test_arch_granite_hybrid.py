"""Granite 4.0-H (tests/mamba2_factory.py: Mamba2 layers beside attention layers without RoPE, the
shared MLP alone (dense) or beside 8 experts with two Mamba2 groups, Granite's multipliers) against
transformers: logits on prefill and decode, as HF F32 and GGUF F32 / Q8_0 in llama.cpp's
granitehybrid layout, on the CPU and emulated Metal; 32 greedy tokens; its states resumed and
batched as Qwen3.5's are (tests/test_qwen35_state.py: a subset); the state's bytes; unsupported
Granite settings refused by name.

transformers runs its prefill through the chunked segment-sum scan (chunks of 16 here, so the
64-token prefill crosses chunks) and its decode through the single-step update; forgert's scan is
the recurrence token by token (test_mamba2_ops.py ties the two). Bounds are tests/test_arch_moe.py's
(the same kernels and paths). Measured here, worst over the two models (64-token prefill, 24 decode
steps), max_rel / rms_rel:
  F32 (HF and GGUF), CPU and Metal: 1.5e-5 / 5.9e-6 (bounds 5e-4 / 2.5e-4)
  Q8_0, CPU: prefill 1.6e-4 / 1.2e-4, decode 1.5e-4 / 1.1e-4 (bounds 3e-3 / 2e-3)
  Q8_0, Metal: prefill 1.0e-3 / 7.1e-4 (the prefill GEMM stages quantized weights in half),
  decode 1.8e-6 / 1.0e-6 (bounds 5e-3 / 4e-3); argmax agreement 1.0 (bound 0.95)
The MoE model's router is scaled so that no routing choice sits near a tie (mamba2_factory's
ROUTER_SCALE): a flipped choice would also carry on through the Mamba2 states to later rows.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import arch_e2e as ae
import mamba2_factory as gf
import model_factory as mf
from conftest import backend_params, require_backend
from test_arch_moe import bounds
from test_e2e_tiny import compare_logits

models = gf.models_fixture()
NAMES = ["granite4h-dense", "granite4h-moe"]


ids_for = ae.factory_ids   # (the shared checks' prompts)


def prompt(n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(2, 320, n)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", gf.FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_prefill_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_prefill(forgert, files, refs, fmt, backend, model.config.vocab_size, "granitehybrid", bounds(fmt, False, backend), name)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", gf.FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_decode_logits_match_transformers(forgert, models, metal_reason, name, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models(name)
    ae.check_factory_decode(forgert, files, refs, fmt, backend, model.config.vocab_size, bounds(fmt, True, backend), name)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("name", NAMES)
def test_greedy_32_tokens_equal_transformers(forgert, models, name, fmt):
    model, files, refs = models(name)
    ae.check_factory_greedy(forgert, files, refs, fmt, model.config.vocab_size)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
def test_rope_variant_matches_transformers(forgert, models, fmt):
    """position_embedding_type "rope" (Bamba's way; Granite 4.0-H has none): RoPE on the attention
    layers, HF's half split and the GGUF's permuted rows (measured max_rel 1.6e-5, rms_rel 4.7e-6;
    the same model without RoPE is 0.18 / 0.085 away)."""
    model, files, refs = models("granite4h-rope")
    ids = ids_for(model.config.vocab_size, 64, 8)
    m = forgert.Model(str(files[fmt]), backend="cpu")
    assert not any("no RoPE" in f for f in m.info()["features"])
    compare_logits(m.logits(ids), mf.reference_logits(refs[fmt], ids), **bounds(fmt, False), what=f"rope {fmt}")


def test_features_and_state_bytes(forgert, models):
    """The layer pattern and sizes from both formats, and the state per sequence by hand: 5 Mamba2
    layers x 4 bytes x (3 past inputs x (128 + 2 x 2 x 16) channels + 8 heads x 16 x 16) = 52480
    (the MoE model: two groups); K/V per token: the one attention layer's 2 x (2 heads x 16) x 2."""
    _, files, _ = models("granite4h-moe")
    for fmt in ("hf-F32", "gguf-F32"):
        info = forgert.Model(str(files[fmt]), backend="cpu", n_ctx=64).info()
        assert any("Mamba2 in 5 of 6 layers (8 heads of 16, 2 groups, state 16, convolution 4)" in f
                   for f in info["features"]), info["features"]
        assert info["state_bytes_per_sequence"] == 5 * 4 * (3 * (128 + 2 * 2 * 16) + 8 * 16 * 16) == 52480
        assert info["kv_bytes_per_token"] == 2 * 32 * 2


def test_multipliers_and_nope_matter(models):
    """The reference itself changes with each Granite setting forgert reads (so matching it means
    reading them): the residual multiplier and RoPE on the attention layer."""
    model, _, _ = models("granite4h-dense")
    ids = ids_for(model.config.vocab_size, 16, 7)
    base = mf.reference_logits(model, ids)
    for change in (dict(residual_multiplier=1.0), dict(logits_scaling=1.0)):
        other = ae.with_config(type("TM", (), {"model": model})(), **change)
        assert np.max(np.abs(mf.reference_logits(other, ids) - base)) > 1e-2, change


@pytest.mark.parametrize("backend", backend_params())
def test_follow_up_prompt_resumes_and_equals_fresh(forgert, models, metal_reason, backend):
    """A follow-up prompt continues where the state stands (the pipelined decode too on Metal)."""
    require_backend(backend, metal_reason)
    path = str(models("granite4h-moe")[1]["gguf-F32"])

    def fresh(p):
        return list(forgert.Model(path, backend=backend, n_ctx=256).generate(
            p, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)

    m = forgert.Model(path, backend=backend, n_ctx=256)
    first = prompt(20, 5)
    c1 = m.generate(first, max_tokens=6, temperature=0.0, ignore_eos=True)
    follow = first + list(c1.tokens) + prompt(7, 6)
    c2 = m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert c2.timings.cached_tokens == len(first) + len(c1.tokens) - 1
    assert list(c2.tokens) == fresh(follow)


@pytest.mark.parametrize("backend", backend_params())
def test_batch_equals_one_by_one(forgert, models, metal_reason, backend):
    """Several prompts in one batch (each its own slot and state; one prompt twice), then a second
    batch extending the first's."""
    require_backend(backend, metal_reason)
    path = str(models("granite4h-dense")[1]["gguf-F32"])

    def fresh(p):
        return list(forgert.Model(path, backend=backend, n_ctx=256).generate(
            p, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)

    prompts = [prompt(12, 17), prompt(30, 18), prompt(12, 17), prompt(5, 19)]
    m = forgert.Model(path, backend=backend, n_ctx=256, parallel=3)
    got = m.generate(prompts, max_tokens=8, temperature=0.0, ignore_eos=True)
    for p, c in zip(prompts, got):
        assert list(c.tokens) == fresh(p)
    again = [p + list(c.tokens) + prompt(3, 20 + i) for i, (p, c) in enumerate(zip(prompts, got))]
    for p, c in zip(again, m.generate(again, max_tokens=8, temperature=0.0, ignore_eos=True)):
        assert list(c.tokens) == fresh(p)


def test_saved_state_round_trip(forgert, models):
    path = str(models("granite4h-dense")[1]["hf-F32"])
    m = forgert.Model(path, backend="cpu", n_ctx=256)
    a = prompt(24, 10)
    m.generate(a, max_tokens=1, temperature=0.0, ignore_eos=True)
    state = m.save_state()
    assert state.recurrent is not None and state.recurrent.size * 4 == m.info()["state_bytes_per_sequence"]
    m.generate(prompt(30, 11), max_tokens=4, temperature=0.0, ignore_eos=True)   # another sequence overwrites it
    m.load_state(state)
    follow = a + prompt(5, 12)
    c = m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert c.timings.cached_tokens == len(a)
    fresh = forgert.Model(path, backend="cpu", n_ctx=256).generate(follow, max_tokens=8, temperature=0.0,
                                                                     ignore_eos=True)
    assert list(c.tokens) == list(fresh.tokens)


def _changed_hf(models, tmp_path, **changes):
    _, files, _ = models("granite4h-dense")
    d = tmp_path / "changed"
    shutil.copytree(files["hf-F32"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))
    return d


@pytest.mark.parametrize("changes,match", [
    (dict(mamba_proj_bias=True), "mamba_proj_bias"),
    (dict(time_step_limit=[0.0, 0.1]), "time_step_limit"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
])
def test_unsupported_settings_refused_by_name(forgert, models, tmp_path, changes, match):
    from forgert.errors import ModelFormatError
    with pytest.raises(ModelFormatError, match=match):
        forgert.Model(str(_changed_hf(models, tmp_path, **changes)), backend="cpu")


def test_quantize_hf_directory_refused_by_name(forgert, models, tmp_path):
    """forgert quantize: an HF directory is refused by name; a GGUF of it requantizes and runs as
    the directory does (greedy tokens)."""
    from forgert.errors import ModelFormatError
    from forgert.gguf_export import export_gguf
    model, files, refs = models("granite4h-moe")
    with pytest.raises(ModelFormatError, match="Granite 4.0-H and Nemotron-H / Nemotron 3 HF directories cannot be quantized"):
        export_gguf(str(files["hf-F32"]), str(tmp_path / "x.gguf"), "q8_0", log=lambda msg: None)
    out = tmp_path / "requantized.gguf"
    export_gguf(str(files["gguf-F32"]), str(out), "q8_0", log=lambda msg: None)
    m = forgert.Model(str(out), backend="cpu")
    assert m.info()["arch"] == "granitehybrid"
    p = ids_for(model.config.vocab_size, 8, 4)
    assert list(m.generate(p, max_tokens=8, temperature=0.0, ignore_eos=True).tokens) == \
        list(forgert.Model(str(files["gguf-Q8_0"]), backend="cpu").generate(
            p, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)
