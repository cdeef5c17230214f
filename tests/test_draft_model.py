"""Speculative decoding with a draft model (draft_model.py; Model(draft_model=...), the CLI's and
the server's --draft-model). Its tokens must be greedy decoding's exactly: the reference is the
same target model decoding one token a step without a draft. With sampling, each token must have
plain sampling's distribution: the reference is the chain of NumPy-filtered distributions of the
target's Model.logits rows (test_prompt_lookup's setting).
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import qwen35_factory as qf
from conftest import backend_params, require_backend
from test_prompt_lookup import _chi2, _sampling_setting

models = qf.models_fixture()


def _path(tiny_models, name, fmt="gguf-F32"):
    return str(tiny_models(name).path(fmt))


def _prompt(vocab, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, 24).tolist()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("draft", ["same file", "Q4_0 of it", "another model"])
def test_greedy_tokens_equal_plain_decoding(forgert, tiny_models, metal_reason, backend, draft):
    """A draft of the target's own weights is confirmed whole; its Q4_0 rounding is confirmed in
    part (the draft's cache then holds rejected tokens that the next draft overwrites); another
    model of the same tokenizer is mostly rejected. Every way the tokens are greedy's."""
    require_backend(backend, metal_reason)
    target = _path(tiny_models, "llama3_untied")
    draft_path = {"same file": target, "Q4_0 of it": _path(tiny_models, "llama3_untied", "gguf-Q4_0"),
                  "another model": _path(tiny_models, "qwen2_tied")}[draft]
    plain = forgert.Model(target, backend=backend, n_ctx=256)
    m = forgert.Model(target, backend=backend, n_ctx=256, draft_model=draft_path, draft_tokens=6)
    assert m.draft_model.backend.split()[0] == backend and m.info()["draft_model"]["draft_tokens"] == 6
    for seed in (1, 2):    # the second prompt shares nothing with the first: the draft's cache restarts
        prompt = _prompt(plain.vocab_size, seed)
        want = plain.generate(prompt, max_tokens=48, temperature=0, ignore_eos=True)
        got = m.generate(prompt, max_tokens=48, temperature=0, ignore_eos=True)
        assert got.tokens == want.tokens
        t = got.timings
        assert t.draft_tokens > 0 and t.decode_tokens == want.timings.decode_tokens
        if draft == "same file":
            assert t.accepted_draft_tokens == t.draft_tokens
        elif draft == "Q4_0 of it":
            assert 0 < t.accepted_draft_tokens < t.draft_tokens, t
    # a conversation that goes on: the draft catches up from the prefix its cache holds
    longer = prompt + got.tokens + _prompt(plain.vocab_size, 3)[:5]
    assert (m.generate(longer, max_tokens=16, temperature=0, ignore_eos=True).tokens ==
            plain.generate(longer, max_tokens=16, temperature=0, ignore_eos=True).tokens)


def test_greedy_tokens_to_the_end_of_the_context(forgert, tiny_models):
    """Drafts shrink to the room the context leaves (the target's and the draft's): the tokens up
    to a full context are greedy's."""
    target = _path(tiny_models, "llama3_untied")
    plain = forgert.Model(target, backend="cpu", n_ctx=40)
    m = forgert.Model(target, backend="cpu", n_ctx=40, draft_model=target, draft_tokens=15)
    prompt = _prompt(plain.vocab_size)
    want = plain.generate(prompt, temperature=0, ignore_eos=True)
    got = m.generate(prompt, temperature=0, ignore_eos=True)
    assert got.tokens == want.tokens and len(got.tokens) == 40 - len(prompt) and got.finish_reason == "length"
    assert got.timings.draft_tokens > 0


def test_sampled_tokens_keep_the_sampling_distribution(forgert, tiny_models):
    """With sampling, the first three tokens follow plain sampling's distribution: 1500 seeded
    generations against the exact chain of filtered distributions of the target's logits. The
    draft (the target's Q4_0) proposes its greedy tokens; the target keeps some."""
    target = _path(tiny_models, "llama3_untied")
    m = forgert.Model(target, backend="cpu", n_ctx=256, draft_model=_path(tiny_models, "llama3_untied", "gguf-Q4_0"),
                      draft_tokens=3)
    # without the setting's penalties, which the draft's greedy choice does not follow
    prompt, params, exact = _sampling_setting(forgert, m, presence_penalty=0.0, frequency_penalty=0.0, prompt_lookup=0)
    chi2, kept, drafted = _chi2([m.generate(prompt, forgert.SamplingParams.from_kwargs(params, seed=seed))
                                 for seed in range(1500)], exact)   # drafts kept: measured 273 of 1500
    # 27 sequences, 26 degrees of freedom (P(chi2 > 50) = 0.003): measured 25.6. Drafts kept
    # without the test fall outside the filters (_chi2 asserts it)
    assert chi2 < 50, (chi2, len(exact), kept, drafted)


def test_what_the_draft_cannot_serve_runs_without_it(forgert, tiny_models):
    """logprobs (which need each row's logits), a batch of prompts, and prompt_lookup (which drafts
    instead) give what the target gives alone."""
    target = _path(tiny_models, "llama3_untied")
    plain = forgert.Model(target, backend="cpu", n_ctx=256, parallel=2)
    m = forgert.Model(target, backend="cpu", n_ctx=256, parallel=2, draft_model=target)
    prompt = _prompt(plain.vocab_size)
    want = plain.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True, logprobs=2)
    got = m.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True, logprobs=2)
    assert got.tokens == want.tokens and got.timings.draft_tokens == 0
    prompts = [prompt, _prompt(plain.vocab_size, 2)]
    batch = m.generate(prompts, max_tokens=12, temperature=0, ignore_eos=True)
    assert [c.tokens for c in batch] == [c.tokens for c in plain.generate(prompts, max_tokens=12, temperature=0,
                                                                           ignore_eos=True)]
    assert all(c.timings.draft_tokens == 0 for c in batch)
    repeating = prompt[:8] * 4
    lookup = m.generate(repeating, max_tokens=12, temperature=0, ignore_eos=True, prompt_lookup=4)
    assert lookup.tokens == plain.generate(repeating, max_tokens=12, temperature=0, ignore_eos=True).tokens


def test_incompatible_drafts_are_refused(forgert, tiny_models, models):
    target = _path(tiny_models, "llama3_untied")
    for bad in (0, 16, True, 2.0):
        with pytest.raises(ValueError, match="draft_tokens must be an integer in 1..15"):
            forgert.Model(target, backend="cpu", n_ctx=64, draft_model=target, draft_tokens=bad)
    with pytest.raises(forgert.ModelFormatError, match="vocabulary of 49152 tokens.*must share the target's tokenizer"):
        forgert.Model(target, backend="cpu", n_ctx=64, draft_model=forgert.Model(None, backend="cpu", n_ctx=64))
    with pytest.raises(ValueError, match=r"draft model's context \(32 tokens\) is shorter than the target's \(64\)"):
        forgert.Model(target, backend="cpu", n_ctx=64, draft_model=forgert.Model(target, backend="cpu", n_ctx=32))
    hybrid = str(models("qwen35")[1]["gguf-F32"])
    with pytest.raises(ValueError, match="recurrent layers.*a draft model cannot serve it"):
        forgert.Model(hybrid, backend="cpu", n_ctx=64, draft_model=target)
    with pytest.raises(forgert.ModelFormatError, match="has recurrent layers.*use an attention-only draft model"):
        forgert.Model(target, backend="cpu", n_ctx=64, draft_model=hybrid)


def test_a_tokenizer_of_other_texts_is_refused():
    """Same vocabulary size, one token's text differs: named."""
    from forgert.draft_model import check_compatible
    from forgert.errors import ModelFormatError

    def stub(name, vocab, bos=1):
        hf = types.SimpleNamespace(get_vocab=lambda with_added_tokens: dict(vocab))
        tok = types.SimpleNamespace(n_vocab=len(vocab), hf=hf, bos_id=bos, add_bos=True)
        return types.SimpleNamespace(_model=types.SimpleNamespace(name=name), tokenizer=tok, n_ctx=64,
                                     _engine=types.SimpleNamespace(recurrent=False))
    target = stub("t", {"a": 0, "b": 1, "c": 2})
    check_compatible(target, stub("d", {"a": 0, "b": 1, "c": 2}))
    with pytest.raises(ModelFormatError, match=r"d's tokenizer differs from t's \(token 2 is 'x' in the draft model\)"):
        check_compatible(target, stub("d", {"a": 0, "b": 1, "x": 2}))
    with pytest.raises(ModelFormatError, match="starts a text with BOS 0, t with 1"):
        check_compatible(target, stub("d", {"a": 0, "b": 1, "c": 2}, bos=0))


def test_cli_run_reports_drafts(tiny_models, capsys):
    """`forgert run --draft-model PATH`: greedy's text, the drafts kept on stderr."""
    from forgert.cli import main
    path = _path(tiny_models, "llama3_untied")
    args = ["run", "ab cd ef", "--model", path, "--raw", "--temperature", "0", "-n", "24", "--ignore-eos",
            "--n-ctx", "128", "--backend", "cpu"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--draft-model", _path(tiny_models, "llama3_untied", "gguf-Q4_0"), "--draft-tokens", "5"]) == 0
    out, err = capsys.readouterr()
    assert out == plain and "draft model: " in err and "draft tokens kept" in err
    assert main(args + ["--draft-model", path, "--draft-tokens", "16"]) == 2
    assert "--draft-tokens must be 1..15, got 16" in capsys.readouterr().err
    assert main(["serve", "--model", path, "--draft-model", path, "--parallel", "2"]) == 2
    assert "--draft-model drafts for one sequence at a time" in capsys.readouterr().err


def test_server_drafts_and_gives_the_same_text(forgert, tiny_models):
    """A server over a Model with a draft model: greedy completions, streamed or not, equal a
    plain server's, and their timings count the drafts."""
    from server_harness import LiveServer
    target = _path(tiny_models, "llama3_untied")
    prompt = "ab cd ef gh"
    texts = {}
    for draft in (None, _path(tiny_models, "llama3_untied", "gguf-Q4_0")):
        with LiveServer(forgert.Model(target, backend="cpu", n_ctx=128, draft_model=draft), api_key=None) as srv:
            c = srv.openai_client()
            r = c.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0,
                                     extra_body={"ignore_eos": True})
            streamed = "".join(ch.choices[0].text for ch in c.completions.create(
                model="m", prompt=prompt, max_tokens=24, temperature=0, stream=True, extra_body={"ignore_eos": True}))
            texts[draft is not None] = (r.choices[0].text, streamed, r.model_extra["timings"]["draft_tokens"])
    assert texts[True][:2] == (texts[False][0], texts[False][0])
    assert texts[False][2] == 0 and texts[True][2] > 0


def test_reset_and_the_prompt_cache_reach_the_draft_model(forgert, tiny_models):
    """Model.reset() empties the draft model's cache too, and set_prompt_cache gives it one of its
    own, so that conversations taking turns resume in the draft as in the target; the tokens stay
    greedy's through the switches."""
    target = _path(tiny_models, "llama3_untied")
    plain = forgert.Model(target, backend="cpu", n_ctx=256)
    m = forgert.Model(target, backend="cpu", n_ctx=256, draft_model=_path(tiny_models, "llama3_untied", "gguf-Q4_0"))
    m.set_prompt_cache(1 << 20)
    assert m.draft_model._prompt_cache is not None
    a, b = _prompt(plain.vocab_size, 1), _prompt(plain.vocab_size, 2)
    for prompt in (a, b, a + [5, 6], b + [7]):       # two conversations taking turns
        assert (m.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True).tokens ==
                plain.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True).tokens)
    assert m.draft_model._cache_tokens
    m.reset()
    assert m.draft_model._cache_tokens == [] and m._cache_tokens == []
