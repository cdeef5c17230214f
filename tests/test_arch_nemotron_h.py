"""Nemotron-H (tests/nemotron_h_factory.py: blocks of one Mamba2 mixer, NoPE attention or a
ReLU-squared MLP each, paired into forgert's layers: a mixer with the MLP block after it, or alone)
against transformers: logits on prefill and decode, as HF F32 and GGUF F32 / Q8_0 in llama.cpp's
nemotron_h layout, on the CPU and emulated Metal; 32 greedy tokens; a follow-up prompt and a batch
against fresh runs; unpaired MLP blocks refused by name (Nemotron 3's experts:
test_arch_nemotron_h_moe.py).

Bounds are tests/test_arch_moe.py's (the same kernels and paths). Measured here (64-token prefill,
24 decode steps), max_rel / rms_rel:
  F32 (HF and GGUF), CPU: 1.4e-5 / 8.8e-6; Metal: 1.2e-4 / 4.6e-5 (bounds 5e-4 / 2.5e-4)
  Q8_0, CPU: prefill 1.5e-4 / 8.9e-5, decode 1.2e-4 / 9.6e-5 (bounds 3e-3 / 2e-3)
  Q8_0, Metal: prefill 9.4e-4 / 5.7e-4, decode 3.6e-6 / 1.9e-6 (bounds 5e-3 / 4e-3); argmax 1.0
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import arch_e2e as ae
import model_factory as mf
import nemotron_h_factory as nf
from conftest import backend_params, require_backend
from test_arch_moe import bounds
from test_e2e_tiny import compare_logits

models = nf.models_fixture()


ids_for = ae.factory_ids   # (the shared checks' prompts)


def prompt(n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(2, 320, n)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", nf.FORMATS)
def test_prefill_logits_match_transformers(forgert, models, metal_reason, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models("nemotron-h")
    ae.check_factory_prefill(forgert, files, refs, fmt, backend, model.config.vocab_size, "nemotron_h", bounds(fmt, False, backend), "nemotron-h")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", nf.FORMATS)
def test_decode_logits_match_transformers(forgert, models, metal_reason, fmt, backend):
    require_backend(backend, metal_reason)
    model, files, refs = models("nemotron-h")
    ae.check_factory_decode(forgert, files, refs, fmt, backend, model.config.vocab_size, bounds(fmt, True, backend), "nemotron-h")


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
def test_greedy_32_tokens_equal_transformers(forgert, models, fmt):
    model, files, refs = models("nemotron-h")
    ae.check_factory_greedy(forgert, files, refs, fmt, model.config.vocab_size)


def test_blocks_paired_into_layers(forgert, models):
    """"M-M*-MM-*": 9 blocks, 6 layers (4 Mamba2, 2 attention), 3 with a feed-forward; K/V rows for
    the two attention layers only."""
    _, files, _ = models("nemotron-h")
    for fmt in ("hf-F32", "gguf-F32"):
        info = forgert.Model(str(files[fmt]), backend="cpu", n_ctx=64).info()
        assert any("Mamba2 in 4 of 6 layers (8 heads of 16, 2 groups" in f for f in info["features"]), info
        assert any("a feed-forward in 3 of 6 layers" in f for f in info["features"]), info["features"]
        assert info["kv_bytes_per_token"] == 2 * 2 * 32 * 2


@pytest.mark.parametrize("backend", backend_params())
def test_follow_up_prompt_and_batch_equal_fresh(forgert, models, metal_reason, backend):
    require_backend(backend, metal_reason)
    path = str(models("nemotron-h")[1]["gguf-F32"])

    def fresh(p):
        return list(forgert.Model(path, backend=backend, n_ctx=256).generate(
            p, max_tokens=8, temperature=0.0, ignore_eos=True).tokens)

    m = forgert.Model(path, backend=backend, n_ctx=256, parallel=2)
    first = prompt(20, 5)
    c1 = m.generate(first, max_tokens=6, temperature=0.0, ignore_eos=True)
    follow = first + list(c1.tokens) + prompt(7, 6)
    c2 = m.generate(follow, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert c2.timings.cached_tokens == len(first) + len(c1.tokens) - 1
    assert list(c2.tokens) == fresh(follow)
    prompts = [first, follow, prompt(9, 7)]
    for p, c in zip(prompts, m.generate(prompts, max_tokens=8, temperature=0.0, ignore_eos=True)):
        assert list(c.tokens) == fresh(p)


@pytest.mark.parametrize("changes,match", [
    (dict(layers_block_type=["linear_attention", "mlp", "mlp", "full_attention", "mlp", "linear_attention",
                             "linear_attention", "mlp", "full_attention"]), "block 2 is an MLP that follows no mixer"),
    (dict(mlp_hidden_act="silu"), "activations 'silu'"),
    (dict(use_bias=True), "use_bias=true"),
])
def test_unsupported_configs_refused_by_name(forgert, models, tmp_path, changes, match):
    _, files, _ = models("nemotron-h")
    ae.assert_hf_dir_refused(forgert, files["hf-F32"], tmp_path, match, **changes)


@pytest.mark.parametrize("key,match", [
    ("nemotron_h.block_count", r"metadata 'nemotron_h\.block_count' must be an integer >= 0, got array"),
    ("nemotron_h.expert_count", r"metadata 'nemotron_h\.expert_count' must be an integer >= 0, got array"),
])
def test_gguf_scalar_given_as_an_array_refused_by_name(forgert, models, tmp_path, key, match):
    """An array where an integer goes was NumPy's "truth value of an array ... is ambiguous"."""
    import gguf
    _, files, _ = models("nemotron-h")
    t = gguf.GGUFValueType
    ae.assert_gguf_meta_refused(forgert, files["gguf-F32"], tmp_path, key, [1, 2], (t.ARRAY, t.UINT32), match)


def test_hybrid_override_pattern_read(forgert, models, tmp_path):
    """The checkpoints' own key (a string, "M-M*-MM-*") in place of layers_block_type."""
    model, files, refs = models("nemotron-h")
    d = tmp_path / "pattern"
    shutil.copytree(files["hf-F32"], d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["layers_block_type"]
    (d / "config.json").write_text(json.dumps({**cfg, "hybrid_override_pattern": nf.MODELS["nemotron-h"][1]["pattern"]}))
    ids = ids_for(model.config.vocab_size, 16, 3)
    compare_logits(forgert.Model(str(d), backend="cpu").logits(ids), mf.reference_logits(refs["hf-F32"], ids),
                   **bounds("hf-F32", False), what="hybrid_override_pattern")


def test_quantize_gguf_and_refuse_hf_directory(forgert, models, tmp_path):
    """forgert quantize: a GGUF requantizes block for block as the file has them (and runs as the
    factory's Q8_0 file does); an HF directory is refused by name."""
    from forgert.errors import ModelFormatError
    from forgert.gguf_export import export_gguf
    from forgert.gguf import GGUFFile
    model, files, _ = models("nemotron-h")
    with pytest.raises(ModelFormatError, match="Nemotron-H / Nemotron 3 HF directories cannot be quantized"):
        export_gguf(str(files["hf-F32"]), str(tmp_path / "x.gguf"), "q8_0", log=lambda msg: None)
    out = tmp_path / "requantized.gguf"
    export_gguf(str(files["gguf-F32"]), str(out), "q8_0", log=lambda msg: None)
    src, dst = GGUFFile(str(files["gguf-F32"])), GGUFFile(str(out))
    assert {n: list(t.ne) for n, t in dst.tensors.items()} == {n: list(t.ne) for n, t in src.tensors.items()}
    p = ids_for(model.config.vocab_size, 8, 4)
    assert list(forgert.Model(str(out), backend="cpu").generate(p, max_tokens=8, temperature=0.0,
                                                                 ignore_eos=True).tokens) == \
        list(forgert.Model(str(files["gguf-Q8_0"]), backend="cpu").generate(p, max_tokens=8, temperature=0.0,
                                                                             ignore_eos=True).tokens)
