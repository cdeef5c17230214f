"""RoPE scalings for long context: YaRN (HF rope_type yarn; GGUF rope.scaling.type yarn) and
dynamic NTK (HF rope_type dynamic), against transformers' own rope functions and end to end.

Dynamic NTK grows the RoPE base with the sequence in transformers; forgert computes it once for
the context it is given (n_ctx), as llama.cpp computes every scaling statically. The two agree
on any sequence within max_position_embeddings and on a forward of exactly n_ctx tokens, which
is what the end-to-end test checks."""
from __future__ import annotations

import math

import numpy as np
import pytest

import arch_e2e as ae
import model_factory as mf
from conftest import backend_params, require_backend

YARN_CASES = [
    # Qwen2.5 / Qwen3 long context: factor and original length only
    {"factor": 4.0, "original_max_position_embeddings": 32768},
    # beta_fast / beta_slow given, a one-pair ramp is possible
    {"factor": 8.0, "original_max_position_embeddings": 4096, "beta_fast": 16, "beta_slow": 2},
    # attention_factor given: it replaces 0.1 ln(factor) + 1
    {"factor": 2.0, "original_max_position_embeddings": 2048, "attention_factor": 0.9},
    # DeepSeek's mscale / mscale_all_dim
    {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 0.707},
    # gpt-oss: no truncation of the correction range
    {"factor": 32.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
     "truncate": False},
]


def _hf_config(rope_scaling: dict, theta=1000000.0, head_dim=128, max_pos=131072):
    from transformers import Qwen2Config
    return Qwen2Config(hidden_size=head_dim * 4, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=max_pos, rope_theta=theta,
                       rope_scaling={"rope_type": rope_scaling.get("rope_type", "yarn"), **rope_scaling})


@pytest.mark.parametrize("case", range(len(YARN_CASES)))
def test_yarn_frequencies_and_attention_factor_match_transformers(case):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from forgert.config import _hf_rope
    from forgert.rope import rope_freqs
    rs = dict(YARN_CASES[case])
    cfg = _hf_config(rs)
    inv, attn = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
    hf = cfg.to_dict()
    hf.pop("rope_parameters", None)
    hf.update(rope_theta=1000000.0, rope_scaling={"rope_type": "yarn", **rs})
    theta, scaling = _hf_rope(hf, "config.json")
    got = rope_freqs(theta, 128, scaling)
    # transformers computes in float32 (its pow and divisions): relative 1e-6; forgert in float64
    np.testing.assert_allclose(got, inv.numpy(), rtol=2e-6, atol=0)
    assert scaling["attn_factor"] == pytest.approx(attn, rel=1e-12)


@pytest.mark.parametrize("seq_len", [100, 4096, 5000, 20000])
def test_dynamic_ntk_frequencies_match_transformers(seq_len):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from forgert.rope import rope_freqs
    cfg = _hf_config({"rope_type": "dynamic", "factor": 2.0}, theta=10000.0, max_pos=4096)
    inv, attn = ROPE_INIT_FUNCTIONS["dynamic"](cfg, "cpu", seq_len=seq_len)
    got = rope_freqs(10000.0, 128, {"type": "dynamic", "factor": 2.0, "max_position_embeddings": 4096}, seq_len)
    np.testing.assert_allclose(got, inv.numpy(), rtol=2e-6, atol=0)
    assert attn == 1.0


def _gguf_meta(**scaling_keys) -> dict:
    meta = {"general.architecture": "qwen3", "qwen3.attention.head_count": 4, "qwen3.embedding_length": 256,
            "qwen3.block_count": 2, "qwen3.feed_forward_length": 512, "qwen3.context_length": 131072,
            "qwen3.attention.layer_norm_rms_epsilon": 1e-6, "qwen3.rope.freq_base": 1000000.0}
    meta.update({f"qwen3.rope.scaling.{k}": v for k, v in scaling_keys.items()})
    return meta


def _gguf_config(meta):
    from forgert.config import TensorCensus, config_from_gguf
    return config_from_gguf(meta, vocab=1000, source="t.gguf", census=TensorCensus(100, 131072))


def test_gguf_yarn_keys_as_llama_cpp_reads_them():
    """type/factor/original_context_length as Qwen2Model's converter writes them: the HF YaRN
    frequencies, and llama.cpp's attention factor 0.1 ln(4) + 1 (hand-computed: 1.1386294)."""
    from forgert.rope import rope_freqs
    cfg = _gguf_config(_gguf_meta(type="yarn", factor=4.0, original_context_length=32768))
    assert cfg.rope_neox and cfg.rope_scaling["type"] == "yarn"
    assert cfg.rope_attn_factor == pytest.approx(1.1386294361, rel=1e-9)
    hf = rope_freqs(1000000.0, 64, {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    np.testing.assert_array_equal(cfg.rope_freqs, hf)
    assert cfg.core_dict(128)["rope_attn_factor"] == pytest.approx(1.1386294361, rel=1e-6)


def test_gguf_yarn_optional_keys():
    """yarn_beta_fast / yarn_beta_slow move the ramp; rope.scaling.attn_factor multiplies the
    attention factor (llama.cpp: yarn_attn_factor *= rope_attn_factor)."""
    from forgert.rope import rope_freqs
    cfg = _gguf_config(_gguf_meta(type="yarn", factor=8.0, original_context_length=4096, yarn_beta_fast=16.0,
                                  yarn_beta_slow=2.0, attn_factor=0.5))
    want = rope_freqs(1000000.0, 64, {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
                                      "beta_fast": 16.0, "beta_slow": 2.0})
    np.testing.assert_array_equal(cfg.rope_freqs, want)
    assert cfg.rope_attn_factor == pytest.approx(0.5 * (0.1 * math.log(8.0) + 1), rel=1e-9)


def test_gguf_yarn_log_multiplier_is_refused():
    from forgert.errors import ModelFormatError
    with pytest.raises(ModelFormatError, match="yarn_log_multiplier"):
        _gguf_config(_gguf_meta(type="yarn", factor=40.0, original_context_length=4096, yarn_log_multiplier=0.0707))


def test_unknown_scaling_type_is_refused():
    from forgert.errors import ModelFormatError
    with pytest.raises(ModelFormatError, match="unsupported RoPE scaling type 'su'"):
        _gguf_config(_gguf_meta(type="su", factor=4.0))


# ----------------------------------------------------------------------------- YaRN end to end

@pytest.fixture(scope="module")
def yarn(tmp_path_factory, tiny_tokenizer):
    return ae.build("qwen3_yarn", tmp_path_factory.mktemp("yarn"), tiny_tokenizer)


@pytest.fixture(scope="module")
def yarn_reference(yarn):
    return ae.References(yarn)


def test_yarn_is_visible(yarn):
    """Both halves of YaRN matter beyond the F32 bound (5e-4 of max|logit|) on this model: the
    blended frequencies and the attention factor on cos and sin."""
    import copy
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding
    ids = ae.token_ids(yarn, 100, 1)
    no_factor = copy.deepcopy(yarn.model)
    no_factor.model.rotary_emb.attention_scaling = 1.0
    plain = copy.deepcopy(yarn.model)
    cfg = copy.deepcopy(yarn.model.config)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": yarn.spec.rope_theta}
    plain.model.rotary_emb = Qwen3RotaryEmbedding(cfg)
    for other in (no_factor, plain):
        ae.assert_visible(yarn.model, other, ids)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", ae.FORMATS)
def test_yarn_logits_past_the_original_context(forgert, yarn, yarn_reference, metal_reason, backend, fmt):
    """100 positions, past original_max_position_embeddings (32), from HF config and GGUF keys."""
    require_backend(backend, metal_reason)
    ae.check_prefill_logits(forgert, yarn, yarn_reference, backend, fmt, 100, 2)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_yarn_decode_logits(forgert, yarn, yarn_reference, metal_reason, backend, fmt):
    require_backend(backend, metal_reason)
    ae.check_decode_logits(forgert, yarn, yarn_reference, backend, fmt, 48, 3)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
def test_yarn_greedy_32_tokens_equal_transformers(forgert, yarn, yarn_reference, fmt):
    ae.check_greedy(forgert, yarn, yarn_reference, fmt, prompt_len=40)


# ----------------------------------------------------------------------------- dynamic NTK end to end

@pytest.fixture(scope="module")
def dynamic(tmp_path_factory, tiny_tokenizer):
    return mf.make_tiny_model(mf.ARCH_SPECS["qwen2_dynamic"], tmp_path_factory.mktemp("dynamic"), tiny_tokenizer,
                              hf_dtypes=("F32",), gguf_types=())


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("n_ctx", [32, 48, 80])
def test_dynamic_ntk_forward_of_n_ctx_tokens(forgert, dynamic, metal_reason, backend, n_ctx):
    """A forward of exactly n_ctx tokens against transformers' forward of the same tokens (which
    grows the base for them): within the training context (32) and past it (48, 80)."""
    require_backend(backend, metal_reason)
    import warnings
    ids = ae.token_ids(dynamic, n_ctx, 5)
    ref_model = mf.with_f16_kv(mf.storage_rounded_model(dynamic.model, "F32"))
    ref = mf.reference_logits(ref_model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # n_ctx past the training context warns
        m = forgert.Model(str(dynamic.path("hf-F32")), backend=backend, n_ctx=n_ctx)
    ae.compare_logits(m.logits(ids), ref, **ae.bounds_for("hf-F32", n_ctx, backend), what=f"dynamic n_ctx {n_ctx}")
    if n_ctx > 32:   # and n_ctx matters: a base computed for a longer context misses by far more
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            short = forgert.Model(str(dynamic.path("hf-F32")), backend=backend, n_ctx=n_ctx + 40)
        err = np.abs(short.logits(ids) - ref).max() / np.abs(ref).max()
        assert err > 100 * 5e-4, f"a base computed for {n_ctx + 40} tokens is within {err:.3g} of the reference"


def test_yarn_quantize_from_hf_dir(forgert, yarn, yarn_reference, tmp_path):
    """`forgert quantize` writes llama.cpp's YaRN keys: the exported file runs past 32 tokens as
    transformers does."""
    ae.check_quantized_export(forgert, yarn, yarn_reference, tmp_path, n=90)


def test_dynamic_has_no_gguf_form(dynamic, tmp_path):
    from forgert.errors import ModelFormatError
    from forgert.gguf_export import export_gguf
    with pytest.raises(ModelFormatError, match="'dynamic' has no GGUF form"):
        export_gguf(str(dynamic.path("hf-F32")), str(tmp_path / "d.gguf"), "f32", log=lambda msg: None)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
def test_info_names_the_yarn_factor(yarn, fmt):
    from forgert.cli.info import describe
    from forgert.loader import load_model
    d = describe(load_model(str(yarn.path(fmt))))
    assert "YaRN x4 over an original context of 32 (attention factor 1.139)" in d["features"]


@pytest.mark.parametrize("spelling", ["rope_parameters", "legacy_type"])
def test_yarn_config_spellings(yarn, tmp_path, spelling):
    """transformers 5's rope_parameters and the older rope_scaling {"type": "yarn"} (Qwen2.5's
    configs) give what the Hub spelling rope_scaling {"rope_type": "yarn"} gives."""
    import json
    import shutil
    from forgert.loader import load_model
    d = tmp_path / spelling
    shutil.copytree(yarn.path("hf-F32"), d)
    cfg = json.loads((d / "config.json").read_text())
    rs = cfg.pop("rope_scaling")
    theta = cfg.pop("rope_theta")
    if spelling == "rope_parameters":
        cfg["rope_parameters"] = {**rs, "rope_theta": theta}
    else:
        cfg.update(rope_theta=theta, rope_scaling={"type": rs.pop("rope_type"), **rs})
    (d / "config.json").write_text(json.dumps(cfg))
    want, got = load_model(str(yarn.path("hf-F32"))).config, load_model(str(d)).config
    np.testing.assert_array_equal(got.rope_freqs, want.rope_freqs)
    assert got.rope_attn_factor == want.rope_attn_factor == pytest.approx(0.1 * math.log(4.0) + 1)


@pytest.mark.parametrize("rope_scaling,message", [
    ({"rope_type": "yarn", "factor": 4.0}, "missing 'original_max_position_embeddings'"),
    ({"rope_type": "yarn", "factor": -4.0, "original_max_position_embeddings": 32}, "non-positive"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": float("nan")},
     "non-finite"),
    ({"rope_type": "dynamic"}, "missing 'factor'"),
])
def test_bad_hf_rope_scaling_is_refused(rope_scaling, message):
    from forgert.config import _hf_rope
    from forgert.errors import ModelFormatError
    hf = {"rope_theta": 10000.0, "max_position_embeddings": 128, "rope_scaling": rope_scaling}
    with pytest.raises(ModelFormatError, match=message):
        _hf_rope(hf, "config.json")


def test_bad_gguf_yarn_ext_factor_is_refused():
    from forgert.errors import ModelFormatError
    with pytest.raises(ModelFormatError, match="yarn_ext_factor"):
        _gguf_config(_gguf_meta(type="yarn", factor=4.0, original_context_length=4096, yarn_ext_factor=2.0))


def test_yarn_attention_factor_survives_quantize(yarn, tmp_path):
    """A config's own attention_factor (which replaces 0.1 ln(factor) + 1 in transformers) is
    written as rope.scaling.attn_factor = attention_factor / (0.1 ln(factor) + 1), so llama.cpp's
    product, and forgert reading the file, give it back; beta_fast / beta_slow travel as keys."""
    import json
    import shutil
    from forgert.gguf_export import export_gguf
    from forgert.loader import load_model
    d = tmp_path / "attn"
    shutil.copytree(yarn.path("hf-F32"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_scaling"].update(attention_factor=0.8, beta_fast=16, beta_slow=2)
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "attn.gguf"
    export_gguf(str(d), str(out), "f32", log=lambda msg: None)
    src, back = load_model(str(d)).config, load_model(str(out)).config
    assert src.rope_attn_factor == 0.8
    assert back.rope_attn_factor == pytest.approx(0.8, rel=1e-6)     # f32 key: ~1e-7
    np.testing.assert_array_equal(back.rope_freqs, src.rope_freqs)


@pytest.fixture(scope="module")
def smollm3_yarn(tmp_path_factory, tiny_tokenizer):
    tm = mf.make_tiny_model(mf.ARCH_SPECS["smollm3_yarn"], tmp_path_factory.mktemp("smollm3_yarn"), tiny_tokenizer,
                            hf_dtypes=("F32",), gguf_types=("F32", "Q8_0"))
    return tm, ae.References(tm)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32", "gguf-Q8_0"])
def test_smollm3_with_yarn(forgert, smollm3_yarn, metal_reason, backend, fmt):
    """SmolLM3's long-context form: YaRN on the RoPE layers, none on the NoPE layer, 100 tokens
    past the original 48."""
    require_backend(backend, metal_reason)
    tm, reference = smollm3_yarn
    ae.check_prefill_logits(forgert, tm, reference, backend, fmt, 100, 7)
