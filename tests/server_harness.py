"""A live forgert server on loopback for the server tests (one per test module)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

API_KEY = "test-key-123"
TEST_N_CTX = 512    # small context: quick to allocate, and over-long prompts are cheap to build


def load_model(path, n_ctx: int = TEST_N_CTX):
    """The model under test (conftest's smollm2_gguf path), or a skip naming what is missing."""
    import forgert
    try:
        from forgert import _core  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"forgert._core is not built: {exc}")
    return forgert.Model(path, n_ctx=n_ctx)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn running create_app(model) in a background thread."""

    def __init__(self, model, model_id: str = "smollm2-test", api_key: str | None = API_KEY):
        import uvicorn
        from forgert.server import create_app

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        config = uvicorn.Config(create_app(model, model_id, api_key), host="127.0.0.1",
                                port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def openai_client(self, **kwargs):
        openai = pytest.importorskip("openai")
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key or "unused",
                             timeout=300, max_retries=0, **kwargs)
