"""Echo with prompt logprobs (what lm-eval's log-likelihood tasks send, many prompts at once) in
the server's running batch: each prompt is prefilled in the batch steps beside the other
clients' decoding rows, its rows scored in C++ by the engine pass (batch.py), never on the
single-sequence path between steps.

References: the same request answered alone by a server without batching (Model.prompt_logprobs
and Model.stream), and NumPy's log-softmax of Model.logits of a third Model (each prompt token's
logprob and its top alternatives). A client that leaves mid-echo frees its slot at the next step.
"""
from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

from forgert.server.responses import legacy_token

from server_harness import LiveServer, wait_until
from test_batch_server_features import (assert_same, chat_gguf, in_flight, run,  # noqa: F401 (chat_gguf: a fixture)
                                         run_concurrently)

N_CTX = 256
PREFILL_CHUNK = 16      # small: every echo prompt takes several steps, beside the decoding chats

# Prompt logprobs batched vs NumPy's f64 log-softmax of Model.logits (f32 tiny model): 16-row
# chunks beside other rows vs one pass over the prompt sum in other orders, measured max
# |difference| 6.3e-5 (as test_batch_server_features' batched vs one-row logprobs).
NUMPY_TOL = 3e-4


@pytest.fixture(scope="module")
def batched(chat_gguf):
    import forgert
    model = forgert.Model(chat_gguf, backend="cpu", threads=1, n_ctx=N_CTX, parallel=9)    # 8 batch slots

    def not_batched(*args, **kwargs):
        raise AssertionError("echo's prompt logprobs left the batch for the single-sequence path")
    model.prompt_logprobs = not_batched
    with LiveServer(model, api_key=None) as live:
        live.app.state.forgert.batch_worker.scheduler.prefill_chunk = PREFILL_CHUNK
        yield live


@pytest.fixture(scope="module")
def alone(chat_gguf):
    import forgert
    model = forgert.Model(chat_gguf, backend="cpu", threads=1, n_ctx=N_CTX)
    with LiveServer(model, api_key=None) as live:
        assert live.app.state.forgert.batch_worker is None     # the single-sequence path
        yield live


@pytest.fixture(scope="module")
def numpy_model(chat_gguf):
    import forgert
    return forgert.Model(chat_gguf, backend="cpu", threads=1, n_ctx=N_CTX)


def token_prompt(n, seed):
    """n token ids of ordinary text pieces (lm-eval sends token ids, no BOS)."""
    return np.random.default_rng(seed).integers(20, 300, size=n).tolist()


# 8 echo requests: token-id and text prompts, 0 to 5 alternatives, streamed or not, one with
# n = 2 (the second choice copies the first's K/V rows and prompt logprobs), one of 2 prompts
# (the second a single token: nothing to score, its logprob None).
ECHOES = [
    dict(prompt=token_prompt(40, 1), max_tokens=1, temperature=0, logprobs=1, echo=True),
    dict(prompt=token_prompt(57, 2), max_tokens=3, temperature=0, logprobs=2, echo=True),
    dict(prompt=token_prompt(23, 3), max_tokens=2, temperature=0, logprobs=0, echo=True),
    dict(prompt=token_prompt(90, 4), max_tokens=1, temperature=0, logprobs=5, echo=True),
    dict(prompt="abc def ghi jkl mno pqr abc def " * 4, max_tokens=4, temperature=0, logprobs=3, echo=True),
    dict(prompt=token_prompt(33, 6), max_tokens=3, temperature=0.8, seed=9, logprobs=1, echo=True, n=2),
    dict(prompt=[token_prompt(64, 7), token_prompt(1, 8)], max_tokens=1, temperature=0, logprobs=2,
         echo=True),
    # lm-eval's continuations share their context: scored from position 0 all the same
    dict(prompt=token_prompt(57, 2)[:30] + token_prompt(20, 10), max_tokens=2, temperature=0, logprobs=1,
         echo=True),
]
# streaming chats, one sampled (seeded): its steps draw in C++ beside the scored prefill rows
CHATS = [dict(messages=[{"role": "user", "content": "abc def " * (i + 1)}], max_tokens=40,
              temperature=0.9 if i == 2 else 0, seed=5) for i in range(3)]


@pytest.fixture(scope="module")
def reference(alone):
    client = alone.openai_client()
    return ([run(client, "text", fields) for fields in ECHOES],
            [run(client, "chat", fields) for fields in CHATS])


def prompts_of(fields, model) -> list[list[int]]:
    """Each choice's prompt ids, in choice order."""
    prompt = fields["prompt"]
    many = isinstance(prompt, list) and prompt and isinstance(prompt[0], list)
    lists = prompt if many else [prompt]
    ids = [model.prompt_tokens(p) for p in lists]
    return [p for p in ids for _ in range(fields.get("n", 1))]


def assert_numpy_prompt_logprobs(got, fields, model) -> float:
    """Each choice's echoed prompt tokens: logprob and top alternatives from log_softmax(logits)."""
    worst = 0.0
    for index, ids in enumerate(prompts_of(fields, model)):
        entries = got[index]["logprobs"][:len(ids)]
        assert entries[0][1] is None and not entries[0][2]   # nothing before the first token
        x = model.logits(ids).astype(np.float64)
        lp = x - x.max(axis=1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))                 # [len(ids), vocab]
        for i in range(1, len(ids)):
            _, logprob, top = entries[i]
            best = np.argsort(-lp[i - 1], kind="stable")[:fields["logprobs"]]
            # keyed as the response writes them: a byte piece (part of a character) as 'bytes:\\xNN'
            want = {legacy_token(model.detokenize([int(t)]), model.tokenizer.token_bytes(int(t))): lp[i - 1, t]
                    for t in best}
            assert sorted(top or {}) == sorted(want), f"choice {index} token {i}"
            errors = [abs(logprob - lp[i - 1, ids[i]])] + [abs(top[t] - want[t]) for t in want]
            assert max(errors) <= NUMPY_TOL, f"choice {index} token {i}: {errors}"
            worst = max(worst, *errors)
    return worst


def test_echo_requests_and_streaming_chats_share_the_steps(batched, reference, numpy_model):
    """8 echo requests at once (every second streamed) beside 3 streaming chats: each equals the
    same request alone and NumPy; the echo prompts were prefilled in steps that also decoded."""
    worker = batched.app.state.forgert.batch_worker
    sched, step = worker.scheduler, worker.scheduler.step
    shared_steps = []

    def watching_step():
        if not shared_steps:    # the first step waits for every request (a loaded machine could
            # otherwise finish the first before the last arrive)
            wait_until(lambda: worker.queued >= len(ECHOES) + len(CHATS), 120, "every request to arrive")
        scoring = any(s.prompt_logprobs is not None and not s.decoding and s.leader is None
                      for s in sched.running)
        shared_steps.append(scoring and any(s.decoding for s in sched.running))
        return step()
    sched.step = watching_step
    try:
        client = batched.openai_client()
        jobs = [lambda f=f, i=i: run(client, "text", f, stream=i % 2 == 1) for i, f in enumerate(ECHOES)]
        jobs += [lambda f=f: run(client, "chat", f, stream=True) for f in CHATS]
        got = run_concurrently(jobs)
    finally:
        del sched.step
    echo_ref, chat_ref = reference
    worst_alone = max(assert_same(g, want) for g, want in zip(got, echo_ref))
    for g, want in zip(got[len(ECHOES):], chat_ref):
        assert_same(g, want)
    worst_numpy = max(assert_numpy_prompt_logprobs(g, f, numpy_model) for g, f in zip(got, ECHOES))
    assert sum(shared_steps) >= 3, f"steps where an echo prefilled beside decoding rows: {shared_steps}"
    wait_until(lambda: in_flight(batched) == 0, 60, "every request to finish")
    assert len(sched.free_slots) == 8
    print(f"echo vs alone {worst_alone:.3g}, vs NumPy {worst_numpy:.3g}")


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_mid_echo_frees_its_slot(batched, reference, stream):
    """The client hangs up while its 200-token prompt is being scored (a raw socket closed
    between two steps): the sequence leaves the batch before its prompt is done, every slot is
    free again, and the next echo request is answered as alone."""
    worker = batched.app.state.forgert.batch_worker
    sched, step = worker.scheduler, worker.scheduler.step
    mid_echo, seen = threading.Event(), []
    prompt = token_prompt(200, 11)

    def watching_step():
        for s in sched.running:
            if s.prompt == prompt and 0 < s.n_prefilled < len(prompt) - 1 and not mid_echo.is_set():
                seen.append(s)
                mid_echo.set()      # the client leaves now; the step waits until the server noticed
                req = worker._owner[id(s)][0]
                wait_until(req.cancelled.is_set, 60, "the server to notice the client left")
        return step()
    sched.step = watching_step
    try:
        body = json.dumps(dict(model="x", prompt=prompt, max_tokens=2, temperature=0, logprobs=2,
                               echo=True, stream=stream)).encode()
        sock = socket.create_connection(("127.0.0.1", batched.port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert mid_echo.wait(120), "the echo never reached the middle of its prompt"
        sock.close()
        wait_until(lambda: in_flight(batched) == 0, 60, "the cancelled echo to leave the batch")
    finally:
        del sched.step
    (s,) = seen
    assert s.done and s.n_prefilled < len(prompt) - 1 and s.result is None   # left mid-prompt
    assert not sched.busy and len(sched.free_slots) == 8
    echo_ref, _ = reference
    assert_same(run(batched.openai_client(), "text", ECHOES[1]), echo_ref[1])     # still serving
