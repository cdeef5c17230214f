"""Phi-3 / Phi-4 (HF Phi3ForCausalLM, GGUF arch phi3) end to end against transformers in float32:
fused qkv / gate_up tensors split zero-copy, LongRoPE, partial rotary, a sliding window, the
tokenizer's stop tokens and the chat templates (tests/phi3_factory.py builds the models).

LongRoPE regimes. forgert picks the short or long factors once, by the configured context (n_ctx
> original context: long), as llama.cpp does; transformers picks per forward by the sequence
length (> original: long). They agree, and are compared, on
  - short: n_ctx <= original, every sequence (they all fit in the original context);
  - long: n_ctx > original, sequences longer than the original context.
(A sequence shorter than the original context in a long n_ctx gets the long factors in forgert
and the short ones in transformers: by design, not compared.)

Bounds (fractions of max|reference logit| and of ||reference||; the reference models forgert's
f16 KV cache), worst over the specs, both regimes and all formats:
  F32 / F16 weights: measured <= 2.9e-4 max (phi4_mini_longrope hf-F16 decode), 1.2e-4 rms
    -> 1e-3 / 5e-4 (test_e2e_tiny's 5e-4 max would leave less than 2x: f16 K/V rounding flips).
  Q8_0: test_e2e_tiny's per-path bounds; measured cpu prefill <= 8.9e-5 / 4.8e-5 (1e-3 / 5e-4),
    cpu decode <= 7.6e-4 / 4.5e-4 (3e-3 / 2e-3), emulated Metal <= 2.2e-3 / 1.6e-3 (5e-3 / 4e-3).
  Argmax agreement: measured >= 0.983 (emulated Metal Q8_0) -> 0.95.
"""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
import phi3_factory as pf
from conftest import require_backend
from test_e2e_tiny import bounds_for as e2e_bounds
from test_e2e_tiny import compare_logits, decode_logits

SPEC_NAMES = list(pf.SPECS)
# (spec, LongRoPE regime): both regimes where the spec has LongRoPE, else one
CASES = [(n, "long") for n in SPEC_NAMES] + [(n, "short") for n, s in pf.SPECS.items() if s.longrope]
FORMATS = ["hf-F32", "hf-F16", "gguf-F32", "gguf-F16", "gguf-Q8_0"]


@pytest.fixture(scope="module")
def phi_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi_models")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = pf.make_tiny_model(pf.SPECS[name], root)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def phi_references(phi_models):
    """get(name, fmt) -> f32 transformers model with forgert's f16 KV cache modelled."""
    cache = {}

    def get(name, fmt):
        if (name, fmt) not in cache:
            tm = phi_models(name)
            kind, t = fmt.split("-", 1)
            m = mf.storage_rounded_model(tm.model, t) if kind == "hf" else pf.gguf_reference_model(tm, t)
            cache[name, fmt] = mf.with_f16_kv(m)
        return cache[name, fmt]
    return get


FLOAT_BOUNDS = dict(max_rel=1e-3, rms_rel=5e-4, argmax=0.95)


def bounds_for(fmt: str, n_tokens: int = 128, backend: str = "cpu") -> dict:
    if fmt.split("-", 1)[1] in ("F32", "F16"):
        return FLOAT_BOUNDS
    return e2e_bounds(fmt, n_tokens=n_tokens, backend=backend)


def token_ids(tm, n, seed):
    return np.random.default_rng(1000 * seed + n).integers(0, tm.vocab, n).tolist()


def sequence_length(spec, regime: str) -> tuple[int | None, int]:
    """(n_ctx for Model, tokens to compare) of a regime: "long" n_ctx (the model's whole
    context) with more tokens than the original context; "short" n_ctx = the original context."""
    if not spec.longrope:
        return None, 96
    if regime == "long":
        return None, spec.original_ctx + 32
    return spec.original_ctx, spec.original_ctx


# ----------------------------------------------------------------------------- the factory itself

@pytest.mark.parametrize("name", SPEC_NAMES)
def test_factory_gguf_reproduces_hf_model(phi_models, name):
    """transformers reading the factory's F32 GGUF (fused tensors, llama.cpp's names) gives the
    HF model's logits: the file holds what the converter would write."""
    tm = phi_models(name)
    ids = token_ids(tm, 80, 0)
    ref = mf.reference_logits(tm.model, ids)
    np.testing.assert_allclose(mf.reference_logits(pf.gguf_reference_model(tm, "F32"), ids), ref,
                               rtol=0, atol=1e-5 * np.abs(ref).max())


def test_longrope_and_partial_rotary_are_visible(phi_models):
    """The LongRoPE factors, their choice and the rotary width each move the logits far beyond the
    F32 bound (5e-4): a loader ignoring any of them fails."""
    import copy

    import torch
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
    tm = phi_models("phi4_mini_longrope")
    ids = token_ids(tm, 80, 1)
    ref = mf.reference_logits(tm.model, ids)

    def with_rope(**changes):
        m = copy.deepcopy(tm.model)
        cfg = copy.deepcopy(m.config)
        cfg.rope_parameters = dict(cfg.rope_parameters, **changes)
        m.model.rotary_emb = Phi3RotaryEmbedding(cfg)
        return m

    short, long = pf.longrope_factor_lists(tm.spec)
    pad = [1.0] * (tm.spec.head_dim // 2 - len(long))   # full rotary needs a factor per head-dim pair
    variants = {"no scaling": with_rope(rope_type="default"),
                "short factors on a long sequence": with_rope(long_factor=short),
                "full rotary": with_rope(partial_rotary_factor=1.0, long_factor=long + pad, short_factor=short + pad),
                "no attention factor": with_rope(attention_factor=1.0)}
    for what, m in variants.items():
        with torch.no_grad():
            moved = np.abs(mf.reference_logits(m, ids) - ref).max() / np.abs(ref).max()
        assert moved > 20 * 5e-4, f"{what}: logits moved only {moved:.3g}"


# ----------------------------------------------------------------------------- logits

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,regime", CASES)
def test_prefill_logits_match_transformers(phi_models, phi_references, name, fmt, regime, forgert):
    spec = pf.SPECS[name]
    tm = phi_models(name)
    n_ctx, n = sequence_length(spec, regime)
    ids = token_ids(tm, n, 2)
    m = forgert.Model(str(tm.path(fmt)), backend="cpu", n_ctx=n_ctx)
    ref = mf.reference_logits(phi_references(name, fmt), ids)
    compare_logits(m.logits(ids), ref, **bounds_for(fmt, n_tokens=n), what=f"{name} {fmt} {regime}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name,regime", CASES)
def test_decode_logits_match_transformers(phi_models, phi_references, name, fmt, regime, forgert):
    """One token per forward (the decode kernels, the growing cache) at every position."""
    spec = pf.SPECS[name]
    tm = phi_models(name)
    n_ctx, n = sequence_length(spec, regime)
    ids = token_ids(tm, n, 3)
    m = forgert.Model(str(tm.path(fmt)), backend="cpu", n_ctx=n_ctx)
    ref = mf.reference_logits(phi_references(name, fmt), ids)
    compare_logits(decode_logits(m, ids), ref, **bounds_for(fmt, n_tokens=1), what=f"{name} {fmt} {regime} decode")


@pytest.mark.metal
@pytest.mark.parametrize("fmt", ["gguf-F32", "gguf-Q8_0", "hf-F16"])
@pytest.mark.parametrize("name,regime", CASES)
def test_metal_logits_match_transformers(phi_models, phi_references, metal_reason, name, regime, fmt, forgert):
    """The emulated Metal device: batched prefill, then a few decode steps after it."""
    require_backend("metal", metal_reason)
    spec = pf.SPECS[name]
    tm = phi_models(name)
    n_ctx, n = sequence_length(spec, regime)
    n -= 4 if regime == "short" else 0   # the decode steps must fit the short regime's n_ctx
    ids = token_ids(tm, n + 4, 4)
    m = forgert.Model(str(tm.path(fmt)), backend="metal", n_ctx=n_ctx)
    assert m.backend == "metal"
    ref = mf.reference_logits(phi_references(name, fmt), ids)
    bounds = bounds_for(fmt, backend="metal")
    compare_logits(m.logits(ids[:n]), ref[:n], **bounds, what=f"metal {name} {fmt} prefill")
    compare_logits(decode_logits(m, ids, start=n), ref[n:], **bounds, what=f"metal {name} {fmt} decode")


# ----------------------------------------------------------------------------- greedy generation

@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("name,regime", CASES)
def test_greedy_32_tokens_equal_transformers(phi_models, phi_references, name, fmt, regime, forgert):
    """32 greedy tokens equal transformers' generate() on the F32 files (long regime: the prompt
    alone is longer than the original context; short: n_ctx = original context)."""
    import torch
    spec = pf.SPECS[name]
    tm = phi_models(name)
    n_ctx, _ = sequence_length(spec, regime)
    n_prompt = spec.original_ctx + 1 if (spec.longrope and regime == "long") else 8
    prompt = token_ids(tm, n_prompt, 5)
    m = forgert.Model(str(tm.path(fmt)), backend="cpu", n_ctx=n_ctx)
    got = list(m.generate(prompt, max_tokens=32, temperature=0.0, ignore_eos=True).tokens)
    ref_model = phi_references(name, fmt)
    with torch.no_grad():
        ids = torch.tensor([prompt])   # an explicit mask: the prompt may hold the pad id
        out = ref_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got == out[0, len(prompt):].tolist()


# ----------------------------------------------------------------------------- zero-copy split

@pytest.mark.parametrize("fmt, backend", [("gguf-Q8_0", "cpu"), ("gguf-F16", "cpu"), ("hf-F32", "cpu"),
                                          pytest.param("gguf-Q8_0", "metal", marks=pytest.mark.metal)])
def test_split_is_zero_copy(phi_models, forgert, metal_reason, fmt, backend):
    """The q/k/v and gate/up tensors the engine gets are row ranges of the fused tensors' mapped
    bytes, and the engine wraps one buffer per file, inside that file's mapping: no weight copy."""
    from forgert.ggml_types import row_nbytes
    require_backend(backend, metal_reason)
    tm = phi_models("phi4_plain")
    spec = tm.spec
    m = forgert.Model(str(tm.path(fmt)), backend=backend)
    loaded = m._model
    q, kv = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    for i in range(spec.n_layers):
        qkv, up = loaded.weights[f"blk.{i}.attn_qkv.weight"], loaded.weights[f"blk.{i}.ffn_up.weight"]
        assert qkv.shape == (q + 2 * kv, spec.hidden) and up.shape == (2 * spec.ffn, spec.hidden)
        for fused, parts in ((qkv, [("attn_q", 0), ("attn_k", q), ("attn_v", q + kv)]),
                             (up, [("ffn_gate", 0), ("ffn_up", spec.ffn)])):
            base = fused.data.ctypes.data
            stride = row_nbytes(fused.type_id, spec.hidden)
            for part, row in parts:
                buf, type_id, shape = loaded.core_tensors[f"blk.{i}.{part}.weight"]
                assert type_id == fused.type_id
                assert buf.ctypes.data == base + row * stride, f"blk.{i}.{part}: not a view at row {row}"
                assert buf.nbytes == shape[0] * stride and np.shares_memory(buf, fused.data)
    files = loaded.handle.files if fmt.startswith("hf") else [loaded.handle]
    spans = []
    for f in files:
        a = np.frombuffer(f._mm, dtype=np.uint8)
        spans.append((a.ctypes.data, a.ctypes.data + a.size))
    wraps = m._engine._weight_buffers()
    mapped = [w for w in wraps if any(lo <= w[0] and w[0] + w[1] <= hi for lo, hi in spans)]
    assert len(mapped) == len(files)
    # beside them only the vectors (norms) a GGUF's reader copies out of its mapping (gguf.py)
    assert all(n <= 64 * 1024 for w in wraps if w not in mapped for n in [w[1]]), "a weight copied"


# ----------------------------------------------------------------------------- forgert quantize

@pytest.mark.parametrize("src", ["hf-F32", "gguf-F32"])
def test_quantize_writes_llama_cpp_phi3_layout(phi_models, phi_references, forgert, tmp_path, src):
    """`forgert quantize` of a Phi-4-mini-style model (from safetensors or GGUF) writes llama.cpp's phi3
    layout: fused tensors, the LongRoPE factors as F32 tensors with their keys, the partial rotary
    width; read by the gguf package and run by transformers' GGUF loader, it gives forgert's logits."""
    import gguf

    from forgert.gguf_export import export_gguf
    tm = phi_models("phi4_mini_longrope")
    spec = tm.spec
    dst = tmp_path / "q8.gguf"
    export_gguf(str(tm.path(src)), str(dst), "q8_0", log=lambda msg: None)
    r = gguf.GGUFReader(str(dst))
    kv = {f.name: f.contents() for f in r.fields.values()}
    assert kv["phi3.rope.dimension_count"] == spec.rope_dim
    assert kv["phi3.rope.scaling.original_context_length"] == spec.original_ctx
    assert kv["phi3.rope.scaling.attn_factor"] == pytest.approx(pf.attn_factor(spec), rel=1e-6)
    tensors = {t.name: t for t in r.tensors}
    short, long = pf.longrope_factor_lists(spec)
    for name, want in (("rope_factors_long.weight", long), ("rope_factors_short.weight", short)):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_allclose(np.asarray(tensors[name].data), want, rtol=1e-6)
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert "blk.0.ffn_gate.weight" not in tensors and "blk.0.attn_q.weight" not in tensors
    n_ctx, n = sequence_length(spec, "long")
    ids = token_ids(tm, n, 6)
    ref = mf.reference_logits(mf.with_f16_kv(pf.gguf_reference_model(tm, "Q8_0", path=dst)), ids)
    compare_logits(forgert.Model(str(dst), backend="cpu").logits(ids), ref, **bounds_for("gguf-Q8_0", n_tokens=n),
                   what=f"quantized from {src}")


# ----------------------------------------------------------------------------- tokenizer and template

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "The capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And the quick brown fox?"}]


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("name", ["phi4_plain", "phi4_mini_longrope"])
def test_chat_template_matches_transformers(phi_models, forgert, name, fmt):
    """Phi-4's <|im_start|>/<|im_sep|> template and Phi-3's <|user|>/<|end|> one render as
    transformers' apply_chat_template does, and the prompt tokens match its tokenizer's."""
    from transformers import AutoTokenizer
    tm = phi_models(name)
    ref = AutoTokenizer.from_pretrained(str(tm.hf_dirs["F32"]))
    m = forgert.Model(str(tm.path(fmt)), backend="cpu")
    for msgs in (MESSAGES, MESSAGES[1:2]):
        for gen in (True, False):
            want = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert m.apply_chat_template(msgs, add_generation_prompt=gen) == want
    want_ids = ref.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert m.prompt_tokens(MESSAGES) == list(want_ids)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
@pytest.mark.parametrize("name", ["phi4_plain", "phi4_mini_longrope"])
def test_end_of_turn_stops_generation(phi_models, forgert, name, fmt):
    """The template's end-of-turn token (<|end|>, <|im_end|>) is a stop token: from
    generation_config.json's eos_token_id list, and in a GGUF (which names only <|endoftext|> as
    EOS) by its text, as llama.cpp finds it."""
    tm = phi_models(name)
    m = forgert.Model(str(tm.path(fmt)), backend="cpu")
    tok = m._model.tokenizer
    end = tm.tokenizer.token_to_id(tm.spec.end_of_turn)
    assert end in tok.stop_ids
    assert tok.eos_id == tm.tokenizer.token_to_id(pf.ENDOFTEXT)


@pytest.mark.parametrize("fmt", ["hf-F32", "gguf-Q8_0"])
def test_info_names_architecture_and_features(phi_models, forgert, fmt):
    from forgert.cli.info import describe, format_text
    tm = phi_models("phi4_mini_longrope")
    d = describe(forgert.Model(str(tm.path(fmt)), backend="cpu")._model)
    assert d["arch"] == "phi3" and d["rope_scaling"] == "longrope"
    text = format_text(d, False, False)
    for feature in ("fused qkv and gate_up", "longrope RoPE scaling", "partial rotary (24 of 32 dims)"):
        assert feature in text, text


# ----------------------------------------------------------------------------- LongRoPE tables

@pytest.mark.parametrize("n_ctx", [16, 64, 65, 256])
def test_longrope_tables_match_transformers(phi_models, forgert, n_ctx):
    """The frequency table and cos/sin scale the engine gets for a context of n_ctx tokens are
    transformers' _compute_longrope_parameters for a sequence of n_ctx tokens (the short factors up
    to the original context of 64, the long ones past it), from the HF directory and the GGUF."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from forgert.loader import load_model
    tm = phi_models("phi4_mini_longrope")
    want, want_scale = ROPE_INIT_FUNCTIONS["longrope"](tm.model.config, seq_len=n_ctx)
    for fmt in ("hf-F32", "gguf-F32"):
        core = load_model(str(tm.path(fmt))).config.core_dict(n_ctx)
        assert core["rope_dim"] == 24
        np.testing.assert_allclose(core["rope_freqs"], want.numpy(), rtol=1e-6, err_msg=fmt)
        assert core["rope_attn_factor"] == pytest.approx(want_scale, rel=1e-6)


# ----------------------------------------------------------------------------- bad files

def _hf_copy(tm, tmp_path, **config_changes):
    import json
    import shutil
    d = tmp_path / "hf"
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tm.hf_dirs["F32"], d)
    cfg = json.loads((d / "config.json").read_text())
    for key, value in config_changes.items():
        if key.startswith("rope."):
            cfg["rope_parameters"][key[5:]] = value
        else:
            cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("changes, message", [
    ({"num_key_value_heads": 4}, "tensor 'blk.0.attn_qkv.weight' has 256 rows, expected 128 (blk.0.attn_q.weight)"),
    ({"rope.partial_rotary_factor": 0.71875}, "must be even"),
    ({"rope.long_factor": [1.0] * 16}, "rope scaling long_factor must hold 12 positive factors"),
    ({"rope.short_factor": "1.0"}, "short_factor must be a list of numbers"),
    ({"original_max_position_embeddings": 1}, "'original_max_position_embeddings' must be an integer >= 2"),
    ({"rope.attention_factor": -1.0}, "'rope_scaling.attention_factor' must be a positive number"),
])
def test_bad_hf_config_is_refused(phi_models, forgert, tmp_path, changes, message):
    tm = phi_models("phi4_mini_longrope")
    with pytest.raises(forgert.ModelFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        forgert.Model(str(_hf_copy(tm, tmp_path, **changes)), backend="cpu")


def _gguf_tensors_with(tm, drop=(), add=None):
    t = pf.gguf_tensors(tm.model, tm.spec)
    for name in drop:
        del t[name]
    t.update(add or {})
    return t


@pytest.mark.parametrize("case, message", [
    ("only long factors", "come as a pair"),
    ("short factors of the wrong length", "rope_factors_short.weight must hold 12 positive factors"),
    ("fused and separate q", "'blk.0.attn_q.weight' given both on its own and inside 'blk.0.attn_qkv.weight'"),
    ("fused up of the wrong size", "'blk.0.ffn_up.weight' has 416 rows, expected 192 \\(blk.0.ffn_gate.weight\\)"),
])
def test_bad_gguf_is_refused(phi_models, forgert, tmp_path, case, message):
    tm = phi_models("phi4_mini_longrope")
    spec = tm.spec
    q = spec.n_heads * spec.head_dim
    tensors = {
        "only long factors": lambda: _gguf_tensors_with(tm, drop=["rope_factors_short.weight"]),
        "short factors of the wrong length": lambda: _gguf_tensors_with(
            tm, add={"rope_factors_short.weight": np.ones(16, np.float32)}),
        "fused and separate q": lambda: _gguf_tensors_with(
            tm, add={"blk.0.attn_q.weight": np.zeros((q, spec.hidden), np.float32)}),
        "fused up of the wrong size": lambda: _gguf_tensors_with(
            tm, add={"blk.0.ffn_up.weight": np.zeros((2 * spec.ffn + 32, spec.hidden), np.float32)}),
    }[case]()
    path = pf.write_gguf(tm.model, spec, tm.tokenizer, tmp_path / "bad.gguf", "F32", tensors=tensors)
    with pytest.raises(forgert.ModelFormatError, match=message):
        forgert.Model(str(path), backend="cpu")


def test_hub_spelling_of_longrope_loads_the_same(phi_models, forgert, tmp_path):
    """Phi-3 checkpoints on the Hub write rope_theta and partial_rotary_factor at the top level
    and LongRoPE as rope_scaling {"type": "su" | "longrope", short_factor, long_factor}, with the
    original context beside them: read the same as transformers 5's rope_parameters."""
    import json
    from forgert.loader import load_model
    tm = phi_models("phi4_mini_longrope")
    spec = tm.spec
    want = load_model(str(tm.path("hf-F32"))).config.core_dict(spec.n_ctx)
    for kind in ("su", "longrope"):
        d = _hf_copy(tm, tmp_path / kind)
        cfg = json.loads((d / "config.json").read_text())
        rope = cfg.pop("rope_parameters")
        cfg.update(rope_theta=rope["rope_theta"], partial_rotary_factor=rope["partial_rotary_factor"],
                   rope_scaling={"type": kind, "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]})
        (d / "config.json").write_text(json.dumps(cfg))
        got = load_model(str(d)).config.core_dict(spec.n_ctx)
        for key in ("rope_dim", "rope_attn_factor", "layer_window"):
            assert got[key] == want[key], (kind, key)
        np.testing.assert_array_equal(got["rope_freqs"], want["rope_freqs"])


@pytest.mark.parametrize("pre, text, pieces", [
    # cl100k (Phi-4's GGUFs say "dbrx"): contractions apart, digits in threes, letters after one
    # non-letter, punctuation runs with their newlines
    ("dbrx", "Hello world's 12345!!\n\nOK", ["Hello", " world", "'s", " ", "123", "45", "!!\n\n", "OK"]),
    # o200k (Phi-4-mini's GGUFs say "gpt-4o"): camel case split, contractions kept on the word
    ("gpt-4o", "HelloWorld's 12345 ABCdef", ["Hello", "World's", " ", "123", "45", " ABCdef"]),
])
def test_phi4_gguf_pre_tokenizers(phi_models, pre, text, pieces):
    """Real Phi-4 / Phi-4-mini GGUFs name their pre-tokenizer "dbrx" / "gpt-4o" (llama.cpp's names
    for the cl100k and o200k split rules): forgert knows both, and splits as those rules do
    (hand-worked pieces; byte-level shows a space as 'Ġ' and a newline as 'Ċ')."""
    from forgert.tokenizer_build import tokenizer_from_gguf
    tm = phi_models("phi4_plain")
    tokens, types, merges = pf.tokenizer_tables(tm.tokenizer, tm.spec.specials)
    tok = tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
                               "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                               "tokenizer.ggml.merges": merges}, "test")
    got = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
    assert got == [p.replace(" ", "Ġ").replace("\n", "Ċ") for p in pieces]
    assert tok.decode(tok.encode(text).ids) == text
