"""Greedy decoding on logits without a token to pick (a NaN, a +inf, or nothing above -inf: a model
whose activations overflowed, a broken weight) raises forgert.NonFiniteLogitsError naming the problem
and the token position, where it used to decode on with token 0 or the largest finite logit.

The engine's argmax gives a negative sentinel for such a row (core/backend.h; the ops against NumPy
in test_cpu_ops.py, test_metal_ops.py, test_metal_fused_argmax.py), and forgert/greedy.py turns it
into the error for every consumer: Model.generate / stream (the CPU's step-by-step decoding, Metal's
pipelined steps), draft-model and prompt-lookup verification, batched decoding (only the sequence
that met it fails), and the server (a 500 naming it, and it serves the next request).

The model: the tiny untied Llama 3, F32, whose greedy continuation of PROMPT is 17, 301, 83, ...;
in BAD the embedding row of token 83 is NaN, so the prompt and the first two steps are clean and
the step evaluating 83 (position 6) gives NaN logits (untied: the output matrix stays clean, and a
prompt that never meets 83 decodes as on the clean model).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import model_factory as mf
from argmax_reference import argmax_reference
from conftest import require_backend, subprocess_env

PROMPT = [2, 3, 4, 5]
BAD_TOKEN = 83          # the third token greedy picks after PROMPT (checked by clean_tokens)
BAD_POSITION = 6        # where it sits: 4 prompt tokens, then 17, 301, 83
GOOD_PROMPT = [10, 20, 30]
BACKENDS = ["cpu", pytest.param("metal", marks=pytest.mark.metal)]
NAN_AT_6 = r"non-finite logits \(NaN\) at token position 6: its activations overflowed or a weight holds NaN/inf"


@pytest.fixture(scope="module")
def untied(tiny_models):
    return tiny_models("llama3_untied")


@pytest.fixture(scope="module")
def paths(untied, tmp_path_factory):
    """{"clean", "bad" (token 83's embedding NaN), "nan_norm" (every logit NaN)}: F32 GGUFs."""
    root = tmp_path_factory.mktemp("nonfinite")
    t = dict(mf.gguf_tensors(untied.model, untied.spec))
    bad = dict(t, **{"token_embd.weight": t["token_embd.weight"].copy()})
    bad["token_embd.weight"][BAD_TOKEN] = np.nan
    nan_norm = dict(t, **{"output_norm.weight": np.full_like(t["output_norm.weight"], np.nan)})
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"   # for the chat routes
    return {name: str(mf.write_gguf(untied.model, untied.spec, untied.tokenizer, root / f"{name}.gguf", "F32",
                                    tensors=tensors, chat_template=template))
            for name, tensors in (("clean", t), ("bad", bad), ("nan_norm", nan_norm))}


def load(path, backend, metal_reason, **kw):
    import forgert
    require_backend(backend, metal_reason)
    return forgert.Model(path, backend=backend, n_ctx=64, **kw)


@pytest.fixture(scope="module")
def clean_tokens(paths):
    """The clean model's greedy tokens after PROMPT and GOOD_PROMPT (CPU)."""
    import forgert
    m = forgert.Model(paths["clean"], backend="cpu", n_ctx=64)
    out = {tuple(p): m.generate(p, max_tokens=8, temperature=0, ignore_eos=True).tokens for p in (PROMPT, GOOD_PROMPT)}
    assert out[tuple(PROMPT)][:3] == [17, 301, BAD_TOKEN] and BAD_TOKEN not in out[tuple(GOOD_PROMPT)]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_generate_raises_at_the_nan_step(paths, clean_tokens, metal_reason, backend):
    """The step evaluating token 83 gives NaN logits: generate raises naming NaN and position 6 (on
    Metal inside the pipelined loop, whose next step read the sentinel on the device), stream
    yields the clean tokens' text first; the model then serves a clean prompt as the clean model."""
    import forgert
    m = load(paths["bad"], backend, metal_reason)
    with pytest.raises(forgert.NonFiniteLogitsError, match=NAN_AT_6) as e:
        m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
    assert (e.value.position, e.value.kind) == (BAD_POSITION, "NaN") and isinstance(e.value, ValueError)
    stream = m.stream(PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
    pieces = []
    with pytest.raises(forgert.NonFiniteLogitsError, match=NAN_AT_6):
        for piece in stream:
            pieces.append(piece)
    assert "".join(pieces) == m.tokenizer.decode(clean_tokens[tuple(PROMPT)][:3])[:len("".join(pieces))]
    good = m.generate(GOOD_PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
    assert good.tokens == clean_tokens[tuple(GOOD_PROMPT)]


def test_cpu_pipelined_decoding_past_a_sentinel(paths, clean_tokens, metal_reason):
    """The CPU engine's pipelined greedy steps (Metal's default loop, here on the CPU): the step
    launched after the NaN one reads the sentinel as its token on the device; get_rows gives it
    a zero row (core/backend.h) instead of reading before the table, the host raises, and the
    engine then decodes a clean prompt as the clean model."""
    import forgert
    m = load(paths["bad"], "cpu", metal_reason)
    m._pipelined_decode = True
    with pytest.raises(forgert.NonFiniteLogitsError, match=NAN_AT_6):
        m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
    assert m.generate(GOOD_PROMPT, max_tokens=8, temperature=0, ignore_eos=True).tokens == \
        clean_tokens[tuple(GOOD_PROMPT)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_logit_nan_fails_at_the_prompt(paths, metal_reason, backend):
    """A NaN norm weight (every logit NaN): the prompt's last row already, position 3."""
    import forgert
    m = load(paths["nan_norm"], backend, metal_reason)
    with pytest.raises(forgert.NonFiniteLogitsError, match=r"\(NaN\) at token position 3"):
        m.generate(PROMPT, max_tokens=4, temperature=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_fails_only_the_sequence_that_met_it(paths, clean_tokens, metal_reason, backend):
    """Batched decoding (forward_batch_argmax; with a logprobs sequence beside it, the logits rows and
    NumPy's greedy choice): the PROMPT sequence fails naming NaN and position 6, GOOD_PROMPT's in the
    same passes gives the clean model's tokens; generate() of the list raises the error."""
    import forgert
    from forgert.batch import BatchScheduler, LogitsOptions
    from forgert.sampling import SamplingParams
    m = load(paths["bad"], backend, metal_reason, parallel=2)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    for good_options in (LogitsOptions(), LogitsOptions(top_logprobs=1)):
        sched = BatchScheduler(m._engine, m.tokenizer, 16)
        bad, good = sched.add(PROMPT, params), sched.add(GOOD_PROMPT, params, good_options)
        while sched.busy:
            sched.step()
        sched.close()
        assert isinstance(bad.error, forgert.NonFiniteLogitsError) and bad.error.position == BAD_POSITION
        assert good.error is None and good.result.tokens == clean_tokens[tuple(GOOD_PROMPT)]
    with pytest.raises(forgert.NonFiniteLogitsError, match=NAN_AT_6):
        m.generate([GOOD_PROMPT, PROMPT], max_tokens=8, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("bad_sampled", [False, True])
def test_batch_with_sampled_rows_fails_only_that_sequence(paths, bad_sampled):
    """A pass whose rows are drawn by C++ samplers (forward_batch_sample; a greedy row's sampler at
    temperature 0): the row a sampler refuses (NaN: a prompt holding token 83, whose prefill rows are
    NaN too but not used) gets the sentinel, so that sequence alone fails, naming it (greedy or
    sampled), and the other gives the tokens it gives beside a clean prompt on the clean model."""
    import forgert
    from forgert.batch import BatchScheduler
    from forgert.sampling import SamplingParams
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=8, temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, seed=5, ignore_eos=True)
    bad_prompt = [2, 3, BAD_TOKEN, 4, 5]
    runs = {}
    for name in ("clean", "bad"):
        m = forgert.Model(paths[name], backend="cpu", n_ctx=64, parallel=2)
        sched = BatchScheduler(m._engine, m.tokenizer, 16)
        pair = (sched.add(bad_prompt, sampled if bad_sampled else greedy),
                sched.add(GOOD_PROMPT, greedy if bad_sampled else sampled))
        while sched.busy:
            sched.step()
        sched.close()
        runs[name] = pair
    (bad, good), (clean_bad, clean_good) = runs["bad"], runs["clean"]
    assert clean_bad.error is None and good.error is None
    assert good.result.tokens == clean_good.result.tokens
    assert isinstance(bad.error, forgert.NonFiniteLogitsError)
    assert (bad.error.kind, bad.error.position) == ("NaN", len(bad_prompt) - 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_draft_model_verification(paths, metal_reason, backend):
    """Target BAD, draft clean: the draft proposes 83 and what follows, the verification pass
    (forward_rows_argmax) keeps 83 and meets the NaN row after it: the error, position 6. Target
    clean, draft BAD: the draft model's own step fails, and the error says it was the draft's."""
    import forgert
    m = load(paths["bad"], backend, metal_reason, draft_model=paths["clean"], draft_tokens=4)
    with pytest.raises(forgert.NonFiniteLogitsError, match=NAN_AT_6):
        m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
    m = load(paths["clean"], backend, metal_reason, draft_model=paths["bad"], draft_tokens=4)
    with pytest.raises(forgert.NonFiniteLogitsError, match=r"^draft model .*: the model produced non-finite"):
        m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True)


class SentinelRows:
    """The engine, but each multi-row forward_rows_argmax (prompt lookup's verification of a draft)
    gives sentinels: on row 0 (`first`: its token is always used), or on every row after the last
    one used (`rejected`: the rows past a rejected draft token, or none when all are kept). A NaN
    embedding cannot reach those rows alone: every token a lookup drafts was evaluated before."""

    def __init__(self, engine, where):
        self._engine, self.where, self.passes = engine, where, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def forward_rows_argmax(self, rows, pos):
        from forgert.prompt_lookup import accepted
        best = np.array(self._engine.forward_rows_argmax(rows, pos))
        if len(best) > 1:
            self.passes.append(pos)
            if self.where == "first":
                best[0] = -2
            else:
                best[accepted(list(rows[1:]), best) + 1:] = -1
        return best


def test_prompt_lookup_verification(paths, clean_tokens, metal_reason):
    """Prompt lookup's verification pass: a sentinel on a row whose token is used is the error at
    that row's position; sentinels on rows after a rejected draft token are no part of the output
    (greedy.py), so the tokens are the clean model's. (The clean greedy tokens after PROMPT repeat
    301 83 ...: lookup drafts there.)"""
    import forgert
    m = load(paths["clean"], "cpu", metal_reason)
    engine = m._engine
    want = m.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True).tokens
    m._engine = spy = SentinelRows(engine, "rejected")
    assert m.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True, prompt_lookup=4).tokens == want
    assert spy.passes, "lookup drafted nothing"
    m.reset()
    m._engine = spy = SentinelRows(engine, "first")
    with pytest.raises(forgert.NonFiniteLogitsError, match=r"non-finite logits \(\+inf\) at token position") as e:
        m.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True, prompt_lookup=4)
    assert e.value.position == spy.passes[0] and e.value.kind == "+inf"


def test_greedy_module_rule_matches_numpy():
    """forgert/greedy.py's NumPy argmax (batched rows sampled in Python) follows the engine's rule."""
    from forgert import greedy
    x = np.random.default_rng(3).standard_normal((5, 50)).astype(np.float32)
    x[0, 7], x[1, 49], x[2, :] = np.nan, np.inf, -np.inf
    x[3, 0] = -np.inf
    assert [greedy.argmax(r) for r in x] == argmax_reference(x).tolist()
    assert greedy.tokens([5, 6], 10) == [5, 6]
    for code, kind in ((-1, "NaN"), (-2, "+inf"), (-3, "all -inf")):
        with pytest.raises(ValueError, match="at token position 11") as e:
            greedy.tokens([5, code, 6], 10)
        assert e.value.kind == kind


def nan_model_server(path, parallel):
    import forgert
    from fastapi.testclient import TestClient
    from forgert.server import create_app
    m = forgert.Model(path, backend="cpu", n_ctx=64, parallel=parallel)
    return TestClient(create_app(m, "tiny", None), raise_server_exceptions=False), m


@pytest.mark.parametrize("parallel", [1, 2])
def test_server_answers_with_an_error_naming_it(paths, clean_tokens, parallel):
    """The server (requests taking turns, and the --parallel batch): PROMPT's request gets a 500 whose
    message names the NaN and the position (streamed: an in-band error event, then [DONE]), and the
    server goes on serving: GOOD_PROMPT then gets the clean model's text."""
    client, m = nan_model_server(paths["bad"], parallel)
    body = {"model": "tiny", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    r = client.post("/v1/completions", json=dict(body, prompt=PROMPT))
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert "non-finite logits (NaN) at token position 6" in err["message"]
    assert err["type"] == "server_error" and err["code"] == "non_finite_logits"
    r = client.post("/v1/completions", json=dict(body, prompt=PROMPT, stream=True))
    assert r.status_code == 200 and "non-finite logits (NaN) at token position 6" in r.text
    assert r.text.rstrip().endswith("data: [DONE]")
    r = client.post("/v1/completions", json=dict(body, prompt=GOOD_PROMPT))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == m.tokenizer.decode(clean_tokens[tuple(GOOD_PROMPT)])


def test_cpu_argmax_tests_under_every_kernel_set():
    """The CPU argmax's sentinels under every kernel set this CPU runs (FORGERT_CPU_ISA; the argmax
    itself is portable code, the process's other kernels are not)."""
    from test_cpu_isa import TESTS, runnable_sets
    for isa in runnable_sets() or pytest.skip("this CPU runs one kernel set"):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not metal",
                               "-k", "argmax and cpu", str(TESTS / "test_cpu_ops.py")],
                              env=subprocess_env(FORGERT_CPU_ISA=isa), capture_output=True, text=True,
                              cwd=TESTS.parent, timeout=600)
        assert proc.returncode == 0 and " passed" in proc.stdout, isa + proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("route,body,shape", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "openai"),
    ("/v1/responses", {"input": "hi"}, "openai"),
    ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}]}, "anthropic"),
])
def test_every_route_names_it(paths, route, body, shape):
    """Every NaN logit (the NaN norm weight): each generating route answers a 500 in its own shape
    whose message names the NaN, not the generic 'the server had an error' nor a 400."""
    client, _ = nan_model_server(paths["nan_norm"], 1)
    r = client.post(route, json=dict(body, model="tiny", max_tokens=4, temperature=0))
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert "non-finite logits (NaN) at token position" in err["message"]
    assert err["type"] == ("api_error" if shape == "anthropic" else "server_error")
