"""The server with continuous batching (a Model with parallel >= 2: server/batch_worker.py) on a
tiny model: concurrent requests decode in one running batch, and each request's temperature-0
output equals that prompt generated alone by a one-slot Model (its reference)."""
from __future__ import annotations

import json
import re
import threading

import httpx
import pytest

from server_harness import LiveServer, wait_until

MAX_TOKENS = 12
PROMPTS = [f"request {i}: " + "abc def " * (1 + 5 * i % 7) for i in range(8)]   # skewed lengths


@pytest.fixture(scope="module")
def tiny_path(tiny_models):
    return str(tiny_models("llama3_untied").path("gguf-F32"))


@pytest.fixture(scope="module")
def server(tiny_path):
    import forgert
    model = forgert.Model(tiny_path, backend="cpu", threads=1, n_ctx=128, parallel=9)   # 8 batch slots
    with LiveServer(model, api_key=None) as live:
        yield live


@pytest.fixture(scope="module")
def reference(tiny_path):
    import forgert
    alone = forgert.Model(tiny_path, backend="cpu", threads=1, n_ctx=128)
    return {p: alone.generate(p, max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True).text for p in PROMPTS}


def body(prompt, stream):
    return {"model": "x", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream,
            "ignore_eos": True}


def complete(server, prompt, stream=False, stop_after_chunks=None):
    with httpx.Client(timeout=600) as http:
        if not stream:
            r = http.post(server.base_url + "/v1/completions", json=body(prompt, False))
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]
        with http.stream("POST", server.base_url + "/v1/completions", json=body(prompt, True)) as r:
            assert r.status_code == 200
            text, chunks = "", 0
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    text += chunk["choices"][0]["text"] if chunk["choices"] else ""
                    chunks += 1
                    if stop_after_chunks is not None and chunks >= stop_after_chunks:
                        return None     # leaves mid-stream: the connection closes
            return text


def run_concurrently(fn, args_list):
    results = [None] * len(args_list)

    def one(i):
        results[i] = fn(*args_list[i])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(args_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_eight_concurrent_streams_equal_each_alone(server, reference):
    worker = server.app.state.forgert.batch_worker
    sched = worker.scheduler
    rows, step = [], sched.step

    def counting_step():        # how many sequences each engine pass carried
        if not rows:            # the first step waits for every client, so that on a loaded machine
            # the first requests cannot finish before the last ones arrive (they would run in turn)
            wait_until(lambda: worker.queued >= len(PROMPTS), 60, "all eight requests to arrive")
        rows.append(len(sched.running) + min(len(sched.waiting), len(sched.free_slots)))
        return step()
    sched.step = counting_step
    try:
        got = run_concurrently(complete, [(server, p, True) for p in PROMPTS])
    finally:
        del sched.step
    assert got == [reference[p] for p in PROMPTS]
    assert max(rows) >= 4, f"sequences per step: {rows}"   # they ran together, not in turn


def test_concurrent_and_sequential_requests_agree(server, reference):
    got = run_concurrently(complete, [(server, p, False) for p in PROMPTS])
    assert got == [reference[p] for p in PROMPTS]
    assert [complete(server, p) for p in PROMPTS[:3]] == [reference[p] for p in PROMPTS[:3]]


def test_client_leaving_mid_batch_does_not_disturb_the_others(server, reference):
    args = [(server, p, True, 2 if i % 3 == 0 else None) for i, p in enumerate(PROMPTS)]
    got = run_concurrently(complete, args)
    for i, p in enumerate(PROMPTS):
        assert got[i] == (None if i % 3 == 0 else reference[p])
    with httpx.Client(timeout=60) as http:
        wait_until(lambda: http.get(server.base_url + "/health").json()["requests_in_flight"] == 0, 60,
                   "the cancelled requests to leave the batch")


def test_logprobs_request_runs_in_the_batch(server, reference):
    """logprobs (the logits row in Python) joins the running batch beside plain requests."""
    def with_logprobs():
        with httpx.Client(timeout=600) as http:
            r = http.post(server.base_url + "/v1/completions", json=dict(body(PROMPTS[0], False), logprobs=2))
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]
    args = [(server, p, True) for p in PROMPTS[1:4]]
    got = run_concurrently(lambda *a: complete(*a) if a else with_logprobs(), args + [()])
    assert got == [reference[p] for p in PROMPTS[1:4]] + [reference[PROMPTS[0]]]


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def test_metrics_count_the_batch_steps(server):
    """/metrics counts the batch's steps and the tokens they sampled: a 12-token request (EOS
    ignored) is 12 sampled rows over at least 12 steps; the engine passes' seconds are part of the
    batch thread's busy seconds."""
    names = ("forgert_batch_steps_total", "forgert_batch_sampled_tokens_total",
             "forgert_batch_engine_seconds_total", "forgert_batch_busy_seconds_total")
    with httpx.Client(timeout=60) as http:
        def scrape():
            text = http.get(server.base_url + "/metrics").text
            return {name: _metric(text, name) for name in names}
        wait_until(lambda: http.get(server.base_url + "/health").json()["requests_in_flight"] == 0, 60,
                   "earlier requests to leave the batch")
        before = scrape()
        complete(server, PROMPTS[5])
        after = scrape()
        assert after["forgert_batch_sampled_tokens_total"] - before["forgert_batch_sampled_tokens_total"] == MAX_TOKENS
        assert after["forgert_batch_steps_total"] - before["forgert_batch_steps_total"] >= MAX_TOKENS
        assert after["forgert_batch_engine_seconds_total"] > before["forgert_batch_engine_seconds_total"]
        # the busy time of a step is added once its events are handed over (maybe after the reply)
        wait_until(lambda: (lambda m: m["forgert_batch_busy_seconds_total"]
                            >= m["forgert_batch_engine_seconds_total"])(scrape()), 60,
                   "the batch thread's busy seconds to cover its engine passes")


def test_serve_refuses_a_parallel_below_one(tiny_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "forgert", "serve", "--model", tiny_path, "--parallel", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--parallel must be >= 1" in r.stderr, r.stderr
