"""The per-layer attention settings of the `_core` config (docs/design.md): a RoPE table per
layer (or none: NoPE layers), several tables, and the config checks that guard them.

The reference for NoPE layers is transformers' SmolLM3ForCausalLM (no_rope_layers) over the
weights of a tiny Llama: the same tensors, with RoPE switched off on chosen layers.
"""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf

BACKENDS = ["cpu", pytest.param("metal", marks=pytest.mark.metal)]


def _engine(core, loaded, backend, **overrides):
    cfg = loaded.config.core_dict(n_ctx=64)
    cfg.update(overrides)
    return core.Engine(cfg, loaded.core_tensors, backend=backend, n_threads=1)


def _all_logits(eng, ids):
    return np.asarray(eng.forward(np.asarray(ids, np.int32), 0, all_logits=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nope_layers_match_transformers_smollm3(tiny_models, core, backend):
    from conftest import metal_skip_reason
    if backend == "metal" and metal_skip_reason():
        pytest.skip(metal_skip_reason())
    import torch
    from transformers import LlamaForCausalLM, SmolLM3Config, SmolLM3ForCausalLM
    from forgert.loader import load_model
    tm = tiny_models("llama3_untied")          # three layers, HF layout (neox pairs)
    llama = LlamaForCausalLM.from_pretrained(str(tm.path("hf-F32")), dtype=torch.float32)
    c = llama.config
    sm_cfg = SmolLM3Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters=dict(c.rope_parameters), tie_word_embeddings=False,
        no_rope_layers=[1, 0, 1],              # 1: RoPE on; layer 1 has none
        pad_token_id=None, bos_token_id=None, eos_token_id=None)
    smol = SmolLM3ForCausalLM(sm_cfg).eval()
    smol.load_state_dict(llama.state_dict())
    ids = np.random.default_rng(11).integers(0, c.vocab_size, 24).tolist()
    with torch.no_grad():
        ref = mf.reference_logits(mf.with_f16_kv(smol), ids)
        with_rope = mf.reference_logits(mf.with_f16_kv(llama), ids)
    scale = float(np.abs(ref).max())
    assert float(np.abs(with_rope - ref).max()) / scale > 1e-2   # the NoPE layer changes the answer

    loaded = load_model(str(tm.path("hf-F32")))
    got = _all_logits(_engine(core, loaded, backend, layer_rope=[0, -1, 0]), ids)
    # F32 weights: the tiny-model bound of test_e2e_tiny (5e-4 of max|logit|)
    assert float(np.abs(got - ref).max()) / scale < 5e-4
    # token by token (decode kernels) too
    eng = _engine(core, loaded, backend, layer_rope=[0, -1, 0])
    steps = np.concatenate([np.asarray(eng.forward(np.asarray([t], np.int32), i)).reshape(1, -1)
                            for i, t in enumerate(ids)])
    assert float(np.abs(steps - ref).max()) / scale < 5e-4


def test_each_layer_reads_its_own_rope_table(tiny_models, core):
    """Two tables: layers pointing at table 1 rotate by table 1 only. All layers on a table
    that equals another model's single table give that model's logits exactly."""
    from forgert.loader import load_model
    loaded = load_model(str(tiny_models("llama3_untied").path("hf-F32")))
    base = loaded.config.rope_freqs
    scaled = (base / 4.0).astype(np.float32)
    ids = np.random.default_rng(12).integers(0, loaded.config.vocab, 20).tolist()
    one_table_scaled = _all_logits(_engine(core, loaded, "cpu", rope_freqs=scaled), ids)
    one_table_base = _all_logits(_engine(core, loaded, "cpu"), ids)
    two = np.stack([base, scaled])
    np.testing.assert_array_equal(_all_logits(_engine(core, loaded, "cpu", rope_freqs=two, layer_rope=[1, 1, 1]),
                                              ids), one_table_scaled)
    np.testing.assert_array_equal(_all_logits(_engine(core, loaded, "cpu", rope_freqs=two, layer_rope=[0, 0, 0]),
                                              ids), one_table_base)
    mixed = _all_logits(_engine(core, loaded, "cpu", rope_freqs=two, layer_rope=[0, 1, 0]), ids)
    scale = float(np.abs(one_table_base).max())
    assert float(np.abs(mixed - one_table_base).max()) / scale > 1e-3
    assert float(np.abs(mixed - one_table_scaled).max()) / scale > 1e-3


@pytest.mark.parametrize("overrides,match", [
    ({"layer_rope": [0, 1, 0]}, r"layer_rope\[1\] = 1 is not -1 or one of the 1 RoPE tables"),
    ({"layer_rope": [0, -2, 0]}, r"layer_rope\[1\] = -2"),
    ({"layer_rope": [0, 0]}, "layer_rope has 2 entries for 3 layers"),
    ({"layer_window": [0, -1, 0]}, r"layer_window\[1\] = -1 must be >= 0"),
    ({"layer_window": [4]}, "layer_window has 1 entries for 3 layers"),
    ({"layer_window": "abc"}, "'layer_window' must be a list of integers"),
    ({"layer_window": [0, 1.5, 0]}, r"'layer_window\[1\]' must be an integer"),
    ({"rope_dim": 7}, "rope_dim = 7 must be even"),
    ({"rope_dim": 64}, "rope_dim = 64 is outside 0..32"),
    ({"rope_dim": 12}, "rope_freqs has 16 entries, expected a multiple of rope_dim / 2 = 6"),
    ({"rope_attn_factor": 0.0}, "rope_attn_factor"),
    ({"rope_attn_factor": float("nan")}, "rope_attn_factor"),
])
def test_bad_per_layer_settings_are_refused_by_name(tiny_models, core, overrides, match):
    from forgert.loader import load_model
    loaded = load_model(str(tiny_models("llama3_untied").path("hf-F32")))   # head_dim 32, three layers
    with pytest.raises(ValueError, match=match):
        _engine(core, loaded, "cpu", **overrides)
