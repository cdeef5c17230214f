"""Fixtures of the /v1/responses and /v1/messages tests: a tiny random model served with a plain
chat template (its greedy text compared with the chat route's; calls forced by a grammar), and
servers whose model speaks a scripted text (reasoning, a tool call in the Hermes format)."""
from __future__ import annotations

import httpx
import pytest

from scripted_model import ScriptedModel
from server_harness import API_KEY, LiveServer

# A template that ignores tools: they reach the prompt in a system message (Hermes format).
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")

# Arguments the grammar keeps short on a random model: enums only.
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                                       "unit": {"enum": ["celsius", "fahrenheit"]}},
                      "required": ["city", "unit"], "additionalProperties": False}
CALL_ARGS = {"city": "Paris", "unit": "celsius"}
THOUGHT = "<think>\nThe user asks about Paris.\n</think>\n\nParis is the capital."
HERMES_CALL = ('Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
               '\n</tool_call>')


def tiny_model(tiny_models, parallel: int = 1):
    """Past the tiny model's trained length (256): a tool's system prompt in its bytes needs more room."""
    import warnings

    import forgert
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_ctx=1024 is longer")
        return forgert.Model(str(tiny_models("llama_tied").path("gguf-Q8_0")), backend="cpu", threads=1,
                             n_ctx=1024, parallel=parallel)


def tiny_chat_model(tiny_models, template: str = TEMPLATE, parallel: int = 1):
    """parallel >= 2: a server over it batches its requests."""
    model = tiny_model(tiny_models, parallel)
    model._model.chat_template = template
    return model


@pytest.fixture(scope="module")
def server(tiny_models):
    with LiveServer(tiny_chat_model(tiny_models), model_id="tiny") as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


@pytest.fixture(scope="module")
def scripted_base(tiny_models):
    return tiny_model(tiny_models)


def serve_script(model, script: str) -> LiveServer:
    return LiveServer(ScriptedModel(model, script), model_id="scripted")


def chat(server, **body) -> dict:
    """The chat route's answer to the same request, as JSON."""
    r = httpx.post(server.base_url + "/v1/chat/completions", headers=server.headers, json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def post(server, route: str, body, headers=None, **kwargs) -> httpx.Response:
    kwargs.setdefault("json" if not isinstance(body, (bytes, str)) else "content", body)
    return httpx.post(server.base_url + route, headers=server.headers if headers is None else headers,
                      timeout=300, **kwargs)


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event line, decoded data) of each server-sent event of a stream's body."""
    import json
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines.get("event"), json.loads(lines["data"])))
    return out


__all__ = ["API_KEY", "CALL_ARGS", "HERMES_CALL", "TEMPLATE", "THOUGHT", "WEATHER_PARAMETERS", "chat", "client",
           "post", "scripted_base", "serve_script", "server", "sse_events", "tiny_chat_model"]
