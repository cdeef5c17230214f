"""The FastAPI application: routes, authentication, request -> generation -> response."""
from __future__ import annotations

import asyncio
import functools
import hmac
import time
from typing import Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from ..tool_calls import forced_call_format
from .delivery import collect, collect_unless_disconnected, metered, stream
from .embeddings_api import checked_dimensions, collect_vectors, embedding_job, input_ids, response_body
from .errors import APIError, install_error_handlers
from .generation import ChoiceSpec, GenerationSpec, generation_job
from .json_body import decode_json
from .messages_api import CountTokensRequest, MessagesReply, MessagesRequest, messages_chat_request
from .metrics import RequestTimer, ServerMetrics
from .responses import ResponseHeader
from .responses_api import ResponsesReply, ResponsesRequest, responses_chat_request
from .schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                      SamplingFields, TokenizeRequest, parse_request)
from .token_budget import completion_budget
from .batch_worker import BatchWorker
from .worker import ModelWorker

# Bodies above this are refused before parsing: no legitimate prompt for a local model is larger.
MAX_BODY_BYTES = 16 * 1024 * 1024


class ServerState:
    def __init__(self, model, model_id: str, api_key: Optional[str], max_tokens_limit: Optional[int],
                 prompt_lookup: int = 0):
        self.model = model
        self.prompt_lookup = prompt_lookup     # draft tokens for the requests it serves (generation_job, BatchWorker)
        self.model_id = model_id
        self.api_key = api_key
        self.max_tokens_limit = max_tokens_limit    # per completion; None: only the context bounds it
        self.worker = ModelWorker()
        # parallel >= 2: requests join one running batch (slots 1..); else they take turns
        self.batch_worker = BatchWorker(model, prompt_lookup) if getattr(model, "parallel", 1) >= 2 else None
        self.metrics = ServerMetrics(self.in_flight,
                                     self.batch_worker.stats if self.batch_worker is not None else None)
        self.started = int(time.time())

    @functools.cached_property
    def embedding_width(self) -> int:
        """The model's hidden width, the length of its embeddings (read at the first embeddings request)."""
        return self.model.info()["dim"]

    def in_flight(self) -> int:
        return self.worker.queued + (self.batch_worker.queued if self.batch_worker else 0)


def create_app(model, model_id: str = "forgert", api_key: Optional[str] = None, *,
               max_tokens_limit: Optional[int] = None, prompt_lookup: int = 0) -> FastAPI:
    """An OpenAI-compatible app serving `model` (a forgert.Model) to any number of clients.

    max_tokens_limit: the most tokens one completion may ask for (larger requests get a 400;
    it also caps the default when max_tokens is absent). None: the context is the only bound.
    prompt_lookup: up to this many draft tokens of prompt lookup decoding (1-15; 0: off) for every
    request it cannot change: greedy, without penalties, logprobs, a grammar or logit_bias, on a
    model without recurrent layers, taking turns (not in the --parallel batch). The same tokens.
    """
    if isinstance(prompt_lookup, bool) or not isinstance(prompt_lookup, int) or not 0 <= prompt_lookup <= 15:
        raise ValueError(f"prompt_lookup must be an integer in 0..15, got {prompt_lookup!r}")
    if max_tokens_limit is not None and (not isinstance(max_tokens_limit, int)
                                         or isinstance(max_tokens_limit, bool) or max_tokens_limit < 1):
        raise ValueError(f"max_tokens_limit must be None or an integer >= 1, got {max_tokens_limit!r}")
    state = ServerState(model, model_id, api_key, max_tokens_limit, prompt_lookup)
    app = FastAPI(title="forgert", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.forgert = state
    install_error_handlers(app)

    async def require_key(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header and "x-api-key" in request.headers:     # Anthropic's clients send the key so
            scheme, token = "bearer", request.headers["x-api-key"]
        elif not header:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                           code="invalid_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  state.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
    root = APIRouter(dependencies=[Depends(require_key)])    # vLLM's tokenizer routes

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_id, "requests_in_flight": state.in_flight()}

    @app.get("/metrics")
    async def metrics():
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(state)]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != state.model_id:
            raise APIError(404, f"The model '{model_id}' does not exist; this server serves "
                           f"'{state.model_id}'", param="model", code="model_not_found")
        return _model_card(state)

    @root.post("/tokenize")
    async def tokenize(request: Request):
        req = parse_request(TokenizeRequest, await _read_json(request))
        if req.messages is not None:
            messages = [m.as_template_message() for m in req.messages]
            ids = await _prompt_ids(state.model, "messages", messages)
        else:
            text = req.prompt if req.prompt is not None else req.content
            ids = await asyncio.to_thread(state.model.tokenize, text,
                                          None if req.add_special_tokens else False)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.model.n_ctx}

    @root.post("/detokenize")
    async def detokenize(request: Request):
        req = parse_request(DetokenizeRequest, await _read_json(request))
        try:
            text = await asyncio.to_thread(state.model.detokenize, req.tokens)
        except ValueError as exc:
            raise APIError(400, str(exc), param="tokens") from None
        return {"prompt": text, "content": text}    # vLLM's key, llama-server's key

    @root.get("/tokenizer_info")
    async def tokenizer_info():
        tok = state.model.tokenizer
        return {"tokenizer_class": "forgert", "bos_token": tok.bos_token or None,
                "eos_token": tok.eos_token or None, "pad_token": None,
                "chat_template": state.model.chat_template, "model_max_length": state.model.n_ctx,
                "add_bos_token": tok.add_bos}

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        with _counted(state, "chat"):
            timer = RequestTimer(state.metrics)
            req = parse_request(ChatCompletionRequest, await _read_json(request))
            spec, new_output = await _chat_generation(state, req)
            return await _complete(request, state, req, spec, ResponseHeader("chat", state.model_id),
                                   new_output, timer)

    @v1.post("/responses")
    async def responses(request: Request):
        with _counted(state, "responses"):
            timer = RequestTimer(state.metrics)
            req = parse_request(ResponsesRequest, await _read_json(request))
            chat = responses_chat_request(req)
            spec, new_output = await _chat_generation(state, chat)
            events = _events(state, spec, timer)
            reply = ResponsesReply(req, state.model_id)
            if req.stream:
                return _sse_response(reply.stream(events, new_output()))
            return JSONResponse(await collect_unless_disconnected(request, reply.collect(events, new_output())))

    @v1.post("/messages")
    async def messages(request: Request):
        with _counted(state, "messages"):
            timer = RequestTimer(state.metrics)
            req = parse_request(MessagesRequest, await _read_json(request))
            chat = messages_chat_request(req)
            spec, new_output = await _chat_generation(state, chat)
            events = _events(state, spec, timer)
            reply = MessagesReply(state.model_id, len(spec.choices[0].prompt_ids))
            if req.stream:
                return _sse_response(reply.stream(events, new_output()))
            return JSONResponse(await collect_unless_disconnected(request, reply.collect(events, new_output())))

    @v1.post("/messages/count_tokens")
    async def count_tokens(request: Request):
        req = parse_request(CountTokensRequest, await _read_json(request))
        chat = messages_chat_request(req)
        messages = [m.as_template_message() for m in chat.messages]
        ids = await _prompt_ids(state.model, chat.PROMPT_PARAM, messages, chat.chat_template_kwargs,
                                chat.tool_dicts())
        return {"input_tokens": len(ids)}

    @v1.post("/completions")
    async def completions(request: Request):
        with _counted(state, "completions"):
            timer = RequestTimer(state.metrics)
            req = parse_request(CompletionRequest, await _read_json(request))
            prompts = req.prompts()
            id_lists = [await _prompt_ids(state.model, "prompt", p) for p in prompts]
            grammar = await _grammar(state.model, req.response_format_dict())
            max_tokens = _max_tokens(state, req, max(len(ids) for ids in id_lists))
            choices = []
            for prompt, ids in zip(prompts, id_lists):
                echo = None
                if req.echo:
                    echo = prompt if isinstance(prompt, str) else state.model.detokenize(ids)
                choices += [ChoiceSpec(ids, _choice_seed(req.seed, j), echo, counts_prompt=j == 0)
                            for j in range(req.n_choices)]
            spec = GenerationSpec(choices, _sampling_kwargs(req, max_tokens), req.top_logprobs_wanted(),
                                  grammar, _logit_bias(state.model, req))
            return await _complete(request, state, req, spec, ResponseHeader("text", state.model_id),
                                   None, timer)

    @v1.post("/embeddings")
    async def embeddings(request: Request):
        with _counted(state, "embeddings"):
            req = parse_request(EmbeddingRequest, await _read_json(request))
            dimensions = checked_dimensions(req, state.embedding_width)
            id_lists = await input_ids(state.model, req)
            # On the worker thread: taking turns with generations, or (--parallel) on slot 0 beside
            # the batch, under the Model's lock; a client that leaves cancels it.
            events = state.worker.events(embedding_job(state.model, id_lists, dimensions))
            vectors = await collect_unless_disconnected(request, collect_vectors(events))
            if not vectors:
                return JSONResponse({})     # nobody is listening any more
            n_tokens = sum(len(ids) for ids in id_lists)
            state.metrics.embedding_tokens.inc(n_tokens)
            body = await asyncio.to_thread(response_body, vectors, req.encoding_format, state.model_id, n_tokens)
            return Response(body, media_type="application/json")

    app.include_router(v1)
    app.include_router(root)
    return app


class _counted:
    """Counts a request by route and final status in the metrics (errors included)."""

    def __init__(self, state: ServerState, route: str):
        self.state, self.route = state, route

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        status = 200 if exc is None else exc.status if isinstance(exc, APIError) else 500
        self.state.metrics.requests.labels(self.route, str(status)).inc()
        return False


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.started, "owned_by": "forgert",
            "max_model_len": state.model.n_ctx,     # vLLM's name for the context length
            "context_length": state.model.n_ctx}


def _logit_bias(model, req: SamplingFields) -> Optional[dict]:
    """{token id: bias}; a token id outside the vocabulary is a 400 before the request queues."""
    if not req.logit_bias:
        return None
    for key in req.logit_bias:     # ASCII digits (schemas.py); too many for int() are out of range too
        if len(key.lstrip("0")) > 12 or int(key) >= model.vocab_size:
            shown = key if len(key) <= 20 else f"{key[:20]}... ({len(key)} digits)"
            raise APIError(400, f"Invalid value for 'logit_bias': token id {shown} is out of range "
                           f"(0..{model.vocab_size - 1})", param="logit_bias", code="invalid_value")
    return {int(key): value for key, value in req.logit_bias.items()}


def _choice_seed(seed: Optional[int], j: int) -> Optional[int]:
    """Choice j's seed: n choices of one seeded request differ, and repeat together."""
    return None if seed is None else (seed + j) % 2**64     # any integer is a valid seed


async def _grammar(model, response_format: Optional[dict], param: str = "response_format"):
    """The compiled constraint for a response_format (None: text), or a 400 naming the field
    (`tools` when it is a forced call's schema: the function parameters are at fault)."""
    if response_format is None:
        return None
    try:
        return await asyncio.to_thread(model.compile_response_format, response_format)
    except ValueError as exc:
        reason = str(exc).removeprefix("response_format: ")
        raise APIError(400, f"Invalid value for '{param}': {reason}", param=param,
                       code="invalid_value") from None
    except ImportError as exc:
        raise APIError(400, f"This server cannot enforce '{param}': {exc}",
                       param=param, code="unsupported_parameter") from None


async def _read_json(request: Request):
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:   # refuse before reading it all
        raise APIError(413, f"Request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    # Read as it comes: a chunked body declares no length, and must not sit in memory whole
    # (gigabytes within the body deadline) before its size is known.
    parts, size = [], 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > MAX_BODY_BYTES:
                raise APIError(413, f"Request body is more than {MAX_BODY_BYTES} bytes, the limit")
            parts.append(part)
    except ClientDisconnect:    # gone (or cut off by the body read deadline): nobody to answer
        raise APIError(400, "The client disconnected before sending the whole body") from None
    body = b"".join(parts)
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
    """Model.stream keyword arguments (the seed is set per choice). Defaults follow OpenAI
    (temperature 1, top_p 1, no top-k/min-p/penalties), not the Model's own defaults, so clients
    get what they expect. max_tokens comes from completion_budget: prompt + completion always
    fit the context."""
    return {
        "max_tokens": max_tokens,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": req.top_k or 0,
        "min_p": req.min_p or 0.0,
        "presence_penalty": req.presence_penalty or 0.0,
        "frequency_penalty": req.frequency_penalty or 0.0,
        "repetition_penalty": 1.0 if req.repetition_penalty is None else req.repetition_penalty,
        "stop": req.stop_list(),
        "ignore_eos": req.ignore_eos,
    }


async def _chat_generation(state: ServerState, req: ChatCompletionRequest):
    """(the GenerationSpec, a () -> ChoiceOutput / HarmonyOutput / Gemma4Output factory) of a chat request: the
    template rendered with its tools, the grammar of a forced call or a response_format, and how
    the output is read (reasoning, tool calls). /v1/responses and /v1/messages translate their
    requests into a ChatCompletionRequest (subclass naming their own fields in errors) and come here."""
    messages = [m.as_template_message() for m in req.messages]
    tools = req.tool_dicts()
    ids = await _prompt_ids(state.model, req.PROMPT_PARAM, messages, req.chat_template_kwargs, tools)
    forced = req.forced_tool()
    if forced is not False:
        grammar = await _grammar(state.model, forced_call_format(tools, forced), param=req.TOOLS_PARAM)
    else:
        grammar = await _grammar(state.model, req.response_format_dict(), param=req.RESPONSE_FORMAT_PARAM)
    reader = state.model.answer_reader(ids, tools, forced is not False, grammar is not None)
    choices = [ChoiceSpec(ids, _choice_seed(req.seed, j), counts_prompt=j == 0)
               for j in range(req.n_choices)]
    spec = GenerationSpec(choices, _sampling_kwargs(req, _max_tokens(state, req, len(ids))),
                          req.top_logprobs_wanted(), grammar, _logit_bias(state.model, req))
    return spec, reader


def _events(state: ServerState, spec: GenerationSpec, timer: RequestTimer):
    """The request's Piece / Finish events, from the running batch or the worker thread."""
    if state.batch_worker is not None:     # every request batches (batch_worker.py)
        source = state.batch_worker.events(spec)
    else:
        source = state.worker.events(generation_job(state.model, spec, state.prompt_lookup))
    return metered(source, state.metrics, timer)


def _sse_response(chunks) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _complete(request: Request, state: ServerState, req: SamplingFields,
                    spec: GenerationSpec, header: ResponseHeader, new_output, timer: RequestTimer):
    """new_output: () -> ChoiceOutput for chat (reasoning / tool calls split off); None for text."""
    events = _events(state, spec, timer)
    if req.stream:
        return _sse_response(stream(events, header, req.include_usage, new_output, len(spec.choices)))
    return JSONResponse(await collect_unless_disconnected(request, collect(events, header, new_output)))


async def _prompt_ids(model, param: str, prompt, chat_template_kwargs=None, tools=None) -> list[int]:
    """Tokenize (chat template applied to messages) off the event loop. The caller checks that
    prompt and completion fit the context, so a request that cannot run never waits in the queue."""
    try:
        ids = await asyncio.to_thread(model.prompt_tokens, prompt, chat_template_kwargs, tools)
    except ValueError as exc:     # a token id out of range, a template that refuses the roles...
        raise APIError(400, str(exc), param=param) from None
    if not ids:
        raise APIError(400, f"The {param} is empty: there is nothing to complete", param=param)
    return ids
