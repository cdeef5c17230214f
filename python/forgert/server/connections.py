"""Connection-level limits: slow clients are cut off, and only so many connections are served.

uvicorn times out idle keep-alive connections but not a client that trickles its request in (one
header byte per second keeps a "slowloris" connection open for ever), so the HTTP protocol here
is uvicorn's h11 protocol with two read deadlines, both measured from the start of the phase,
not from the last byte (a trickle must not extend them):
  - header_timeout_s: from the connection's opening (on a kept-alive connection, from the first
    byte of its next request) until the request's headers are complete;
  - body_timeout_s: from the end of the headers until the body is complete.
A connection past either deadline gets "408 Request Timeout" (when no response has started) and
is closed. max_connections bounds the open connections (as uvicorn's limit_concurrency, counted
here): a request on a connection beyond it gets "503 Service Unavailable". Those, and the 400 for
a request h11 cannot parse, are JSON error bodies like every other error (errors.APIError):
uvicorn's own are plain text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import APIError, _is_anthropic_route


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 64

    def __post_init__(self):
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ValueError(f"max_connections must be an integer >= 1, got {self.max_connections!r}")


def uvicorn_config(app, limits: ConnectionLimits, **config):
    """A uvicorn.Config for `app` that enforces `limits` (other keyword arguments pass through)."""
    import uvicorn

    protocol = type("DeadlineH11Protocol", (_DeadlineH11Protocol,), {"limits": limits})
    # limit_concurrency stays unset: the protocol counts connections itself, to answer in JSON
    return uvicorn.Config(app, http=protocol, **config)


_TIMEOUT_MESSAGE = {"headers": "The request headers were not received in time",
                    "body": "The request body was not received in time"}


def _error_body(error: APIError, path: Optional[str]) -> bytes:
    """error's JSON body, in Anthropic's shape on its routes (as APIError.response)."""
    anthropic = path is not None and _is_anthropic_route(path)
    return json.dumps(error.anthropic_body() if anthropic else error.body()).encode()


async def _overloaded(scope, receive, send) -> None:
    """The 503 for a request beyond max_connections (uvicorn's service_unavailable, in JSON)."""
    response = APIError(503, "The server is serving as many connections as it allows; retry later",
                        code="too_many_connections").response(Request(scope))
    response.headers["connection"] = "close"
    await response(scope, receive, send)


class _DeadlineH11Protocol(H11Protocol):
    limits: ConnectionLimits

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._app = self.app

    def connection_made(self, transport) -> None:
        self._deadline = None           # asyncio.TimerHandle of the phase being timed
        self._phase: Optional[str] = None   # "headers" | "body" | None (not reading a request)
        super().connection_made(transport)
        self._start("headers")

    def data_received(self, data: bytes) -> None:
        if self._phase is None and self.conn.their_state is h11.IDLE:
            self._start("headers")      # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def handle_events(self) -> None:
        # uvicorn's limit_concurrency test, with a JSON 503: the connection asking is counted,
        # so max_connections + 1 lets exactly max_connections in
        limit = self.limits.max_connections + 1
        over = len(self.connections) >= limit or len(self.tasks) >= limit
        if over and self.app is not _overloaded:
            self.logger.warning("Exceeded concurrency limit.")
        self.app = _overloaded if over else self._app
        super().handle_events()
        # Follow what h11 has parsed so far (also after pipelined requests are unblocked).
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._start("body")
        elif state is not h11.IDLE:
            self._stop()                # request complete (or the connection is done)

    def connection_lost(self, exc) -> None:
        self._stop()
        super().connection_lost(exc)

    def _start(self, phase: str) -> None:
        self._stop()
        seconds = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _timed_out(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        self.logger.info("closing a connection from %s: its request %s took too long", self.client,
                         phase)
        # Answer 408 only where no response to this request has begun (else it would corrupt it).
        if phase == "headers":
            unanswered = self.cycle is None or self.cycle.response_complete
        else:
            unanswered = self.cycle is not None and not self.cycle.response_started
        if unanswered:
            path = self.cycle.scope["path"] if phase == "body" and self.cycle is not None else None
            body = _error_body(APIError(408, _TIMEOUT_MESSAGE[phase], code="request_timeout"), path)
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, in JSON."""
        limit = self.config.h11_max_incomplete_event_size
        limit = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if limit is None else limit
        body = _error_body(APIError(400, f"Invalid HTTP request: its request line or headers are malformed, or "
                                         f"longer than {limit} bytes", code="invalid_http"), None)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
