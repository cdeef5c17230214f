"""Cohere (GGUF arch `command-r`, HF `cohere`: Command-R, Aya Expanse; GGUF and HF `cohere2`:
Command R7B): Llama with one LayerNorm (mean subtracted, no bias) whose output attention and the
MLP both read, their outputs added to the residual together, logits times logit_scale, RoPE over
adjacent pairs in the HF checkpoint too; cohere2 adds three local layers (a window, RoPE) to one
global layer without RoPE. Tiny random Cohere and Cohere2 models as HF directories and as GGUF
against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("command_r")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_logit_scale_is_visible(tm):
    ae.assert_visible(tm.model, ae.with_config(tm, logit_scale=1.0), ae.token_ids(tm, 32, 1))


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_layout(forgert, tm, fmt):
    info = forgert.Model(str(tm.path(fmt)), backend="cpu").info()
    assert info["arch"] == "command-r"
    assert "attention and feed-forward in parallel from one pre-norm" in info["features"]
    assert "LayerNorm (no bias)" in info["features"]


def test_qk_norm_is_refused_by_name(forgert, tm, tmp_path):
    """Command R+'s use_qk_norm (per-head LayerNorms of Q and K) is refused, saying so."""
    ae.assert_hf_config_refused(forgert, tm, tmp_path, "use_qk_norm", use_qk_norm=True)
