"""OpenAI-compatible HTTP server over one forgert.Model: `forgert serve` or `serve(model)`.

Routes: POST /v1/chat/completions, POST /v1/completions (both also streaming as SSE, ending with
`data: [DONE]`), POST /v1/responses (OpenAI's Responses API: responses_api.py) and POST
/v1/messages, /v1/messages/count_tokens (Anthropic's Messages API: messages_api.py), both
translated into the chat route's request and streamed as their own typed events, GET /v1/models, GET /v1/models/{id}, POST /tokenize, POST /detokenize,
GET /tokenizer_info (vLLM's shapes), GET /health and GET /metrics (Prometheus; neither needs the
API key).

Beyond plain text: n choices, echo with prompt logprobs and batched prompts (completions),
response_format (a JSON schema enforced while sampling: forgert.grammar), tools (rendered by the
chat template, calls parsed from the model's format: forgert.tool_calls; forced by tool_choice
through the same grammar), reasoning_content split off <think>...</think> (../chat_output.py), or
gpt-oss's harmony analysis channel, its calls read from messages to functions.NAME (../harmony_output.py),
or Gemma 4's thought channel and <|tool_call> calls (../gemma4_output.py).

Beyond OpenAI's fields, requests may set top_k, min_p, repetition_penalty and ignore_eos, and
responses carry `timings` (prefill/decode tokens and tokens/s; cached_tokens says how much of the
prompt came from the prompt cache; with n > 1 or several prompts, the first choice's). Defaults follow OpenAI: temperature 1, top_p 1, no top-k or
min-p; no max_tokens means "until the end of the text or of the context" (16 on /v1/completions).

logprobs are the model's own log-probabilities of each sampled token (before temperature,
penalties and truncation); when streaming they travel in the chunk with the text they produced.

One model serves every client. With `forgert serve --parallel N` (N >= 2) requests join one
running batch (continuous batching, batch_worker.py), every feature above included; otherwise
they wait their turn in arrival order on one worker thread. A client that disconnects cancels
its request, queued or running. The single-sequence engine cache holds one sequence; with Model.set_prompt_cache (`forgert serve --prompt-cache-mb`, on by default there)
the K/V of the others are kept in memory too, so conversations taking turns each reuse their
prefix (`timings.cached_tokens`).

A request whose prompt + max_tokens does not fit the context is refused up front (400,
context_length_exceeded), so usage.total_tokens never exceeds the context; the server may set a
lower per-request maximum. Slow clients are cut off (header and body read deadlines) and the
number of connections is bounded: see connections.py.
"""
from __future__ import annotations

from typing import Optional

from .app import create_app
from .connections import ConnectionLimits, uvicorn_config


def serve(model, *, host: str = "127.0.0.1", port: int = 8080,
          api_key: Optional[str] = None, model_id: Optional[str] = None,
          log_level: str = "info", max_tokens_limit: Optional[int] = None,
          limits: ConnectionLimits = ConnectionLimits(), prompt_lookup: int = 0) -> None:
    """Serve `model` until interrupted (blocking). Loopback only unless `host` says otherwise.

    max_tokens_limit: the most tokens one completion may ask for (None: the context's room).
    limits: read deadlines for request headers and bodies, and the most connections served.
    prompt_lookup: draft tokens of prompt lookup decoding for the requests it applies to (create_app).
    """
    import uvicorn

    app = create_app(model, model_id or _model_id(model), api_key, max_tokens_limit=max_tokens_limit,
                     prompt_lookup=prompt_lookup)
    server = uvicorn.Server(uvicorn_config(app, limits, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=2))
    try:
        server.run()
    except KeyboardInterrupt:   # uvicorn re-raises the Ctrl-C it shut down on: a normal stop
        pass
    if not server.started:      # as uvicorn.run: it logged why (e.g. the port is taken)
        raise SystemExit(3)


def _model_id(model) -> str:
    """The name clients see in /v1/models: the model file or directory name without extension."""
    name = model.info()["name"]
    return name.removesuffix(".gguf")


__all__ = ["ConnectionLimits", "create_app", "serve"]
