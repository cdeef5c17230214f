"""Gemma 4's GGUF tokenizer (tokenizer.ggml.model "gemma4", as llama.cpp's converter writes it) against
transformers' GemmaTokenizer on the same tokenizer.json: tests/gemma4_factory.py's tiny Gemma-style
vocabulary (BPE with byte fallback, spaces as U+2581, newline runs as added tokens, the chat tokens),
written to GGUF through the gguf package's LlamaHfVocab / SpecialVocab as the converter does.
Ids with and without BOS, decoding, token bytes and pieces, streaming."""
from __future__ import annotations

import numpy as np
import pytest

import gemma4_factory as gf
import model_factory as mf
from forgert.detokenizer import StreamingDetokenizer
from forgert.gguf import GGUFFile
from forgert.tokenizer import ModelTokenizer

TEXTS = [
    "The capital of France is Paris.",
    " a leading space",
    "   three leading spaces and  runs   of    spaces   ",
    "one\ntwo\n\nthree\n\n\nfour\n\n\n\nseven\n\n\n\n\n\n\nend\n",
    "\n\n",
    "\ttabs\t\tand a\ttab\n",
    "def main():\n    if ready:\n        return  value\n",
    "中文 and emoji 😀🎉👍🏽, accents: déjà vu, ü",
    "<|channel>thinking<channel|>The answer",
    '<|tool_call>call:f{x:<|"|>y<|"|>}<tool_call|><|tool_response>ok<tool_response|>',
    "<|turn>user\nHi there<turn|>\n<|turn>model\n",
    "",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(HF directory, GGUF holding only the tokenizer)."""
    import gguf
    root = tmp_path_factory.mktemp("gemma4tok")
    hf = root / "hf"
    hf.mkdir()
    gf.gemma_tokenizer().save(str(hf / "tokenizer.json"))
    gf.save_tokenizer_config(hf)
    w = gguf.GGUFWriter(str(root / "vocab.gguf"), "gemma4")
    gf.add_gemma4_vocab(w, hf)
    return hf, mf.write_and_close(w, root / "vocab.gguf")


@pytest.fixture(scope="module")
def meta(files):
    return GGUFFile(files[1]).metadata


@pytest.fixture(scope="module")
def ours(meta):
    return ModelTokenizer.from_gguf(meta, "vocab.gguf")


@pytest.fixture(scope="module")
def reference(files):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(files[0]))


def test_written_as_the_converter_does(meta):
    """The factory's GGUF holds what Gemma4Model.set_vocab writes (so the tests read that)."""
    assert meta["tokenizer.ggml.model"] == "gemma4" and "tokenizer.ggml.pre" not in meta
    assert meta["tokenizer.ggml.add_space_prefix"] is False and meta["tokenizer.ggml.add_bos_token"] is True
    tokens, types = list(meta["tokenizer.ggml.tokens"]), list(meta["tokenizer.ggml.token_type"])
    kind = dict(zip(tokens, types))
    assert all(kind[t] == 4 for t in gf.VISIBLE)                       # USER_DEFINED
    assert all(kind[t] == 3 for t in (gf.BOS, gf.EOS, gf.TURN_OPEN, gf.TURN_CLOSE))   # CONTROL
    assert kind["<0x41>"] == 6 and kind["\n\n"] == 1                   # BYTE; a newline run NORMAL
    assert len(meta["tokenizer.ggml.merges"]) > 100 and len(meta["tokenizer.ggml.scores"]) == len(tokens)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(ours, reference, text):
    assert ours.encode(text) == reference.encode(text)
    assert ours.encode(text, add_bos=False) == reference.encode(text, add_special_tokens=False)


def test_bos_from_metadata(ours, reference, meta):
    assert ours.bos_id == reference.bos_token_id == meta["tokenizer.ggml.bos_token_id"] == 2
    assert ours.eos_id == reference.eos_token_id == 1
    assert ours.add_bos and ours.encode("Hi")[0] == 2 and ours.encode("Hi", add_bos=False)[0] != 2
    # the first Gemma 4 GGUFs said add_bos_token False: BOS is added all the same (llama.cpp, transformers)
    assert ModelTokenizer.from_gguf({**meta, "tokenizer.ggml.add_bos_token": False}, "old.gguf").add_bos
    assert ModelTokenizer.from_gguf({k: v for k, v in meta.items() if k != "tokenizer.ggml.add_bos_token"},
                                    "none.gguf").add_bos


def test_pieces(ours):
    """Spaces become U+2581 with no prefix space; characters outside the vocabulary its UTF-8 bytes;
    newline runs whole where they are tokens, a longer run the longest first (as tokenizer.json's
    added tokens match); the chat tokens single ids."""
    def pieces(text):
        return [ours.token_text(i) for i in ours.encode(text, add_bos=False)]
    assert pieces(" capital") == ["\u2581capital"] and pieces("the capital")[-1] == "\u2581capital"
    assert pieces("中") == ["<0xE4>", "<0xB8>", "<0xAD>"]
    assert pieces("\n\n") == ["\n\n"] and pieces("\n\n\n") == ["\n\n\n"]
    assert pieces("a\n\n\n\n\nb") == ["a", "\n\n\n", "\n\n", "b"]
    assert pieces("<|channel>x<channel|>") == ["<|channel>", "x", "<channel|>"]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(ours, reference, text):
    ids = ours.encode(text)
    assert ours.decode(ids) == reference.decode(ids)
    assert ours.decode(ids[1:]) == text


def test_visible_chat_tokens_survive_skip_special(ours):
    """The converter types the channel / tool tokens USER_DEFINED so that a chat parser reads them in
    the output: decoding without special tokens keeps them and drops <bos> / <turn|>."""
    ids = ours.encode("<|channel>a<channel|><turn|>")
    assert ours.decode(ids, skip_special_tokens=True) == "<|channel>a<channel|>"


def test_token_bytes(ours):
    """Each <0xXX> piece stands for its byte; whole pieces for their text, a leading U+2581 a space."""
    for b in range(256):
        assert ours.token_bytes(ours.hf.token_to_id(f"<0x{b:02X}>")) == bytes([b])
    ids = ours.encode(" the capital", add_bos=False)
    assert b"".join(ours.token_bytes(i) for i in ids) == b" the capital"


@pytest.mark.parametrize("text", TEXTS)
def test_token_pieces_join_into_the_text(ours, reference, text):
    prompt = ours.encode("The capital")
    completion = ours.encode(text, add_bos=False)
    expected = reference.decode(prompt + completion)[len(reference.decode(prompt)):]
    if "\ufffd" not in "".join(ours.decode([i]) for i in completion):   # whole characters only
        assert "".join(ours.token_piece(i) for i in completion) == expected


def stream_all(tok, ids, context=()):
    d = StreamingDetokenizer(tok, context)
    pieces = [d.push(i) for i in ids]
    return pieces + [d.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_keeps_leading_spaces(ours, text):
    prompt = ours.encode("The capital")
    completion = ours.encode(text, add_bos=False)
    pieces = stream_all(ours, completion, context=prompt)
    assert "".join(pieces) == ours.decode(prompt + completion)[len(ours.decode(prompt)):]
    assert not any("\ufffd" in p for p in pieces)
    if text.startswith(" "):
        assert next(p for p in pieces if p).startswith(" ")


def test_streaming_random_ids(ours):
    """Random ids but the byte pieces: a run of those that is not UTF-8 decodes to one U+FFFD per byte,
    its ASCII bytes included, which a stream emitting them as they come cannot know."""
    rng = np.random.default_rng(0)
    pool = [i for i in range(ours.n_vocab) if not ours.token_text(i).startswith("<0x")]
    for _ in range(20):
        ids = rng.choice(pool, 30).tolist()
        assert "".join(stream_all(ours, ids)) == ours.decode(ids)


def test_merges_cross_newlines_as_transformers_does(files, meta, tmp_path):
    """llama.cpp splits the text at newline runs before BPE; transformers does not. With a merge
    joining a newline to a letter (none in the published vocabularies) the two differ, and the
    GGUF's tokenizer follows transformers: "a\\nb" is one token."""
    import json
    from transformers import AutoTokenizer
    hf = tmp_path / "hf"
    hf.mkdir()
    tj = json.loads(files[0].joinpath("tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    for piece in ("a\n", "a\nb"):
        vocab[piece] = len(vocab)
    tj["model"]["merges"] = [["a", "\n"], ["a\n", "b"]] + tj["model"]["merges"]
    hf.joinpath("tokenizer.json").write_text(json.dumps(tj))
    gf.save_tokenizer_config(hf)
    ref = AutoTokenizer.from_pretrained(str(hf))
    grown = {**meta, "tokenizer.ggml.tokens": list(meta["tokenizer.ggml.tokens"]) + ["a\n", "a\nb"],
             "tokenizer.ggml.token_type": list(meta["tokenizer.ggml.token_type"]) + [1, 1],
             "tokenizer.ggml.merges": ["a \n", "a\n b"] + list(meta["tokenizer.ggml.merges"])}
    mine = ModelTokenizer.from_gguf(grown, "crossing.gguf")
    ids = mine.encode("xa\nb", add_bos=False)
    assert ids == ref.encode("xa\nb", add_special_tokens=False)
    assert mine.token_text(ids[-1]) == "a\nb"


def test_damaged_tables_refused(meta):
    from forgert.errors import ModelFormatError
    with pytest.raises(ModelFormatError, match="gemma4 tokenizer without tokenizer.ggml.merges"):
        ModelTokenizer.from_gguf({k: v for k, v in meta.items() if k != "tokenizer.ggml.merges"}, "x.gguf")
    with pytest.raises(ModelFormatError, match="unsupported tokenizer model 'gemma5'.*gpt2, llama and gemma4"):
        ModelTokenizer.from_gguf({**meta, "tokenizer.ggml.model": "gemma5"}, "x.gguf")


@pytest.mark.parametrize("text", TEXTS)
def test_ollamas_llama_label_gives_the_same_ids(meta, reference, text):
    """ollama writes its Gemma 4 GGUFs' tokenizer as "llama" (with the same tables) and reads it as
    "gemma4" (its compat shim). Read as a SentencePiece vocabulary (merges from the scores, no space
    prefix as the file says), the converter's tables give transformers' ids too."""
    tok = ModelTokenizer.from_gguf({**meta, "tokenizer.ggml.model": "llama"}, "ollama.gguf")
    assert tok.encode(text) == reference.encode(text)
