"""Hostile requests an audit of `forgert serve` found answered with a 500, a silent wrong answer,
a dropped connection or a body held whole in memory: each now gets an OpenAI-shaped 4xx naming
the problem, or a normal answer.

- logit_bias keys that str.isdigit() accepts but are not ASCII token ids ("²" made int() fail: a
  500; "١", an Arabic-Indic one, silently meant token 1), and ids of more digits than int() takes.
- top_k past the C++ sampler's int (2**31 and up): a TypeError from the binding, a 500; any top_k
  at least the vocabulary keeps every token, as top_k 0 does.
- A JSON schema no document satisfies ({"$ref": "#"}): llguidance's matcher fails at its first
  mask and only end-of-text stayed allowed, so the answer was an empty "stop": now refused when it
  compiles. A schema that fails while generating (a required property that recurses into the
  schema itself: llguidance's item limit) was a 500: now a 400 naming response_format.
- An unexpected exception (the generic 500, which stays) closed the keep-alive connection after its
  response (Starlette re-raises to the server), so the client's next request on it failed.
- A chunked body (no Content-Length) was read whole before its size was checked.
"""
from __future__ import annotations

import http.client
import json

import pytest

pytest.importorskip("fastapi")

from server_harness import LiveServer   # noqa: E402

RECURSIVE_REQUIRED = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}


from tiny_server_fixtures import BrokenTokenizerModel, client, tiny_model  # noqa: E402,F401 (fixtures)


def assert_400(r, param):
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"], r.text
    return err


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.mark.parametrize("key", ["\u00b2", "\u0661", "\uff11", "1\u00b2"])
def test_logit_bias_key_of_non_ascii_digits_is_not_a_token_id(client, key):
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "logit_bias": {key: 5}})
    err = assert_400(r, "logit_bias")
    assert "is not a token id" in err["message"]


@pytest.mark.parametrize("digits", [30, 5000])
def test_logit_bias_key_of_many_digits_is_out_of_range(client, digits):
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "logit_bias": {"1" * digits: 5}})
    err = assert_400(r, "logit_bias")
    assert "out of range" in err["message"] and len(err["message"]) < 300


def test_top_k_past_a_32_bit_int_keeps_every_token(client):
    body = {"prompt": "hi", "max_tokens": 4, "temperature": 1.0, "seed": 7}
    texts = []
    for top_k in (0, 2**31 - 1, 2**31, 2**63, 10**30):
        r = client.post("/v1/completions", json=dict(body, top_k=top_k))
        assert r.status_code == 200, (top_k, r.text)
        texts.append(r.json()["choices"][0]["text"])
    assert len(set(texts)) == 1, texts     # all the same as top_k 0 (off)


def test_python_api_top_k_past_a_32_bit_int(tiny_model):
    off = tiny_model.generate("hi", max_tokens=4, temperature=1.0, seed=3, top_k=0).tokens
    assert tiny_model.generate("hi", max_tokens=4, temperature=1.0, seed=3, top_k=2**40).tokens == off


@pytest.mark.parametrize("schema", [{"$ref": "#"}, {"allOf": [{"$ref": "#"}]}])
def test_schema_no_document_satisfies_is_refused_when_compiled(client, tiny_model, schema):
    with pytest.raises(ValueError, match="cannot be enforced"):
        tiny_model.compile_response_format(schema_format(schema))
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4,
                                              "response_format": schema_format(schema)})
    err = assert_400(r, "response_format")
    assert "cannot be enforced" in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_schema_failing_mid_generation_is_a_400_naming_response_format(client, stream):
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 8, "stream": stream,
                                              "response_format": schema_format(RECURSIVE_REQUIRED)})
    if not stream:
        err = assert_400(r, None)
    else:   # the headers went out before the failure: reported in-band, then [DONE]
        assert r.status_code == 200
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["type"] == "invalid_request_error"
    assert "response_format" in err["message"] and "\n" not in err["message"], err
    assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}).status_code == 200


def test_a_500_keeps_the_connection_open(tiny_model):
    with LiveServer(BrokenTokenizerModel(tiny_model), api_key=None) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 1}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 500 and json.loads(r.read())["error"]["code"] == "internal_error"
            assert r.getheader("connection") != "close"
            conn.request("GET", "/health")     # the same connection, as a pooled client reuses it
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        finally:
            conn.close()


def test_a_chunked_body_past_the_limit_is_refused_before_it_ends(tiny_model):
    """Without Content-Length (chunked transfer) the size is known only while reading: the 413
    comes once the limit is passed, not after the whole body sat in memory (a client could send
    gigabytes within the body deadline)."""
    import socket
    from forgert.server.app import MAX_BODY_BYTES
    with LiveServer(tiny_model, api_key=None) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"a" * (1 << 20)
            for _ in range(MAX_BODY_BYTES // len(chunk) + 1):    # one past the limit; no last chunk
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            reply = b""     # the body never ends: only an early answer arrives
            while not reply.endswith(b"}}") and (data := s.recv(4096)):
                reply += data
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b'"type":"invalid_request_error"' in reply and str(MAX_BODY_BYTES).encode() in reply


@pytest.mark.parametrize("route, body", [
    ("/v1/messages", {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages/count_tokens", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/responses", {"model": "x", "input": "hi"}),
])
@pytest.mark.parametrize("tools", [5, 1.5, True])
def test_tools_that_are_not_a_list_are_a_400(client, route, body, tools):
    """The routes' server-tool checks iterated `tools` before validation: a number was a 500."""
    r = client.post(route, json=dict(body, tools=tools))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "tools" in err["message"] and (err.get("param") == "tools" or route.startswith("/v1/messages"))
