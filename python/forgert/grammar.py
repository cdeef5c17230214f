"""Structured output: a JSON schema enforced token by token while sampling (llguidance).

`response_format` takes OpenAI's shapes: {"type": "text"} (no constraint), {"type":
"json_object"} (any JSON object), {"type": "json_schema", "json_schema": {"name": ..., "schema":
{...}, "strict": true}}. Each step the matcher gives the set of tokens that keep the output a
prefix of a valid document; every other token's logit becomes -inf before sampling, and once the
document is complete only the end-of-text tokens remain. So the text always parses and validates
(unless max_tokens or the context cut it short: finish_reason "length").

llguidance was chosen over xgrammar by measurement (bench/grammar_mask_cost.py: per-token mask
cost on SmolLM2's 49k vocabulary, both correct) and because it needs no torch at run time.
"""
from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass

import numpy as np

# Compact JSON, one space after ',' and ':' as json.dumps writes it: flexible whitespace lets a
# small model emit newlines for ever instead of closing the object.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise ImportError("response_format needs llguidance: pip install 'forgert[server]' "
                          "(or pip install llguidance)") from None
    return llguidance


def schema_of(response_format) -> dict | None:
    """The JSON schema a response_format asks for (None: plain text). ValueError names the field."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format must be a dict such as {{'type': 'json_object'}}, "
                         f"got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError("response_format.json_schema must be an object with a 'schema'")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise ValueError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}")


@dataclass(frozen=True)
class Grammar:
    """A compiled constraint for one model's tokenizer; matcher() starts one generation."""
    source: str                 # llguidance's grammar (from the JSON schema)
    tokenizer: object           # llguidance.LLTokenizer
    vocab: int                  # the model's logits width (may exceed the tokenizer's)

    def matcher(self) -> "GrammarMatcher":
        return GrammarMatcher(self)


class GrammarMatcher:
    """One generation's parser state: allowed(logits) masks a row, accept(tok) advances."""

    def __init__(self, grammar: Grammar):
        ll = _llguidance()
        self._m = ll.LLMatcher(grammar.tokenizer, grammar.source, log_level=0)
        if self._m.is_error():
            raise ValueError(f"response_format: {self._m.get_error()}")
        self._vocab = grammar.vocab
        self._words = np.zeros((grammar.vocab + 31) // 32, dtype=np.int32)     # bitmask [ceil(vocab/32)]

    def mask(self) -> np.ndarray:
        """bool [vocab]: the tokens allowed next."""
        self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.size * 4)
        bits = np.unpackbits(self._words.view(np.uint8), bitorder="little")
        return bits[:self._vocab].astype(bool)

    def apply(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """A copy of logits [vocab] with every disallowed token at -inf. allowed: this step's
        mask() when already computed (the batch computes it while the engine runs)."""
        allowed = self.mask() if allowed is None else allowed
        # llguidance's error state (it may leave only end-of-text allowed): say why instead of
        # sampling from what is left
        if not allowed.any() or self._m.is_error():
            raise self._failed("its parser failed" if allowed.any() else "it allows no next token")
        out = np.array(logits, dtype=np.float32, copy=True).reshape(-1)
        out[~allowed] = -np.inf
        return out

    def accept(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            raise self._failed(f"it refused token {token}")

    def error(self) -> str | None:
        """llguidance's reason when the matcher failed: its first line (the rest is parser state)."""
        return self._m.get_error().strip().split("\n", 1)[0] if self._m.is_error() else None

    def _failed(self, what: str) -> ValueError:
        """The schema could not be followed (e.g. llguidance's item limit on a schema that recurses
        into itself): the request's fault, a ValueError naming response_format."""
        return ValueError(f"response_format: the JSON schema cannot be enforced: {what} "
                          f"({self.error() or 'no reason given'})")

    @property
    def done(self) -> bool:
        """The document is complete and nothing more may follow (only end-of-text is allowed)."""
        return self._m.is_stopped()


# llguidance's view of each model tokenizer, per logits width: about a second to build, so once.
# Weak keys: a tokenizer's entry goes when its model does.
_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def _ll_tokenizer(model_tokenizer, vocab: int):
    with _TOKENIZERS_LOCK:
        per_width = _TOKENIZERS.setdefault(model_tokenizer, {})
        if vocab not in per_width:
            ll = _llguidance()
            stops = _eos_argument(sorted(model_tokenizer.stop_ids), model_tokenizer.eos_id)
            per_width[vocab] = ll.LLTokenizer(model_tokenizer.hf.to_str(), n_vocab=vocab, eos_token=stops)
        return per_width[vocab]


def _llguidance_version() -> tuple:
    from importlib.metadata import version
    return tuple(int(p) for p in version("llguidance").split(".")[:2] if p.isdigit())


def _eos_argument(stops: list, eos_id=None):
    """LLTokenizer's eos_token: every stop id (llguidance 1.7+), or one id for older releases (1.3
    is the newest for Python 3.9): the model's EOS where it is a stop id. With one id the grammar
    still ends the output only where the document is complete; the model just ends it with that
    token rather than another of its stop tokens (GGUFs often have several: <|im_end|> and
    <|endoftext|>)."""
    if not stops:
        return None
    if _llguidance_version() >= (1, 7):
        return stops
    return eos_id if eos_id in stops else stops[0]


def compile_response_format(response_format, model_tokenizer, vocab: int) -> Grammar | None:
    """The Grammar for an OpenAI response_format (None for text). ValueError for a schema
    llguidance cannot compile, with its reason."""
    schema = schema_of(response_format)
    if schema is None:
        return None
    return compile_schema(schema, model_tokenizer, vocab)


def compile_schema(schema: dict, model_tokenizer, vocab: int) -> Grammar:
    ll = _llguidance()
    try:
        source = ll.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_JSON_OPTIONS)
    except ValueError as e:
        raise ValueError(f"response_format: invalid JSON schema ({e})") from None
    tokenizer = _ll_tokenizer(model_tokenizer, vocab)
    is_error, messages = ll.LLMatcher.validate_grammar_with_warnings(source, tokenizer)
    if is_error:
        raise ValueError(f"response_format: the JSON schema cannot be enforced: {messages[0]}")
    grammar = Grammar(source, tokenizer, vocab)
    # A schema no document satisfies ({"$ref": "#"}) passes validation; its matcher fails at the
    # first mask (about a millisecond), leaving only end-of-text: refuse it before it generates.
    first = grammar.matcher()
    first.mask()
    if first.error() is not None:
        raise ValueError(f"response_format: the JSON schema cannot be enforced: no document can "
                         f"begin ({first.error()})")
    return grammar
