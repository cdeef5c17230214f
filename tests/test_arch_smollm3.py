"""SmolLM3: Llama with no RoPE on every fourth layer. A tiny random SmolLM3ForCausalLM (five
layers, layer 3 without RoPE) as an HF directory (no_rope_layers) and as GGUF arch `smollm3`
(Q/K permuted as the converter's LlamaModel does; llama.cpp fixes the NoPE step at 4) against
transformers. The per-layer RoPE seam itself is tests/test_layer_seam.py's."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("smollm3_tied")


def test_nope_layer_is_visible(tm):
    """The NoPE layer must matter: the same weights with RoPE on every layer give logits far
    beyond the F32 bound (5e-4 of max|logit|)."""
    import copy
    from transformers import SmolLM3ForCausalLM
    cfg = copy.deepcopy(tm.model.config)
    cfg.no_rope_layers = [1] * cfg.num_hidden_layers
    all_rope = SmolLM3ForCausalLM(cfg).eval()
    all_rope.load_state_dict(tm.model.state_dict())
    ae.assert_visible(tm.model, all_rope, ae.token_ids(tm, 32, 1))


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_layer_rope_from_both_forms(tm):
    """HF no_rope_layers and GGUF's fixed step give the same per-layer RoPE tables."""
    from forgert.loader import load_model
    expect = [0 if f else -1 for f in tm.spec.no_rope_layers]
    assert load_model(str(tm.path("hf-F32"))).config.layer_rope == expect
    assert load_model(str(tm.path("gguf-F32"))).config.layer_rope == expect


def test_no_rope_layer_interval_without_the_list(tm, tmp_path):
    """A config with only no_rope_layer_interval (SmolLM3Config's own default rule)."""
    import json
    import shutil
    from forgert.loader import load_model
    d = tmp_path / "interval"
    shutil.copytree(tm.path("hf-F32"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("no_rope_layers", None)
    cfg["no_rope_layer_interval"] = 2
    (d / "config.json").write_text(json.dumps(cfg))
    assert load_model(str(d)).config.layer_rope == [0, -1, 0, -1, 0]


def test_bad_no_rope_layers_is_refused(forgert, tm, tmp_path):
    import json
    import shutil
    d = tmp_path / "bad"
    shutil.copytree(tm.path("hf-F32"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["no_rope_layers"] = [1, 1]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no_rope_layers"):
        forgert.Model(str(d), backend="cpu")


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_nope_layers(tm, fmt):
    from forgert.cli.info import describe
    from forgert.loader import load_model
    d = describe(load_model(str(tm.path(fmt))))
    assert d["arch"] == "smollm3"
    assert "no RoPE (NoPE) in layers 3" in d["features"]
