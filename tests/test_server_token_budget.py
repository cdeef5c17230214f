"""Prompt + completion must fit the context: checked before a request queues, never overrun.

Prompts are lists of token ids, so the prompt length is known without any tokenizer, and
ignore_eos makes the completion run to its budget: the token counts are exact, hand-computed.
"""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

N_CTX = 64


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    import forgert
    return forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=N_CTX)


def client_for(model, **app_options):
    from fastapi.testclient import TestClient
    from forgert.server import create_app
    return TestClient(create_app(model, "tiny", None, **app_options), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tiny_model):
    return client_for(tiny_model)


def prompt_ids(n: int) -> list[int]:
    return [5 + i % 50 for i in range(n)]


def complete(client, n_prompt: int, **fields):
    body = {"model": "tiny", "prompt": prompt_ids(n_prompt), "temperature": 0, "ignore_eos": True}
    return client.post("/v1/completions", json=dict(body, **fields))


def test_prompt_plus_max_tokens_over_the_context_is_refused_with_openais_wording(client):
    r = complete(client, 10, max_tokens=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        "message": "This model's maximum context length is 64 tokens. However, you requested 70 "
                   "tokens (10 in the prompt, 60 in the completion). Please reduce the length of "
                   "the prompt or completion.",
        "type": "invalid_request_error", "param": "prompt", "code": "context_length_exceeded"}


def test_the_issue_case_a_huge_max_tokens_is_refused_before_it_runs(client):
    # The fuzz run's max_tokens 10**9 with ignore_eos held the only worker: now it never starts.
    r = complete(client, 10, max_tokens=10**9, stream=True)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_a_completion_that_exactly_fills_the_context_runs(client):
    r = complete(client, 10, max_tokens=54)
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"prompt_tokens": 10, "completion_tokens": 54, "total_tokens": 64}
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_default_max_tokens_is_capped_by_the_room_left(client):
    # /v1/completions defaults to 16 tokens; 60 prompt tokens leave room for 4. The engine would
    # have sampled a 5th token from the full context and reported total_tokens 65.
    r = complete(client, 60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == {"prompt_tokens": 60, "completion_tokens": 4, "total_tokens": 64}
    r = complete(client, 10)
    assert r.json()["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("n_prompt", [N_CTX, N_CTX + 5])
def test_a_prompt_that_leaves_no_room_is_refused(client, n_prompt):
    r = complete(client, n_prompt)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert err["message"] == (f"This model's maximum context length is 64 tokens. However, your "
                              f"prompt resulted in {n_prompt} tokens, which leaves no room for the "
                              f"completion. Please reduce the length of the prompt.")


def test_max_tokens_zero_is_refused_as_openai_does(client):
    r = complete(client, 10, max_tokens=0)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_server_max_tokens_limit_refuses_larger_requests_and_caps_the_default(tiny_model):
    client = client_for(tiny_model, max_tokens_limit=8)
    r = complete(client, 10, max_tokens=9)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and err["code"] == "invalid_value"
    assert "limit of 8 tokens" in err["message"]
    assert complete(client, 10, max_tokens=8).json()["usage"]["completion_tokens"] == 8
    assert complete(client, 10).json()["usage"]["completion_tokens"] == 8      # 16 capped to 8
    assert complete(client, 60).json()["usage"]["completion_tokens"] == 4      # the room is less


@pytest.mark.parametrize("limit", [0, -1, 2.5, "8", True])
def test_bad_max_tokens_limit_is_refused(tiny_model, limit):
    from forgert.server import create_app
    with pytest.raises(ValueError, match="max_tokens_limit"):
        create_app(tiny_model, "tiny", None, max_tokens_limit=limit)
