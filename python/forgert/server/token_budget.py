"""How many tokens one request may generate: checked before it joins the queue.

The prompt and the completion share the context: a request whose prompt + max_tokens does not
fit is refused with OpenAI's context_length_exceeded error instead of generating until the
context is full. Without max_tokens a request gets the room left in the context (at most 16
tokens on the legacy /v1/completions, as with OpenAI). The server's own per-request maximum
(`forgert serve --max-tokens-limit`) refuses larger explicit requests and caps the default.
So prompt_tokens + completion_tokens never exceeds the context.
"""
from __future__ import annotations

from typing import Optional

from .errors import APIError


def completion_budget(*, n_ctx: int, n_prompt: int, prompt_param: str,
                      requested: Optional[int], requested_param: str,
                      default: Optional[int], server_limit: Optional[int]) -> int:
    """The max_tokens to generate with; an APIError(400) when the request cannot be honoured.

    requested: the client's max_tokens (None: not set); default: the endpoint's default when
    not set (None: the rest of the context); server_limit: None for no limit beyond the context.
    """
    room = n_ctx - n_prompt
    if requested is not None:
        if server_limit is not None and requested > server_limit:
            raise APIError(400, f"Invalid value for '{requested_param}': {requested} is more than "
                                f"this server's limit of {server_limit} tokens per completion",
                           param=requested_param, code="invalid_value")
        if requested > room:
            raise APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, "
                                f"you requested {n_prompt + requested} tokens ({n_prompt} in the "
                                f"{prompt_param}, {requested} in the completion). Please reduce the "
                                f"length of the {prompt_param} or completion.",
                           param=prompt_param, code="context_length_exceeded")
        return requested
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, your "
                            f"{prompt_param} resulted in {n_prompt} tokens, which leaves no room for "
                            f"the completion. Please reduce the length of the {prompt_param}.",
                       param=prompt_param, code="context_length_exceeded")
    budget = room if default is None else min(default, room)
    return budget if server_limit is None else min(budget, server_limit)
