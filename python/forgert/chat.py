"""Chat templates: the Jinja template stored with the model, rendered in jinja2's sandbox."""
from __future__ import annotations

import json
from datetime import datetime

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension

from .chat_limits import DEFAULT_LIMIT_NOTE, DEFAULT_MAX_CHARS, BoundedSandbox, render_budget
from .errors import ChatTemplateError


def _raise_exception(message):
    raise ChatTemplateError(f"chat template refused the messages: {message}")


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
    # transformers' tojson: unlike jinja2's own, it does not HTML-escape
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


class GenerationBlocks(Extension):
    """`{% generation %}...{% endgeneration %}` (SmolLM3's template): transformers marks the
    assistant's tokens with it for training masks; rendering a prompt writes the body as is."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


# Names the renderer sets itself; chat_template_kwargs may not replace them.
_RESERVED = ("messages", "add_generation_prompt", "bos_token", "eos_token")


def check_template_kwargs(kwargs) -> dict:
    """chat_template_kwargs: extra variables for the template (Qwen3's and SmolLM3's
    enable_thinking), as transformers' apply_chat_template takes them."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise ValueError(f"chat_template_kwargs must be a dict of variable names to values, got {kwargs!r}")
    taken = sorted(set(kwargs) & set(_RESERVED))
    if taken:
        raise ValueError(f"chat_template_kwargs may not set {', '.join(taken)}")
    return dict(kwargs)


def normalize_messages(messages) -> list:
    """Validate [{"role": str, "content": str | [{"type": "text", "text": str}, ...]}, ...]."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}] needs a non-empty string 'role'")
        if isinstance(content, list):   # OpenAI content parts: only text is meaningful here
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ValueError(f"messages[{i}].content parts must be {{'type': 'text', 'text': str}} "
                                     "(forgert reads text only: images and audio need an encoder it does not run)")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}] needs a string 'content'")
        out.append({**m, "role": role, "content": content})
    return out


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", max_chars: int = DEFAULT_MAX_CHARS,
                 limit_note: str = DEFAULT_LIMIT_NOTE):
        """max_chars: the longest rendering (and string, list or block within it) allowed; a
        model passes chat_limits.max_chars_for its context and longest token, and
        MODEL_LIMIT_NOTE (limit_note: where max_chars comes from, for the messages)."""
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.max_chars = max_chars
        env = BoundedSandbox(max_chars, limit_note, trim_blocks=True, lstrip_blocks=True,
                             extensions=["jinja2.ext.loopcontrols", GenerationBlocks])
        env.filters["tojson"] = _tojson
        env.bound_filters()
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self.template = env.bounded_template(source)
        except TemplateError as e:
            raise ChatTemplateError(f"the model's chat template does not compile: {e}") from None
        except RecursionError:
            raise ChatTemplateError("the model's chat template does not compile: nested past Python's "
                                    "recursion limit") from None

    def render(self, messages, add_generation_prompt: bool = True, **extra) -> str:
        messages = normalize_messages(messages)
        try:
            with render_budget(self.max_chars):
                return self._render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token, **extra)
        except ChatTemplateError:
            raise
        except RecursionError:   # a macro or recursive loop calling itself without end
            raise ChatTemplateError("the model's chat template was stopped: it recursed past Python's "
                                    "recursion limit") from None
        except MemoryError:
            raise ChatTemplateError("the model's chat template ran out of memory") from None
        except TemplateError as e:
            raise ChatTemplateError(f"the model's chat template failed: {e}") from None
        except (ArithmeticError, TypeError, ValueError, LookupError) as e:   # its own Python errors:
            # 1 / 0, a range past the sandbox's MAX_RANGE (OverflowError), 'a' + 1
            raise ChatTemplateError(f"the model's chat template failed: {type(e).__name__}: {e}") from None


    def _render(self, **variables) -> str:
        """The template's output, stopped once it passes max_chars."""
        parts, n = [], 0
        for part in self.template.generate(**variables):
            n += len(part)
            if n > self.max_chars:
                raise ChatTemplateError(f"the model's chat template was stopped: its output passed {self.max_chars} "
                                        f"characters, the limit on a rendering ({self.template.environment.limit_note})")
            parts.append(part)
        return "".join(parts)


def no_template_error(model_name: str) -> ChatTemplateError:
    return ChatTemplateError(f"{model_name} has no chat template; use generate() with a raw prompt "
                             f"(or the CLI's --raw)")
