"""POST /v1/embeddings, driven by the official `openai` client (`client.embeddings.create`): texts,
lists of texts and token ids, float and base64 encodings, `dimensions`, usage; bad input as 400s
naming the parameter; a client that hangs up while queued; and with --parallel (the batch worker
running on slots 1..) an embedding made on slot 0 while a completion streams.

Reference: `Model.embed` of a second Model over the same file, called in-process (the model-side
embedding itself is checked against transformers in the Model.embed tests); token counts from
its tokenizer's encode_with_end (what Model.embed evaluates for a text).
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from instrumented_model import InstrumentedModel
from server_harness import LiveServer, load_model, wait_until
from smollm2_server_fixtures import client, reference_model, server  # noqa: F401 (fixtures; server over this module's model)

pytestmark = pytest.mark.slow

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.",
         "Embeddings map text to vectors"]
# The server's Model.embed and the reference's run the same kernels on the same ids: measured
# max |difference| 0 (float32 bits equal), float and base64 alike, beside the --parallel batch too;
# `dimensions`' head renormalised in float32 against NumPy's float64: measured 4.1e-8 (norm 1 to 4.0e-8).
TOL = 1e-6


class CountingModel(InstrumentedModel):
    """The real model, counting the Model.embed calls the server makes."""

    def __init__(self, model):
        super().__init__(model)
        self.embeds = 0

    def embed(self, *args, **kwargs):
        self.embeds += 1
        return self._model.embed(*args, **kwargs)


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    return CountingModel(load_model(smollm2_gguf))


@pytest.fixture(scope="module")
def expected(reference_model):
    """text -> (Model.embed of it, its token count)."""
    return {t: (reference_model.embed(t), len(reference_model.tokenizer.encode_with_end(t))) for t in TEXTS}


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, rtol=0, atol=TOL)


def post(server, body):
    return httpx.post(server.base_url + "/v1/embeddings", json=body, headers=server.headers, timeout=300)


# ----------------------------------------------------------------------------- answers

def test_one_text_as_floats(client, expected):
    resp = client.embeddings.create(model="x", input=TEXTS[0], encoding_format="float")
    assert resp.object == "list" and resp.model == "smollm2-test"
    (item,) = resp.data
    assert item.object == "embedding" and item.index == 0
    want, n_tokens = expected[TEXTS[0]]
    assert len(item.embedding) == want.shape[0] == 576
    close(item.embedding, want)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == n_tokens


def test_list_of_texts_in_the_clients_default_base64(client, expected):
    """Without encoding_format the client asks for base64 and decodes the float32 bytes itself."""
    resp = client.embeddings.create(model="x", input=TEXTS)
    assert [d.index for d in resp.data] == [0, 1, 2]
    for d, text in zip(resp.data, TEXTS):
        close(d.embedding, expected[text][0])
    assert resp.usage.prompt_tokens == sum(expected[t][1] for t in TEXTS)


def test_base64_is_the_little_endian_float32_bytes(server, expected):
    floats = post(server, {"model": "x", "input": TEXTS[1], "encoding_format": "float"}).json()
    packed = post(server, {"model": "x", "input": TEXTS[1], "encoding_format": "base64"}).json()
    raw = packed["data"][0]["embedding"]
    assert isinstance(raw, str)
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    close(decoded, expected[TEXTS[1]][0])
    assert decoded.tolist() == floats["data"][0]["embedding"]      # the same float32 values
    assert packed["usage"] == floats["usage"]


def test_token_ids_one_and_several(client, reference_model):
    ids = [reference_model.tokenize(t) for t in TEXTS[:2]]
    one = client.embeddings.create(model="x", input=ids[0], encoding_format="float")
    close(one.data[0].embedding, reference_model.embed(ids[0]))
    assert one.usage.prompt_tokens == len(ids[0])
    both = client.embeddings.create(model="x", input=ids)
    for d, i in zip(both.data, ids):
        close(d.embedding, reference_model.embed(i))
    assert both.usage.prompt_tokens == len(ids[0]) + len(ids[1])


@pytest.mark.parametrize("k", [1, 64, 575])
def test_dimensions_keeps_the_leading_components_renormalised(client, expected, k):
    resp = client.embeddings.create(model="x", input=TEXTS[2], dimensions=k, encoding_format="float")
    got = np.asarray(resp.data[0].embedding, dtype=np.float64)
    assert got.shape == (k,)
    assert np.linalg.norm(got) == pytest.approx(1, abs=1e-6)
    head = expected[TEXTS[2]][0][:k].astype(np.float64)
    close(got, head / np.linalg.norm(head))


def test_metrics_count_embedding_requests_and_tokens(server, client, expected):
    def metric(text, name):
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    requests = 'forgert_requests_total{route="embeddings",status="200"}'
    before = httpx.get(server.base_url + "/metrics").text
    client.embeddings.create(model="x", input=TEXTS[:2])
    after = httpx.get(server.base_url + "/metrics").text
    assert metric(after, requests) - metric(before, requests) == 1
    assert (metric(after, "forgert_embedding_tokens_total") - metric(before, "forgert_embedding_tokens_total")
            == expected[TEXTS[0]][1] + expected[TEXTS[1]][1])


# ----------------------------------------------------------------------------- bad input

LONG = "word " * 600     # > 512 tokens: the test context


@pytest.mark.parametrize("fields, param, code", [
    ({"input": ""}, "input", "invalid_value"),
    ({"input": []}, "input", "invalid_value"),
    ({"input": ["fine", ""]}, "input", "invalid_value"),
    ({"input": [[1, 2], []]}, "input", "invalid_value"),
    ({"input": ["text", 5]}, "input", "invalid_value"),        # a list mixing types
    ({"input": [[1, 2], "text"]}, "input", "invalid_value"),
    ({"input": [1, 2.5]}, "input", "invalid_value"),
    ({"input": [3, -1]}, "input", "invalid_value"),
    ({"input": [3, 49152]}, "input", "invalid_value"),         # the vocabulary is 0..49151
    ({"input": LONG}, "input", "context_length_exceeded"),
    ({"input": ["short", LONG]}, "input", "context_length_exceeded"),
    ({"input": [[1] * 513]}, "input", "context_length_exceeded"),
    ({"input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
    ({"input": "x", "dimensions": 577}, "dimensions", "invalid_value"),
    ({"input": "x", "dimensions": "8"}, "dimensions", "invalid_value"),
    ({"input": "x", "dimensions": 8.0}, "dimensions", "invalid_value"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
])
def test_bad_input_is_a_400_naming_the_parameter(client, model, fields, param, code):
    openai = pytest.importorskip("openai")
    calls = model.embeds
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="x", **fields)
    err = caught.value
    assert err.status_code == 400 and err.param == param and err.code == code, err.body
    assert err.type == "invalid_request_error"
    assert param in err.message
    if code == "context_length_exceeded":
        assert "maximum context length is 512 tokens" in err.message
    assert model.embeds == calls        # refused before it queued


def test_missing_input_and_a_non_object_body(server):
    r = post(server, {"model": "x"})
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "Missing required parameter: 'input'", "type": "invalid_request_error",
                                 "param": "input", "code": "missing_required_parameter"}
    r = post(server, ["not", "an", "object"])
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_fields_and_user_are_ignored(server, expected):
    r = post(server, {"model": "x", "input": TEXTS[0], "user": "someone", "something_else": 1,
                      "encoding_format": "float"})
    assert r.status_code == 200, r.text
    close(r.json()["data"][0]["embedding"], expected[TEXTS[0]][0])


def test_needs_the_api_key(server):
    r = httpx.post(server.base_url + "/v1/embeddings", json={"input": "x"}, timeout=60)
    assert r.status_code == 401


# ----------------------------------------------------------------------------- taking turns

def test_hung_up_while_queued_is_never_embedded(server, model, client, expected):
    """Queued behind a held generation (--parallel 1: they take turns on the worker thread), an
    embeddings request whose client hangs up is dropped before it reaches the model."""
    model.holding.clear()
    model.hold_after_first_piece = threading.Event()
    try:
        calls = model.embeds
        body = {"model": "x", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
        with ThreadPoolExecutor(max_workers=1) as pool:
            holder = pool.submit(httpx.post, server.base_url + "/v1/completions", json=body,
                                 headers=server.headers, timeout=300)
            assert model.holding.wait(120), "the generation never reached the model"
            data = json.dumps({"input": TEXTS[0]}).encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as queued:
                queued.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                               b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                               % (server.api_key.encode(), len(data), data))
                wait_until(lambda: server.requests_in_flight() == 2, 60, "the embeddings request to queue")
            wait_until(lambda: server.requests_in_flight() == 1, 60, "the server to drop the request")
            model.hold_after_first_piece.set()
            assert holder.result().status_code == 200
        assert model.embeds == calls
        resp = client.embeddings.create(model="x", input=TEXTS[0])     # the model serves on
        close(resp.data[0].embedding, expected[TEXTS[0]][0])
        assert model.embeds == calls + 1
    finally:
        model.hold_after_first_piece.set()
        model.hold_after_first_piece = None


def test_a_completion_after_an_embedding_of_its_prompt(client, reference_model):
    """The embedding leaves its K/V in slot 0's prompt cache; a completion of the same text
    (finding that prefix) gives what the prompt gives alone, on a cold cache."""
    prompt = "The capital of France is"
    client.embeddings.create(model="x", input=prompt)
    got = client.completions.create(model="x", prompt=prompt, max_tokens=8, temperature=0,
                                    extra_body={"ignore_eos": True}).choices[0].text
    reference_model.reset()
    assert got == reference_model.generate(prompt, max_tokens=8, temperature=0, ignore_eos=True).text


# ----------------------------------------------------------------------------- --parallel

@pytest.fixture(scope="module")
def batch_server(smollm2_gguf):
    """`forgert serve --parallel 2`: KV slots 0..2, the batch on 1 and 2."""
    with LiveServer(load_model(smollm2_gguf, parallel=3), api_key=None) as live:
        yield live


def test_embedding_beside_a_streaming_completion_in_the_batch(batch_server, reference_model):
    body = {"model": "x", "prompt": "Write a long story about a dragon.", "max_tokens": 96,
            "temperature": 0, "ignore_eos": True, "stream": True}
    text = "A long text to embed while the batch streams. " * 20
    with httpx.Client(base_url=batch_server.base_url, timeout=300) as http:
        def streamed(embed_after_first: bool):
            pieces, embedded = [], None
            with http.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    pieces.append(json.loads(line[6:])["choices"][0]["text"])
                    if embed_after_first and embedded is None:
                        # the completion is running in the batch: embed now, then read the rest
                        embedded = http.post("/v1/embeddings", json={"input": text, "encoding_format": "float"})
            return "".join(pieces), embedded

        alone, _ = streamed(False)
        together, embedded = streamed(True)
    assert together == alone       # slot 0's embedding left the batch's sequence as it was
    assert embedded.status_code == 200, embedded.text
    got = embedded.json()
    close(got["data"][0]["embedding"], reference_model.embed(text))
    assert got["usage"]["prompt_tokens"] == len(reference_model.tokenizer.encode_with_end(text))


# ----------------------------------------------------------------------------- a model that cannot embed

def test_a_pooling_the_model_cannot_apply_is_a_400(tiny_models, tmp_path):
    """A sentence-transformers directory whose Pooling module takes the max over tokens: Model.embed
    refuses it (ModelFormatError), and the server says so."""
    import forgert
    path = tmp_path / "max-pooled"
    shutil.copytree(tiny_models("llama3_untied").path("hf-F32"), path)
    (path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "1", "path": "1_Pooling",
                                                    "type": "sentence_transformers.models.Pooling"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with LiveServer(forgert.Model(str(path), backend="cpu", threads=1, n_ctx=64), api_key=None) as live:
        r = post(live, {"input": [1, 2, 3]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "model_not_supported"
    assert "pooling_mode_max_tokens" in error["message"], error
