"""A live forgert server on loopback for the server tests (one per test module)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

API_KEY = "test-key-123"
TEST_N_CTX = 512    # small context: quick to allocate, and over-long prompts are cheap to build


def load_model(path, n_ctx: int = TEST_N_CTX, parallel: int = 1):
    """The model under test (conftest's smollm2_gguf path), or a skip naming what is missing.
    parallel >= 2: a server over it batches its requests (slots 1..parallel-1)."""
    import forgert
    try:
        from forgert import _core  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"forgert._core is not built: {exc}")
    return forgert.Model(path, n_ctx=n_ctx, parallel=parallel)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.01):
    """Poll `condition()` until it returns something truthy (returned) or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(poll_s)


class LiveServer:
    """uvicorn running create_app(model) in a background thread, configured as `forgert serve`
    configures it (the same protocol with its read deadlines and connection limit)."""

    def __init__(self, model, model_id: str = "smollm2-test", api_key: str | None = API_KEY,
                 limits=None, max_tokens_limit: int | None = None, prompt_lookup: int = 0):
        import uvicorn
        from forgert.server import ConnectionLimits, create_app
        from forgert.server.connections import uvicorn_config

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.app = create_app(model, model_id, api_key, max_tokens_limit=max_tokens_limit,
                              prompt_lookup=prompt_lookup)
        config = uvicorn_config(self.app, limits or ConnectionLimits(), host="127.0.0.1",
                                port=self.port, log_level="warning")
        self._started = threading.Event()
        started = self._started

        class Server(uvicorn.Server):
            async def startup(self, sockets=None):
                try:
                    await super().startup(sockets)
                finally:    # listening, or given up (it may sys.exit)
                    started.set()

        self._server = Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        if not self._started.wait(30) or not self._server.started:
            raise RuntimeError("the test server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def connections(self) -> set:
        """The connections uvicorn holds open now (its protocol objects)."""
        return set(self._server.server_state.connections)

    def requests_in_flight(self) -> int:
        return self.app.state.forgert.worker.queued

    def openai_client(self, **kwargs):
        openai = pytest.importorskip("openai")
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key or "unused",
                             timeout=300, max_retries=0, **kwargs)
