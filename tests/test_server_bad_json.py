"""Abusive request bodies found by a fuzz run: each is an OpenAI-shaped 400 naming the field,
and no 5xx ever carries internal exception text.

The inputs are the exact ones the fuzz run reported as 500s: JSON nested 1000 deep
(RecursionError), a lone surrogate in a prompt (the tokenizer's TypeError), an integer over
4,300 digits in seed or max_tokens (int()'s ValueError).
"""
from __future__ import annotations

import logging

import pytest

pytest.importorskip("fastapi")

from tiny_server_fixtures import BrokenTokenizerModel, client, tiny_model  # noqa: E402,F401 (fixtures)

INTERNALS = ("RecursionError", "TypeError", "ValueError", "Traceback", "TextInputSequence",
             "int_max_str_digits", "File \"")


def post_raw(client, route: str, body: str):
    return client.post(route, content=body.encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/json"})


def assert_400(r, param):
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert not any(word in r.text for word in INTERNALS), r.text
    return err


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", '{"prompt": ' + "[" * 1000 + "]" * 1000 + "}"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": ' + "[" * 1000 + "]" * 1000 + "}]}"),
    ("/v1/completions", "[" * 1000 + "]" * 1000),
    ("/v1/completions", '{"prompt": "hi", "x": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"),
    ("/v1/completions", '{"prompt": "hi", "x": ' + "[" * 40 + "]" * 40 + "}"),   # parses; still too deep
])
def test_deeply_nested_json_is_400(client, route, body):
    err = assert_400(post_raw(client, route, body), None)
    assert err["code"] == "invalid_json" and "nested too deeply" in err["message"]


@pytest.mark.parametrize("route, body, param", [
    ("/v1/completions", '{"prompt": "\\ud800", "max_tokens": 1}', "prompt"),
    ("/v1/completions", '{"prompt": ["ok", "\\udfff"], "max_tokens": 1}', "prompt.1"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages.0.content"),
    ("/v1/completions", '{"prompt": "hi", "stop": ["\\udc00"]}', "stop.0"),
    ("/v1/completions", '{"prompt": "hi", "\\ud800": 1}', "\\ud800"),
])
def test_lone_surrogate_is_400_naming_the_field(client, route, body, param):
    err = assert_400(post_raw(client, route, body), param)
    assert err["code"] == "invalid_value" and "surrogate" in err["message"]


def test_surrogate_pairs_are_ordinary_text(client):
    # "\ud83d\ude00" is one valid character (an emoji) written as a JSON surrogate pair.
    r = post_raw(client, "/v1/completions", '{"prompt": "hi \\ud83d\\ude00", "max_tokens": 1}')
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["seed", "max_tokens", "top_k"])
@pytest.mark.parametrize("sign", ["", "-"])
def test_integer_over_4300_digits_is_400_naming_the_field(client, field, sign):
    body = '{"prompt": "hi", "%s": %s%s}' % (field, sign, "9" * 5000)
    err = assert_400(post_raw(client, "/v1/completions", body), field)
    assert "5000 digits" in err["message"]


def test_integer_at_the_digit_limit_is_a_valid_seed(client):
    body = '{"prompt": "hi", "max_tokens": 1, "seed": %s}' % ("9" * 4300)
    assert post_raw(client, "/v1/completions", body).status_code == 200


def test_unexpected_exception_is_a_generic_500_logged_server_side(tiny_model, caplog):
    from fastapi.testclient import TestClient
    from forgert.server import create_app
    client = TestClient(create_app(BrokenTokenizerModel(tiny_model), "tiny", None),
                        raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="forgert.server"):
        r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    assert not any(word in r.text for word in INTERNALS), r.text
    logged = [rec for rec in caplog.records if rec.name == "forgert.server"]
    assert len(logged) == 1 and "TextInputSequence must be str" in str(logged[0].exc_info[1])
