"""StarCoder2 (GGUF arch `starcoder2`, HF `starcoder2`: StarCoder2 3B / 7B / 15B): LayerNorms with
biases, q/k/v/o biases, and a plain feed-forward with biases, x += w_down gelu_tanh(w_up xn + b_up)
+ b_down (a new GELU op on the CPU and Metal: tests/test_cpu_ops.py, tests/test_metal_ops.py). A
tiny random Starcoder2ForCausalLM as an HF directory and as GGUF against transformers, on the CPU
and emulated Metal."""
from __future__ import annotations

import arch_e2e as ae

tm, reference = ae.model_fixtures("starcoder2")


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_biases_are_visible(tm):
    """The norm and feed-forward biases matter: the same model with them zeroed moves the logits
    far beyond the F32 bound."""
    import torch
    plain = ae.with_config(tm)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name.endswith(".bias") and ("norm" in name or "mlp" in name):
                p.zero_()
    ae.assert_visible(tm.model, plain, ae.token_ids(tm, 32, 1))


def test_info_names_the_layout(forgert, tm):
    feats = forgert.Model(str(tm.path("gguf-Q8_0")), backend="cpu").info()["features"]
    assert "LayerNorm (with bias)" in feats and "plain GELU feed-forward with biases (no gate)" in feats


def test_gguf_sliding_window_is_read(forgert, tm, tmp_path):
    """A starcoder2 file with attention.sliding_window windows every layer, as transformers does
    with the config's sliding_window (llama.cpp's starcoder2 ignores the key)."""
    import model_factory as mf
    path = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "windowed.gguf", "F32",
                         extra_keys={"starcoder2.attention.sliding_window": 8})
    m = forgert.Model(str(path), backend="cpu")
    assert "sliding window 8 in every layer" in m.info()["features"]
    windowed = mf.with_f16_kv(ae.with_config(tm, sliding_window=8))
    ids = ae.token_ids(tm, 32, 6)
    ae.compare_logits(m.logits(ids), mf.reference_logits(windowed, ids), **ae.bounds_for("gguf-F32", 32),
                      what="starcoder2 windowed")
