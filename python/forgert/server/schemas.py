"""Request bodies of the OpenAI endpoints, validated strictly.

Strict mode means "3" is not an integer and true is not a number: a client with a type bug gets a
400 naming the field instead of a silently converted request. Unknown fields are ignored (clients
send things like `user`), except the ones that would change the answer and that forgert cannot
honour: those are refused so nobody gets a silently wrong response.
"""
from __future__ import annotations

from typing import ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import APIError


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


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
    n: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    ignore_eos: bool = False

    # Fields that change the answer and that forgert does not implement: refuse them when set.
    UNSUPPORTED_FIELDS: ClassVar[tuple[str, ...]] = (
        "tools", "tool_choice", "functions", "function_call", "logit_bias", "response_format",
        "suffix", "best_of", "echo")

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
        return stop

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n):
        if n not in (None, 1):
            raise APIError(400, f"n={n} is not supported: this server returns one choice (n=1)",
                           param="n", code="unsupported_value")
        return n

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


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def as_template_message(self) -> dict:
        """The plain {"role", "content"} dict chat templates expect."""
        if isinstance(self.content, list):
            content = "".join(part.text for part in self.content)
        else:
            content = self.content or ""
        # Templates know "system"; OpenAI's newer "developer" role means the same thing.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class ChatCompletionRequest(SamplingFields):
    PROMPT_PARAM: ClassVar[str] = "messages"
    DEFAULT_MAX_TOKENS: ClassVar[Optional[int]] = None  # until the end of the text or the context
    messages: list[ChatMessage] = Field(min_length=1)
    # Extra chat-template variables (vLLM's and llama-server's extension), e.g. enable_thinking.
    chat_template_kwargs: Optional[dict] = None
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)

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
    prompt: Union[str, list[int], list[str]]      # a str or token ids once validated
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        """A list of strings is a batch: only a batch of one is served (as that one string)."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, f"prompt holds {len(prompt)} strings: this server completes one "
                               "prompt per request", param="prompt", code="unsupported_value")
            prompt = prompt[0]
        if isinstance(prompt, list) and not prompt:
            raise APIError(400, "prompt is an empty list of tokens", param="prompt")
        return prompt

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


def parse_request(model_cls: type[_Strict], data) -> _Strict:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, not {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
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
