"""Tiny random Llama / Qwen2 / Qwen3 / SmolLM3 models for end-to-end tests, written the way real
checkpoints are.

Each TinySpec becomes a `transformers` model with random (seeded) weights, saved as
  - an HF directory: config.json + model.safetensors (F32, F16 or BF16) + tokenizer.json
  - GGUF files (F32, F16, Q8_0, Q4_0, Q4_1) written here with gguf.GGUFWriter following
    llama.cpp's convert_hf_to_gguf.py conventions (names, metadata keys, Q/K permutation for
    llama, F32 norms/biases). Quantization uses gguf.quants, so it is independent of forgert.

Nothing here imports forgert: this module is the reference side of the tests.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
HF_DTYPES = ("F32", "F16", "BF16")

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"

# Fixed corpus for the tiny BPE: deterministic vocabulary, a mix of common English pieces.
_TOKENIZER_CORPUS = (
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog. "
    "Once upon a time there was a small model that wanted to predict the next token. "
    "It read numbers like 12345 and 67890, punctuation like ?!;:, and words such as "
    "attention, rotation, quantization, normalization, embedding, residual and softmax. "
)


@dataclass(frozen=True)
class TinySpec:
    name: str
    arch: str                      # "llama" | "qwen2" | "qwen3" | "smollm3" | "mistral3" | "granite" | "olmo2" | "exaone4"
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    tie_embeddings: bool
    rope_theta: float
    rms_eps: float
    seed: int
    rope_scaling: dict | None = None
    # Real Hub checkpoints spell rope settings as top-level rope_theta + rope_scaling;
    # transformers 5 writes rope_parameters. The factory writes both spellings (per model)
    # so the loader is checked against each.
    legacy_rope_config: bool = False
    init_range: float = 0.1       # large init: random models then give well-separated logits
    n_ctx: int = 256
    attention_bias: bool = False  # Llama only: q/k/v/o biases (Qwen2 always has q/k/v biases)
    bias_scale: float = 0.2       # std of the random biases
    explicit_head_dim: int | None = None   # config.head_dim when it is not hidden // n_heads (Qwen3)
    no_rope_layers: tuple | None = None    # SmolLM3: 1 = RoPE, 0 = none, per layer
    multipliers: dict | None = None        # Granite: embedding / residual / attention multipliers, logits_scaling
    partial_rotary: float | None = None    # GLM-4: the share of each head that rotates
    n_expert: int = 0                      # OLMoE: experts, and experts per token
    n_expert_used: int = 0
    logit_scale: float = 0.0625            # Cohere: the logits times this
    sliding_window: int | None = None      # EXAONE 4: its local layers' window (None: every layer global, RoPE)
    sliding_window_pattern: int = 4        # EXAONE 4: every pattern-th layer global (and NoPE)

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.n_heads


SPECS = {
    # Llama 2 style: theta 1e4, tied embeddings, GQA 4/2, head_dim 16.
    "llama_tied": TinySpec(
        name="llama_tied", arch="llama", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-5, seed=1,
    ),
    # Llama 3 style: theta 5e5 with llama3 rope_scaling, untied, head_dim 32.
    # original_max_position_embeddings is tiny (64) so the scaling changes most frequencies
    # and a loader that ignores it produces visibly different logits.
    "llama3_untied": TinySpec(
        name="llama3_untied", arch="llama", hidden=128, n_layers=3, n_heads=4, n_kv_heads=2, ffn=192,
        tie_embeddings=False, rope_theta=500000.0, rms_eps=1e-5, seed=2,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        legacy_rope_config=True,
    ),
    # Qwen2: QKV bias, theta 1e6, tied (like Qwen2-0.5B), GQA 4/2.
    "qwen2_tied": TinySpec(
        name="qwen2_tied", arch="qwen2", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=1000000.0, rms_eps=1e-6, seed=3,
    ),
    # Qwen2 untied, head_dim 32.
    "qwen2_untied": TinySpec(
        name="qwen2_untied", arch="qwen2", hidden=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn=192,
        tie_embeddings=False, rope_theta=1000000.0, rms_eps=1e-6, seed=4,
    ),
}

# The architectures of issue 11, kept apart from SPECS (which test_e2e_tiny runs in every format).
ARCH_SPECS = {
    # Qwen3: QK-norm, head_dim 32 with hidden 64 (q_dim 128 != hidden, as in Qwen3-0.6B), tied.
    "qwen3_tied": TinySpec(
        name="qwen3_tied", arch="qwen3", hidden=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=1000000.0, rms_eps=1e-6, seed=11, explicit_head_dim=32,
    ),
    # Qwen3 with YaRN (factor 4 over an original context of 32: the long-context Qwen3 setup,
    # shrunk) so sequences past 32 tokens use the blended frequencies and the attention factor.
    "qwen3_yarn": TinySpec(
        name="qwen3_yarn", arch="qwen3", hidden=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn=192,
        tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-6, seed=12, n_ctx=128,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        legacy_rope_config=True,
    ),
    # Qwen2 with dynamic NTK scaling over a 32-token training context (HF only: llama.cpp has no
    # dynamic scaling, and its converter writes none).
    "qwen2_dynamic": TinySpec(
        name="qwen2_dynamic", arch="qwen2", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-6, seed=14, n_ctx=32,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0}, legacy_rope_config=True,
    ),
    # Llama with head_dim wider than hidden / heads (32 x 4 heads = 128 != 64), as Mistral NeMo
    # (32 x 128 = 4096 against 5120) and Mistral Small 3 write it: GGUF key_length, HF head_dim.
    "llama_wide_head": TinySpec(
        name="llama_wide_head", arch="llama", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=1000000.0, rms_eps=1e-5, seed=16, explicit_head_dim=32,
    ),
    # Mistral 3 (Ministral 3, Devstral Small 2; HF ministral3): Llama with YaRN (mscale and
    # mscale_all_dim 1) and the Llama 4 query temperature from the original context on (16 here,
    # so the tests' 24-64 positions take factors 1 to 1 + 0.1 ln 4), wide heads as Ministral's.
    "ministral3": TinySpec(
        name="ministral3", arch="mistral3", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=1000000.0, rms_eps=1e-5, seed=17, explicit_head_dim=32, n_ctx=256,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                      "llama_4_scaling_beta": 0.1},
    ),
    # Granite 3: Llama with four multipliers, each far from 1 so that dropping one shows.
    "granite": TinySpec(
        name="granite", arch="granite", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-5, seed=18,
        multipliers={"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.1,
                     "logits_scaling": 4.0},
    ),
    # OLMo 2: no pre-norms, RMSNorm on each sub-layer's output and over the whole Q and K
    # projections; untied, theta 5e5 as the released models.
    "olmo2": TinySpec(
        name="olmo2", arch="olmo2", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=500000.0, rms_eps=1e-6, seed=19,
    ),
    # GLM-4 (0414): sandwich norms, q/k/v biases, fused gate_up, half of each head (32 wide)
    # rotated over adjacent pairs; untied.
    "glm4": TinySpec(
        name="glm4", arch="glm4", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=22, explicit_head_dim=32, partial_rotary=0.5,
    ),
    # Command-R / Aya Expanse (GGUF command-r, HF cohere): one LayerNorm feeding attention and the
    # MLP in parallel, logits times 0.25, tied; RoPE over adjacent pairs in the HF checkpoint.
    "command_r": TinySpec(
        name="command_r", arch="command-r", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-5, seed=25, logit_scale=0.25,
    ),
    # Command R7B (cohere2): as command-r with layers 0-2 and 4 local (window 8, RoPE) and layer 3
    # global without RoPE.
    "cohere2": TinySpec(
        name="cohere2", arch="cohere2", hidden=64, n_layers=5, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=50000.0, rms_eps=1e-5, seed=26, logit_scale=0.25, sliding_window=8,
    ),
    # Arcee (AFM-4.5B): Llama with a plain ReLU-squared feed-forward (up, then down; no gate), untied.
    "arcee": TinySpec(
        name="arcee", arch="arcee", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=31,
    ),
    # Nemotron (Nemotron-Mini, Minitron): LayerNorm1P (1 + w, stored as 1 + w in GGUF) with biases,
    # a plain ReLU-squared feed-forward, half of each head rotated; untied.
    "nemotron": TinySpec(
        name="nemotron", arch="nemotron", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=32, partial_rotary=0.5,
    ),
    # OLMoE: pre-norms, OLMo 2's whole-row QK-norm, 4 experts of width 64, top 2 not renormalised;
    # untied (as OLMoE-1B-7B, no GQA).
    "olmoe": TinySpec(
        name="olmoe", arch="olmoe", hidden=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn=64,
        tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=30, n_expert=4, n_expert_used=2,
    ),
    # StarCoder2: LayerNorms with biases, q/k/v/o biases, a plain GELU MLP with biases, tied;
    # no window (llama.cpp's starcoder2 has none; the HF model's 4096 never reaches 64 positions).
    "starcoder2": TinySpec(
        name="starcoder2", arch="starcoder2", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=100000.0, rms_eps=1e-5, seed=29,
    ),
    # Gemma 1 / CodeGemma: GeGLU, (1 + w) norms (stored as 1 + w in GGUF), embeddings times
    # sqrt(hidden), heads of 32 over hidden 64; tied.
    "gemma": TinySpec(
        name="gemma", arch="gemma", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-6, seed=28, explicit_head_dim=32, init_range=0.05,
    ),
    # EXAONE 3.5: Llama with RoPE over the two halves (not permuted in its GGUF) and its own HF
    # tensor names; untied.
    "exaone": TinySpec(
        name="exaone", arch="exaone", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=500000.0, rms_eps=1e-5, seed=27,
    ),
    # Seed-OSS: Llama with q/k/v and output biases (its 36B has the q/k/v ones), heads of 32
    # over hidden 64, untied.
    "seed_oss": TinySpec(
        name="seed_oss", arch="seed_oss", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=10000000.0, rms_eps=1e-6, seed=24, explicit_head_dim=32,
    ),
    # ERNIE 4.5 (0.3B's layout): Llama rotating adjacent pairs in its HF checkpoint, heads of 32
    # over hidden 64, tied.
    "ernie4_5": TinySpec(
        name="ernie4_5", arch="ernie4_5", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=500000.0, rms_eps=1e-5, seed=23, explicit_head_dim=32,
    ),
    # OLMo 3: OLMo 2 with layers 0-2 and 4 local (window 8, unscaled RoPE) and layer 3 global
    # with YaRN x4 over an original context of 16 (its attention factor too), so the two RoPE
    # tables differ in frequencies and in their cos/sin factor.
    "olmo3": TinySpec(
        name="olmo3", arch="olmo2", hidden=64, n_layers=5, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=False, rope_theta=500000.0, rms_eps=1e-6, seed=21, sliding_window=8, n_ctx=64,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    ),
    # EXAONE 4 (32B's layout): OLMo 2's post-norms with a per-head QK-norm; layers 0-2 and 4
    # local (window 8, RoPE), layer 3 global without RoPE; tied, as the 1.2B.
    "exaone4": TinySpec(
        name="exaone4", arch="exaone4", hidden=64, n_layers=5, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=1000000.0, rms_eps=1e-5, seed=20, sliding_window=8,
    ),
    # SmolLM3: Llama with no RoPE on every fourth layer (layer 3 of 0..4), tied.
    "smollm3_tied": TinySpec(
        name="smollm3_tied", arch="smollm3", hidden=64, n_layers=5, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-6, seed=13, no_rope_layers=(1, 1, 1, 0, 1),
    ),
    # SmolLM3's long-context setup: YaRN on its RoPE layers (NoPE layers take neither the
    # frequencies nor the attention factor).
    "smollm3_yarn": TinySpec(
        name="smollm3_yarn", arch="smollm3", hidden=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn=160,
        tie_embeddings=True, rope_theta=10000.0, rms_eps=1e-6, seed=15, n_ctx=128, no_rope_layers=(1, 1, 1, 0),
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 48},
        legacy_rope_config=True,
    ),
}
ALL_SPECS = {**SPECS, **ARCH_SPECS}

# A Llama with attention_bias=True (q/k/v/o biases; llama.cpp loads them as optional tensors),
# with large biases so a loader that drops any of them changes the logits by far more than the
# bounds. Not in SPECS: only the bias tests build it (F32 files only).
LLAMA_BIAS = TinySpec(
    name="llama_bias", arch="llama", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=160,
    tie_embeddings=False, rope_theta=10000.0, rms_eps=1e-5, seed=5, attention_bias=True, bias_scale=1.0,
)


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(vocab_size: int = 320) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) trained on a fixed corpus: deterministic, covers any text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TOKENIZER_CORPUS] * 4, trainer=trainer)
    return tok


def tokenizer_tables(tok: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, GGUF token types, merges) as llama.cpp's gpt2 vocab stores them."""
    vocab = tok.get_vocab()
    tokens = [None] * len(vocab)
    for piece, idx in vocab.items():
        tokens[idx] = piece
    special = {BOS_TOKEN, EOS_TOKEN} | {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    # GGUF token types: 1 normal, 3 control.
    types = [3 if t in special else 1 for t in tokens]
    model_json = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_json["merges"]]
    return tokens, types, merges


# ----------------------------------------------------------------------------- HF model

def build_hf_model(spec: TinySpec, vocab_size: int):
    """The reference model: transformers, float32, eval mode, seeded random weights."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        SmolLM3Config,
        SmolLM3ForCausalLM,
    )

    common = dict(
        vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=spec.ffn,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads, max_position_embeddings=spec.n_ctx,
        rms_norm_eps=spec.rms_eps, tie_word_embeddings=spec.tie_embeddings,
        initializer_range=spec.init_range, bos_token_id=0, eos_token_id=1,
        rope_theta=spec.rope_theta,
    )
    if spec.rope_scaling is not None:
        common["rope_scaling"] = dict(spec.rope_scaling)
    torch.manual_seed(spec.seed)
    if spec.arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(head_dim=spec.head_dim, attention_bias=spec.attention_bias, **common))
    elif spec.arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif spec.arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=spec.head_dim, **common))
    elif spec.arch == "smollm3":
        model = SmolLM3ForCausalLM(SmolLM3Config(no_rope_layers=list(spec.no_rope_layers), pad_token_id=None, **common))
    elif spec.arch == "nemotron":
        from transformers import NemotronConfig, NemotronForCausalLM
        eps = common.pop("rms_norm_eps")
        model = NemotronForCausalLM(NemotronConfig(norm_eps=eps, head_dim=spec.head_dim, pad_token_id=None,
                                                   partial_rotary_factor=spec.partial_rotary, **common))
    elif spec.arch == "arcee":
        from transformers import ArceeConfig, ArceeForCausalLM
        model = ArceeForCausalLM(ArceeConfig(head_dim=spec.head_dim, pad_token_id=None, **common))
    elif spec.arch == "olmoe":
        from transformers import OlmoeConfig, OlmoeForCausalLM
        model = OlmoeForCausalLM(OlmoeConfig(num_experts=spec.n_expert, num_experts_per_tok=spec.n_expert_used,
                                             norm_topk_prob=False, pad_token_id=None, **common))
    elif spec.arch == "starcoder2":
        from transformers import Starcoder2Config, Starcoder2ForCausalLM
        eps = common.pop("rms_norm_eps")
        model = Starcoder2ForCausalLM(Starcoder2Config(norm_epsilon=eps, use_bias=True, sliding_window=spec.sliding_window,
                                                       hidden_act="gelu_pytorch_tanh", pad_token_id=None, **common))
    elif spec.arch == "gemma":
        from transformers import GemmaConfig, GemmaForCausalLM
        model = GemmaForCausalLM(GemmaConfig(head_dim=spec.head_dim, hidden_activation="gelu_pytorch_tanh",
                                             pad_token_id=None, **common))
    elif spec.arch == "exaone":   # transformers runs it as Llama, and saves EXAONE's own tensor names
        from transformers import AutoModelForCausalLM, ExaoneConfig
        model = AutoModelForCausalLM.from_config(ExaoneConfig(**common))
    elif spec.arch == "granite":
        from transformers import GraniteConfig, GraniteForCausalLM
        model = GraniteForCausalLM(GraniteConfig(pad_token_id=None, **spec.multipliers, **common))
    elif spec.arch == "olmo2" and spec.sliding_window:   # OLMo 3: olmo2 with local layers
        from transformers import Olmo3Config, Olmo3ForCausalLM
        model = Olmo3ForCausalLM(Olmo3Config(pad_token_id=None, sliding_window=spec.sliding_window, **common))
    elif spec.arch == "olmo2":
        from transformers import Olmo2Config, Olmo2ForCausalLM
        model = Olmo2ForCausalLM(Olmo2Config(pad_token_id=None, **common))
    elif spec.arch == "exaone4":
        from transformers import Exaone4Config, Exaone4ForCausalLM
        model = Exaone4ForCausalLM(Exaone4Config(pad_token_id=None, sliding_window=spec.sliding_window,
                                                 sliding_window_pattern=spec.sliding_window_pattern, **common))
    elif spec.arch in ("command-r", "cohere2"):
        from transformers import Cohere2Config, Cohere2ForCausalLM, CohereConfig, CohereForCausalLM
        eps = common.pop("rms_norm_eps")
        if spec.arch == "cohere2":
            model = Cohere2ForCausalLM(Cohere2Config(logit_scale=spec.logit_scale, layer_norm_eps=eps, pad_token_id=None,
                                                     sliding_window=spec.sliding_window, **common))
        else:
            model = CohereForCausalLM(CohereConfig(logit_scale=spec.logit_scale, layer_norm_eps=eps, pad_token_id=None,
                                                   **common))
    elif spec.arch == "seed_oss":
        from transformers import SeedOssConfig, SeedOssForCausalLM
        model = SeedOssForCausalLM(SeedOssConfig(head_dim=spec.head_dim, attention_bias=True, attention_out_bias=True,
                                                 pad_token_id=None, **common))
    elif spec.arch == "ernie4_5":
        from transformers import Ernie4_5Config, Ernie4_5ForCausalLM
        model = Ernie4_5ForCausalLM(Ernie4_5Config(head_dim=spec.head_dim, pad_token_id=None, **common))
    elif spec.arch == "glm4":
        from transformers import Glm4Config, Glm4ForCausalLM
        model = Glm4ForCausalLM(Glm4Config(head_dim=spec.head_dim, partial_rotary_factor=spec.partial_rotary,
                                           attention_bias=True, pad_token_id=None, **common))
    elif spec.arch == "mistral3":
        from transformers import Ministral3Config, Ministral3ForCausalLM
        rope = {**common.pop("rope_scaling"), "rope_theta": common.pop("rope_theta")}
        model = Ministral3ForCausalLM(Ministral3Config(head_dim=spec.head_dim, rope_parameters=rope, pad_token_id=None,
                                                       **common))
    else:
        raise ValueError(f"unknown arch {spec.arch}")
    model = model.float().eval()
    with torch.no_grad():
        # Norm weights init to 1.0; randomise them around 1 so a loader that drops a norm
        # weight (or mixes up attn_norm / ffn_norm) is caught.
        gen = torch.Generator().manual_seed(spec.seed + 1000)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(spec.bias_scale * torch.randn(p.shape, generator=gen))
    return model


def hf_state_numpy(model) -> dict[str, np.ndarray]:
    """HF state dict as float32 numpy (the tied lm_head is dropped when tied)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def _legacy_rope_config(cfg: dict, spec: TinySpec) -> dict:
    """Rewrite transformers-5 rope_parameters into rope_theta + rope_scaling (Hub spelling)."""
    cfg = dict(cfg)
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = spec.rope_theta
    if spec.rope_scaling is not None:
        cfg["rope_scaling"] = dict(spec.rope_scaling)
    return cfg


def save_hf_dir(model, spec: TinySpec, tok: Tokenizer, out_dir: Path, dtype: str) -> Path:
    tdtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    out_dir.mkdir(parents=True, exist_ok=True)
    # Save a copy cast to the storage dtype; the reference stays f32.
    import copy
    m = copy.deepcopy(model).to(tdtype)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    m.save_pretrained(out_dir)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if spec.legacy_rope_config:
        cfg = _legacy_rope_config(cfg, spec)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=2))
    return out_dir


# ----------------------------------------------------------------------------- GGUF

def permute_qk_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation: within each head, reorder output rows from
    half-split (HF) to interleaved pairs so GGUF llama rotates adjacent pairs.
    w [n_head * head_dim, in]."""
    head_dim = w.shape[0] // n_head
    return (w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def llama3_rope_factors(spec: TinySpec) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter writes it for rope_type llama3: the divisor
    applied to each base frequency. f32 [head_dim // 2]."""
    rs = spec.rope_scaling
    factor = rs["factor"]
    low_ff, high_ff = rs["low_freq_factor"], rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    base = spec.rope_theta
    dim = spec.head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen, high_wavelen = old_ctx / low_ff, old_ctx / high_ff
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# Post-norm-only architectures (OLMo 2, EXAONE 4): HF's post_attention_layernorm is the norm of
# the attention output, which the converter names post_attention_norm (a Llama's is ffn_norm).
POST_NORM_ARCHS = ("olmo2", "exaone4")


def _gguf_name(hf_name: str, arch: str = "llama") -> str:
    table = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "model.norm.bias": "output_norm.bias",
        "lm_head.weight": "output.weight",
    }
    if hf_name in table:
        return table[hf_name]
    parts = hf_name.split(".")  # model.layers.{i}.<module>.<proj>.<weight|bias>
    i = parts[2]
    rest = ".".join(parts[3:])
    sub = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.o_proj.bias": "attn_output.bias",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "mlp.gate.weight": "ffn_gate_inp.weight",   # a MoE router (OLMoE)
        **({"post_attention_layernorm.weight": "post_attention_norm.weight",
            "post_feedforward_layernorm.weight": "post_ffw_norm.weight"} if arch in POST_NORM_ARCHS else {}),
        **({"input_layernorm.bias": "attn_norm.bias", "post_attention_layernorm.bias": "ffn_norm.bias"}
           if arch == "nemotron" else {}),
        # StarCoder2: norm biases, and its plain MLP's c_fc / c_proj
        **({"input_layernorm.bias": "attn_norm.bias", "post_attention_layernorm.bias": "ffn_norm.bias",
            "mlp.c_fc.weight": "ffn_up.weight", "mlp.c_fc.bias": "ffn_up.bias",
            "mlp.c_proj.weight": "ffn_down.weight", "mlp.c_proj.bias": "ffn_down.bias"} if arch == "starcoder2" else {}),
        # Seed-OSS: its converter names the feed-forward norm post_attention_norm
        **({"post_attention_layernorm.weight": "post_attention_norm.weight"} if arch == "seed_oss" else {}),
        # GLM-4: four norms, and gate_up_proj kept fused (gate rows, then up rows) as its converter keeps it
        **({"post_self_attn_layernorm.weight": "post_attention_norm.weight",
            "post_mlp_layernorm.weight": "post_ffw_norm.weight",
            "mlp.gate_up_proj.weight": "ffn_up.weight"} if arch == "glm4" else {}),
    }[rest]
    return f"blk.{i}.{sub}"


# Architectures whose converter (LlamaModel and its subclasses) permutes Q/K for llama.cpp's
# adjacent-pair RoPE; Qwen2/Qwen3 keep HF's half-split layout (llama.cpp's NEOX rope type).
PERMUTED_QK_ARCHS = ("llama", "smollm3", "mistral3", "granite", "arcee")


# transformers 5's in-memory MoE experts: [E, 2 * ffn, hidden] gate_up_proj, [E, hidden, ffn] down_proj
_EXPERTS_RE = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def gguf_tensors(model, spec: TinySpec) -> dict[str, np.ndarray]:
    """GGUF-named float32 tensors (llama Q/K permuted), in HF order."""
    out = {}
    permuted = spec.arch in PERMUTED_QK_ARCHS
    for hf_name, w in hf_state_numpy(model).items():
        experts = _EXPERTS_RE.match(hf_name)
        if experts:   # transformers' fused experts: llama.cpp's stacks (gate rows first in gate_up)
            p = f"blk.{experts.group(1)}."
            if experts.group(2) == "gate_up_proj":
                half = w.shape[1] // 2
                out[p + "ffn_gate_exps.weight"] = np.ascontiguousarray(w[:, :half], dtype=np.float32)
                out[p + "ffn_up_exps.weight"] = np.ascontiguousarray(w[:, half:], dtype=np.float32)
            else:
                out[p + "ffn_down_exps.weight"] = np.ascontiguousarray(w, dtype=np.float32)
            continue
        name = _gguf_name(hf_name, spec.arch)
        # The converter permutes Q/K biases with their weights (rows of the same projection).
        if permuted and name.endswith(("attn_q.weight", "attn_q.bias")):
            w = permute_qk_for_gguf(w, spec.n_heads)
        elif permuted and name.endswith(("attn_k.weight", "attn_k.bias")):
            w = permute_qk_for_gguf(w, spec.n_kv_heads)
        if spec.arch in ("gemma", "nemotron") and name.endswith("norm.weight"):
            w = w + 1.0   # their converters store 1 + w, the multiplier llama.cpp applies
        out[name] = np.ascontiguousarray(w, dtype=np.float32)
    if spec.rope_scaling is not None and spec.rope_scaling.get("rope_type") == "llama3":
        out["rope_freqs.weight"] = llama3_rope_factors(spec)
    return out


def add_bpe_vocab(w: gguf.GGUFWriter, tables: tuple[list[str], list[int], list[str]], bos_id: int, eos_id: int,
                  add_bos: bool = False, chat_template: str | None = None) -> None:
    """The tokenizer keys convert_hf_to_gguf.py writes for a GPT-2 style BPE vocab; `tables` is
    tokenizer_tables()'s (tokens, types, merges), or a factory's variant of it."""
    tokens, types, merges = tables
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos_id)
    w.add_eos_token_id(eos_id)
    w.add_add_bos_token(add_bos)
    if chat_template is not None:
        w.add_chat_template(chat_template)


def write_and_close(w: gguf.GGUFWriter, path: Path) -> Path:
    """Header, metadata and tensors to `path` (the writer's file); returns path."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def encode_tensor(w: np.ndarray, type_name: str, name: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor (raw_dtype None: data's own float dtype).
    Norms, biases and rope factors (1-D) stay F32 like llama.cpp; 2-D weights take the
    requested type."""
    qtype = gguf.GGMLQuantizationType[type_name]
    if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return w.astype(np.float32), None
    if qtype == gguf.GGMLQuantizationType.F16:
        return w.astype(np.float16), None
    return gguf.quants.quantize(w, qtype), qtype


def write_gguf(model, spec: TinySpec, tok: Tokenizer, path: Path, type_name: str,
               tensors: dict[str, np.ndarray] | None = None,
               raw_overrides: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]] | None = None,
               n_ctx: int | None = None, chat_template: str | None = None, eos_token: str = EOS_TOKEN,
               split_max_tensors: int = 0, small_first_shard: bool = False,
               extra_keys: dict[str, int | bool | list] | None = None, swa_pattern: bool = True) -> Path:
    """Write a GGUF the way convert_hf_to_gguf.py would. `tensors` / `raw_overrides` let the
    bad-file tests drop, reshape or retype tensors; chat_template / eos_token are the
    tokenizer_config.json values the converter's SpecialVocab copies. split_max_tensors > 0
    splits it as `convert_hf_to_gguf.py --split-max-tensors N [--no-tensor-first-split]` does
    (the gguf package's writer: PATH-00001-of-0000N.gguf, ... beside `path`, which is not
    written); the first shard's path is returned."""
    arch = spec.arch
    tensors = gguf_tensors(model, spec) if tensors is None else tensors
    raw_overrides = raw_overrides or {}
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors, small_first_shard=small_first_shard)
    w.add_name(f"tiny-{spec.name}")
    w.add_context_length(n_ctx or spec.n_ctx)
    w.add_embedding_length(spec.hidden)
    w.add_block_count(spec.n_layers)
    w.add_feed_forward_length(spec.ffn)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_rope_freq_base(spec.rope_theta)
    if spec.arch in ("command-r", "cohere2", "starcoder2", "nemotron"):   # LayerNorms: their eps key (Cohere: logit scale)
        w.add_layer_norm_eps(spec.rms_eps)
        if spec.arch != "starcoder2":
            w.add_float32(f"{arch}.logit_scale", spec.logit_scale)
    else:
        w.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.explicit_head_dim is not None:   # the converter writes config.head_dim as key/value lengths
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
    if spec.arch in PERMUTED_QK_ARCHS:       # LlamaModel writes the rotary width; Qwen2Model/Qwen3Model do not
        w.add_rope_dimension_count(spec.head_dim)
    if spec.partial_rotary is not None:      # Glm4Model: the rotated share of each head
        w.add_rope_dimension_count(int(spec.head_dim * spec.partial_rotary))
    rs = spec.rope_scaling or {}
    if rs.get("rope_type") == "yarn":        # the converter's YaRN keys: type, factor, original context
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        if spec.arch == "mistral3":          # its converter's extra keys: mscale_all_dim, the query temperature
            w.add_float32(f"{arch}.rope.scaling.yarn_log_multiplier", rs["mscale_all_dim"])
            w.add_float32(f"{arch}.attention.temperature_scale", rs["llama_4_scaling_beta"])
    if spec.arch == "granite":               # its converter's multiplier keys
        m = spec.multipliers
        w.add_float32(f"{arch}.embedding_scale", m["embedding_multiplier"])
        w.add_float32(f"{arch}.residual_scale", m["residual_multiplier"])
        w.add_float32(f"{arch}.attention.scale", m["attention_multiplier"])
        w.add_float32(f"{arch}.logit_scale", m["logits_scaling"])
    if spec.arch in ("exaone4", "olmo2", "cohere2") and spec.sliding_window:   # the window, one bool per layer
        w.add_sliding_window(spec.sliding_window)
        if swa_pattern:   # False: a file that leaves the layers to llama.cpp's default rule
            w.add_array(f"{arch}.attention.sliding_window_pattern",
                        [t == "sliding_attention" for t in model.config.layer_types])
    if spec.n_expert:                        # the converter's MoE keys (OLMoE's experts are ffn wide)
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(spec.n_expert_used)
    for key, value in (extra_keys or {}).items():   # keys a test adds (a file the converter would not write)
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, value)
    w.add_vocab_size(model.config.vocab_size)
    w.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8}[type_name])

    add_bpe_vocab(w, tokenizer_tables(tok), tok.token_to_id(BOS_TOKEN), tok.token_to_id(eos_token),
                  chat_template=chat_template)

    for name, t in tensors.items():
        data, qtype = raw_overrides[name] if name in raw_overrides else encode_tensor(t, type_name, name)
        w.add_tensor(name, data, raw_dtype=qtype)
    write_and_close(w, path)
    shards = sorted(path.parent.glob(f"{path.stem}-00001-of-*.gguf")) if split_max_tensors else []
    return shards[0] if shards else path


# ----------------------------------------------------------------------------- bundle

@dataclass
class TinyModel:
    """One spec, materialised: the f32 HF reference plus files in every format."""
    spec: TinySpec
    model: object                   # transformers model, f32 eval
    tokenizer: Tokenizer
    root: Path
    hf_dirs: dict = field(default_factory=dict)    # "F32" -> Path
    gguf_files: dict = field(default_factory=dict)  # "Q4_0" -> Path

    @property
    def vocab(self) -> int:
        return self.model.config.vocab_size

    def path(self, fmt: str) -> Path:
        """fmt: 'hf-F32', 'hf-BF16', 'gguf-Q4_0', ..."""
        kind, t = fmt.split("-", 1)
        return self.hf_dirs[t] if kind == "hf" else self.gguf_files[t]


def make_tiny_model(spec: TinySpec, root: Path, tok: Tokenizer | None = None,
                    hf_dtypes=HF_DTYPES, gguf_types=GGUF_TYPES) -> TinyModel:
    tok = tok or build_tokenizer()
    model = build_hf_model(spec, tok.get_vocab_size())
    root = Path(root) / spec.name
    root.mkdir(parents=True, exist_ok=True)
    tm = TinyModel(spec=spec, model=model, tokenizer=tok, root=root)
    for dt in hf_dtypes:
        tm.hf_dirs[dt] = save_hf_dir(model, spec, tok, root / f"hf-{dt}", dt)
    for t in gguf_types:
        tm.gguf_files[t] = write_gguf(model, spec, tok, root / f"{spec.name}-{t}.gguf", t)
    return tm


def make_mix_model(spec: TinySpec, root: Path, tok: Tokenizer, mix: str, mix_overrides) -> TinyModel:
    """A TinyModel with one GGUF, gguf_files[mix], in a llama.cpp quantization mix:
    mix_overrides(tensors) -> write_gguf's raw_overrides (a test-side writer's blocks)."""
    tm = make_tiny_model(spec, root, tok, hf_dtypes=(), gguf_types=())
    tensors = gguf_tensors(tm.model, spec)
    path = tm.root / f"{spec.name}-{mix}.gguf"
    tm.gguf_files[mix] = write_gguf(tm.model, spec, tm.tokenizer, path, "F32", tensors=tensors,
                                    raw_overrides=mix_overrides(tensors))
    return tm


# ----------------------------------------------------------------------------- references

def f16_kv(eager_attention_forward):
    """An architecture's eager attention (transformers' attention signature) over K and V rounded
    to float16, modelling forgert's documented f16 KV cache (design.md). Everything else stays
    f32, so with it the reference differs from forgert only by f32 summation order on F32 weights."""
    def attention(module, query, key, value, attention_mask, **kwargs):
        key = key.to(torch.float16).to(query.dtype)
        value = value.to(torch.float16).to(query.dtype)
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return attention


def use_attention(model, name: str, attention):
    """The same model object, switched to `attention` registered under `name` (returns it for
    chaining). Registering again under a name replaces the function: callers pass the same one."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register(name, attention)
    # A custom attention name needs its mask builder registered too, or no causal mask is made.
    AttentionMaskInterface.register(name, eager_mask)
    model.set_attn_implementation(name)
    return model


def with_f16_kv(model):
    """The same model object, switched to Llama's eager attention over f16 K and V (f16_kv)."""
    from transformers.models.llama.modeling_llama import eager_attention_forward
    return use_attention(model, "forgert_f16_kv", f16_kv(eager_attention_forward))


def _q8_0_round_trip(x: torch.Tensor) -> torch.Tensor:
    """x quantized to Q8_0 along its last dim (blocks of 32: d = amax/127 stored as f16,
    q = round(x/d)) and back, as llama.cpp does to activations before integer dot products."""
    blocks = x.reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127.0
    q = torch.round(blocks / torch.where(d == 0, torch.ones_like(d), d))
    return (q * d.half().float()).reshape(x.shape)


def with_q8_activations(model):
    """A copy of the model whose every nn.Linear sees its input rounded through Q8_0: the
    rounding llama.cpp applies on quantized weights (one int8 part; forgert's decode keeps two).
    Used to show the test bounds reject it."""
    import copy
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(lambda _mod, args: (_q8_0_round_trip(args[0]),) + tuple(args[1:]))
    return m


@torch.no_grad()
def reference_logits(model, ids) -> np.ndarray:
    """f32 logits [len(ids), vocab] of a transformers model, evaluated from an empty context."""
    x = torch.tensor([list(ids)], dtype=torch.long)
    return model(input_ids=x).logits[0].float().numpy()


def storage_rounded_model(model, dtype: str):
    """The HF model with weights rounded to a float storage dtype, computing in f32: what an
    engine that stores weights as F16/BF16 but accumulates in f32 should match. Only
    parameters are rounded: the rotary inv_freq buffer is not a stored weight."""
    import copy
    tdtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(tdtype).to(torch.float32))
    return m


def gguf_dequantized_model(tm: TinyModel, type_name: str):
    """The HF model holding the weights of the GGUF file as the `gguf` package reads and
    dequantizes them (Q/K permutation undone), computing in f32: the reference for files
    transformers' GGUF loader cannot read (smollm3, yarn metadata)."""
    import copy
    from gguf.quants import dequantize
    reverse = {}
    for hf_name in tm.model.state_dict():
        experts = _EXPERTS_RE.match(hf_name)
        if experts:   # each GGUF stack back into its part of the fused parameter
            p = f"blk.{experts.group(1)}."
            if experts.group(2) == "gate_up_proj":
                reverse[p + "ffn_gate_exps.weight"] = (hf_name, 0)
                reverse[p + "ffn_up_exps.weight"] = (hf_name, 1)
            else:
                reverse[p + "ffn_down_exps.weight"] = hf_name
            continue
        try:
            reverse[_gguf_name(hf_name, tm.spec.arch)] = hf_name
        except (KeyError, IndexError):
            continue
    m = copy.deepcopy(tm.model).eval()
    params = dict(m.named_parameters())
    reader = gguf.GGUFReader(str(tm.gguf_files[type_name]))
    seen = set()
    with torch.no_grad():
        for t in reader.tensors:
            if t.name not in reverse:
                continue
            shape = [int(d) for d in reversed(t.shape.tolist())]   # GGUF lists ne0 first
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
            if tm.spec.arch in PERMUTED_QK_ARCHS and t.name.endswith(("attn_q.weight", "attn_k.weight")):
                n = tm.spec.n_heads if "attn_q" in t.name else tm.spec.n_kv_heads
                w = unpermute_qk_from_gguf(w, n)
            if tm.spec.arch in ("gemma", "nemotron") and t.name.endswith("norm.weight"):
                w = w - 1.0   # back to HF's w of x * (1 + w)
            target = reverse[t.name]
            if isinstance(target, tuple):   # half of a fused gate_up_proj
                target, part = target
                half = params[target].shape[1] // 2
                params[target][:, part * half:(part + 1) * half].copy_(torch.from_numpy(w.copy()))
            else:
                params[target].copy_(torch.from_numpy(w.copy()))
            seen.add(target)
    missing = set(params) - seen - {"lm_head.weight"}
    assert not missing, f"GGUF {type_name} lacks {sorted(missing)}"
    return m


def unpermute_qk_from_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of permute_qk_for_gguf: adjacent pairs back to HF's half split."""
    head_dim = w.shape[0] // n_head
    return (w.reshape(n_head, head_dim // 2, 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def gguf_reference_model(tm: TinyModel, type_name: str):
    """transformers' own GGUF loader (dequantizes with the gguf package) in f32. It does not
    read llama3 rope scaling from GGUF, so the original HF config is passed in for that spec."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    path = tm.gguf_files[type_name]
    kwargs = {}
    if tm.spec.rope_scaling is not None:
        kwargs["config"] = tm.model.config
    m = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, **kwargs)
    return m.eval()
