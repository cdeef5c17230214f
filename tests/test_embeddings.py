"""Model.embed (embeddings.py): a tiny random Qwen3 (the architecture of Qwen3-Embedding) as an HF
directory and as GGUF, its pooled final hidden states against transformers' Qwen3Model (whose
last_hidden_state has the final norm applied), pooled and L2-normalised in NumPy here; the pooling
the model's files name (GGUF {arch}.pooling_type, sentence-transformers' Pooling config); the end
token an embedding model's tokenizer appends; bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import arch_e2e as ae
import model_factory as mf
from conftest import backend_params, require_backend

tm, reference = ae.model_fixtures("qwen3_tied")

# Token inputs of 1, 21 and 60 tokens. With PREFILL_CHUNK set to 16 the longer ones run in 2 and
# 4 prefill chunks: the pooling reads rows from every chunk (mean), the first (cls) or the last.
LENGTHS = (1, 21, 60)
CHUNK = 16


def inputs(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(5)
    return [[int(t) for t in rng.integers(3, vocab, n)] for n in LENGTHS]


def reference_vectors(model, ids_list, pooling: str, normalize: bool = True, dimensions=None) -> np.ndarray:
    """[n, dim]: transformers' last_hidden_state rows pooled and normalised in NumPy."""
    import torch
    out = []
    for ids in ids_list:
        with torch.no_grad():
            h = model.model(torch.tensor([ids])).last_hidden_state[0].double().numpy()
        v = {"last": h[-1], "mean": h.mean(axis=0), "cls": h[0]}[pooling][:dimensions]
        out.append(v / np.linalg.norm(v) if normalize else v)
    return np.stack(out)


@pytest.fixture
def small_chunks(forgert, monkeypatch):
    monkeypatch.setattr(forgert.model, "PREFILL_CHUNK", CHUNK)


# Max |forgert - reference| over the normalised vectors' components (each vector has norm 1;
# 64 components of ~0.12), measured 2026-12-04 on the CPU (avx512-vnni) and the emulated Metal
# device, worst over the three poolings and three inputs (the reference holds the file's
# dequantized weights; the KV cache f16 on both sides):
#   hf-F32, gguf-F32: CPU 1.8e-5, Metal 2.2e-5 (bound 1e-4)
#   gguf-Q8_0: CPU 1.5e-4, Metal 2.5e-4 (bound 1e-3)
BOUNDS = {"hf-F32": 1e-4, "gguf-F32": 1e-4, "gguf-Q8_0": 1e-3}


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fmt", list(BOUNDS))
@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
def test_embeddings_match_transformers(forgert, tm, reference, metal_reason, small_chunks, backend, fmt, pooling):
    require_backend(backend, metal_reason)
    m = forgert.Model(str(tm.path(fmt)), backend=backend, threads=2)
    ids = inputs(tm.vocab)
    got = m.embed(ids, pooling=pooling)
    want = reference_vectors(reference(fmt), ids, pooling)
    assert got.shape == (len(ids), tm.spec.hidden) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    err = np.abs(got - want).max()
    assert err <= BOUNDS[fmt], f"max error {err:.2e}"
    # one input alone: a vector, the same as its row in the batch
    np.testing.assert_array_equal(m.embed(ids[1], pooling=pooling), got[1])


def test_raw_and_cut_vectors(forgert, tm, reference):
    """normalize=False gives the pooled hidden state itself; dimensions keeps the leading
    components and normalises them (Matryoshka use)."""
    m = forgert.Model(str(tm.path("hf-F32")), backend="cpu", threads=2)
    ids = inputs(tm.vocab)
    raw = m.embed(ids, pooling="mean", normalize=False)
    want = reference_vectors(reference("hf-F32"), ids, "mean", normalize=False)
    assert np.abs(raw - want).max() <= 1e-4 * np.abs(want).max()   # measured 2.5e-5 of max|want|
    cut = m.embed(ids, pooling="mean", dimensions=8)
    assert cut.shape == (len(ids), 8)
    np.testing.assert_allclose(cut, raw[:, :8] / np.linalg.norm(raw[:, :8], axis=1, keepdims=True), rtol=0, atol=1e-6)


def test_pooling_named_by_the_gguf(forgert, tm, tmp_path):
    """{arch}.pooling_type (llama.cpp's enum, as its converter writes it for embedding models)
    chooses the default; 4 (rank: a reranker's head) and 0 (none) are refused by name."""
    path = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "mean.gguf", "F32",
                         extra_keys={"qwen3.pooling_type": 1})
    m = forgert.Model(str(path), backend="cpu", threads=2)
    ids = inputs(tm.vocab)
    np.testing.assert_array_equal(m.embed(ids), m.embed(ids, pooling="mean"))
    assert np.abs(m.embed(ids) - m.embed(ids, pooling="last")).max() > 0.1   # the choice shows
    for value, word in [(4, "rank"), (0, "none")]:
        bad = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / f"p{value}.gguf", "F32",
                            extra_keys={"qwen3.pooling_type": value})
        m = forgert.Model(str(bad), backend="cpu", threads=2)
        with pytest.raises(ValueError, match=f"qwen3.pooling_type is {word}"):
            m.embed(ids)
        assert m.embed(ids, pooling="last").shape == (3, tm.spec.hidden)   # an explicit pooling still runs


def _with_st_pooling(tm, tmp_path, config: dict):
    d = tmp_path / "st"
    shutil.copytree(tm.path("hf-F32"), d)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": tm.spec.hidden, **config}))
    return d


def test_pooling_named_by_sentence_transformers(forgert, tm, tmp_path):
    ids = inputs(tm.vocab)
    d = _with_st_pooling(tm, tmp_path, {"pooling_mode_mean_tokens": True, "pooling_mode_lasttoken": False})
    m = forgert.Model(str(d), backend="cpu", threads=2)
    np.testing.assert_array_equal(m.embed(ids), m.embed(ids, pooling="mean"))
    shutil.rmtree(d)
    d = _with_st_pooling(tm, tmp_path, {"pooling_mode_max_tokens": True})
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        forgert.Model(str(d), backend="cpu", threads=2).embed(ids)


def test_default_pooling_is_last(forgert, tm):
    m = forgert.Model(str(tm.path("gguf-F32")), backend="cpu", threads=2)
    ids = inputs(tm.vocab)
    np.testing.assert_array_equal(m.embed(ids), m.embed(ids, pooling="last"))


def test_end_token_of_a_gguf(forgert, tm, tmp_path):
    """tokenizer.ggml.add_eos_token: a text is embedded with EOS appended (llama.cpp tokenizes
    an embedding input with its special tokens); a generation prompt is not."""
    path = mf.write_gguf(tm.model, tm.spec, tm.tokenizer, tmp_path / "eos.gguf", "F32",
                         extra_keys={"tokenizer.ggml.add_eos_token": True})
    m = forgert.Model(str(path), backend="cpu", threads=2)
    eos = tm.tokenizer.token_to_id(mf.EOS_TOKEN)
    text = "the quick brown fox"
    plain = m.tokenize(text)
    assert plain[-1] != eos
    assert m.tokenizer.encode_with_end(text) == plain + [eos]
    np.testing.assert_array_equal(m.embed(text), m.embed(plain + [eos]))
    plain_model = forgert.Model(str(tm.path("gguf-F32")), backend="cpu", threads=2)
    assert plain_model.tokenizer.encode_with_end(text) == plain_model.tokenize(text)


def test_end_token_of_an_hf_post_processor(forgert, tm, tmp_path):
    """An HF tokenizer.json whose post-processor appends a token (Qwen3-Embedding's appends
    <|endoftext|>): the ids are what the tokenizers library gives with special tokens."""
    from tokenizers import Tokenizer
    d = tmp_path / "post"
    shutil.copytree(tm.path("hf-F32"), d)
    spec = json.loads((d / "tokenizer.json").read_text())
    eos = tm.tokenizer.token_to_id(mf.EOS_TOKEN)
    spec["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                         {"SpecialToken": {"id": mf.EOS_TOKEN, "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {mf.EOS_TOKEN: {"id": mf.EOS_TOKEN, "ids": [eos], "tokens": [mf.EOS_TOKEN]}}}
    (d / "tokenizer.json").write_text(json.dumps(spec))
    cfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").exists() else {}
    cfg.pop("add_eos_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    m = forgert.Model(str(d), backend="cpu", threads=2)
    text = "the quick brown fox"
    want = Tokenizer.from_file(str(d / "tokenizer.json")).encode(text, add_special_tokens=True).ids
    assert want[-1] == eos
    got = m.tokenizer.encode_with_end(text)
    assert got[-len(want):] == want and len(got) - len(want) in (0, 1)   # (BOS as tokenizer_config says)


def test_bad_input(forgert, tm):
    m = forgert.Model(str(tm.path("gguf-F32")), backend="cpu", threads=2)
    cases = [
        ([], ValueError, "empty list"),
        ([[]], TypeError, r"inputs\[0\] must be a str or a list of token ids"),
        ([[1, 2], 7], TypeError, r"inputs\[1\]"),
        (7, TypeError, "inputs must be"),
        ([[1, 2], [tm.vocab + 5]], ValueError, r"inputs\[1\]\[0\] = .* is out of range"),
        ([1] * (m.n_ctx + 1), ValueError, f"{m.n_ctx + 1} tokens but the context holds {m.n_ctx}"),
    ]
    for value, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            m.embed(value)
    for kwargs, pattern in [({"pooling": "max"}, "pooling must be one of"),
                            ({"dimensions": 0}, "dimensions must be"),
                            ({"dimensions": tm.spec.hidden + 1}, "dimensions must be"),
                            ({"dimensions": True}, "dimensions must be"),
                            ({"dimensions": "8"}, "dimensions must be")]:
        with pytest.raises(ValueError, match=pattern):
            m.embed([1, 2, 3], **kwargs)


def test_embedding_between_turns_leaves_generation_unchanged(forgert, tm):
    """embed() runs on the model's own sequence: a greedy generation after it gives the tokens
    it gave before."""
    m = forgert.Model(str(tm.path("gguf-F32")), backend="cpu", threads=2)
    prompt = inputs(tm.vocab)[1]
    before = m.generate(prompt, max_tokens=8, temperature=0.0, ignore_eos=True).tokens
    m.embed(inputs(tm.vocab))
    after = m.generate(prompt, max_tokens=8, temperature=0.0, ignore_eos=True).tokens
    assert after == before


# ----------------------------------------------------------------------------- forgert embed

def _cli(*args, stdin=None):
    import subprocess
    import sys
    from conftest import subprocess_env
    return subprocess.run([sys.executable, "-m", "forgert", "embed", *map(str, args)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, input=stdin)


def test_cli_prints_the_models_embeddings(forgert, tm):
    """`forgert embed`: one JSON line per text (arguments, or stdin's non-empty lines), the
    vectors Model.embed gives in-process (float32 through JSON: exact)."""
    path = tm.path("gguf-F32")
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    want = forgert.Model(str(path), backend="cpu", threads=2).embed(texts, pooling="mean", dimensions=16)
    for result in (_cli("--model", path, "--backend", "cpu", "-t", 2, "--pooling", "mean", "--dimensions", 16, *texts),
                   _cli("--model", path, "--backend", "cpu", "-t", 2, "--pooling", "mean", "--dimensions", 16,
                        stdin=texts[0] + "\n\n" + texts[1] + "\n")):
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["index"] for r in rows] == [0, 1]
        np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], np.float32), want)


def test_cli_bad_flags(tm):
    path = tm.path("gguf-F32")
    for args, words in [(("--dimensions", 0, "x"), "must be at least 1"),
                        (("--dimensions", tm.spec.hidden + 1, "x"), "dimensions must be"),
                        (("--pooling", "max", "x"), "invalid choice")]:
        result = _cli("--model", path, "--backend", "cpu", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr and words in result.stderr, result.stderr
    result = _cli("--model", path, "--backend", "cpu", stdin="\n\n")
    assert result.returncode == 2 and "no non-empty line" in result.stderr, result.stderr
