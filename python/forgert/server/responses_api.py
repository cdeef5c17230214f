"""OpenAI's Responses API (POST /v1/responses: what Codex CLI and newer OpenAI SDK code call),
translated to and from the chat route's request and events.

The request becomes a ChatCompletionRequest (input items -> messages: a `function_call` item is
the assistant's tool call, a `function_call_output` item the tool's answer; `instructions` the
system message; `text.format` the response_format; `max_output_tokens` max_tokens), so the
template, tools, grammar, reasoning split, batching and up-front checks are the chat route's.
The answer goes back as a `response` object whose output holds a `reasoning` item (the model's
thinking, when it thinks), a `message` item (output_text) and `function_call` items; streamed, as
typed events with `event:` lines and sequence numbers.

Nothing is stored: `store` is accepted and means nothing here, and `previous_response_id` (which
needs the stored conversation) is refused: clients send the whole conversation in `input`.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from .choice_events import CONTENT, REASONING, choice_events, sse_event
from .errors import APIError, generation_error, internal_error, log_unexpected
from .generation import Finish
from .schemas import ChatCompletionRequest, _Strict, parse_request

FUNCTION_NAME = r"^[A-Za-z0-9_.-]+$"
TEXT_PARTS = ("input_text", "output_text")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ----------------------------------------------------------------------------- request

class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=FUNCTION_NAME)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class FunctionChoice(_Strict):
    type: Literal["function"]
    name: str


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = Field(default=None, min_length=1, max_length=64)
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise APIError(400, "text.format of type 'json_schema' needs 'name' and 'schema'",
                           param="text.format", code="missing_required_parameter")
        return self

    def response_format(self) -> Optional[dict]:
        """The chat route's response_format (None: plain text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema_}}


class TextConfig(_Strict):
    format: Optional[TextFormat] = None
    verbosity: Optional[str] = None     # a hint to OpenAI's models; nothing here reads it


class TextPart(_Strict):
    type: Literal["input_text", "output_text"]
    text: str


def _text_parts_only(content):
    for part in content if isinstance(content, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            raise ValueError(f"content parts of type {kind!r} are not supported: forgert reads text only "
                             "(input_text, output_text)")
    return content


def _text(content: Union[str, list[TextPart]]) -> str:
    return content if isinstance(content, str) else "".join(p.text for p in content)


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[TextPart]]

    _parts = field_validator("content", mode="before")(_text_parts_only)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Union[str, list[TextPart]]

    _parts = field_validator("output", mode="before")(_text_parts_only)


class ReasoningItem(_Strict):
    """An earlier turn's reasoning sent back (Codex does): dropped, as chat templates leave old
    reasoning out of the prompt."""
    type: Literal["reasoning"]


INPUT_ITEMS = {"message": MessageItem, "function_call": FunctionCallItem,
               "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem}


class ResponsesRequest(_Strict):
    model: Optional[str] = None
    input: Union[str, list[dict[str, Any]]]
    instructions: Optional[str] = None
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], FunctionChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    # forgert's extensions, as on the chat route
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    seed: Optional[int] = None
    stream: bool = False
    text: Optional[TextConfig] = None
    reasoning: Optional[dict[str, Any]] = None      # {"effort": ...}: the template's reasoning_effort
    store: Optional[bool] = None                    # accepted; nothing is ever stored
    metadata: Optional[dict[str, Any]] = None
    include: Optional[list[str]] = None

    # Fields that need stored state or features forgert does not have: refused when set.
    UNSUPPORTED_FIELDS: ClassVar[dict[str, str]] = {
        "previous_response_id": "this server does not store responses; send the whole conversation "
                                "in 'input'",
        "conversation": "this server does not store conversations; send the whole conversation in 'input'",
        "prompt": "stored prompt templates are not available on this server",
        "background": "background responses need storage, which this server does not have",
        "top_logprobs": "logprobs are available on /v1/chat/completions",
    }

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data):
        if not isinstance(data, dict):
            return data
        for name, why in cls.UNSUPPORTED_FIELDS.items():
            if data.get(name) not in (None, False, 0):
                raise APIError(400, f"'{name}' is not supported: {why}", param=name,
                               code="unsupported_parameter")
        tools = data.get("tools")
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):    # else: validation's 400
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise APIError(400, f"Invalid value for 'tools.{i}.type': tools of type {kind!r} are not "
                               "supported; this server runs function tools only", param=f"tools.{i}.type",
                               code="unsupported_parameter")
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.input, list) and not self.input:
            raise APIError(400, "'input' is an empty list", param="input")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise APIError(400, "tool_choice needs 'tools' to choose from", param="tool_choice")
        if isinstance(self.tool_choice, FunctionChoice) \
                and self.tool_choice.name not in [t.name for t in self.tools]:
            raise APIError(400, f"tool_choice names '{self.tool_choice.name}', which is not in 'tools'",
                           param="tool_choice.name")
        if self.forces_a_call() and self.response_format() is not None:
            raise APIError(400, "text.format cannot be combined with a forced tool_choice",
                           param="text.format")
        return self

    def forces_a_call(self) -> bool:
        return bool(self.tools) and (self.tool_choice == "required" or isinstance(self.tool_choice, FunctionChoice))

    def response_format(self) -> Optional[dict]:
        return self.text.format.response_format() if self.text and self.text.format else None

    def input_items(self) -> list:
        """The validated input items (a string input is one user message)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        items = []
        for i, data in enumerate(self.input):
            kind = data.get("type", "message" if "role" in data else None)
            if kind not in INPUT_ITEMS:
                raise APIError(400, f"Invalid value for 'input.{i}.type': items of type {kind!r} are not "
                               f"supported; this server takes {', '.join(INPUT_ITEMS)} items",
                               param=f"input.{i}.type", code="invalid_value")
            items.append(parse_request(INPUT_ITEMS[kind], data, where=("input", i)))
        return items


class ResponsesChatRequest(ChatCompletionRequest):
    """The chat request a /v1/responses request becomes; errors name the Responses fields."""
    PROMPT_PARAM: ClassVar[str] = "input"
    RESPONSE_FORMAT_PARAM: ClassVar[str] = "text.format"

    def requested_tokens(self) -> tuple[Optional[int], str]:
        return self.max_tokens, "max_output_tokens"


def responses_chat_request(req: ResponsesRequest) -> ResponsesChatRequest:
    messages = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    names = {}      # call_id -> function name: a tool's answer names the function it answers
    for item in req.input_items():
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            if messages and messages[-1]["role"] == "assistant":    # the calls of the message before
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            answer = {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)}
            if item.call_id in names:
                answer["name"] = names[item.call_id]
            messages.append(answer)
    if not messages:
        raise APIError(400, "'input' holds no message: there is nothing to answer", param="input")
    tool_choice = req.tool_choice
    if isinstance(tool_choice, FunctionChoice):
        tool_choice = {"type": "function", "function": {"name": tool_choice.name}}
    effort = (req.reasoning or {}).get("effort")
    chat = {
        "messages": messages, "max_tokens": req.max_output_tokens, "temperature": req.temperature,
        "top_p": req.top_p, "top_k": req.top_k, "min_p": req.min_p, "seed": req.seed,
        "tools": [{"type": "function", "function": {k: v for k, v in
                                                    (("name", t.name), ("description", t.description),
                                                     ("parameters", t.parameters)) if v is not None}}
                  for t in req.tools] if req.tools else None,
        "tool_choice": tool_choice, "response_format": req.response_format(),
        "chat_template_kwargs": {"reasoning_effort": effort} if isinstance(effort, str) else None,
    }
    return parse_request(ResponsesChatRequest, {k: v for k, v in chat.items() if v is not None})


# ----------------------------------------------------------------------------- response

class ResponsesReply:
    """The `response` object of one request, built from its events; streamed as typed events."""

    def __init__(self, req: ResponsesRequest, model_id: str):
        self.req = req
        self.id = _id("resp")
        self.model_id = model_id
        self.created_at = int(time.time())
        self.output: list[dict] = []
        self.sequence = 0

    def response(self, status: str, finish: Optional[Finish] = None) -> dict:
        req = self.req
        fmt = req.text.format if req.text and req.text.format else None
        text_format = {"type": "text"} if fmt is None else fmt.model_dump(by_alias=True, exclude_none=True)
        tool_choice = req.tool_choice or "auto"
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": self.model_id, "output": list(self.output),
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": (req.reasoning or {}).get("effort"), "summary": None},
            "store": False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": text_format},
            "tool_choice": tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
            "tools": [t.model_dump(exclude_none=False) for t in req.tools or ()],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": "disabled",
            "usage": None if finish is None else _usage(finish),
            "metadata": req.metadata or {},
        }

    def _event(self, kind: str, **fields) -> tuple[str, dict]:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, payload

    async def events(self, events: AsyncIterator, output) -> AsyncIterator[tuple[str, dict]]:
        """(event type, payload) in the Responses API's order; the last is response.completed
        (or response.incomplete when max_output_tokens cut the answer)."""
        yield self._event("response.created", response=self.response("in_progress"))
        yield self._event("response.in_progress", response=self.response("in_progress"))
        item, text = None, ""       # the open reasoning / message item and its text so far
        has_message = False
        finish = None
        async for event in choice_events(events, output):
            if isinstance(event, Finish):
                finish = event
                continue
            kind, piece = event
            if item is not None and item["type"] != ("reasoning" if kind == REASONING else "message"):
                for e in self._close(item, text, "completed"):
                    yield e
                item = None
            if item is None:
                item, text = self._open(kind), ""
                has_message = has_message or kind == CONTENT
                for e in self._opened(item):
                    yield e
            text += piece
            delta = "response.reasoning_text.delta" if kind == REASONING else "response.output_text.delta"
            extra = {} if kind == REASONING else {"logprobs": []}
            yield self._event(delta, item_id=item["id"], output_index=len(self.output) - 1, content_index=0,
                              delta=piece, **extra)
        if finish is None:
            return      # cancelled: nobody is listening
        status = "incomplete" if finish.finish_reason == "length" else "completed"
        if item is None and not has_message and not output.tool_calls:
            item, text = self._open(CONTENT), ""     # nothing said: an empty message, as OpenAI sends
            for e in self._opened(item):
                yield e
        if item is not None:
            for e in self._close(item, text, status):
                yield e
        for call in output.tool_calls:
            fc = {"id": _id("fc"), "type": "function_call", "status": "in_progress", "call_id": call.id,
                  "name": call.name, "arguments": ""}
            self.output.append(fc)
            index = len(self.output) - 1
            yield self._event("response.output_item.added", output_index=index, item=dict(fc))
            yield self._event("response.function_call_arguments.delta", item_id=fc["id"], output_index=index,
                              delta=call.arguments)
            yield self._event("response.function_call_arguments.done", item_id=fc["id"], output_index=index,
                              name=call.name, arguments=call.arguments)
            fc.update(arguments=call.arguments, status="completed")
            yield self._event("response.output_item.done", output_index=index, item=dict(fc))
        yield self._event("response.completed" if status == "completed" else "response.incomplete",
                          response=self.response(status, finish))

    def _open(self, kind: str) -> dict:
        if kind == REASONING:
            item = {"id": _id("rs"), "type": "reasoning", "status": "in_progress", "summary": [], "content": []}
        else:
            item = {"id": _id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
        self.output.append(item)
        return item

    def _part(self, item: dict, text: str) -> dict:
        if item["type"] == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _opened(self, item: dict):
        index = len(self.output) - 1
        yield self._event("response.output_item.added", output_index=index, item=_copy(item))
        yield self._event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                          part=self._part(item, ""))

    def _close(self, item: dict, text: str, status: str):
        index = self.output.index(item)
        part = self._part(item, text)
        if item["type"] == "reasoning":
            yield self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                              content_index=0, text=text)
        else:
            yield self._event("response.output_text.done", item_id=item["id"], output_index=index,
                              content_index=0, text=text, logprobs=[])
        yield self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                          part=part)
        item.update(content=[part], status=status if item["type"] == "message" else "completed")
        yield self._event("response.output_item.done", output_index=index, item=_copy(item))

    async def collect(self, events: AsyncIterator, output) -> dict:
        """The whole response object (the last event's)."""
        last = None
        try:
            async for _, payload in self.events(events, output):
                last = payload
        except ValueError as exc:   # the model refused the request (e.g. its grammar)
            raise generation_error(exc) from None
        return last["response"]

    async def stream(self, events: AsyncIterator, output) -> AsyncIterator[bytes]:
        try:
            async for kind, payload in self.events(events, output):
                yield sse_event(kind, payload)
        except ValueError as exc:
            error = generation_error(exc)
            yield sse_event(*self._event("error", code=error.code or error.type, message=error.message, param=None))
        except Exception as exc:  # noqa: BLE001 - the stream must still end properly
            log_unexpected(exc, "a streamed response")
            error = internal_error()
            yield sse_event(*self._event("error", code=error.code, message=error.message, param=None))


def _copy(item: dict) -> dict:
    return {**item, "content": list(item["content"])}


def _usage(finish: Finish) -> dict:
    cached = finish.timings.get("cached_tokens", 0)
    return {"input_tokens": finish.prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": finish.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": finish.prompt_tokens + finish.completion_tokens}
