"""The module-scoped fixtures of the server tests that serve the tiny tied-embedding Llama (Q8_0,
CPU, n_ctx 64) in-process: a test module imports the ones it uses by name (as
smollm2_server_fixtures), each importing module getting its own model and client. Also
BrokenTokenizerModel, a model whose requests reach the server's 500 path."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    import forgert
    return forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", n_ctx=64)


@pytest.fixture(scope="module")
def client(tiny_model):
    """A TestClient over create_app(tiny_model); a 500 comes back as a response, not raised."""
    from fastapi.testclient import TestClient
    from forgert.server import create_app
    return TestClient(create_app(tiny_model, "tiny", None), raise_server_exceptions=False)


class BrokenTokenizerModel:
    """The real model, but tokenizing fails with an unexpected exception (the 500 path), the way
    the tokenizer once did on a lone surrogate."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def prompt_tokens(self, prompt, chat_template_kwargs=None, tools=None):
        raise TypeError("TextInputSequence must be str")
