"""Anthropic's Messages API (POST /v1/messages, POST /v1/messages/count_tokens: what Claude Code
and the anthropic SDK call), translated to and from the chat route's request and events.

The request becomes a ChatCompletionRequest: `system` the system message, content blocks the
messages (an assistant's `tool_use` blocks its tool calls, a user's `tool_result` blocks tool
messages, earlier `thinking` blocks dropped as chat templates drop old reasoning), `tools`
(input_schema) function tools, `tool_choice` auto / any / tool / none, `stop_sequences` stop
strings, `output_config.format` (a JSON schema) the response_format grammar; `thinking` enabled /
disabled sets the template's enable_thinking. The answer goes back as a `message` with thinking, text and tool_use blocks and Anthropic's
stop_reason (end_turn, max_tokens, stop_sequence, tool_use); streamed, as Anthropic's events
(message_start, content_block_start / _delta / _stop, message_delta, message_stop). Errors on
these routes take Anthropic's shape (errors.py).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, AsyncIterator, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from .choice_events import REASONING, choice_events, sse_event
from .errors import APIError, generation_error, internal_error, log_unexpected
from .generation import Finish
from .schemas import MAX_STOP_STRINGS, ChatCompletionRequest, _Strict, parse_request

TOOL_NAME = r"^[A-Za-z0-9_.-]+$"
# Text blocks of one message are separate paragraphs (Claude Code sends reminders and the prompt
# as blocks of one user message): joined by a blank line into the template's one content string.
BLOCK_SEPARATOR = "\n\n"


# ----------------------------------------------------------------------------- request

class TextBlock(_Strict):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: Union[str, list[TextBlock], None] = None
    is_error: Optional[bool] = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content):
        for block in content if isinstance(content, list) else ():
            kind = block.get("type") if isinstance(block, dict) else None
            if kind != "text":
                raise ValueError(f"tool_result content blocks of type {kind!r} are not supported: forgert "
                                 "reads text only")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return BLOCK_SEPARATOR.join(b.text for b in self.content)
        return self.content or ""


class ThinkingBlock(_Strict):
    """An earlier turn's thinking sent back: dropped (templates leave old reasoning out)."""
    type: Literal["thinking", "redacted_thinking"]


BLOCKS = {"text": TextBlock, "tool_use": ToolUseBlock, "tool_result": ToolResultBlock,
          "thinking": ThinkingBlock, "redacted_thinking": ThinkingBlock}
# Which blocks each role may send (Anthropic's rule: calls come from the assistant, results from the user).
ROLE_BLOCKS = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: Union[str, list[dict[str, Any]]]


class Tool(_Strict):
    type: Optional[Literal["custom"]] = None
    name: str = Field(min_length=1, max_length=64, pattern=TOOL_NAME)
    description: Optional[str] = None
    input_schema: dict[str, Any]


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: Optional[bool] = None


class JsonOutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Strict):
    format: Optional[JsonOutputFormat] = None   # structured output: the chat route's json_schema grammar
    effort: Optional[str] = None                # a hint to Anthropic's models; nothing here reads it


class CountTokensRequest(_Strict):
    """POST /v1/messages/count_tokens: a Messages request without max_tokens."""
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    system: Union[str, list[TextBlock], None] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[dict[str, Any]] = None   # {"type": "enabled" | "disabled"}: the template's enable_thinking
    # sampling (unused by count_tokens)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    stop_sequences: Optional[list[str]] = Field(default=None, max_length=MAX_STOP_STRINGS)
    stream: bool = False
    metadata: Optional[dict[str, Any]] = None
    output_config: Optional[OutputConfig] = None

    @model_validator(mode="before")
    @classmethod
    def _function_tools_only(cls, data):
        tools = data.get("tools") if isinstance(data, dict) else None
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):    # else: validation's 400
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in (None, "custom"):
                raise APIError(400, f"tools.{i}.type: server tools ({kind!r}) are not supported; this server "
                               "runs client tools (name, description, input_schema) only", param=f"tools.{i}.type")
        return data

    @field_validator("stop_sequences")
    @classmethod
    def _no_empty_stop(cls, stops):
        if stops and "" in stops:
            raise APIError(400, "stop_sequences: stop sequences must not be empty", param="stop_sequences")
        return stops

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self):
        choice = self.tool_choice
        if choice is not None and choice.type in ("any", "tool") and not self.tools:
            raise APIError(400, "tool_choice: needs 'tools' to choose from", param="tool_choice")
        if choice is not None and choice.type == "tool" and choice.name not in [t.name for t in self.tools]:
            raise APIError(400, f"tool_choice.name: {choice.name!r} is not in 'tools'", param="tool_choice.name")
        if choice is not None and choice.type in ("any", "tool") and self.response_format() is not None:
            raise APIError(400, "output_config.format cannot be combined with a forced tool_choice",
                           param="output_config.format")
        return self

    def response_format(self) -> Optional[dict]:
        fmt = self.output_config.format if self.output_config else None
        return None if fmt is None else {"type": "json_schema",
                                         "json_schema": {"name": "output", "schema": fmt.schema_}}

    def chat_messages(self) -> list[dict]:
        """The chat route's messages: blocks checked one by one, errors naming where they are."""
        out = []
        if self.system:
            system = self.system if isinstance(self.system, str) else BLOCK_SEPARATOR.join(
                b.text for b in self.system)
            out.append({"role": "system", "content": system})
        names = {}      # tool_use id -> tool name: a result names the tool it answers
        for i, message in enumerate(self.messages):
            if isinstance(message.content, str):
                out.append({"role": message.role, "content": message.content})
                continue
            texts, calls = [], []
            for j, data in enumerate(message.content):
                kind = data.get("type")
                where = ("messages", i, "content", j)
                if kind not in BLOCKS:
                    raise APIError(400, f"messages.{i}.content.{j}.type: blocks of type {kind!r} are not "
                                   "supported; this server takes text, tool_use, tool_result and thinking "
                                   "blocks (text only: no images or documents)", param=".".join(map(str, where)))
                if kind not in ROLE_BLOCKS[message.role]:
                    raise APIError(400, f"messages.{i}.content.{j}: a {message.role} message cannot hold "
                                   f"{kind} blocks", param=".".join(map(str, where)))
                block = parse_request(BLOCKS[kind], data, where=where)
                if isinstance(block, TextBlock):
                    texts.append(block.text)
                elif isinstance(block, ToolUseBlock):
                    names[block.id] = block.name
                    calls.append({"id": block.id, "type": "function",
                                  "function": {"name": block.name,
                                               "arguments": json.dumps(block.input, ensure_ascii=False)}})
                elif isinstance(block, ToolResultBlock):
                    if texts:       # text before the results: its own user message, in order
                        out.append({"role": "user", "content": BLOCK_SEPARATOR.join(texts)})
                        texts = []
                    result = {"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()}
                    if block.tool_use_id in names:
                        result["name"] = names[block.tool_use_id]
                    out.append(result)
            if message.role == "assistant":
                out.append({"role": "assistant", "content": BLOCK_SEPARATOR.join(texts) or None,
                            **({"tool_calls": calls} if calls else {})})
            elif texts or not message.content:
                out.append({"role": "user", "content": BLOCK_SEPARATOR.join(texts)})
        return out


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)


class MessagesChatRequest(ChatCompletionRequest):
    """The chat request a /v1/messages request becomes; errors name the Messages fields."""
    PROMPT_PARAM: ClassVar[str] = "messages"
    RESPONSE_FORMAT_PARAM: ClassVar[str] = "output_config.format"


def messages_chat_request(req: CountTokensRequest) -> MessagesChatRequest:
    choice = req.tool_choice
    tool_choice = None if choice is None else {
        "auto": "auto", "any": "required", "none": "none",
        "tool": {"type": "function", "function": {"name": choice.name}}}[choice.type]
    thinking = (req.thinking or {}).get("type")
    chat = {
        "messages": req.chat_messages(), "max_tokens": getattr(req, "max_tokens", None),
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "stop": req.stop_sequences,
        "tools": [{"type": "function", "function": {k: v for k, v in
                                                    (("name", t.name), ("description", t.description),
                                                     ("parameters", t.input_schema)) if v is not None}}
                  for t in req.tools] if req.tools else None,
        "tool_choice": tool_choice, "response_format": req.response_format(),
        "chat_template_kwargs": ({"enable_thinking": thinking == "enabled"}
                                 if thinking in ("enabled", "disabled") else None),
    }
    return parse_request(MessagesChatRequest, {k: v for k, v in chat.items() if v is not None})


# ----------------------------------------------------------------------------- response

def stop_reason(finish: Finish, tool_calls: list) -> str:
    if tool_calls:
        return "tool_use"
    if finish.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if finish.stop_string is not None else "end_turn"


def _tool_input(arguments: str) -> dict:
    """A call's arguments as tool_use's input object (a value that is not one is wrapped)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


class MessagesReply:
    """The `message` of one request, built from its events; streamed as Anthropic's events."""

    def __init__(self, model_id: str, n_prompt: int):
        self.message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
                        "model": model_id, "content": [], "stop_reason": None, "stop_sequence": None,
                        "usage": {"input_tokens": n_prompt, "output_tokens": 0}}

    async def events(self, events: AsyncIterator, output) -> AsyncIterator[tuple[str, dict]]:
        content = self.message["content"]
        yield "message_start", {"type": "message_start", "message": {**self.message, "content": []}}
        block = None        # the open thinking / text block
        finish = None
        async for event in choice_events(events, output):
            if isinstance(event, Finish):
                finish = event
                continue
            kind, piece = event
            wanted = "thinking" if kind == REASONING else "text"
            if block is not None and block["type"] != wanted:
                yield "content_block_stop", {"type": "content_block_stop", "index": len(content) - 1}
                block = None
            if block is None:
                block = {"type": "thinking", "thinking": "", "signature": ""} if kind == REASONING \
                    else {"type": "text", "text": ""}
                content.append(block)
                yield "content_block_start", {"type": "content_block_start", "index": len(content) - 1,
                                              "content_block": dict(block)}
            field = "thinking" if kind == REASONING else "text"
            block[field] += piece
            yield "content_block_delta", {"type": "content_block_delta", "index": len(content) - 1,
                                          "delta": {"type": f"{field}_delta", field: piece}}
        if finish is None:
            return      # cancelled: nobody is listening
        if not content and not output.tool_calls:   # nothing said: one empty text block, not none
            content.append({"type": "text", "text": ""})
            yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": dict(content[0])}
            block = content[0]
        if block is not None:
            yield "content_block_stop", {"type": "content_block_stop", "index": len(content) - 1}
        for call in output.tool_calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name,
                            "input": _tool_input(call.arguments)})
            index = len(content) - 1
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {**content[-1], "input": {}}}
            yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "input_json_delta",
                                                    "partial_json": json.dumps(content[-1]["input"],
                                                                               ensure_ascii=False)}}
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        reason = stop_reason(finish, output.tool_calls)
        stop = finish.stop_string if reason == "stop_sequence" else None
        self.message.update(stop_reason=reason, stop_sequence=stop)
        self.message["usage"] = {"input_tokens": finish.prompt_tokens, "output_tokens": finish.completion_tokens}
        yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": stop},
                                "usage": {"output_tokens": finish.completion_tokens}}
        yield "message_stop", {"type": "message_stop"}

    async def collect(self, events: AsyncIterator, output) -> dict:
        try:
            async for _ in self.events(events, output):
                pass
        except ValueError as exc:   # the model refused the request (e.g. its grammar)
            raise generation_error(exc) from None
        return self.message

    async def stream(self, events: AsyncIterator, output) -> AsyncIterator[bytes]:
        try:
            async for name, payload in self.events(events, output):
                yield sse_event(name, payload)
        except ValueError as exc:
            yield sse_event("error", generation_error(exc).anthropic_body())
        except Exception as exc:  # noqa: BLE001 - the stream must still end properly
            log_unexpected(exc, "a streamed message")
            yield sse_event("error", internal_error().anthropic_body())
