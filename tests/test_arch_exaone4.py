"""EXAONE 4 (GGUF arch `exaone4`, HF `exaone4`: LG's EXAONE 4.0 1.2B and 32B): OLMo 2's layer
(no pre-norms; an RMSNorm on each sub-layer's output before its residual add) with Qwen3's
per-head QK-norm, and the 32B's hybrid attention: three local layers (sliding window, RoPE) to one
global layer without RoPE. A tiny random Exaone4ForCausalLM (window 8, layers 0-2 and 4 local) as
an HF directory and as GGUF against transformers, on the CPU and emulated Metal."""
from __future__ import annotations

import pytest

import arch_e2e as ae

tm, reference = ae.model_fixtures("exaone4")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_hybrid_attention_is_visible(tm):
    """The window and the global layer's missing RoPE matter: the same weights with every layer
    global and rotated (sliding_window None) move the logits of 32 positions (window 8) far
    beyond the F32 bound."""
    plain = ae.with_config(tm, sliding_window=None, layer_types=["full_attention"] * tm.spec.n_layers)
    ae.assert_visible(tm.model, plain, ae.token_ids(tm, 32, 1))


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_layout(forgert, tm, fmt):
    info = forgert.Model(str(tm.path(fmt)), backend="cpu").info()
    assert info["arch"] == "exaone4"
    feats = info["features"]
    assert "norms on each sub-layer's output only (no pre-norms)" in feats
    assert "QK-norm (RMSNorm on each head of Q and K)" in feats
    assert "no RoPE (NoPE) in layers 3" in feats and "sliding window 8 in layers 0, 1, 2, 4" in feats


def test_gguf_without_pattern_runs_global_as_llama_cpp(forgert, tm, tmp_path):
    """A file under 64 layers with a window but no pattern (llama.cpp's exaone4 loader: only the
    32B's 64 layers are hybrid) runs every layer global with RoPE, as transformers does with
    sliding_window None."""
    import model_factory as mf
    path = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "no-pattern.gguf", "F32", swa_pattern=False)
    m = forgert.Model(str(path), backend="cpu")
    feats = m.info()["features"]
    assert not [f for f in feats if "sliding window" in f or "NoPE" in f]
    plain = ae.with_config(tm, sliding_window=None, layer_types=["full_attention"] * tm.spec.n_layers)
    ids = ae.token_ids(tm, 32, 5)
    ae.compare_logits(m.logits(ids), mf.reference_logits(mf.with_f16_kv(plain), ids), **ae.bounds_for("hf-F32", 32),
                      what="exaone4 without pattern")


def test_gguf_keys_are_the_converters(tm):
    import gguf
    f = gguf.GGUFReader(str(tm.gguf_files["F32"])).fields
    assert int(f["exaone4.attention.sliding_window"].parts[-1][0]) == 8
    pattern = [bool(f["exaone4.attention.sliding_window_pattern"].parts[i][0])
               for i in f["exaone4.attention.sliding_window_pattern"].data]
    assert pattern == [True, True, True, False, True]


def test_local_layers_rotate_at_freq_base_swa(forgert, tm, tmp_path):
    """llama.cpp's exaone4 loader rotates a hybrid file's local layers at rope.freq_base_swa
    where the file has it; forgert read rope.freq_base there."""
    ae.check_local_theta_from_freq_base_swa(forgert, tm, tmp_path)
