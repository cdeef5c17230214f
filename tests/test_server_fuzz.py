"""Random request bodies never make the server fail with a 5xx: every field the API knows, set to
values of every JSON type (and NaN, huge numbers, nested junk), gets either a completion or an
OpenAI-shaped 4xx error naming the problem."""
from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("fastapi")

VALUES = [None, True, False, 0, -1, 1, 2 ** 70, 1.5, -1e300, float("nan"), "", "x", "\u0000", [], [1], ["a"], {},
          {"a": 1}, [{"role": "user", "content": "hi"}], [{"role": "bogus"}],
          [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], [{"role": "user", "content": None}],
          "a" * 3000, [[1, 2]], [1, -5], [10 ** 9], "required", "auto",
          {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}},
          {"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": [1, 2]}}},
          [{"type": "function", "function": {"name": "f"}}], {"type": "function", "function": {"name": "f"}},
          [{"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "minimum": 3, "maximum": 1}}}]]
FIELDS = ["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stop",
          "stream", "seed", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
          "repetition_penalty", "stream_options", "ignore_eos", "echo", "logit_bias", "tools", "response_format",
          "user", "max_completion_tokens", "tool_choice", "parallel_tool_calls"]


def test_random_request_bodies_get_no_server_error(tiny_models):
    import forgert
    from fastapi.testclient import TestClient
    from forgert.server import create_app
    model = forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=64)
    client = TestClient(create_app(model, "tiny", None), raise_server_exceptions=False)
    rng = random.Random(5)
    statuses = set()
    for _ in range(400):
        route = rng.choice(["/v1/chat/completions", "/v1/completions"])
        body = {"model": "tiny", "max_tokens": 2}
        if route == "/v1/chat/completions":
            body["messages"] = [{"role": "user", "content": "hi"}]
        else:
            body["prompt"] = "hi"
        for _ in range(rng.randint(1, 4)):
            body[rng.choice(FIELDS)] = rng.choice(VALUES)
        data = json.dumps(body)   # NaN travels as the non-standard token NaN, as some clients send it
        r = client.post(route, content=data, headers={"content-type": "application/json"})
        statuses.add(r.status_code)
        assert r.status_code < 500, f"{route} {data[:300]} -> {r.status_code} {r.text[:300]}"
        if r.status_code >= 400:
            err = r.json()["error"]
            assert err["message"] and err["type"], r.text
    assert 200 in statuses and 400 in statuses   # both outcomes were exercised
