"""The OpenAI features that need the logits in Python (logprobs, logit_bias, response_format) and
several sequences per request (n > 1, several prompts, echo) in the server's running batch
(server/batch_worker.py over batch.py), driven by the official `openai` client on a tiny F32 model.

Reference: the same request answered alone by a server without batching (a one-slot Model:
Model.stream, the single-sequence path, with its own logprobs, bias, grammar and samplers).
Temperature 0: identical tokens; sampled requests (seeded): identical tokens too, the same
samplers drawing from the same logits; logprobs within LOGPROB_TOL (the batched pass sums in
another order than the one-row pass). Structured output also validates with pydantic.
"""
from __future__ import annotations

import threading
from typing import Literal

import httpx
import pydantic
import pytest

from server_harness import LiveServer, wait_until

# Batched pass vs one-row pass, f32 tiny model: measured max |difference| 9.4e-5 (logprobs of
# a log-softmax over logits of magnitude ~10; f32 rounding in another summation order).
LOGPROB_TOL = 1e-3

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class Colour(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    color: Literal["red", "green", "blue"]
    ok: bool


SCHEMA = {**Colour.model_json_schema(), "additionalProperties": False}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA, "strict": True}}
ASK = [{"role": "user", "content": "abc def as JSON"}]

# kind ("text": /v1/completions, "chat"), request fields; every feature the batch now takes
FEATURES = {
    "logprobs": ("text", dict(prompt="abc def ghi", max_tokens=10, temperature=0, logprobs=3)),
    "chat_logprobs": ("chat", dict(messages=ASK, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2)),
    "logit_bias": ("text", dict(prompt="abc def", max_tokens=10, temperature=0,
                                logit_bias={str(t): (-100 if t % 2 else 5) for t in range(40, 60)})),
    "json_schema": ("chat", dict(messages=ASK, max_tokens=60, temperature=0, response_format=JSON_FORMAT)),
    "json_schema_hot": ("chat", dict(messages=ASK, max_tokens=60, temperature=1.2, seed=3,
                                     response_format=JSON_FORMAT)),
    "n_sampled": ("text", dict(prompt="one two", max_tokens=8, temperature=1.0, seed=11, n=3)),
    "n_logprobs_sampled": ("text", dict(prompt="two three", max_tokens=8, temperature=0.9, seed=5, n=2,
                                        logprobs=1)),
    "prompts": ("text", dict(prompt=["abc", "def def def", "ghi jkl mno"], max_tokens=8, temperature=0)),
    "echo_logprobs": ("text", dict(prompt="abc def ghi jkl", max_tokens=4, temperature=0, echo=True, logprobs=2)),
    "stop_and_penalty": ("text", dict(prompt="abc abc", max_tokens=12, temperature=0, frequency_penalty=1.5,
                                      stop=["zz"])),
}


@pytest.fixture(scope="module")
def chat_gguf(tiny_models, tmp_path_factory):
    """The tiny llama with a chat template (the chat route needs one)."""
    import model_factory as mf
    tm = tiny_models("llama3_untied")
    path = tmp_path_factory.mktemp("chat_tiny") / "tiny-chat.gguf"
    return str(mf.write_gguf(tm.model, tm.spec, tm.tokenizer, path, "F32", chat_template=TEMPLATE))


@pytest.fixture(scope="module")
def batched(chat_gguf):
    import forgert
    model = forgert.Model(chat_gguf, backend="cpu", threads=1, n_ctx=128, parallel=9)    # 8 batch slots
    with LiveServer(model, api_key=None) as live:
        yield live


@pytest.fixture(scope="module")
def alone(chat_gguf):
    import forgert
    model = forgert.Model(chat_gguf, backend="cpu", threads=1, n_ctx=128)
    with LiveServer(model, api_key=None) as live:
        assert live.app.state.forgert.batch_worker is None     # the single-sequence path
        yield live


@pytest.fixture(scope="module")
def reference(alone):
    client = alone.openai_client()
    return {name: run(client, kind, fields) for name, (kind, fields) in FEATURES.items()}


def _logprob_entries(kind, logprobs) -> list:
    """[(token, logprob, {alternative: logprob})] from either route's logprobs object."""
    if not logprobs:
        return []
    if kind == "chat":
        return [(e["token"], e["logprob"], {t["token"]: t["logprob"] for t in e["top_logprobs"]})
                for e in logprobs["content"] or []]
    return list(zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]))


def run(client, kind, fields, stream=False, leave_after=None):
    """{choice index: {"text", "finish", "logprobs"}, "usage": (prompt, completion tokens)} of one
    request (streamed chunks gathered), or None when it left after `leave_after` chunks."""
    create = client.completions.create if kind == "text" else client.chat.completions.create
    choices = {}

    def with_usage(usage):
        return {**choices, "usage": (usage["prompt_tokens"], usage["completion_tokens"])}

    def gather(c, delta):
        acc = choices.setdefault(c["index"], {"text": "", "finish": None, "logprobs": []})
        body = c["text"] if kind == "text" else (c["delta"] if delta else c["message"])["content"]
        acc["text"] += body or ""
        acc["finish"] = c["finish_reason"] or acc["finish"]
        acc["logprobs"] += _logprob_entries(kind, c.get("logprobs"))

    if not stream:
        resp = create(model="x", **fields).model_dump()
        for c in resp["choices"]:
            gather(c, False)
        return with_usage(resp["usage"])
    usage = None
    with create(model="x", stream=True, stream_options={"include_usage": True}, **fields) as chunks:
        for n, chunk in enumerate(chunks, 1):
            chunk = chunk.model_dump()
            for c in chunk["choices"]:
                gather(c, True)
            usage = chunk.get("usage") or usage
            if leave_after is not None and n >= leave_after:
                return None     # leaves mid-stream: the connection closes
    return with_usage(usage)


def assert_same(got, want) -> float:
    """Identical text, finish reasons, tokens and usage; returns the largest logprob difference."""
    assert sorted(got, key=str) == sorted(want, key=str)
    assert got["usage"] == want["usage"]
    worst = 0.0
    for i in (k for k in want if k != "usage"):
        g, w = got[i], want[i]
        assert (g["text"], g["finish"]) == (w["text"], w["finish"]), f"choice {i}"
        assert [e[0] for e in g["logprobs"]] == [e[0] for e in w["logprobs"]], f"choice {i}"
        for (_, glp, gtop), (_, wlp, wtop) in zip(g["logprobs"], w["logprobs"]):
            assert (glp is None) == (wlp is None)     # an echoed prompt's first token has none
            gtop, wtop = gtop or {}, wtop or {}
            assert sorted(gtop) == sorted(wtop)
            worst = max([worst] + ([abs(glp - wlp)] if glp is not None else [])
                        + [abs(gtop[t] - wtop[t]) for t in wtop])
    assert worst <= LOGPROB_TOL
    return worst


def run_concurrently(jobs):
    results = [None] * len(jobs)

    def one(i):
        results[i] = jobs[i]()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def in_flight(server) -> int:
    return httpx.get(server.base_url + "/health", timeout=30).json()["requests_in_flight"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", sorted(FEATURES))
def test_feature_alone_in_the_batch_equals_the_single_path(batched, reference, name, stream):
    kind, fields = FEATURES[name]
    assert_same(run(batched.openai_client(), kind, fields, stream), reference[name])


def test_structured_output_parses_and_validates(reference, batched):
    for name in ("json_schema", "json_schema_hot"):
        kind, fields = FEATURES[name]
        choice = run(batched.openai_client(), kind, fields)[0]
        assert choice["finish"] == "stop", choice
        Colour.model_validate_json(choice["text"])     # parses and validates against the schema


def test_mixed_concurrent_requests_each_equal_the_single_path(batched, reference):
    """Every feature at once (streamed and not) beside plain streams: they share the steps."""
    worker = batched.app.state.forgert.batch_worker
    sched, rows, step = worker.scheduler, [], worker.scheduler.step
    names = sorted(FEATURES)
    plain = [("text", dict(prompt=f"plain {i} " + "abc " * i, max_tokens=12, temperature=0)) for i in range(3)]
    plain_ref = [run(batched.openai_client(), *p) for p in plain]

    def counting_step():        # how many sequences each engine pass carried
        if not rows:            # the first step waits for every request (a loaded machine could
            # otherwise finish the first before the last arrive)
            wait_until(lambda: worker.queued >= len(names) + len(plain), 120, "every request to arrive")
        rows.append(len(sched.running) + min(len(sched.waiting), len(sched.free_slots)))
        return step()
    sched.step = counting_step
    try:
        client = batched.openai_client()
        jobs = [lambda n=n, i=i: run(client, *FEATURES[n], stream=i % 2 == 1) for i, n in enumerate(names)]
        jobs += [lambda p=p: run(client, *p, stream=True) for p in plain]
        got = run_concurrently(jobs)
    finally:
        del sched.step
    worst = max(assert_same(g, reference[n]) for g, n in zip(got, names))
    for g, want in zip(got[len(names):], plain_ref):
        assert_same(g, want)
    assert max(rows) >= 6, f"sequences per step: {rows}"     # they ran together, not in turn
    print(f"largest logprob difference batch vs alone: {worst:.3g}")


def test_clients_leaving_mid_batch_do_not_disturb_the_others(batched, reference):
    names = sorted(FEATURES)
    client = batched.openai_client()
    leaving = {"json_schema", "logprobs", "n_sampled"}
    jobs = [lambda n=n: run(client, *FEATURES[n], stream=True, leave_after=2 if n in leaving else None)
            for n in names]
    got = run_concurrently(jobs)
    for g, n in zip(got, names):
        if n in leaving:
            assert g is None
        else:
            assert_same(g, reference[n])
    wait_until(lambda: in_flight(batched) == 0, 60, "the cancelled requests to leave the batch")
    worker = batched.app.state.forgert.batch_worker
    assert not worker.scheduler.busy and len(worker.scheduler.free_slots) == 8   # every slot back
    assert_same(run(client, *FEATURES["json_schema"]), reference["json_schema"])    # still serving


def test_bad_requests_fail_alone_with_a_clear_error(batched, reference):
    """An out-of-vocabulary bias is a 400 before the request queues; the batch keeps serving."""
    openai = pytest.importorskip("openai")
    client = batched.openai_client()
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model="x", prompt="abc", max_tokens=2, logit_bias={"999999": 1})
    assert_same(run(client, *FEATURES["logit_bias"]), reference["logit_bias"])
