"""The model's tokenizer: text <-> token ids plus the special ids generation needs.

BOS/EOS/EOT ids and whether to add BOS come from the model's own metadata (GGUF keys, or
tokenizer_config.json / generation_config.json / config.json of an HF directory), never from
hard-coded values. Special tokens such as <|im_start|> written in text encode to their single id.
"""
from __future__ import annotations

import functools
import os
import re

from tokenizers import Tokenizer

from .errors import ModelFormatError
from .tokenizer_build import BOS_BY_DEFAULT, tokenizer_from_gguf




REPLACEMENT = "\ufffd"   # what a decoder writes for bytes that are not a whole character
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.lru_cache(maxsize=None)
def _byte_level_symbols() -> dict:
    """Byte-level BPE's alphabet (GPT-2's bytes_to_unicode): symbol -> the byte it stands for.
    Printable Latin-1 bytes are their own symbol; the others map to U+0100 and up, in order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)}
    symbols, shifted = {}, 0
    for b in range(256):
        if b in printable:
            symbols[chr(b)] = b
        else:
            symbols[chr(256 + shifted)] = b
            shifted += 1
    return symbols


def _token_content(v):
    """tokenizer_config.json writes a token as "str" or {"content": "str", ...}."""
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


# End-of-turn tokens llama.cpp recognises by their text when a GGUF names no eot_token_id
# (llama_vocab::load: "<|end|>" of Phi-3, whose converter writes only <|endoftext|> as EOS; Gemma 4's
# "<turn|>"). Where a vocabulary has several, the first of this order is taken (llama.cpp takes whichever its hash map
# yields first).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<turn|>", "<|endoftext|>", "<|end_of_text|>")


# gpt-oss's harmony format: <|end|> closes a message, <|return|> (an answer) or <|call|> (a tool call)
# the assistant's turn. Generation stops at those two and never at <|end|>, which closes the
# analysis message before the final one (llama.cpp's llama_vocab::load drops <|end|> from its
# end-of-generation set when a vocabulary has both). Recognised by the tokens' text, not ids.
HARMONY_STOPS, HARMONY_END = ("<|return|>", "<|call|>"), "<|end|>"


def _harmony_stops(tokenizer: Tokenizer, stop_ids: set) -> set:
    ids = [tokenizer.token_to_id(t) for t in HARMONY_STOPS]
    if None in ids:
        return stop_ids
    return (stop_ids - {tokenizer.token_to_id(HARMONY_END)}) | set(ids)


# Every token of these texts ends a generation, as llama.cpp's end-of-generation set has them
# (llama_vocab::load, beside the file's eos / eot / eom ids): a Llama 3.1 GGUF whose EOS is
# <|eot_id|> stops at <|end_of_text|> and <|eom_id|> (a tool call's end) too; a Gemma 4 one at
# <|tool_response> (a call waiting for its answer); a Qwen one at <|endoftext|> beside <|im_end|>.
# gpt-oss's <|end|> is taken out again by _harmony_stops.
_EOG_TEXTS = frozenset(_EOT_TEXTS + ("<|eom_id|>", "<|return|>", "<|call|>", "<EOT>", "_<EOT>", "<eos>",
                                     "<|tool_response>", "[e~["))


def _eog_by_text(tokens) -> list:
    return [i for i, t in enumerate(tokens) if t in _EOG_TEXTS]


def _eot_by_text(tokens) -> int | None:
    index = {t: i for i, t in enumerate(tokens) if t in _EOT_TEXTS}
    return next((index[t] for t in _EOT_TEXTS if t in index), None)


def _ids(v) -> list:
    if v is None:
        return []
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    if isinstance(v, (list, tuple)):
        return [x for x in v if isinstance(x, int) and not isinstance(x, bool)]
    return []


def _gguf_add_bos(kind, meta, flag) -> bool:
    """Whether a GGUF's prompts start with BOS. llama.cpp adds it to SentencePiece, Llama 3 and Tekken
    vocabularies unless the file says otherwise, and to Gemma 4's whatever the file says: the
    converter wrote add_bos_token False into the first Gemma 4 GGUFs, and llama.cpp (PR 21500)
    overrides it, as transformers' Gemma tokenizer adds BOS too."""
    if kind == "gemma4":
        flag("tokenizer.ggml.add_bos_token", True)   # still checked to be a bool
        return True
    return flag("tokenizer.ggml.add_bos_token", kind == "llama" or meta.get("tokenizer.ggml.pre") in BOS_BY_DEFAULT)


def _check_utf8(text: str):
    """A str holding a lone surrogate (as from a bad decode with errors="surrogateescape") is no
    text UTF-8 can encode: a ValueError naming it and where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text holds the lone surrogate {text[e.start]!r} at index {e.start}, "
                         f"which is not a character (UTF-8 cannot encode it)") from None


class ModelTokenizer:
    def __init__(self, tokenizer: Tokenizer, *, bos_id, eos_id, eot_id=None, extra_stop_ids=(),
                 add_bos: bool, source: str = "", end_id=None):
        self.hf = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eot_id = eot_id
        self.add_bos = bool(add_bos) and bos_id is not None
        # The token the model's tokenizer appends to a text it encodes with its special tokens
        # (GGUF tokenizer.ggml.add_eos_token, an HF post-processor's): not a prompt's (a generation
        # would stop at once), but what an embedding model's last-token pooling reads
        # (Qwen3-Embedding's <|endoftext|>). None: nothing appended.
        self.end_id = end_id
        self.source = source
        self.n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        self.stop_ids = frozenset(_harmony_stops(tokenizer, {i for i in [eos_id, eot_id, *extra_stop_ids]
                                                             if i is not None}))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, meta: dict, source: str) -> "ModelTokenizer":
        try:
            tok = tokenizer_from_gguf(meta, source)
        except ModelFormatError:
            raise
        except Exception as e:  # damaged tables: tokenizers raises a bare Exception, or values have odd types
            raise ModelFormatError(f"{source}: the tokenizer tables are invalid ({type(e).__name__}: {e})") from None
        n = len(meta["tokenizer.ggml.tokens"])

        def special(key):
            v = meta.get(key)
            if v is None:
                return None
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
                raise ModelFormatError(f"{source}: {key} = {v!r} is not a token id below {n}")
            return v

        def flag(key, default):
            v = meta.get(key, default)
            if not isinstance(v, bool):
                raise ModelFormatError(f"{source}: {key} = {v!r} is not a bool")
            return v

        kind = meta.get("tokenizer.ggml.model")
        return cls(tok, bos_id=special("tokenizer.ggml.bos_token_id"),
                   eos_id=special("tokenizer.ggml.eos_token_id"),
                   eot_id=(special("tokenizer.ggml.eot_token_id") if "tokenizer.ggml.eot_token_id" in meta
                           else _eot_by_text(meta["tokenizer.ggml.tokens"])),
                   extra_stop_ids=[i for i in [special("tokenizer.ggml.eom_token_id")] if i is not None]
                   + _eog_by_text(meta["tokenizer.ggml.tokens"]),
                   add_bos=_gguf_add_bos(kind, meta, flag),
                   source=source,
                   end_id=special("tokenizer.ggml.eos_token_id") if flag("tokenizer.ggml.add_eos_token", False) else None)

    @classmethod
    def from_hf_dir(cls, model_dir) -> "ModelTokenizer":
        """model_dir: an HFModelDir (config + read_json)."""
        path = os.path.join(model_dir.path, "tokenizer.json")
        if not os.path.exists(path):
            raise ModelFormatError(f"{model_dir.name}: tokenizer.json not found")
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ModelFormatError(f"{model_dir.name}/tokenizer.json: cannot be loaded ({e})") from None
        tcfg = model_dir.read_json("tokenizer_config.json") or {}
        gen = model_dir.read_json("generation_config.json") or {}
        cfg = model_dir.config

        def token_id(text):
            return tok.token_to_id(text) if text else None

        bos_id = token_id(_token_content(tcfg.get("bos_token")))
        if bos_id is None:
            bos_id = (_ids(gen.get("bos_token_id")) + _ids(cfg.get("bos_token_id")) + [None])[0]
        if bos_id is not None and not 0 <= bos_id < tok.get_vocab_size(with_added_tokens=True):
            raise ModelFormatError(f"{model_dir.name}: bos_token_id {bos_id} is not a token id below "
                                   f"{tok.get_vocab_size(with_added_tokens=True)}")
        eos_ids = _ids(gen.get("eos_token_id")) + _ids(cfg.get("eos_token_id"))
        eos_tok = token_id(_token_content(tcfg.get("eos_token")))
        eos_id = eos_tok if eos_tok is not None else (eos_ids + [None])[0]

        # tokenizer.json's post-processor says whether the model expects BOS, and what it appends
        with_special = tok.encode("a", add_special_tokens=True).ids
        plain = tok.encode("a", add_special_tokens=False).ids
        if "add_bos_token" in tcfg:
            add_bos = bool(tcfg["add_bos_token"])
        else:
            add_bos = bos_id is not None and len(with_special) > len(plain) and with_special[0] == bos_id
        if "add_eos_token" in tcfg:
            end_id = eos_id if tcfg["add_eos_token"] else None
        else:
            end_id = with_special[-1] if with_special and plain and with_special[-1] != plain[-1] else None
        return cls(tok, bos_id=bos_id, eos_id=eos_id, extra_stop_ids=eos_ids, add_bos=add_bos,
                   source=model_dir.name, end_id=end_id)

    # -- use ---------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None) -> list:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            ids = self.hf.encode(text, add_special_tokens=False).ids
        except TypeError:   # tokenizers' "TextInputSequence must be str" for a lone surrogate
            _check_utf8(text)
            raise
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def encode_with_end(self, text: str) -> list:
        """encode(text) and the token the model's tokenizer appends (end_id), if any: a text as
        an embedding model reads it."""
        ids = self.encode(text)
        return ids + [self.end_id] if self.end_id is not None else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int):
        return self.hf.id_to_token(token_id)

    def token_piece(self, token_id: int) -> str:
        """The text token_id adds after other text (a logprob's token: the pieces of a
        completion join into its text). Decoded alone, a SentencePiece token loses its leading
        space (the decoder strips the text's first one: "▁world" is "world"), so the token is
        decoded after an anchor token and the anchor's text taken off; a token holding part of
        a character is U+FFFD either way."""
        anchor = self._anchor
        if anchor is None:
            return self.decode([token_id])
        a_id, a_text = anchor
        text = self.decode([a_id, int(token_id)])
        return text[len(a_text):] if text.startswith(a_text) else self.decode([token_id])

    @functools.cached_property
    def _anchor(self):
        """(id, text) of a token whose text is one plain letter, the same alone and first; None
        where the vocabulary has none (token_piece then decodes alone)."""
        for piece in ("a", "\u2581a", "e", "\u2581e", "x"):
            i = self.hf.token_to_id(piece)
            if i is None:
                continue
            text = self.decode([i])
            if len(text) == 1 and text.isalpha() and self.decode([i, i]) == text * 2:
                return i, text
        return None

    def longest_token(self) -> int:
        """The most characters a token's piece has (a byte-level piece's characters are its bytes):
        a chat template's rendering limit scales with it (chat_limits.max_chars_for)."""
        return max((len(p) for p in self.hf.get_vocab(with_added_tokens=True)), default=1)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token_id stands for on its own (OpenAI's logprob `bytes`): its decoded text's
        UTF-8, but for a token holding part of a character (decoded alone as U+FFFD) its own bytes:
        a <0xXX> byte-fallback piece's byte, or a byte-level BPE piece's bytes (GPT-2's table)."""
        text = self.decode([token_id])
        if REPLACEMENT not in text:
            return text.encode("utf-8")
        piece = self.hf.id_to_token(int(token_id)) or ""
        byte = _BYTE_PIECE.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        symbols = _byte_level_symbols()
        if type(self.hf.decoder).__name__ == "ByteLevel" and piece and all(c in symbols for c in piece):
            return bytes(symbols[c] for c in piece)
        return text.encode("utf-8")

    @property
    def bos_token(self) -> str:
        return self.hf.id_to_token(self.bos_id) if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.hf.id_to_token(self.eos_id) if self.eos_id is not None else ""
