"""The FastAPI application: routes, authentication, request -> generation -> response."""
from __future__ import annotations

import asyncio
import hmac
import time
from typing import AsyncIterator, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from .errors import APIError, install_error_handlers, internal_error, log_unexpected
from .generation import Finish, GenerationSpec, Piece, generation_job
from .json_body import decode_json
from .responses import ResponseHeader, sse
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields, parse_request
from .token_budget import completion_budget
from .worker import ModelWorker

# Bodies above this are refused before parsing: no legitimate prompt for a local model is larger.
MAX_BODY_BYTES = 16 * 1024 * 1024


class ServerState:
    def __init__(self, model, model_id: str, api_key: Optional[str], max_tokens_limit: Optional[int]):
        self.model = model
        self.model_id = model_id
        self.api_key = api_key
        self.max_tokens_limit = max_tokens_limit    # per completion; None: only the context bounds it
        self.worker = ModelWorker()
        self.started = int(time.time())


def create_app(model, model_id: str = "forgert", api_key: Optional[str] = None, *,
               max_tokens_limit: Optional[int] = None) -> FastAPI:
    """An OpenAI-compatible app serving `model` (a forgert.Model) to any number of clients.

    max_tokens_limit: the most tokens one completion may ask for (larger requests get a 400;
    it also caps the default when max_tokens is absent). None: the context is the only bound.
    """
    if max_tokens_limit is not None and (not isinstance(max_tokens_limit, int)
                                         or isinstance(max_tokens_limit, bool) or max_tokens_limit < 1):
        raise ValueError(f"max_tokens_limit must be None or an integer >= 1, got {max_tokens_limit!r}")
    state = ServerState(model, model_id, api_key, max_tokens_limit)
    app = FastAPI(title="forgert", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.forgert = state
    install_error_handlers(app)

    async def require_key(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  state.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_id, "requests_in_flight": state.worker.queued}

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(state)]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != state.model_id:
            raise APIError(404, f"The model '{model_id}' does not exist; this server serves "
                           f"'{state.model_id}'", param="model", code="model_not_found")
        return _model_card(state)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        req = parse_request(ChatCompletionRequest, await _read_json(request))
        messages = [m.as_template_message() for m in req.messages]
        ids = await _prompt_ids(state.model, "messages", messages, req.chat_template_kwargs)
        spec = GenerationSpec(ids, _sampling_kwargs(req, _max_tokens(state, req, len(ids))),
                              req.top_logprobs_wanted())
        return await _complete(request, state, req, spec, ResponseHeader("chat", state.model_id))

    @v1.post("/completions")
    async def completions(request: Request):
        req = parse_request(CompletionRequest, await _read_json(request))
        ids = await _prompt_ids(state.model, "prompt", req.prompt)
        spec = GenerationSpec(ids, _sampling_kwargs(req, _max_tokens(state, req, len(ids))),
                              req.top_logprobs_wanted())
        return await _complete(request, state, req, spec, ResponseHeader("text", state.model_id))

    app.include_router(v1)
    return app


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.started, "owned_by": "forgert"}


async def _read_json(request: Request):
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:   # refuse before reading it all
        raise APIError(413, f"Request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        body = await request.body()
    except ClientDisconnect:    # gone (or cut off by the body read deadline): nobody to answer
        raise APIError(400, "The client disconnected before sending the whole body") from None
    if len(body) > MAX_BODY_BYTES:
        raise APIError(413, f"Request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    if not body.strip():
        raise APIError(400, "The request body is empty; send a JSON object")
    # A 16 MB body takes a fraction of a second to decode: not on the loop that streams to others.
    return await asyncio.to_thread(decode_json, body)


def _max_tokens(state: ServerState, req: SamplingFields, n_prompt: int) -> int:
    requested, requested_param = req.requested_tokens()
    return completion_budget(n_ctx=state.model.n_ctx, n_prompt=n_prompt,
                             prompt_param=req.PROMPT_PARAM, requested=requested,
                             requested_param=requested_param, default=req.DEFAULT_MAX_TOKENS,
                             server_limit=state.max_tokens_limit)


def _sampling_kwargs(req: SamplingFields, max_tokens: int) -> dict:
    """Model.stream keyword arguments. Defaults follow OpenAI (temperature 1, top_p 1, no
    top-k/min-p/penalties), not the Model's own defaults, so clients get what they expect.
    max_tokens comes from completion_budget: prompt + completion always fit the context."""
    return {
        "max_tokens": max_tokens,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": req.top_k or 0,
        "min_p": req.min_p or 0.0,
        "presence_penalty": req.presence_penalty or 0.0,
        "frequency_penalty": req.frequency_penalty or 0.0,
        "repetition_penalty": 1.0 if req.repetition_penalty is None else req.repetition_penalty,
        "seed": None if req.seed is None else req.seed % 2**64,   # any integer is a valid seed
        "stop": req.stop_list(),
        "ignore_eos": req.ignore_eos,
    }


async def _complete(request: Request, state: ServerState, req: SamplingFields,
                    spec: GenerationSpec, header: ResponseHeader):
    events = state.worker.events(generation_job(state.model, spec))
    if req.stream:
        return StreamingResponse(_stream(events, header, req.include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await _collect_unless_disconnected(request, events, header))


async def _prompt_ids(model, param: str, prompt, chat_template_kwargs=None) -> list[int]:
    """Tokenize (chat template applied to messages) off the event loop. The caller checks that
    prompt and completion fit the context, so a request that cannot run never waits in the queue."""
    try:
        ids = await asyncio.to_thread(model.prompt_tokens, prompt, chat_template_kwargs)
    except ValueError as exc:     # a token id out of range, a template that refuses the roles...
        raise APIError(400, str(exc), param=param) from None
    if not ids:
        raise APIError(400, f"The {param} is empty: there is nothing to complete", param=param)
    return ids


async def _collect(events: AsyncIterator, header: ResponseHeader) -> dict:
    pieces: list[str] = []
    logprobs = None
    finish: Optional[Finish] = None
    try:
        async for event in events:
            if isinstance(event, Piece):
                pieces.append(event.text)
                if event.logprobs is not None:
                    logprobs = (logprobs or []) + event.logprobs
            else:
                finish = event
    except ValueError as exc:   # the model refused the request (e.g. bad token ids)
        raise APIError(400, str(exc)) from None
    return header.response("".join(pieces), logprobs, finish)


async def _collect_unless_disconnected(request: Request, events: AsyncIterator,
                                       header: ResponseHeader) -> dict:
    """Like _collect, but a client that hangs up cancels its generation (queued or running)."""
    collecting = asyncio.ensure_future(_collect(events, header))
    watching = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not collecting.done():
            collecting.cancel()     # closes `events`, which cancels the job
            await asyncio.gather(collecting, return_exceptions=True)
    if collecting.cancelled():
        return {}   # nobody is listening any more
    return collecting.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(events: AsyncIterator, header: ResponseHeader, include_usage: bool):
    """SSE chunks, each sent as soon as the worker produces its tokens.

    Starlette cancels this generator when the client disconnects; the cancellation closes
    `events`, which stops the generation at its next token.
    """
    if header.chat:
        yield sse(header.chunk("", role=True, with_usage_field=include_usage))
    logprob_offset = 0      # where the next logprob token starts in the text (legacy completions)
    try:
        async for event in events:
            if isinstance(event, Piece):
                if not event.text and event.logprobs is None:
                    continue
                yield sse(header.chunk(event.text, event.logprobs, text_offset=logprob_offset,
                                       with_usage_field=include_usage))
                logprob_offset += sum(len(lp.token) for lp in event.logprobs or ())
            else:
                yield sse(header.chunk(None if header.chat else "", finish_reason=event.finish_reason,
                                       with_usage_field=include_usage))
                if include_usage:
                    yield sse(header.usage_chunk(event))
    except ValueError as exc:
        # Headers are gone already: report in-band, the way OpenAI does mid-stream.
        yield sse(APIError(400, str(exc)).body())
    except Exception as exc:  # noqa: BLE001 - the stream must still end properly
        log_unexpected(exc, "a streamed completion")
        yield sse(internal_error().body())
    yield sse("[DONE]")
