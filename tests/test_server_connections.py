"""Slow or greedy clients cannot hold the server: read deadlines and a connection limit.

A raw socket plays the slow client ("slowloris"): it trickles its request one byte at a time
and watches for the server closing the connection, within a generous deadline. No timing is
asserted: only that the server closes the connection while the trickle is still going, with a
408, and that a request held in generation longer than those deadlines is not cut off.
"""
from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from instrumented_model import InstrumentedModel
from server_harness import LiveServer, wait_until

pytest.importorskip("uvicorn")

SHORT = 0.5         # the read deadlines under test, in seconds
GIVE_UP_S = 60      # the test fails if the server has not closed the connection by then


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    import forgert
    return forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=64)


@pytest.fixture(scope="module")
def model(tiny_model):
    return InstrumentedModel(tiny_model)


@pytest.fixture(scope="module")
def server(model):
    from forgert.server import ConnectionLimits
    limits = ConnectionLimits(header_timeout_s=SHORT, body_timeout_s=SHORT, max_connections=3)
    with LiveServer(model, api_key=None, limits=limits) as live:
        yield live


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def trickle_until_closed(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` one byte per 50 ms until the server answers and closes; return its answer.
    Fails if all of `data` went out first (the server waited for it) or after GIVE_UP_S."""
    sock.settimeout(0.05)     # each recv() waits one trickle interval for the server
    deadline = time.monotonic() + GIVE_UP_S
    answer = b""
    for i in range(len(data)):
        assert time.monotonic() < deadline, "the server never closed the slow connection"
        try:
            sock.sendall(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        answer += chunk
        break
    else:
        pytest.fail("the server read the whole slow request without closing the connection")
    sock.settimeout(GIVE_UP_S)
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def assert_json_error(answer: bytes, status: int, message: str) -> None:
    """answer (a raw HTTP response) is `status` with an OpenAI-shaped JSON error saying message
    (the server's other errors' shape: it was text/plain)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer
    assert b"content-type: application/json" in head.lower(), answer
    assert json.loads(body)["error"]["message"] == message, answer


# Long enough that trickling it at 50 ms a byte outlasts GIVE_UP_S.
ENDLESS_HEADER = b"X-Slow: " + b"a" * 2000


def test_slow_headers_are_cut_off_with_408(server):
    with connect(server) as sock:
        answer = trickle_until_closed(sock, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + ENDLESS_HEADER)
    assert_json_error(answer, 408, "The request headers were not received in time")


def test_a_silent_connection_is_closed(server):
    with connect(server) as sock:
        sock.settimeout(GIVE_UP_S)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_slow_body_is_cut_off_with_408(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n")
    with connect(server) as sock:
        sock.sendall(head)
        answer = trickle_until_closed(sock, b'{"prompt": "' + b"a" * 5000)
    assert_json_error(answer, 408, "The request body was not received in time")


def test_a_generation_outlasting_the_deadlines_is_not_cut_off(server, model):
    # The request waits in generation while a slow connection, opened after it, is cut off by
    # the same deadline: had the request's own deadline still been running, it would have
    # expired first. Then a second request on the same kept-alive connection works too.
    body = {"model": "x", "prompt": "hello", "max_tokens": 3, "temperature": 0, "stream": True,
            "ignore_eos": True}
    model.holding.clear()
    model.hold_after_first_piece = threading.Event()
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            with http.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                assert model.holding.wait(120)
                with connect(server) as slow:
                    answer = trickle_until_closed(slow, b"GET /health HTTP/1.1\r\n" + ENDLESS_HEADER)
                assert answer.startswith(b"HTTP/1.1 408 ")
                model.hold_after_first_piece.set()
                rest = [line for line in lines if line]
            assert r.status_code == 200 and rest[-1] == "data: [DONE]"
            assert not any('"error"' in line for line in rest), rest
            assert '"finish_reason": "length"' in rest[-2]
            assert http.get("/health").status_code == 200
    finally:
        model.hold_after_first_piece.set()
        model.hold_after_first_piece = None


def test_cli_defaults_are_the_servers():
    from dataclasses import astuple

    from forgert.cli import serve as cli
    from forgert.server import ConnectionLimits
    assert (cli.DEFAULT_HEADER_TIMEOUT_S, cli.DEFAULT_BODY_TIMEOUT_S,
            cli.DEFAULT_MAX_CONNECTIONS) == astuple(ConnectionLimits())


def test_connections_beyond_the_limit_get_503(server):
    # max_connections=3: two idle connections plus this client's fill it; a fourth is refused.
    def open_connections() -> int:
        return len(server.connections())

    wait_until(lambda: open_connections() == 0, GIVE_UP_S, "earlier connections to close")
    with connect(server) as a, connect(server) as b, httpx.Client(base_url=server.base_url) as http:
        a.sendall(b"GET /hea")      # part of a request: both stay open, waiting
        b.sendall(b"GET /hea")
        wait_until(lambda: open_connections() == 2, GIVE_UP_S, "the server to accept both")
        assert http.get("/health").status_code == 200         # the third connection
        with httpx.Client(base_url=server.base_url) as other:
            r = other.get("/health")                          # the fourth
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json", r.text   # was uvicorn's text/plain
        assert r.json()["error"]["code"] == "too_many_connections" and "retry later" in r.json()["error"]["message"]
    wait_until(lambda: open_connections() == 0, GIVE_UP_S, "the connections to close")
    assert httpx.get(server.base_url + "/health").status_code == 200


@pytest.mark.parametrize("request_bytes", [
    b"GET /health HTTP/1.1\r\nHost: x\r\ncontent-length: abc\r\n\r\n",        # a bad header value
    b"NOT HTTP AT ALL\r\n\r\n",                                                  # a bad request line
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000,   # unfinished headers past h11's 16 KB
])
def test_a_request_h11_cannot_parse_gets_a_json_400(server, request_bytes):
    with connect(server) as sock:
        sock.sendall(request_bytes)
        sock.settimeout(GIVE_UP_S)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), answer
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_http" and error["message"].startswith("Invalid HTTP request: "), error
