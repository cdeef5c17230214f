"""One model, many clients: fair queueing, independent answers, real streaming, disconnects.

The server runs the real model behind a thin instrumented wrapper that counts the text pieces
each generation produced and can hold a generation after its first piece; that turns "streams
as produced" and "a disconnect stops the generation" into assertions on counts, not on timing.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from instrumented_model import InstrumentedModel
from server_harness import LiveServer, load_model, wait_until

pytestmark = pytest.mark.slow

# Distinct prompts with no shared prefix, so no answer can lean on another's cached tokens.
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "My favourite colour is", "Water boils at",
           "The opposite of hot is", "Monday, Tuesday,", "Python is a programming", "A B C D"]
MAX_TOKENS = 5


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    return InstrumentedModel(load_model(smollm2_gguf))


@pytest.fixture(scope="module")
def server(model):
    with LiveServer(model, api_key=None) as live:
        yield live


@pytest.fixture(scope="module")
def reference_answers(smollm2_gguf):
    """Each prompt run alone, greedily, on a separate Model with a cold cache."""
    alone = load_model(smollm2_gguf)
    answers = {}
    for p in PROMPTS:
        alone.reset()
        answers[p] = alone.generate(p, max_tokens=MAX_TOKENS, temperature=0).text
    return answers


def complete(server, prompt, stream=False):
    body = {"model": "x", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
    with httpx.Client(timeout=600) as http:
        if not stream:
            r = http.post(server.base_url + "/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]
        with http.stream("POST", server.base_url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            text = ""
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    text += chunk["choices"][0]["text"] if chunk["choices"] else ""
            return text


def test_eight_concurrent_clients_each_get_their_own_answer(server, reference_answers):
    # Half stream, half don't; all are in flight together.
    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        futures = {p: pool.submit(complete, server, p, i % 2 == 0) for i, p in enumerate(PROMPTS)}
        answers = {p: f.result() for p, f in futures.items()}
    assert answers == reference_answers


def test_chunks_leave_as_tokens_are_produced(server, model):
    # The generation is held after its first piece: if the server buffered the answer, the
    # client could not see any content before we release it.
    model.hold_after_first_piece = threading.Event()
    try:
        body = {"model": "x", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0,
                "stream": True}
        with httpx.stream("POST", server.base_url + "/v1/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"]
            assert model.streams[-1].pieces == 1    # still held: nothing else was generated
            model.hold_after_first_piece.set()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
    finally:
        model.hold_after_first_piece.set()
        model.hold_after_first_piece = None


def test_disconnect_mid_stream_stops_generation_and_frees_the_model(server, model, reference_answers):
    long_body = {"model": "x", "prompt": "Write a very long story about a dragon.", "max_tokens": 400,
                 "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.base_url + "/v1/completions", json=long_body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break   # got the first content chunk: hang up
    abandoned = model.streams[-1]
    # The next request waits behind the abandoned one in the FIFO; it is answered correctly...
    prompt = PROMPTS[0]
    assert complete(server, prompt) == reference_answers[prompt]
    # ...and the abandoned generation was stopped, not run to its 400 tokens.
    assert abandoned.closed_early
    assert abandoned.pieces < 100


def test_disconnect_while_queued_skips_the_request(server, model, reference_answers):
    # Hold a first request on the model, queue a second and hang up on it, then release.
    model.holding.clear()
    model.hold_after_first_piece = threading.Event()
    try:
        n_before = len(model.streams)
        with ThreadPoolExecutor(max_workers=1) as pool:
            holder = pool.submit(complete, server, PROMPTS[1])
            assert model.holding.wait(120), "the first request never reached the model"
            body = json.dumps({"prompt": "never generated", "max_tokens": 50}).encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as queued:
                queued.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                               b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                               % (len(body), body))
                wait_until(lambda: server.requests_in_flight() == 2, 60, "the second request to queue")
            # Hung up. The server has seen it once the request stops counting as in flight.
            wait_until(lambda: server.requests_in_flight() == 1, 60, "the server to drop the request")
            model.hold_after_first_piece.set()
            assert holder.result() == reference_answers[PROMPTS[1]]
        assert complete(server, PROMPTS[2]) == reference_answers[PROMPTS[2]]
        # The hung-up request never reached the model: only the holder and the last request ran.
        assert len(model.streams) == n_before + 2
    finally:
        model.hold_after_first_piece.set()
        model.hold_after_first_piece = None


def test_engine_failure_is_reported_and_the_server_keeps_serving(server, model, reference_answers,
                                                                  caplog):
    # The client learns that the server failed, not how: the exception's text and traceback go
    # to the server log only.
    body = {"model": "x", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    model.fail_after_first_piece = True
    try:
        with caplog.at_level(logging.ERROR, logger="forgert.server"):
            r = httpx.post(server.base_url + "/v1/completions", json=body, timeout=120)
            assert r.status_code == 500
            error = r.json()["error"]
            assert error["type"] == "server_error" and error["code"] == "internal_error"
            assert "simulated" not in r.text and "RuntimeError" not in r.text
            with httpx.stream("POST", server.base_url + "/v1/completions",
                              json=dict(body, stream=True), timeout=120) as r:
                events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"] == error
            assert "simulated" not in "".join(events)
        logged = [rec for rec in caplog.records if rec.name == "forgert.server" and rec.exc_info]
        assert len(logged) == 2
        assert all("simulated engine failure" in str(rec.exc_info[1]) for rec in logged)
    finally:
        model.fail_after_first_piece = False
    assert complete(server, PROMPTS[3]) == reference_answers[PROMPTS[3]]
