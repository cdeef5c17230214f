"""A model's chat templates: the default one and the named others ("tool_use", "rag", ...) that
some models ship beside it (Hermes 2 Pro / Hermes 3, Command R: a template that renders tools,
and a default one that does not), read from each file format as transformers and llama.cpp read
them, and the choice between them as theirs: with tools, "tool_use" where the model has it.

HF directories (transformers' precedence): chat_template.jinja and
additional_chat_templates/NAME.jinja when present, else tokenizer_config.json's "chat_template"
(a string, or a list of {"name", "template"}: "default" is the default), else
chat_template.json's (a processor's file). GGUF (llama.cpp's converter, gguf-py's
add_chat_template): "tokenizer.chat_template" is the default; "tokenizer.chat_templates" lists
the other names, each in "tokenizer.chat_template.NAME".
"""
from __future__ import annotations

import os

from .errors import ModelFormatError

TOOL_USE = "tool_use"
GGUF_DEFAULT_KEY = "tokenizer.chat_template"
GGUF_NAMES_KEY = "tokenizer.chat_templates"
GGUF_NAMED_KEY = "tokenizer.chat_template.{name}"
HF_TEMPLATE_FILE = "chat_template.jinja"
HF_TEMPLATE_DIR = "additional_chat_templates"


def gguf_chat_templates(metadata: dict, source: str) -> tuple[str | None, dict]:
    """(default template or None, {name: template}) from a GGUF's metadata."""
    default = metadata.get(GGUF_DEFAULT_KEY)
    names = metadata.get(GGUF_NAMES_KEY, [])
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ModelFormatError(f"{source}: metadata '{GGUF_NAMES_KEY}' must be an array of strings, got {names!r}")
    named = {}
    for name in names:
        text = metadata.get(GGUF_NAMED_KEY.format(name=name))
        if not isinstance(text, str):
            raise ModelFormatError(f"{source}: metadata '{GGUF_NAMES_KEY}' names the chat template {name!r}, "
                                   f"but '{GGUF_NAMED_KEY.format(name=name)}' is "
                                   f"{'missing' if text is None else 'not a string'}")
        named[name] = text
    return (default if isinstance(default, str) else None), named


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def hf_chat_templates(directory: str, read_json) -> tuple[str | None, dict]:
    """(default template or None, {name: template}) of an HF model directory; read_json(name) gives
    a JSON file of it as a dict, or None when absent."""
    templates = {}
    if os.path.isfile(os.path.join(directory, HF_TEMPLATE_FILE)):
        templates["default"] = _read_text(os.path.join(directory, HF_TEMPLATE_FILE))
    extra = os.path.join(directory, HF_TEMPLATE_DIR)
    if os.path.isdir(extra):
        for f in sorted(os.listdir(extra)):
            if f.endswith(".jinja"):
                templates[f[:-len(".jinja")]] = _read_text(os.path.join(extra, f))
    if not templates:
        t = (read_json("tokenizer_config.json") or {}).get("chat_template")
        if t is None:
            t = (read_json("chat_template.json") or {}).get("chat_template")
        if isinstance(t, list):   # named templates: [{"name": "default", "template": ...}, ...]
            templates = {x["name"]: x["template"] for x in t
                         if isinstance(x, dict) and isinstance(x.get("name"), str) and isinstance(x.get("template"), str)}
        elif isinstance(t, str):
            templates = {"default": t}
    default = templates.pop("default", None)
    return default, templates


def chat_template_for(default: str | None, named: dict, tools) -> str | None:
    """The template a conversation renders with: "tool_use" when there are tools and the model
    has one (as transformers' get_chat_template and llama.cpp's common_chat_templates_apply
    choose), else the default."""
    if tools and TOOL_USE in named:
        return named[TOOL_USE]
    return default
