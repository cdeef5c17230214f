"""Request bodies of the OpenAI endpoints, validated strictly.

Strict mode means "3" is not an integer and true is not a number: a client with a type bug gets a
400 naming the field instead of a silently converted request. Unknown fields are ignored (clients
send things like `user`), except the ones that would change the answer and that forgert cannot
honour: those are refused so nobody gets a silently wrong response.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Union

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import APIError


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaSpec] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise APIError(400, "response_format.json_schema is required when type is 'json_schema'",
                           param="response_format.json_schema")
        return self

    def as_dict(self) -> Optional[dict]:
        """forgert.grammar's input (None: plain text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": self.json_schema.name,
                                                       "schema": self.json_schema.schema_}}


MAX_STOP_STRINGS = 64   # OpenAI allows 4; more cost nothing here, but not without bound


class SamplingFields(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    # Set by each endpoint: the field holding the prompt, and max_tokens when the client sends
    # none (None: the room left in the context).
    PROMPT_PARAM: ClassVar[str]
    DEFAULT_MAX_TOKENS: ClassVar[Optional[int]]

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: Optional[float] = Field(default=None, gt=0.0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: Optional[int] = Field(default=None, ge=1, le=16)
    user: Optional[str] = None
    response_format: Optional[ResponseFormat] = None
    logit_bias: Optional[dict[str, float]] = None      # token id (as JSON keys are strings) -> bias

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, logit_bias):
        for key, bias in (logit_bias or {}).items():
            if not (key.isascii() and key.isdigit()):    # "²" and "١" are digits to str.isdigit
                raise APIError(400, f"Invalid value for 'logit_bias': {key!r} is not a token id",
                               param="logit_bias", code="invalid_value")
            if not -100 <= bias <= 100:
                raise APIError(400, f"Invalid value for 'logit_bias': {bias} for token {key} is outside "
                               "[-100, 100]", param="logit_bias", code="invalid_value")
        return logit_bias
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    ignore_eos: bool = False

    # Fields that change the answer and that forgert does not implement: refuse them when set.
    UNSUPPORTED_FIELDS: ClassVar[tuple[str, ...]] = (
        "functions", "function_call", "suffix", "best_of")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data):
        if not isinstance(data, dict):
            return data
        for name in cls.UNSUPPORTED_FIELDS:
            value = data.get(name)
            harmless = (value in (None, False, {}, [])
                        or (name == "best_of" and value == 1)
                        or (name == "tool_choice" and value == "none")
                        or (name == "response_format" and value == {"type": "text"}))
            if not harmless:
                raise APIError(400, f"'{name}' is not supported by this server", param=name,
                               code="unsupported_parameter")
        return data

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop):
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise APIError(400, "stop strings must not be empty", param="stop")
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
            raise APIError(400, f"Invalid value for 'stop': {len(stop)} strings; at most "
                           f"{MAX_STOP_STRINGS} are accepted", param="stop", code="invalid_value")
        return stop

    @property
    def n_choices(self) -> int:
        return self.n or 1

    def response_format_dict(self) -> Optional[dict]:
        return self.response_format.as_dict() if self.response_format else None

    def requested_tokens(self) -> tuple[Optional[int], str]:
        """(the client's completion length or None, the field it came from)."""
        return self.max_tokens, "max_tokens"

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str      # JSON text


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallIn]] = None       # an assistant's earlier calls
    tool_call_id: Optional[str] = None                  # a tool's answer to one of them
    reasoning_content: Optional[str] = None             # dropped: templates leave old reasoning out

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, content):
        for part in content if isinstance(content, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in (None, "text"):
                raise ValueError(f"content parts of type {kind!r} are not supported: forgert reads text only "
                                 "(images and audio need an encoder it does not run)")
        return content

    def as_template_message(self) -> dict:
        """The dict chat templates expect: role, content, and HF's tool-calling fields (tool
        call arguments as a dict, as the templates print them with tojson)."""
        if isinstance(self.content, list):
            content = "".join(part.text for part in self.content)
        else:
            content = self.content or ""
        # Templates know "system"; OpenAI's newer "developer" role means the same thing.
        role = "system" if self.role == "developer" else self.role
        out = {"role": role, "content": content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name,
                                               "arguments": _arguments_value(c.function.arguments)}}
                                 for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _arguments_value(arguments: str):
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef

    def as_dict(self) -> dict:
        fn = {"name": self.function.name}
        if self.function.description is not None:
            fn["description"] = self.function.description
        fn["parameters"] = self.function.parameters or {"type": "object", "properties": {}}
        return {"type": "function", "function": fn}


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    PROMPT_PARAM: ClassVar[str] = "messages"
    # The fields errors name (/v1/responses and /v1/messages translate into this request and
    # name their own fields: server/responses_api.py, server/messages_api.py).
    TOOLS_PARAM: ClassVar[str] = "tools"
    RESPONSE_FORMAT_PARAM: ClassVar[str] = "response_format"
    DEFAULT_MAX_TOKENS: ClassVar[Optional[int]] = None  # until the end of the text or the context
    messages: list[ChatMessage] = Field(min_length=1)
    # Extra chat-template variables (vLLM's and llama-server's extension), e.g. enable_thinking.
    chat_template_kwargs: Optional[dict] = None
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self):
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise APIError(400, "tool_choice needs 'tools' to choose from", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in [t.function.name for t in self.tools]:
                raise APIError(400, f"tool_choice names '{name}', which is not in 'tools'",
                               param="tool_choice.function.name")
        if self.response_format is not None and self.response_format.type != "text" \
                and self.forced_tool() is not False:
            raise APIError(400, "response_format cannot be combined with a forced tool_choice",
                           param="response_format")
        return self

    def tool_dicts(self) -> Optional[list[dict]]:
        """The tools offered to the model (None: none, or tool_choice "none")."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.as_dict() for t in self.tools]

    def forced_tool(self):
        """False: the model may answer freely; None: it must call one of the tools ("required");
        a name: it must call that one."""
        if not self.tools:
            return False
        if self.tool_choice == "required":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return False

    def requested_tokens(self) -> tuple[Optional[int], str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
        return self

    def top_logprobs_wanted(self) -> Optional[int]:
        """None: no logprobs; k >= 0: the sampled token's logprob plus the k most likely."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    PROMPT_PARAM: ClassVar[str] = "prompt"
    DEFAULT_MAX_TOKENS: ClassVar[Optional[int]] = 16    # the legacy endpoint's default
    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    echo: bool = False

    MAX_PROMPTS: ClassVar[int] = 64

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, prompt):
        if isinstance(prompt, list) and not prompt:
            raise APIError(400, "prompt is an empty list", param="prompt")
        if isinstance(prompt, list) and isinstance(prompt[0], (str, list)) and len(prompt) > cls.MAX_PROMPTS:
            raise APIError(400, f"prompt holds {len(prompt)} prompts; at most {cls.MAX_PROMPTS} per "
                           "request", param="prompt", code="invalid_value")
        return prompt

    def prompts(self) -> list:
        """The batch: each a str or a list of token ids (choices are numbered prompt by prompt)."""
        if isinstance(self.prompt, list) and isinstance(self.prompt[0], (str, list)):
            return list(self.prompt)
        return [self.prompt]

    def top_logprobs_wanted(self) -> Optional[int]:
        return self.logprobs


def _is_union_tag(part) -> bool:
    """Pydantic puts the tried member type in an error's location, e.g. ('prompt', 'list[int]', 0)."""
    return isinstance(part, str) and ("[" in part or part[:1].isupper()
                                      or part in ("str", "int", "float", "bool", "none"))


def _param_name(loc) -> str:
    """The field path up to any union member tag: the field the client must fix."""
    parts = []
    for p in loc:
        if _is_union_tag(p):
            break
        parts.append(str(p))
    return ".".join(parts)


def _union_member(loc):
    return next((p for p in loc if _is_union_tag(p)), None)


def parse_request(model_cls: type[_Strict], data, where: tuple = ()) -> _Strict:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field.
    where: the path of `data` inside the body when it is a part of it (e.g. ("input", 2))."""
    if not isinstance(data, dict):
        what = f"'{'.'.join(map(str, where))}'" if where else "The request body"
        raise APIError(400, f"{what} must be a JSON object, not {type(data).__name__}",
                       param=".".join(map(str, where)) or None)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        errors = [dict(e, loc=tuple(where) + tuple(e["loc"])) for e in exc.errors()]
        first = errors[0]
        param = _param_name(first["loc"]) or None
        alternatives = list(dict.fromkeys(_union_member(e["loc"]) for e in errors
                                          if _param_name(e["loc"]) == param))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'"
        elif None not in alternatives and len(alternatives) > 1:
            # A union field (e.g. prompt: str | list[int] | list[str]) matched none of its forms.
            message = f"Invalid type for '{param}': expected one of {', '.join(alternatives)}"
        elif param:
            message = f"Invalid value for '{param}': {message}"
        raise APIError(400, message, param=param,
                       code="missing_required_parameter" if first["type"] == "missing"
                       else "invalid_value") from None


class TokenizeRequest(_Strict):
    """POST /tokenize (vLLM's shape; llama-server's `content` is accepted for `prompt`)."""
    model: Optional[str] = None
    prompt: Optional[str] = None
    content: Optional[str] = None
    messages: Optional[list[ChatMessage]] = Field(default=None, min_length=1)
    add_special_tokens: bool = True     # the model's BOS rule; False: no BOS

    @model_validator(mode="after")
    def _one_input(self):
        given = [name for name in ("prompt", "content", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise APIError(400, "Send exactly one of 'prompt' (or 'content') and 'messages'",
                           param="prompt")
        return self


class DetokenizeRequest(_Strict):
    model: Optional[str] = None
    tokens: list[int]


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings (OpenAI's shape). What needs the model (empty texts, token ids in the
    vocabulary, lengths against the context, `dimensions` against the model's width) is checked
    by the route (embeddings_api.py)."""
    model: Optional[str] = None
    input: Union[str, list[int], list[str], list[list[int]]]
    encoding_format: Optional[Literal["float", "base64"]] = None    # None: float
    dimensions: Optional[int] = None
    user: Optional[str] = None

    MAX_INPUTS: ClassVar[int] = 2048    # OpenAI's limit per request

    @field_validator("input")
    @classmethod
    def _some_input(cls, value):
        if isinstance(value, list) and not value:
            raise APIError(400, "Invalid value for 'input': an empty list: there is nothing to embed",
                           param="input", code="invalid_value")
        if isinstance(value, list) and isinstance(value[0], (str, list)) and len(value) > cls.MAX_INPUTS:
            raise APIError(400, f"Invalid value for 'input': {len(value)} inputs; at most {cls.MAX_INPUTS} "
                           "per request", param="input", code="invalid_value")
        return value

    @property
    def batched(self) -> bool:
        """A list of inputs (of strings or of token-id lists), not one."""
        return isinstance(self.input, list) and isinstance(self.input[0], (str, list))

    def inputs(self) -> list:
        """Each input to embed: a str or a list of token ids."""
        return list(self.input) if self.batched else [self.input]
