"""Mistral 3 (GGUF arch `mistral3`, HF `ministral3`: Ministral 3, Devstral Small 2): Llama with YaRN
(mscale and mscale_all_dim 1, llama.cpp's yarn_log_multiplier) and the Llama 4 query temperature,
q times 1 + beta ln(floor(pos / original) + 1), which is 1 below YaRN's original context. A tiny
random Ministral3ForCausalLM as an HF directory and as GGUF against transformers, within that
context (forgert runs only there, and says so past it)."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("ministral3")
ORIGINAL = 128


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_yarn_is_visible(tm):
    """The check is only a check if the YaRN frequencies matter: the same weights with plain RoPE
    give logits far beyond the F32 bound at 64 positions."""
    import copy
    from transformers import Ministral3ForCausalLM
    cfg = copy.deepcopy(tm.model.config)
    r = cfg.rope_parameters
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": r["rope_theta"],   # the temperature's keys kept
                           "llama_4_scaling_beta": r["llama_4_scaling_beta"],
                           "original_max_position_embeddings": r["original_max_position_embeddings"]}
    plain = Ministral3ForCausalLM(cfg).float().eval()
    plain.load_state_dict(tm.model.state_dict())
    ae.assert_visible(tm.model, plain, ae.token_ids(tm, 64, 1))


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_context_stops_where_the_temperature_starts(forgert, tm, fmt):
    """The default context is the original one (the model's own is 512), and a longer one is refused
    naming what forgert does not implement."""
    m = forgert.Model(str(tm.path(fmt)), backend="cpu")
    assert m.n_ctx == ORIGINAL and m.info()["arch"] == "mistral3"
    assert f"query temperature (beta 0.1) from position {ORIGINAL}: forgert runs contexts up to it" in \
        m.info()["features"]
    assert forgert.Model(str(tm.path(fmt)), backend="cpu", n_ctx=ORIGINAL).n_ctx == ORIGINAL
    with pytest.raises(ValueError, match=f"n_ctx=512 is past .* original context of {ORIGINAL} tokens.*attention "
                                         f"temperature.*n_ctx <= {ORIGINAL}"):
        forgert.Model(str(tm.path(fmt)), backend="cpu", n_ctx=512)


def test_gguf_keys_are_the_converters(tm):
    import gguf
    r = gguf.GGUFReader(str(tm.gguf_files["F32"]))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "mistral3"
    assert float(r.fields["mistral3.attention.temperature_scale"].parts[-1][0]) == pytest.approx(0.1)
    assert float(r.fields["mistral3.rope.scaling.yarn_log_multiplier"].parts[-1][0]) == 1.0
