"""Shared checks of the issue-11 architectures (tests/test_arch_*.py, tests/test_rope_scaling.py):
a tiny random model from a transformers config, saved as an HF directory and as GGUF in
llama.cpp's layout, run by forgert on the CPU and the emulated Metal device against transformers.

References (float32, forgert's f16 KV cache modelled by mf.with_f16_kv):
  hf-<dtype>   the HF model with its weights rounded to the stored dtype
  gguf-<type>  the HF model holding the file's weights as the `gguf` package dequantizes them
               (transformers' own GGUF loader reads neither key_length nor smollm3 nor YaRN keys)
Bounds are test_e2e_tiny's (the same kernels and paths). Measured here, worst over qwen3_tied,
smollm3_tied and qwen3_yarn (64 / 64 / 100 prefill positions, 24 decode), max_rel / rms_rel:
  float weights, CPU and Metal, prefill and decode: <= 1.7e-4 / 1.2e-4 (bounds 5e-4 / 2.5e-4)
  Q8_0, CPU prefill: 1.7e-4 / 8.4e-5 (bounds 1e-3 / 5e-4); CPU decode: 4.8e-4 / 3.8e-4 (3e-3 / 2e-3)
  Q8_0, Metal: 1.5e-3 / 1.2e-3 (qwen3_tied prefill; bounds 5e-3 / 4e-3); argmax agreement >= 0.99
"""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
from conftest import backend_params, require_backend
from test_e2e_tiny import assert_visible, bounds_for, compare_logits, decode_logits, token_ids  # noqa: F401  (re-exported)

HF_DTYPES = ("F32", "F16")
GGUF_TYPES = ("F32", "F16", "Q8_0")
FORMATS = [f"hf-{t}" for t in HF_DTYPES] + [f"gguf-{t}" for t in GGUF_TYPES]


def build(spec_name: str, root, tokenizer) -> mf.TinyModel:
    return mf.make_tiny_model(mf.ARCH_SPECS[spec_name], root, tokenizer, hf_dtypes=HF_DTYPES, gguf_types=GGUF_TYPES)


class References:
    """reference(fmt) -> the f32 transformers model forgert's file of that format should match."""

    def __init__(self, tm: mf.TinyModel):
        self.tm = tm
        self._cache = {}

    def __call__(self, fmt: str):
        if fmt not in self._cache:
            kind, t = fmt.split("-", 1)
            m = mf.storage_rounded_model(self.tm.model, t) if kind == "hf" else mf.gguf_dequantized_model(self.tm, t)
            self._cache[fmt] = mf.with_f16_kv(m)
        return self._cache[fmt]


def model_fixtures(spec_name: str):
    """(tm, reference): module-scoped fixtures of a test module, the tiny model of spec_name
    (build()) and its References; the module binds them as `tm, reference = model_fixtures(...)`."""
    @pytest.fixture(scope="module")
    def tm(tmp_path_factory, tiny_tokenizer):
        return build(spec_name, tmp_path_factory.mktemp(spec_name), tiny_tokenizer)

    @pytest.fixture(scope="module")
    def reference(tm):
        return References(tm)

    return tm, reference


def with_config(tm, **changes):
    """tm's f32 reference weights in its transformers class under a config with `changes` set,
    for showing that a config feature matters (assert_visible)."""
    import copy
    cfg = copy.deepcopy(tm.model.config)
    for key, value in changes.items():
        setattr(cfg, key, value)
    model = type(tm.model)(cfg).float().eval()
    model.load_state_dict(tm.model.state_dict())
    return model


def assert_hf_config_refused(forgert, tm, tmp_path, match: str, **changes):
    """tm's HF directory with config.json `changes` set is refused with a ModelFormatError
    matching `match` (a setting forgert does not run, named)."""
    assert_hf_dir_refused(forgert, tm.path("hf-F32"), tmp_path, match, **changes)


def assert_hf_dir_refused(forgert, hf_dir, tmp_path, match: str, **changes):
    """The HF directory hf_dir with config.json `changes` set is refused with a ModelFormatError
    matching `match`."""
    import json
    import shutil
    from forgert.errors import ModelFormatError
    d = tmp_path / "changed"
    shutil.copytree(hf_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))
    with pytest.raises(ModelFormatError, match=match):
        forgert.Model(str(d), backend="cpu")


def gguf_meta_variant(gguf_path, path, changes: dict, arch: str | None = None):
    """The GGUF file rewritten to `path` with metadata changed: changes {key: (value, vtype)},
    vtype a GGUFValueType or (ARRAY, item type); arch: a new general.architecture. Its tensors
    are copied as stored (any type)."""
    import gguf
    from forgert.gguf import GGUFFile
    src, reader = GGUFFile(gguf_path), gguf.GGUFReader(gguf_path)
    types = {**src.metadata_types, **{k: t for k, (_, t) in changes.items()}}
    w = gguf.GGUFWriter(str(path), arch or src.metadata["general.architecture"])
    for k, v in {**src.metadata, **{k: v for k, (v, _) in changes.items()}}.items():
        if k in ("general.architecture", "general.alignment"):
            continue
        if isinstance(types[k], tuple):
            w.add_key_value(k, list(v), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType(types[k][1]))
        else:
            w.add_key_value(k, v, gguf.GGUFValueType(types[k]))
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_shape=[int(d) for d in reversed(t.shape)], raw_dtype=t.tensor_type)
    return mf.write_and_close(w, path)


def assert_gguf_meta_refused(forgert, gguf_path, tmp_path, key: str, value, vtype, match: str):
    """The GGUF file with metadata `key` rewritten to `value` of GGUFValueType `vtype` (or
    (ARRAY, item type)) is refused with a ModelFormatError matching `match`."""
    from forgert.errors import ModelFormatError
    path = gguf_meta_variant(gguf_path, tmp_path / "changed.gguf", {key: (value, vtype)})
    with pytest.raises(ModelFormatError, match=match):
        forgert.Model(str(path), backend="cpu")


def check_local_theta_from_freq_base_swa(forgert, tm, tmp_path):
    """A file whose local layers (the only ones rotated: the global ones have no RoPE) take their
    base from rope.freq_base_swa, as llama.cpp's cohere2 / exaone4 loaders read it, with a
    different rope.freq_base beside it, gives the logits of the file holding that base as
    freq_base (bit for bit: the same math); freq_base alone changed moves them far."""
    import gguf
    arch = tm.spec.arch
    f32 = gguf.GGUFValueType.FLOAT32
    theta = float(forgert.Model(str(tm.path("gguf-F32")), backend="cpu").config.rope_theta)
    ids = token_ids(tm, 32, 3)
    want = forgert.Model(str(tm.path("gguf-F32")), backend="cpu").logits(ids)
    swa = gguf_meta_variant(tm.path("gguf-F32"), tmp_path / "swa.gguf", {
        f"{arch}.rope.freq_base": (100.0, f32), f"{arch}.rope.freq_base_swa": (theta, f32)})
    np.testing.assert_array_equal(forgert.Model(str(swa), backend="cpu").logits(ids), want)
    moved = gguf_meta_variant(tm.path("gguf-F32"), tmp_path / "moved.gguf", {f"{arch}.rope.freq_base": (100.0, f32)})
    got = forgert.Model(str(moved), backend="cpu").logits(ids)
    assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


def reference_greedy(ref_model, prompt, n: int) -> list:
    """transformers' greedy continuation of n tokens (its own generate loop and KV cache)."""
    import torch
    with torch.no_grad():
        out = ref_model.generate(torch.tensor([list(prompt)]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=0)
    return out[0, len(prompt):].tolist()


def check_prefill_logits(forgert, tm, reference, backend: str, fmt: str, n: int, seed: int, n_ctx=None):
    """Model(path).logits of n positions (batched prefill) against transformers."""
    ids = token_ids(tm, n, seed)
    m = forgert.Model(str(tm.path(fmt)), backend=backend, n_ctx=n_ctx)
    assert m.info()["arch"] == tm.spec.arch
    compare_logits(m.logits(ids), mf.reference_logits(reference(fmt), ids), **bounds_for(fmt, n, backend),
                   what=f"{tm.spec.name} {fmt} {backend} prefill x{n}")


def check_decode_logits(forgert, tm, reference, backend: str, fmt: str, n: int, seed: int, n_ctx=None):
    """Logits one token per forward (decode kernels, growing cache) against transformers."""
    ids = token_ids(tm, n, seed)
    m = forgert.Model(str(tm.path(fmt)), backend=backend, n_ctx=n_ctx)
    compare_logits(decode_logits(m, ids), mf.reference_logits(reference(fmt), ids), **bounds_for(fmt, 1, backend),
                   what=f"{tm.spec.name} {fmt} {backend} decode x{n}")


def check_greedy(forgert, tm, reference, fmt: str, n: int = 32, prompt_len: int = 8, seed: int = 4):
    """forgert's greedy continuation of n tokens equals transformers' generate()."""
    prompt = token_ids(tm, prompt_len, seed)
    c = forgert.Model(str(tm.path(fmt)), backend="cpu").generate(prompt, max_tokens=n, temperature=0.0,
                                                                 ignore_eos=True)
    assert list(c.tokens) == reference_greedy(reference(fmt), prompt, n), f"{tm.spec.name} {fmt}"


def check_quantized_export(forgert, tm, reference, tmp_path, n: int = 48, seed: int = 6):
    """`forgert quantize` of the HF directory to an F32 GGUF: the file runs as transformers does
    (its metadata says everything the HF config said)."""
    from forgert.gguf_export import export_gguf
    out = tmp_path / f"{tm.spec.name}-exported.gguf"
    export_gguf(str(tm.path("hf-F32")), str(out), "f32", log=lambda msg: None)
    ids = token_ids(tm, n, seed)
    m = forgert.Model(str(out), backend="cpu")
    assert m.info()["arch"] == tm.spec.arch
    compare_logits(m.logits(ids), mf.reference_logits(reference("hf-F32"), ids), **bounds_for("hf-F32", n),
                   what=f"{tm.spec.name} exported")


class AgreesWithTransformers:
    """The checks a dense architecture's tiny model passes against transformers: prefill and
    decode logits in every format on the CPU and Metal, greedy tokens, and the quantized export.
    A test module subclasses it as `TestAgreesWithTransformers`, beside model_fixtures()'s `tm`
    and `reference`."""

    @pytest.mark.parametrize("backend", backend_params())
    @pytest.mark.parametrize("fmt", FORMATS)
    def test_logits_match_transformers(self, forgert, tm, reference, metal_reason, backend, fmt):
        """Batched prefill of 64 positions (the CPU's f32 GEMM path; Metal's tiled GEMM)."""
        require_backend(backend, metal_reason)
        check_prefill_logits(forgert, tm, reference, backend, fmt, 64, 2)

    @pytest.mark.parametrize("backend", backend_params())
    @pytest.mark.parametrize("fmt", FORMATS)
    def test_decode_logits_match_transformers(self, forgert, tm, reference, metal_reason, backend, fmt):
        """One token per forward at each of 24 positions."""
        require_backend(backend, metal_reason)
        check_decode_logits(forgert, tm, reference, backend, fmt, 24, 3)

    @pytest.mark.parametrize("fmt", ["hf-F32", "gguf-F32"])
    def test_greedy_32_tokens_equal_transformers(self, forgert, tm, reference, fmt):
        check_greedy(forgert, tm, reference, fmt)

    def test_quantize_from_hf_dir(self, forgert, tm, reference, tmp_path):
        check_quantized_export(forgert, tm, reference, tmp_path)


# ------------------------------------------------------------------ the factories' tiny models
# Checks of a model from a factory's `models` fixture (moe_factory.formats_fixture: files and
# float32 references by format), shared by the test_arch_* modules of those factories.

def factory_ids(vocab: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


def check_factory_prefill(forgert, files, refs, fmt: str, backend: str, vocab: int, arch: str, bound: dict,
                          what: str, ref=None):
    """Logits of a 64-token prompt evaluated at once, against the reference of fmt (or `ref`)."""
    ids = factory_ids(vocab, 64, 1)
    m = forgert.Model(str(files[fmt]), backend=backend)
    assert m.info()["arch"] == arch
    compare_logits(m.logits(ids), mf.reference_logits(refs[fmt] if ref is None else ref, ids), **bound,
                   what=f"{what} {fmt} {backend} prefill")


def check_factory_decode(forgert, files, refs, fmt: str, backend: str, vocab: int, bound: dict, what: str):
    """Logits of 24 tokens decoded one at a time, against the reference of fmt."""
    ids = factory_ids(vocab, 24, 2)
    eng = forgert.Model(str(files[fmt]), backend=backend)._engine
    out = np.concatenate([np.asarray(eng.forward(ids[i:i + 1], i)).reshape(1, -1) for i in range(len(ids))])
    compare_logits(out, mf.reference_logits(refs[fmt], ids), **bound, what=f"{what} {fmt} {backend} decode")


def check_factory_greedy(forgert, files, refs, fmt: str, vocab: int):
    """32 greedy tokens after an 8-token prompt equal the reference's."""
    prompt = factory_ids(vocab, 8, 4)
    c = forgert.Model(str(files[fmt]), backend="cpu").generate(prompt, max_tokens=32, temperature=0.0, ignore_eos=True)
    assert list(c.tokens) == reference_greedy(refs[fmt], prompt, 32)
