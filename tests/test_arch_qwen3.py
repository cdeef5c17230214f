"""Qwen3 (dense): RMSNorm over each head of Q and K before RoPE, head_dim independent of the
hidden size, no QKV bias. A tiny random Qwen3ForCausalLM as an HF directory and as GGUF
(arch `qwen3`, blk.N.attn_q_norm / attn_k_norm, key_length) against transformers."""
from __future__ import annotations

import pytest

import arch_e2e as ae
import model_factory as mf

tm, reference = ae.model_fixtures("qwen3_tied")


def test_qk_norm_is_visible(tm):
    """The test is only a test if dropping the QK-norm changes the logits far beyond the F32
    bound (5e-4 of max|logit|)."""
    import copy
    import torch
    plain = copy.deepcopy(tm.model)
    for layer in plain.model.layers:
        layer.self_attn.q_norm = torch.nn.Identity()
        layer.self_attn.k_norm = torch.nn.Identity()
    ae.assert_visible(tm.model, plain, ae.token_ids(tm, 24, 1))


class TestAgreesWithTransformers(ae.AgreesWithTransformers):
    pass


def test_gguf_layout_is_the_converters(tm):
    """The factory's GGUF is what convert_hf_to_gguf.py writes for Qwen3 (read by the gguf package)."""
    import gguf
    r = gguf.GGUFReader(str(tm.gguf_files["F32"]))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert arch == "qwen3"
    names = {t.name for t in r.tensors}
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= names
    assert not any(n.endswith(".bias") for n in names)
    assert int(r.fields["qwen3.attention.key_length"].parts[-1][0]) == tm.spec.head_dim


def test_missing_qk_norm_is_refused(forgert, tm, tmp_path):
    """A qwen3 GGUF without a layer's attn_k_norm is an error naming the tensor."""
    tensors = mf.gguf_tensors(tm.model, tm.spec)
    del tensors["blk.1.attn_k_norm.weight"]
    path = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "no_k_norm.gguf", "F32", tensors=tensors)
    with pytest.raises(ValueError, match="blk.1.attn_k_norm.weight"):
        forgert.Model(str(path), backend="cpu")


def forgert_features(tm, fmt):
    """Model.info()'s features: the same list `forgert info` prints."""
    import forgert
    return forgert.Model(str(tm.path(fmt)), backend="cpu").info()["features"]


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_the_architecture_and_qk_norm(tm, fmt):
    from forgert.cli.info import describe
    from forgert.loader import load_model
    d = describe(load_model(str(tm.path(fmt))))
    assert d["arch"] == "qwen3" and d["features"] == forgert_features(tm, fmt)
    assert any(f.startswith("QK-norm") for f in d["features"])
    assert "head_dim 32 (q width 128 != dim 64)" in d["features"]


def test_unknown_architecture_is_refused_by_name(forgert, tm, tmp_path):
    """A GGUF of an architecture forgert does not run: the error names general.architecture."""
    import dataclasses
    spec = dataclasses.replace(tm.spec, arch="rwkv7")
    path = mf.write_gguf(tm.model, spec, tm.tokenizer, tmp_path / "rwkv7.gguf", "F32",
                         tensors=mf.gguf_tensors(tm.model, tm.spec))
    with pytest.raises(ValueError, match="unsupported architecture 'rwkv7'"):
        forgert.Model(str(path), backend="cpu")
