"""Legacy /v1/completions logprobs of a token that is part of a UTF-8 character: OpenAI's
'bytes:\\xNN' token strings (in `tokens` and as `top_logprobs` keys), not U+FFFD, and text_offset
counting the character once, where it starts. References: hand-made TokenLogprobs, and the tiny
byte-level tokenizer, whose tokens 129 and 122 are the bytes C3 and BC of 'ü'."""
from __future__ import annotations

import json

from forgert.completion import TokenLogprob
from forgert.server.responses import completion_logprobs, legacy_token

from tiny_server_fixtures import client, tiny_model  # noqa: F401 (fixtures)

C3, BC = 129, 122   # the tiny tokenizer's byte tokens of 'ü' (C3 BC)


def lp(text, raw, top=()):
    return TokenLogprob(text, -0.5, [(t, -1.0) for t, _ in top], raw, [r for _, r in top] or None)


def test_partial_character_tokens_are_written_as_bytes():
    got = completion_logprobs([lp("a", b"a"), lp("\ufffd", b"\xc3", [("\ufffd", b"\xc3"), ("\ufffd", b"\xe2\x80")]),
                               lp("\ufffd", b"\xbc"), lp("b", b"b", [("b", b"b")])])
    assert got["tokens"] == ["a", "bytes:\\xc3", "bytes:\\xbc", "b"]
    # the two alternatives were one key '\ufffd' (one lost); now each has its own
    assert got["top_logprobs"] == [{}, {"bytes:\\xc3": -1.0, "bytes:\\xe2\\x80": -1.0}, {}, {"b": -1.0}]
    # the text is "aüb": 'ü' starts at 1 for both halves, "b" at 2 (it was 3: each half counted)
    assert got["text_offset"] == [0, 1, 1, 2]


def test_whole_characters_and_unknown_bytes_keep_their_text():
    assert legacy_token("é", "é".encode()) == "é"
    assert legacy_token("x", None) == "x"
    assert legacy_token("\ufffd", "\ufffd".encode()) == "\ufffd"   # the character U+FFFD itself


def test_server_writes_bytes_for_a_half_character(client):
    """Echoed prompt tokens (the engine's prompt scores) and a generated token (logit_bias forces
    the first byte of 'ü') as the server sends them, streamed and not."""
    prompt = [C3, BC, C3, BC]   # 'üü'
    body = dict(model="x", prompt=prompt, max_tokens=1, temperature=0, logprobs=2, echo=True,
                logit_bias={str(C3): 100})   # generates half a character (the text ends with U+FFFD)
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    logprobs = r.json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["bytes:\\xc3", "bytes:\\xbc"] * 2 + ["bytes:\\xc3"]
    assert r.json()["choices"][0]["text"] == "üü\ufffd"
    assert logprobs["text_offset"] == [0, 0, 1, 1, 2]
    assert not any("\ufffd" in k for top in logprobs["top_logprobs"][1:] for k in top)
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
    assert sum((c["tokens"] for c in streamed), []) == logprobs["tokens"]
    assert sum((c["text_offset"] for c in streamed), []) == logprobs["text_offset"]
