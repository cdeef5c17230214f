"""Model.generate / Model.stream with a list of prompts and the options that need the logits row
in Python (batch.py's LogitsOptions): logprobs, response_format, logit_bias, each given once for
every prompt or as a list with one entry per prompt.

References: each prompt run alone by a one-slot Model with the same options (temperature 0:
identical tokens; logprobs within f32 rounding of the batched pass), transformers' logits
teacher-forced on the batch's output (NumPy log-softmax: the logprobs), pydantic validating the
JSON against the schema, and hand-computed consequences of a +100 bias.
"""
from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pydantic
import pytest

import model_factory as mf
from forgert.completion import StreamPiece
from forgert.sampling import SamplingParams

pytest.importorskip("llguidance")

FMT = "gguf-F32"
REF_MAX_REL = 5e-4   # test_e2e_tiny.py's F32 bound on logits (measured there <= 1.3e-4)
PROMPTS = ["hello world", "a b c", "the end of it", "x"]


class Colour(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    kind: Literal["red", "green", "blue"]
    n: int = pydantic.Field(ge=0, le=99)


SCHEMA = {**Colour.model_json_schema(), "additionalProperties": False}
COLOUR_FORMAT = {"type": "json_schema", "json_schema": {"name": "colour", "schema": SCHEMA, "strict": True}}


@pytest.fixture
def load(forgert):
    def make(tm, **kw):
        return forgert.Model(str(tm.path(FMT)), backend="cpu", threads=1, n_ctx=96, **kw)
    return make


def collect(stream, n):
    """(text, [TokenLogprob]) per prompt from a batch stream of (index, piece)."""
    texts, lps = [""] * n, [[] for _ in range(n)]
    for i, piece in stream:
        if isinstance(piece, StreamPiece):
            texts[i] += piece.text
            lps[i] += piece.logprobs
        else:
            texts[i] += piece
    return texts, lps


def alone_stream(model, prompt, **kw):
    s = model.stream(prompt, **kw)
    text, lps = "", []
    for piece in s:
        text += piece.text if isinstance(piece, StreamPiece) else piece
        lps += piece.logprobs if isinstance(piece, StreamPiece) else []
    return s.completion, text, lps


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_logprobs_per_prompt_equal_each_prompt_alone(tiny_models, reference_models, load):
    """logprobs given per prompt (2, none, 0, 3): each prompt's pieces carry what it asked for;
    tokens equal the prompt run alone, logprobs equal alone's within f32 rounding and
    transformers' log-softmax within its logits bound."""
    tm = tiny_models("llama_tied")
    tops = [2, None, 0, 3]
    greedy = dict(max_tokens=8, temperature=0.0, ignore_eos=True)
    s = load(tm, parallel=3).stream(PROMPTS, logprobs=tops, **greedy)
    texts, lps = collect(s, len(PROMPTS))
    assert texts == [c.text for c in s.completion]
    single, ref_model = load(tm), reference_models("llama_tied", FMT)
    worst_alone = worst_ref = 0.0
    for prompt, top, c, got in zip(PROMPTS, tops, s.completion, lps):
        alone, _, want = alone_stream(single, prompt, logprobs=top, **greedy)
        assert c.tokens == alone.tokens and c.text == alone.text
        if top is None:
            assert got == []
            continue
        assert [lp.token for lp in got] == [lp.token for lp in want]
        assert [len(lp.top) for lp in got] == [top] * len(c.tokens)
        assert [[t for t, _ in lp.top] for lp in got] == [[t for t, _ in lp.top] for lp in want]
        worst_alone = max(worst_alone, max(abs(a.logprob - b.logprob) for a, b in zip(got, want)))
        ids = single.tokenize(prompt)
        ref = mf.reference_logits(ref_model, ids + c.tokens)          # teacher-forced
        ref_lp = log_softmax(ref[len(ids) - 1:len(ids) - 1 + len(c.tokens)])
        tol = 2 * REF_MAX_REL * np.abs(ref).max()       # a log-softmax moves by <= 2 max|d logit|
        for k, (t, lp) in enumerate(zip(c.tokens, got)):
            worst_ref = max(worst_ref, abs(lp.logprob - ref_lp[k, t]))
            assert abs(lp.logprob - ref_lp[k, t]) < tol, f"prompt {prompt!r}, step {k}"
    # batched pass vs one-row pass, both f32: measured 3.6e-6
    assert worst_alone < 2e-5
    # vs transformers' logits, f64 log-softmax: measured 1.8e-5 (the per-step bound above is looser)
    assert worst_ref < 1e-4


def test_response_format_output_validates_and_equals_alone(tiny_models, load):
    """A schema for every prompt (compiled once), then per prompt: schema, plain text,
    json_object, the schema compiled by compile_response_format. Constrained texts parse and validate; every completion equals the
    prompt run alone with its format."""
    tm = tiny_models("qwen2_tied")
    greedy = dict(max_tokens=40, temperature=0.0)
    m, single = load(tm, parallel=2), load(tm)
    shared = m.generate(PROMPTS, response_format=COLOUR_FORMAT, **greedy)
    for c in shared:
        assert c.finish_reason == "stop"
        Colour.model_validate_json(c.text)      # pydantic: parses and validates against the schema
    formats = [COLOUR_FORMAT, None, {"type": "json_object"}, m.compile_response_format(COLOUR_FORMAT)]
    mixed = m.generate(PROMPTS, response_format=formats, **greedy)
    Colour.model_validate_json(mixed[0].text)
    Colour.model_validate_json(mixed[3].text)
    if mixed[2].finish_reason == "stop":      # an object may run past max_tokens ("length")
        assert isinstance(json.loads(mixed[2].text), dict)
    for prompt, fmt, c, c_shared in zip(PROMPTS, formats, mixed, shared):
        assert c.tokens == single.generate(prompt, response_format=fmt, **greedy).tokens
        assert c_shared.tokens == single.generate(prompt, response_format=COLOUR_FORMAT, **greedy).tokens


def test_response_format_while_sampling_hot(tiny_models, load):
    """Seeded samples at temperature 1.5 (NumPy sampler per sequence): each prompt's seed gives
    the text it gives alone, and every finished text validates."""
    tm = tiny_models("llama3_untied")
    params = [SamplingParams(temperature=1.5, seed=seed, max_tokens=40) for seed in range(len(PROMPTS))]
    batch = load(tm, parallel=4).generate(PROMPTS, params, response_format=COLOUR_FORMAT)
    single = load(tm)
    for prompt, sp, c in zip(PROMPTS, params, batch):
        assert c.tokens == single.generate(prompt, sp, response_format=COLOUR_FORMAT).tokens
        if c.finish_reason == "stop":
            Colour.model_validate_json(c.text)
    assert any(c.finish_reason == "stop" for c in batch)


def test_logit_bias_per_prompt(tiny_models, load):
    """+100 on one token makes it every greedy choice (hand-computed: the tiny model's logits
    span far less than 100); -100 on the unbiased greedy choice removes it; no bias leaves the
    plain output. Each equals the prompt run alone with its bias."""
    tm = tiny_models("llama_tied")
    greedy = dict(max_tokens=6, temperature=0.0, ignore_eos=True)
    m, single = load(tm, parallel=2), load(tm)
    plain = [single.generate(p, **greedy) for p in PROMPTS[:3]]
    favourite = 77
    banned = plain[1].tokens[0]
    biases = [{favourite: 100}, {str(banned): -100}, None]
    batch = m.generate(PROMPTS[:3], logit_bias=biases, **greedy)
    assert batch[0].tokens == [favourite] * 6
    assert banned not in batch[1].tokens
    assert batch[2].tokens == plain[2].tokens
    for prompt, bias, c in zip(PROMPTS, biases, batch):
        assert c.tokens == single.generate(prompt, logit_bias=bias, **greedy).tokens
    shared = m.generate(PROMPTS[:2], logit_bias={favourite: 100}, **greedy)
    assert [c.tokens for c in shared] == [[favourite] * 6] * 2


def test_all_options_together_with_per_prompt_params(tiny_models, load):
    """Per-prompt SamplingParams (greedy, seeded, penalised) beside logprobs, a bias and a
    format, in one batch with more prompts than slots: each prompt as alone."""
    tm = tiny_models("qwen2_untied")
    params = [SamplingParams(temperature=0.0, max_tokens=30),
              SamplingParams(temperature=1.0, top_k=20, seed=5, max_tokens=9, ignore_eos=True),
              SamplingParams(temperature=1.2, seed=7, repetition_penalty=1.3, max_tokens=7, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)]
    kw = dict(logprobs=[None, 1, None, 2], response_format=[COLOUR_FORMAT, None, None, None],
              logit_bias=[None, None, {3: 5.0}, None])
    s = load(tm, parallel=2).stream(PROMPTS, params, **kw)
    _, lps = collect(s, len(PROMPTS))
    single = load(tm)
    for i, (prompt, sp) in enumerate(zip(PROMPTS, params)):
        alone, _, want = alone_stream(single, prompt, params=sp, **{k: v[i] for k, v in kw.items()})
        assert s.completion[i].tokens == alone.tokens
        assert [lp.token for lp in lps[i]] == [lp.token for lp in want]
    Colour.model_validate_json(s.completion[0].text)


def test_bad_batch_options_are_named(tiny_models, load):
    tm = tiny_models("llama_tied")
    m = load(tm, parallel=2)
    prompts = [[1], [2], [3]]
    for name, value in (("logprobs", [1, 2]), ("response_format", [None]), ("logit_bias", [{}, {}, {}, {}])):
        with pytest.raises(ValueError, match=f"{name}: {len(value)} values for 3 prompts"):
            m.stream(prompts, **{name: value})
    with pytest.raises(ValueError, match=r"params: 2 SamplingParams for 3 prompts"):
        m.generate(prompts, [SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match=r"logprobs must be None or an integer >= 0, got -1 \(prompt 1\)"):
        m.stream(prompts, logprobs=[0, -1, None])
    with pytest.raises(ValueError, match=r"response_format.type .* got 'yaml' \(prompt 0\)"):
        m.stream(prompts, response_format={"type": "yaml"})
    with pytest.raises(ValueError, match=r"logit_bias\[5\] = 101.*\(prompt 2\)"):
        m.stream(prompts, logit_bias=[None, {}, {5: 101}])
    bad = SamplingParams()
    bad.temperature = -1        # checked again when the batch merges the keyword overrides
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0, got -1 \(prompt 1\)"):
        m.generate(prompts, [None, bad, None], max_tokens=2)
    with pytest.raises(ValueError, match=r"logit_bias: 'x' is not a token id"):
        m.stream(prompts, logit_bias={"x": 1})
    # the prompts themselves: which one is bad (a token id's index alone named prompt 0's)
    with pytest.raises(ValueError, match=r"prompt\[0\] = -1 is out of range: token ids are 0\.\.\d+ \(prompt 2\)"):
        m.stream([[1], [2], [-1]])
    with pytest.raises(ValueError, match=r"prompt has 97 tokens but the context holds 96 .*\(prompt 1\)"):
        m.stream([[1], [2] * 97, [3]])
    with pytest.raises(ValueError, match=r"prompt is empty: nothing to evaluate \(prompt 1\)"):
        m.stream(["a", ""])
    # Nothing started: the model still generates, and equals a fresh one.
    out = m.generate(prompts, max_tokens=3, temperature=0.0, ignore_eos=True, logprobs=1)
    assert [c.tokens for c in out] == [load(tm).generate(p, max_tokens=3, temperature=0.0, ignore_eos=True).tokens
                                       for p in prompts]
