"""OpenAI-compatible HTTP server over one forgert.Model: `forgert serve` or `serve(model)`.

Routes: POST /v1/chat/completions, POST /v1/completions (both also streaming as SSE, ending with
`data: [DONE]`), GET /v1/models, GET /v1/models/{id}, GET /health (never needs the API key).

Beyond OpenAI's fields, requests may set top_k, min_p, repetition_penalty and ignore_eos, and
responses carry `timings` (prefill/decode tokens and tokens/s; cached_tokens says how much of the
prompt came from the prompt cache). Defaults follow OpenAI: temperature 1, top_p 1, no top-k or
min-p; no max_tokens means "until the end of the text or of the context" (16 on /v1/completions).

logprobs are the model's own log-probabilities of each sampled token (before temperature,
penalties and truncation); when streaming they travel in the chunk with the text they produced.

One model serves every client: requests wait their turn in arrival order on one worker thread.
A client that disconnects cancels its request, queued or running. The engine's cache holds one
sequence; with Model.set_prompt_cache (`forgert serve --prompt-cache-mb`, on by default there)
the K/V of the others are kept in memory too, so conversations taking turns each reuse their
prefix (`timings.cached_tokens`).
"""
from __future__ import annotations

from typing import Optional

from .app import create_app


def serve(model, *, host: str = "127.0.0.1", port: int = 8080,
          api_key: Optional[str] = None, model_id: Optional[str] = None,
          log_level: str = "info") -> None:
    """Serve `model` until interrupted (blocking). Loopback only unless `host` says otherwise."""
    import uvicorn

    app = create_app(model, model_id or _model_id(model), api_key)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)


def _model_id(model) -> str:
    """The name clients see in /v1/models: the model file or directory name without extension."""
    name = model.info()["name"]
    return name.removesuffix(".gguf")


__all__ = ["create_app", "serve"]
