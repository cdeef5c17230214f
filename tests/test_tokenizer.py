"""Tokenizers built from GGUF metadata vs transformers' own GGUF tokenizer loader, and the
streaming detokenizer vs a full decode."""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
from forgert.detokenizer import StreamingDetokenizer
from forgert.gguf import GGUFFile
from forgert.tokenizer import ModelTokenizer

TEXTS = [
    "The capital of France is Paris.",
    "Hello world 2024 and 3.14159! 1234567890",
    "  leading spaces\n\n\ttabs and trailing   ",
    "émoji 😀🎉👍🏽 中文字符 русский текст العربية",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "don't I'll WE'RE you've they'd",
    "def f(x):\n    return x ** 2  # comment\n",
    "a<|im_end|>b<|endoftext|>c",
    "",
    "\u00a0non-breaking\u2009thin space, zero\u200bwidth",
]


@pytest.fixture(scope="module")
def smol_meta(smollm2_gguf):
    return GGUFFile(smollm2_gguf).metadata


@pytest.fixture(scope="module")
def ours(smol_meta):
    return ModelTokenizer.from_gguf(smol_meta, "SmolLM2.gguf")


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(ours, reference, text):
    assert ours.encode(text, add_bos=False) == reference.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_transformers(ours, reference, text):
    ids = reference.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == reference.decode(ids)
    assert ours.decode(ids) == text      # byte-level BPE is lossless


def test_special_ids_come_from_metadata(ours, reference, smol_meta):
    assert ours.bos_id == smol_meta["tokenizer.ggml.bos_token_id"] == reference.bos_token_id
    assert ours.eos_id == smol_meta["tokenizer.ggml.eos_token_id"] == reference.eos_token_id
    assert ours.add_bos is bool(smol_meta["tokenizer.ggml.add_bos_token"])
    # <|im_end|> (its EOS) and <|endoftext|>, which llama.cpp's end-of-generation set holds by its text
    assert smol_meta["tokenizer.ggml.tokens"][0] == "<|endoftext|>"
    assert ours.stop_ids == {smol_meta["tokenizer.ggml.eos_token_id"], 0}


@pytest.mark.parametrize("texts", [("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),     # Llama 3.1
                                   ("<turn|>", "<|tool_response>", "<eos>")])         # Gemma 4
def test_every_end_of_generation_token_stops(smol_meta, texts):
    """As llama.cpp's end-of-generation set (llama_vocab::load): besides the file's EOS, every token
    whose text is one of its end markers stops a generation; hand-worked on SmolLM2's vocabulary
    with three of its special tokens renamed."""
    tokens = list(smol_meta["tokenizer.ggml.tokens"])
    renamed = {}
    for i, t in zip((3, 4, 5), texts):
        tokens[i], renamed[i] = t, t
    tok = ModelTokenizer.from_gguf({**smol_meta, "tokenizer.ggml.tokens": tokens}, "x.gguf")
    assert tok.stop_ids == {smol_meta["tokenizer.ggml.eos_token_id"], 0, *renamed}


def test_special_tokens_are_single_ids(ours, reference):
    for tok in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
        ids = ours.encode(f"x{tok}y", add_bos=False)
        assert reference.convert_tokens_to_ids(tok) in ids
        assert len(ids) == 3


def test_digits_are_split_individually(ours):
    # SmolLM2's pre-tokenizer (llama.cpp "smollm") isolates every digit
    ids = ours.encode("12345", add_bos=False)
    assert [ours.token_text(i) for i in ids] == list("12345")


def test_add_bos_is_honoured(ours):
    assert ours.encode("hi", add_bos=True)[0] == ours.bos_id
    assert ours.encode("hi", add_bos=True)[1:] == ours.encode("hi", add_bos=False)


# ------------------------------------------------------------------------------ SentencePiece

SPM_PIECES = ["▁", "t", "h", "e", "a", "c", "s", "o", "n", "m", "i", "▁t", "he", "▁the", "▁c", "at",
              "▁cat", "▁s", "▁sat", "on", "▁on", "▁m", "▁mat", "in", "▁in", "is", "▁is", "th", "it", "▁it"]
SPM_TEXTS = ["the cat sat on the mat", " the  cat", "ü 😀 is it", "hello\nworld", "<s>the</s>", "mat"]


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    """A llama (SentencePiece) vocabulary: specials, 256 byte tokens, scored pieces."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    return mf.write_and_close(w, path)


@pytest.fixture(scope="module")
def spm_pair(spm_gguf):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(spm_gguf.parent), gguf_file=spm_gguf.name)
    return ModelTokenizer.from_gguf(GGUFFile(spm_gguf).metadata, "spm.gguf"), ref


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_sentencepiece_matches_transformers(spm_pair, text):
    ours, ref = spm_pair
    ids = ours.encode(text)        # llama vocabularies add BOS by default
    assert ids == ref.encode(text)
    assert ids[0] == 1
    assert ours.decode(ids) == ref.decode(ids)


def test_sentencepiece_byte_fallback(spm_pair):
    ours, _ = spm_pair
    ids = ours.encode("ü", add_bos=False)
    # "▁" then the two UTF-8 bytes of ü (C3 BC) as <0xXX> tokens
    assert [ours.token_text(i) for i in ids] == ["▁", "<0xC3>", "<0xBC>"]


def test_token_bytes_of_every_byte_level_token(ours, reference):
    """ModelTokenizer.token_bytes (OpenAI's logprob `bytes`): each token's own bytes, those of a
    token holding part of a character too (decoded alone, that one is U+FFFD). Reference:
    transformers' token strings mapped back through GPT-2's byte table, every non-special token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    byte_of = {symbol: b for b, symbol in bytes_to_unicode().items()}
    special = set(reference.all_special_ids) | set(reference.added_tokens_decoder)
    ids = [i for i in range(len(reference)) if i not in special]
    partial = 0
    for i, token in zip(ids, reference.convert_ids_to_tokens(ids)):
        want = bytes(byte_of[c] for c in token)
        assert ours.token_bytes(i) == want, (i, token)
        partial += "\ufffd" in ours.decode([i]) and want != "\ufffd".encode()
    assert partial > 100     # the byte tokens and other part-character tokens were among them


def test_token_bytes_of_sentencepiece_byte_fallback(spm_pair):
    ours, _ = spm_pair
    ids = ours.encode("ü", add_bos=False)   # "▁", <0xC3>, <0xBC>
    assert [ours.token_bytes(i) for i in ids[1:]] == [b"\xc3", b"\xbc"]
    # whole pieces: their text decoded alone (what the logprob's token says), as before
    assert all(ours.token_bytes(i) == ours.decode([i]).encode() for i in ours.encode("Hello world"))


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_token_pieces_join_into_the_text(spm_pair, ours, text):
    """ModelTokenizer.token_piece (a logprob's token text) keeps a SentencePiece token's leading
    space, which decoding it alone strips ("▁cat" alone is "cat"): a completion's pieces join into
    what the whole decode gives after the prompt. Reference: transformers' decode of prompt +
    completion, less the prompt's."""
    spm, ref = spm_pair
    prompt = spm.encode("the cat")
    completion = spm.encode(text, add_bos=False)
    expected = ref.decode(prompt + completion)[len(ref.decode(prompt)):]
    if "\ufffd" not in "".join(spm.decode([i]) for i in completion):   # whole characters only
        assert "".join(spm.token_piece(i) for i in completion) == expected
    cat = spm.hf.token_to_id("\u2581cat")
    assert (spm.decode([cat]), spm.token_piece(cat)) == ("cat", " cat")
    # byte-level BPE (SmolLM2) strips nothing: a piece is the token decoded alone
    ids = ours.encode(" Hello world, " + text, add_bos=False)
    assert [ours.token_piece(i) for i in ids] == [ours.decode([i]) for i in ids]


# ------------------------------------------------------------------------------ streaming

def stream_all(tok, ids, context=()):
    d = StreamingDetokenizer(tok, context)
    pieces = [d.push(i) for i in ids]
    pieces.append(d.flush())
    return pieces


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_equals_full_decode(ours, text):
    ids = ours.encode(text, add_bos=False)
    pieces = stream_all(ours, ids)
    assert "".join(pieces) == ours.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


def test_streaming_holds_back_partial_characters(ours):
    ids = ours.encode("😀🎉👍🏽", add_bos=False)
    alone = [ours.decode([i]) for i in ids]
    assert any("\ufffd" in a for a in alone), "the test needs a character split over tokens"
    pieces = stream_all(ours, ids)
    assert "".join(pieces) == "😀🎉👍🏽"
    assert all(p == "" or "\ufffd" not in p for p in pieces)
    assert pieces.count("") > 0       # some tokens produced no text yet


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_streaming_sentencepiece_keeps_leading_spaces(spm_pair, text):
    ours, _ = spm_pair
    prompt = ours.encode("the cat")
    completion = ours.encode(text, add_bos=False)
    expected = ours.decode(prompt + completion)[len(ours.decode(prompt)):]
    pieces = stream_all(ours, completion, context=prompt)
    assert "".join(pieces) == expected
    assert not any("\ufffd" in p for p in pieces)


def test_streaming_random_ids_never_split_characters(ours):
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(0, ours.n_vocab, 30).tolist()
        pieces = stream_all(ours, ids)
        assert "".join(pieces) == ours.decode(ids)


# ------------------------------------------------------------------------------ pre-tokenizers

PRE_TEXTS = ["I'LL be there at 12:30, won't you?\n\n  Numbers 1234567 and 3.14",
             "tabs\tand\r\nnewlines\n\n\nend  ", "ÀÉÎ mixed Ünïcödé 42nd",
             "HelloWorld's camelCase ABCdef/path/to\n\nx := y.z()  # ÉCOLE Straße"]


@pytest.fixture(scope="module")
def tiny_vocab_gguf(tmp_path_factory, tiny_tokenizer):
    """The tests' tiny byte-level BPE vocabulary written as GGUF with several pre-tokenizer names."""
    gguf = pytest.importorskip("gguf")
    tokens, types, merges = mf.tokenizer_tables(tiny_tokenizer)
    root = tmp_path_factory.mktemp("pre")

    def write(pre):
        path = root / f"{pre}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
        return mf.write_and_close(w, path)
    return write


# (name, the name transformers' GGUF reader knows for the same split): llama.cpp splits glm4 by
# its CHATGLM4 rule, Llama 3's with the contractions' cases spelled out ('[sS] for (?i:'s)), and
# olmo / exaone4 as GPT-2 (transformers' default for a name it does not know).
@pytest.mark.parametrize("pre,ref_pre", [(p, p) for p in ["default", "llama-bpe", "qwen2", "tekken", "falcon3",
                                                          "pixtral", "megrez", "llama4", "minimax-m2"]]
                         + [("olmo", "default"), ("exaone4", "default"), ("glm4", "llama-bpe"), ("glm5", "llama-bpe"),
                            # llama.cpp's other names for splits it shares (qwen2, GPT-2, o200k)
                            ("kormo", "qwen2"), ("f2llmv2", "qwen2"), ("solar-open", "qwen2"), ("gigachat", "default"),
                            ("a.x-4.0", "default"), ("mellum", "default"), ("talkie", "llama4")])
def test_pre_tokenizers_match_transformers(tiny_vocab_gguf, pre, ref_pre):
    transformers = pytest.importorskip("transformers")
    path, ref_path = tiny_vocab_gguf(pre), tiny_vocab_gguf(ref_pre)
    ref = transformers.AutoTokenizer.from_pretrained(str(ref_path.parent), gguf_file=ref_path.name)
    ours = ModelTokenizer.from_gguf(GGUFFile(path).metadata, path.name)
    for text in PRE_TEXTS:
        assert ours.encode(text, add_bos=False) == ref.encode(text, add_special_tokens=False), (pre, text)
        assert ours.decode(ours.encode(text, add_bos=False)) == text


def test_pre_tokenizers_differ_where_their_regexes_do(tiny_vocab_gguf):
    # llama-bpe groups digits in threes, qwen2 splits every digit, default keeps runs together
    text = "1234567"
    pieces = {}
    for pre in ("default", "llama-bpe", "qwen2"):
        path = tiny_vocab_gguf(pre)
        tok = ModelTokenizer.from_gguf(GGUFFile(path).metadata, path.name)
        pieces[pre] = tok.hf.pre_tokenizer.pre_tokenize_str(text)
    assert [p for p, _ in pieces["llama-bpe"]] == ["123", "456", "7"]
    assert [p for p, _ in pieces["qwen2"]] == list("1234567")
    assert [p for p, _ in pieces["default"]] == ["1234567"]


@pytest.mark.parametrize("pre", ["command-r", "exaone"])
def test_digits_alone_then_as_gpt2(tiny_vocab_gguf, pre):
    """Cohere's GGUFs say "command-r", EXAONE 3.5's "exaone": llama.cpp isolates every digit, then
    splits the rest by GPT-2's rule (hand-worked pieces; transformers' GGUF reader knows neither name)."""
    path = tiny_vocab_gguf(pre)
    tok = ModelTokenizer.from_gguf(GGUFFile(path).metadata, path.name)
    want = ["Hi", " ", "1", "2", "3", " there", "'s", " x", "9"]
    assert [p for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str("Hi 123 there's x9")] == \
        [p.replace(" ", "Ġ") for p in want]


@pytest.mark.parametrize("pre,text,want", [
    # DeepSeek V3 / R1: digits in threes, a CJK run alone, a word keeps one leading punctuation mark
    ("deepseek-v3", "Hi 12345 日本語です .Net, x\n\ny", ["Hi", " ", "123", "45", " ", "日本語です", " .", "Net", ",",
                                                    " x", "\n\n", "y"]),
    # DeepSeek LLM / V2: newlines alone, letters with one leading space, punctuation runs (whose
    # range :-~ holds the ASCII letters too, so it splits "Été" again around its "t"), CJK, digits
    ("deepseek-llm", "Hi 12345 日本語 ok!!\nÉté", ["Hi", " ", "12345", " ", "日本語", " ok", "!!", "\n",
                                                  "É", "t", "é"]),
])
def test_deepseek_splits_as_their_rules_say(tiny_vocab_gguf, pre, text, want):
    """DeepSeek's GGUFs say "deepseek-v3" (V3, R1) or "deepseek-llm" (V2, V2-Lite); transformers'
    GGUF reader knows neither: hand-worked pieces (byte-level shows a space as 'Ġ', a newline as
    'Ċ', and spells other characters as bytes)."""
    from tokenizers import pre_tokenizers
    path = tiny_vocab_gguf(pre)
    tok = ModelTokenizer.from_gguf(GGUFFile(path).metadata, path.name)
    spell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    expected = [spell.pre_tokenize_str(p)[0][0] for p in want]
    assert [p for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str(text)] == expected


@pytest.mark.parametrize("pre,text,want", [
    # Qwen3.5 / 3.6: a combining mark stays in its word (qwen2 would split "\u0301" off as punctuation)
    ("qwen35", "cafe\u0301 ok 12", ["cafe\u0301", " ok", " ", "1", "2"]),
    ("qwen2", "cafe\u0301 ok 12", ["cafe", "\u0301", " ok", " ", "1", "2"]),
    # Seed-Coder: a punctuation run keeps no newline (qwen2 would take "!!\n" together)
    ("seed-coder", "ok!!\nx 12", ["ok", "!!", "\n", "x", " ", "1", "2"]),
    ("qwen2", "ok!!\nx 12", ["ok", "!!\n", "x", " ", "1", "2"]),
    # DeepSeek Coder: newlines alone, letters / punctuation with one leading space, every digit alone
    ("deepseek-coder", "def f(x):\n  return 42", ["def", " f", "(", "x", "):", "\n", " ", " return", " ", "4", "2"]),
    # Tiny Aya: numbers in threes from the right, then o200k's words
    ("tiny_aya", "Pay 1234567 now", ["Pay", " ", "1", "234", "567", " now"]),
])
def test_more_splits_as_their_rules_say(tiny_vocab_gguf, pre, text, want):
    """llama.cpp's rules for these names (src/llama-vocab.cpp), hand-worked; transformers' GGUF
    reader knows none of them (byte-level shows a space as 'Ġ', a newline as 'Ċ', and spells other
    characters as bytes)."""
    from tokenizers import pre_tokenizers
    path = tiny_vocab_gguf(pre)
    tok = ModelTokenizer.from_gguf(GGUFFile(path).metadata, path.name)
    spell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert [p for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str(text)] == \
        [spell.pre_tokenize_str(p)[0][0] for p in want]
    assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_tekken_splits_as_its_rule_says(tiny_vocab_gguf):
    """Mistral's Tekken rule (NeMo, Small 3, Ministral GGUFs say "tekken"): camel case apart,
    contractions not kept on the word, every digit alone, punctuation runs with their slashes and
    newlines (hand-worked pieces; byte-level shows a space as 'Ġ' and a newline as 'Ċ'); and its
    GGUFs want a BOS when they do not say (llama.cpp's default for the name)."""
    path = tiny_vocab_gguf("tekken")
    tok = ModelTokenizer.from_gguf(GGUFFile(path).metadata, path.name)
    text = "HelloWorld's 12345 ABCdef!!/\n\nOK"
    want = ["Hello", "World", "'s", " ", "1", "2", "3", "4", "5", " ABCdef", "!!/\n\n", "OK"]
    assert [p for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str(text)] == \
        [p.replace(" ", "Ġ").replace("\n", "Ċ") for p in want]
    assert tok.add_bos and tok.encode("hi")[0] == tok.bos_id


@pytest.mark.parametrize("regex,name", [
    ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "qwen2"),
    ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "qwen35"),
])
def test_quantize_names_the_pre_tokenizer_of_a_tokenizer_json(regex, name):
    """forgert quantize of an HF directory writes the GGUF pre-tokenizer name whose rule is the
    tokenizer.json's Split regex (Qwen2.5's and Qwen3.5's, as their tokenizer.json files spell them)."""
    from forgert.gguf_export import _pre_tokenizer_name
    tok_json = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}}
    assert _pre_tokenizer_name(tok_json, "x") == name
