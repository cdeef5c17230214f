"""Build a HF `tokenizers.Tokenizer` from GGUF tokenizer metadata (llama.cpp's key names).

Three vocabulary kinds:
- "gpt2": byte-level BPE with merges; the split regex depends on tokenizer.ggml.pre.
- "llama": SentencePiece BPE with scores and <0xXX> byte fallback; merges are recovered from the
  scores, and spaces become U+2581 with a prefix space at the start of the text.
- "gemma4": Gemma 4's BPE over raw UTF-8 with the file's merges, spaces U+2581, no prefix space,
  <0xXX> byte fallback (llama.cpp's converter: Gemma4Model.set_vocab).
"""
from __future__ import annotations

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .errors import ModelFormatError

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# o200k (GPT-4o; Phi-4-mini): case-aware words with their contractions, digits in threes
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5 / Qwen3.6: Qwen2's rule with combining marks (\p{M}) kept in words (llama.cpp's QWEN35)
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Seed-Coder: Qwen2's rule whose punctuation runs take no newlines
_SEED_CODER_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+")
# Tekken (Mistral NeMo, Mistral Small 3, Ministral, Devstral): o200k's case-aware words without
# the contractions, every digit on its own
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# DeepSeek V3 / R1: digits in threes, CJK runs, then words with at most one leading punctuation
# mark (its tokenizer.json's three splits)
_DEEPSEEK3_SPLITS = [r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+",
                     r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                     r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
# DeepSeek LLM / V2 / V2-Lite: newlines alone, runs of letters of the alphabetic scripts with one
# leading space, runs of ASCII and full-width punctuation, trailing spaces, CJK runs, digit runs
# (its tokenizer.json's six splits)
_DEEPSEEK_LLM_SPLITS = [r"[\r\n]", r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                        r"\s+$", "[一-龥ࠀ-一가-\ud7ff]+", r"\p{N}+"]
# DeepSeek Coder (1.3B-33B, Llama GGUFs): newlines alone, letters and punctuation runs each with
# one leading space, CJK runs, every digit alone (its tokenizer.json's splits, as llama.cpp's)
_DEEPSEEK_CODER_SPLITS = [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-\ud7ff]+", r"\p{N}"]
# Tiny Aya (Cohere 2): numbers in groups of three from the right, then o200k's rule with its
# trailing '/' (llama.cpp's TINY_AYA)
_TINY_AYA_SPLITS = [r"\d{1,3}(?=(?:\d{3})*\b)",
                    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
LLAMA3_NAMES = ("llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")
# tokenizer.ggml.pre -> list of regexes applied in turn (as llama.cpp's llm_tokenizer_bpe does)
PRE_TOKENIZER_SPLITS = {
    "default": [_GPT2_SPLIT],
    "gpt-2": [_GPT2_SPLIT],
    "gpt2": [_GPT2_SPLIT],
    "olmo": [_GPT2_SPLIT],            # OLMo's converter name; llama.cpp splits it as GPT-2
    "exaone4": [_GPT2_SPLIT],         # EXAONE 4, likewise
    # SmolLM / StarCoder: every digit on its own, then the GPT-2 regex
    "smollm": [r"\p{N}", _GPT2_SPLIT],
    "starcoder": [r"\p{N}", _GPT2_SPLIT],
    "refact": [r"\p{N}", _GPT2_SPLIT],
    "command-r": [r"\p{N}", _GPT2_SPLIT],   # Cohere: Command-R, Aya Expanse, Command R7B
    "exaone": [r"\p{N}", _GPT2_SPLIT],      # EXAONE 3 / 3.5
    # Llama 3's rule; llama.cpp's other names for it (Falcon 3, Mistral Small 3.1's "pixtral", ...)
    **{name: [_LLAMA3_SPLIT] for name in LLAMA3_NAMES},
    "smaug-bpe": [_LLAMA3_SPLIT],
    "dbrx": [_LLAMA3_SPLIT],          # cl100k vocabularies: DBRX, Phi-4
    "gpt-4o": [_GPT4O_SPLIT],         # o200k vocabularies: Phi-4-mini
    "llama4": [_GPT4O_SPLIT],
    "tekken": [_TEKKEN_SPLIT],
    "qwen2": [_QWEN2_SPLIT],
    "deepseek-r1-qwen": [_QWEN2_SPLIT],
    "megrez": [_QWEN2_SPLIT],
    "kormo": [_QWEN2_SPLIT],
    "f2llmv2": [_QWEN2_SPLIT],
    "solar-open": [_QWEN2_SPLIT],
    "qwen35": [_QWEN35_SPLIT],        # Qwen3.5 / Qwen3.6
    "seed-coder": [_SEED_CODER_SPLIT],
    "gigachat": [_GPT2_SPLIT],        # llama.cpp splits these as GPT-2
    "a.x-4.0": [_GPT2_SPLIT],
    "mellum": [_GPT2_SPLIT],
    "talkie": [_GPT4O_SPLIT],
    "tiny_aya": _TINY_AYA_SPLITS,
    "cohere2moe": _TINY_AYA_SPLITS,
    "deepseek-coder": _DEEPSEEK_CODER_SPLITS,
    "glm4": [_LLAMA3_SPLIT],          # GLM-4 0414: llama.cpp's CHATGLM4 rule, Llama 3's spelled case by case
    "glm5": [_LLAMA3_SPLIT],          # GLM-5: the same rule (and no BOS, whole words first)
    "minimax-m2": [_GPT4O_SPLIT],     # MiniMax-M2: o200k's rule
    "kanana2": [_GPT4O_SPLIT],        # Kanana-2 (a deepseek2 GGUF)
    "deepseek-v3": _DEEPSEEK3_SPLITS,
    "deepseek-llm": _DEEPSEEK_LLM_SPLITS,
}
# Vocabularies whose GGUFs want a BOS when they do not say, and those that look a whole word up
# before merging (llama.cpp: add_bos and ignore_merges for these names only).
BOS_BY_DEFAULT = (*LLAMA3_NAMES, "tekken")
_IGNORE_MERGES = (*BOS_BY_DEFAULT, "glm4", "glm5")   # glm4 / glm5: no BOS (their templates write [gMASK]<sop>)
# ggml token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def generate_merges(vocab: dict, scores: dict) -> list:
    """SentencePiece BPE merges from token scores: every split of a token into two vocabulary
    pieces is a merge, ranked by the merged token's score (higher first)."""
    merges = []
    for piece, score in scores.items():
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(m[0], m[1]) for m in merges]


def _vocab(tokens) -> dict:
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)   # a repeated string keeps its first id
    return vocab


def _merges(meta, source, kind) -> list:
    """tokenizer.ggml.merges as (left, right) pairs, ranked in file order."""
    merges_raw = meta.get("tokenizer.ggml.merges")
    if merges_raw is None:
        raise ModelFormatError(f"{source}: {kind} tokenizer without tokenizer.ggml.merges")
    merges = []
    for m in merges_raw:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ModelFormatError(f"{source}: malformed tokenizer merge {m!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _byte_level(meta, source) -> Tokenizer:
    tokens = meta["tokenizer.ggml.tokens"]
    merges = _merges(meta, source, "gpt2")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ModelFormatError(f"{source}: unsupported tokenizer pre-tokenizer '{pre}' "
                               f"(known: {', '.join(sorted(PRE_TOKENIZER_SPLITS))})")
    # Llama 3 and Tekken vocabularies look whole words up before merging (llama.cpp: ignore_merges
    # for these names only; smaug-bpe, dbrx and gpt-4o share or resemble the regex but merge every word).
    ignore_merges = pre in _IGNORE_MERGES
    tok = Tokenizer(models.BPE(_vocab(tokens), merges, ignore_merges=ignore_merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_SPLITS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                   use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(meta, source) -> Tokenizer:
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise ModelFormatError(f"{source}: llama tokenizer needs tokenizer.ggml.scores for every token")
    vocab = _vocab(tokens)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id", 0)
    unk = tokens[unk_id] if 0 <= unk_id < len(tokens) else None
    merges = generate_merges(vocab, dict(zip(tokens, (float(s) for s in scores))))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                 prepend_scheme="first" if add_prefix else "never", split=False)
    steps = _metaspace_decoder()
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _metaspace_decoder() -> list:
    """U+2581 back to a space, <0xXX> pieces to their bytes, the pieces joined."""
    return [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]


def _gemma4(meta, source) -> Tokenizer:
    """Gemma 4's vocabulary as Hugging Face's Gemma tokenizer (tokenizer.json, what transformers
    runs) has it: the text's spaces replaced by U+2581, then BPE with the file's merges (ranked in
    file order) over the whole text, <0xXX> byte fallback for what no piece covers, no prefix space.

    Newline pre-split: llama.cpp (llm_tokenizer_bpe, LLAMA_VOCAB_PRE_TYPE_GEMMA4) first splits the
    text into runs of newlines and runs of other characters ("[^\\n]+|[\\n]+") only because its BPE
    asserts no newline inside a word. BPE merges inside two neighbouring runs go the same way split
    or not unless some merge joins a piece holding a newline to one holding something else; the
    published vocabularies (SentencePiece's, where newline runs are user-defined pieces of their own)
    have none, so there the split changes nothing. Where a file has one, transformers merges across
    the newline, and so does this tokenizer (no split): the one place it departs from llama.cpp.

    Newline runs: no merges build the published vocabulary's newline-run pieces ("\\n\\n", ...;
    llama.cpp needed a special case for them, PR 21343): transformers gets them from tokenizer.json's
    added tokens, matched whole in the raw text before BPE, which the converter types NORMAL. Here
    every token of two or more newlines is such an added token: for a run that is a token, the
    token, as llama.cpp's special case gives; for a longer run the longest pieces first, as
    transformers gives (llama.cpp would merge single newlines). A lone newline stays a BPE piece,
    which it is anyway without a merge across it."""
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = _vocab(tokens)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab, _merges(meta, source, "gemma4"), unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence(_metaspace_decoder())
    runs = [t for t in vocab if len(t) > 1 and not t.strip("\n")]
    if runs:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in runs])
    return tok


def tokenizer_from_gguf(meta: dict, source: str) -> Tokenizer:
    kind = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise ModelFormatError(f"{source}: no tokenizer in the file (tokenizer.ggml.tokens is missing)")
    if kind == "gpt2":
        tok = _byte_level(meta, source)
    elif kind == "llama":
        tok = _sentencepiece(meta, source)
    elif kind == "gemma4":
        tok = _gemma4(meta, source)
    else:
        raise ModelFormatError(f"{source}: unsupported tokenizer model '{kind}' (forgert reads gpt2, llama "
                               f"and gemma4)")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None:
        if np.ndim(types) != 1 or len(types) != len(tokens):
            got = f"{len(types)} entries" if np.ndim(types) == 1 else f"a {type(types).__name__}"
            raise ModelFormatError(f"{source}: tokenizer.ggml.token_type has {got} for {len(tokens)} tokens")
        kinds = np.asarray(types)
        bad = np.flatnonzero((kinds < 0) | (kinds > 6))   # llama.cpp's 0 undefined .. 6 byte
        if len(bad):
            raise ModelFormatError(f"{source}: tokenizer.ggml.token_type[{bad[0]}] = {types[bad[0]]} is not a "
                                   f"token type (0..6)")
        # Control tokens (<|im_start|>) and user-defined ones must match whole wherever they occur.
        control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == CONTROL]
        user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED]
        if control:
            tok.add_special_tokens(control)
        if user:
            tok.add_tokens(user)
    return tok
