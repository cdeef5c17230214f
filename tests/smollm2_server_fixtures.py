"""The module-scoped fixtures of the server tests that serve the default model (SmolLM2). A test
module imports the ones it uses by name: pytest finds fixtures among a module's globals, so each
importing module still gets its own model and server (module scope), as if it defined them."""
from __future__ import annotations

import pytest

from server_harness import LiveServer, load_model


@pytest.fixture(scope="module")
def model(smollm2_gguf):
    return load_model(smollm2_gguf)


@pytest.fixture(scope="module")
def reference_model(smollm2_gguf):
    """A second, independent Model instance: the same request run alone, outside the server."""
    return load_model(smollm2_gguf)


@pytest.fixture(scope="module")
def server(model):
    with LiveServer(model) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_gguf):
    """transformers' tokenizer read from the same GGUF: independent token counts and chat template."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
