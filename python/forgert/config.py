"""Model hyper-parameters from GGUF metadata or an HF config.json, as the `_core` config dict."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import deltanet, gemma, gemma3n, gemma4, lfm2, mamba2, nemotron_h
from .errors import ModelFormatError
from .rope import longrope_attn_factor, rope_freqs, yarn_mscale

SUPPORTED_ARCHS = ("llama", "mistral3", "granite", "qwen2", "qwen3", "smollm3", "phi3", "olmo2", "exaone4",
                   "glm4", "ernie4_5", "seed_oss", "command-r", "cohere2", "granitemoe", "exaone", "starcoder2", "olmoe",
                   "arcee", "nemotron",
                   "qwen3moe", "qwen2moe", "glm4moe", "ernie4_5-moe", "deepseek2", "minimax-m2",
                   "qwen2vl", "qwen3vl", "qwen3vlmoe", "gpt-oss") + lfm2.GGUF_ARCHS + deltanet.GGUF_ARCHS + gemma.GEMMA_ARCHS + mamba2.GGUF_ARCHS + nemotron_h.GGUF_ARCHS + (gemma4.GGUF_ARCH, gemma3n.GGUF_ARCH)
HF_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "smollm3": "smollm3",
                  "phi3": "phi3", "mixtral": "llama", "qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe",
                  "gpt_oss": "gpt-oss", "ministral3": "mistral3", "granite": "granite", "olmo2": "olmo2",
                  "olmo3": "olmo2", "exaone4": "exaone4", "glm4": "glm4",
                  "ernie4_5": "ernie4_5", "seed_oss": "seed_oss", "cohere": "command-r", "cohere2": "cohere2",
                  "granitemoe": "granitemoe", "exaone": "exaone", "starcoder2": "starcoder2", "olmoe": "olmoe",
                  "arcee": "arcee", "nemotron": "nemotron", "glm4_moe": "glm4moe",
                  "ernie4_5_moe": "ernie4_5-moe", "deepseek_v2": "deepseek2", "deepseek_v3": "deepseek2",
                  "glm4_moe_lite": "deepseek2", "mistral4": "deepseek2", "minimax_m2": "minimax-m2",
                  "lfm2": lfm2.GGUF_ARCH, "lfm2_moe": lfm2.GGUF_MOE_ARCH, **deltanet.HF_TEXT_TYPES, **gemma.HF_GEMMA_MODEL_TYPES,
                  **mamba2.HF_MODEL_TYPES, **nemotron_h.HF_MODEL_TYPES,
                  gemma4.HF_TEXT_TYPE: gemma4.GGUF_ARCH, gemma3n.HF_TEXT_TYPE: gemma3n.GGUF_ARCH}
# The core's forward pass for each architecture: SmolLM3 is Llama with NoPE layers (layer_rope);
# Phi-3 is Llama once its fused qkv / gate_up tensors are split into row ranges (fused_tensors.py).
# Mistral 3 (Ministral 3, Devstral Small 2) is Llama with YaRN and a query temperature past its
# original context (ModelConfig.attn_temperature).
# EXAONE 3 / 3.5 is Llama under GPT-2-like tensor names in its HF checkpoints (safetensors_dir.py).
# Granite (IBM Granite 3) is Llama with four multipliers (ModelConfig's granite fields); Granite
# MoE adds Mixtral's experts (the multiplier scaling their weighted sum).
# OLMo 2 and EXAONE 4 are Llama with their norms moved onto each sub-layer's output (_NORMS) and
# a QK-norm (_QK_NORM); EXAONE 4's global layers run without RoPE (layer_rope). OLMo 3 is OLMo 2
# with three local layers (a window, unscaled RoPE) to one global (YaRN): GGUF olmo2 with a
# sliding window, as llama.cpp's converter writes it.
# GLM-4 (0414) is Llama with Gemma's sandwich norms, q/k/v biases, a fused gate_up and partial
# rotary over adjacent pairs, in its HF checkpoints too. ERNIE 4.5 (dense) is Llama rotating
# adjacent pairs in its HF checkpoints. Seed-OSS is Llama with q/k/v (and optionally output)
# biases, its GGUF naming the feed-forward norm post_attention_norm (loader.py renames it).
# Arcee (AFM-4.5B) is Llama with a plain ReLU-squared feed-forward (_PLAIN_FFN_ARCHS); Nemotron
# (Nemotron-Mini, Minitron) adds LayerNorms that multiply by 1 + w with biases, and partial rotary.
# OLMoE is Llama with OLMo 2's whole-row QK-norm (but pre-norms) and experts not renormalised.
# Cohere (Command-R, Aya Expanse: GGUF command-r; Command R7B: cohere2) is Llama with one LayerNorm
# feeding attention and the MLP side by side ("parallel" norms) and its logits multiplied by
# logit_scale; cohere2's global layers run without RoPE beside windowed local ones.
# GLM-4.5 / 4.6 / 4.7 (glm4moe) is Llama with q/k/v biases, half of each head rotated (half split),
# an optional per-head QK-norm, leading dense layers, then experts under DeepSeek V3's router
# (sigmoid scores, a selection bias, groups, a weight scale) beside an ungated shared expert;
# its multi-token-prediction layers are not run (_glm4moe_gguf, _glm4moe_hf).
# ERNIE 4.5 MoE (ernie4_5-moe) is ERNIE 4.5 with leading dense layers, then experts chosen by
# softmax probability plus a selection bias, always renormalised, beside an ungated shared expert.
# DeepSeek V2 / V3 (deepseek2) is Llama with multi-head latent attention (the cache holds the latent
# row, attention absorbs K's and V's expansions: mla.py) and experts under DeepSeek's routers.
# MiniMax-M2 (minimax-m2) is Llama with OLMo 2's whole-row QK-norm, half of each head rotated and
# Mixtral-style experts under a sigmoid router with a selection bias, renormalised.
# Qwen3.5 / Qwen3.6 (qwen35, qwen35moe) is Qwen3 whose layers are three Gated DeltaNet layers to
# one gated attention layer (deltanet.py), with Qwen3-MoE's experts and a gated shared expert;
# Qwen3-Next (qwen3next) the same with fused recurrent projections (qwen3next.py).
# LFM2 (lfm2) is Llama with a per-head QK-norm whose other layers are short convolutions (lfm2.py).
# Gemma 4 (gemma4) is Gemma 3 with per-layer attention shapes, V from K and V-norm (gemma4.py).
# Gemma 3n (gemma3n) is Gemma 4 E2B / E4B's layers with AltUp streams, LAuReL and sparse gates (gemma3n.py).
# Granite 4.0-H (granitehybrid) is Granite MoE whose other layers are Mamba2 mixers (mamba2.py).
# Nemotron-H (nemotron_h) is Arcee's ReLU-squared MLP after Mamba2 or NoPE attention blocks, some
# layers without an MLP; Nemotron 3 (nemotron_h_moe) has ungated ReLU-squared experts under a
# sigmoid router in place of the MLPs, optionally through a latent (nemotron_h.py).
_CORE_ARCH = {"gemma4": "gemma3", "gemma3n": "gemma3", "granitehybrid": "llama", "nemotron_h": "llama", "nemotron_h_moe": "llama", "lfm2": "llama", "lfm2moe": "llama", "qwen35": "qwen3", "qwen35moe": "qwen3", "qwen3next": "qwen3", "glm4moe": "llama", "ernie4_5-moe": "llama", "deepseek2": "llama", "minimax-m2": "llama", "smollm3": "llama", "phi3": "llama", "qwen3moe": "qwen3", "qwen2moe": "qwen2", "mistral3": "llama",
              "granite": "llama", "olmo2": "llama", "exaone4": "llama", "glm4": "llama", "ernie4_5": "llama",
              "seed_oss": "llama", "command-r": "llama", "cohere2": "llama", "granitemoe": "llama", "exaone": "llama",
              "gemma": "llama", "starcoder2": "llama", "olmoe": "llama", "arcee": "llama", "nemotron": "llama",
              "qwen2vl": "qwen2", "qwen3vl": "qwen3", "qwen3vlmoe": "qwen3"}
# The Qwen vision-language GGUFs' language models (Qwen2-VL / Qwen2.5-VL: qwen2vl; Qwen3-VL:
# qwen3vl, qwen3vlmoe) run on text: their multimodal RoPE gives a text token the same position
# in every section, which is 1-D RoPE; images need the vision encoder (an mmproj file), not run here.
_TEXT_OF_VISION_ARCHS = ("qwen2vl", "qwen3vl", "qwen3vlmoe")
# HF model types whose checkpoints rotate adjacent pairs (x0, x1), (x2, x3).. (llama.cpp's NORM
# type with unpermuted weights); every other HF checkpoint rotates the two halves of each head.
_HF_ADJACENT_PAIR_ROPE = ("glm4", "ernie4_5", "ernie4_5_moe", "cohere", "cohere2")
# Architectures whose norms are LayerNorms (mean subtracted; biases only where _PLAIN_FFN_ARCHS);
# GGUF gives their eps as attention.layer_norm_epsilon.
_LAYER_NORM_ARCHS = ("command-r", "cohere2", "starcoder2", "nemotron")
# Plain (ungated) feed-forwards: arch -> (activation, norm biases, feed-forward biases).
# StarCoder2: tanh-GELU, LayerNorms and projections with biases; Arcee: ReLU squared, no biases;
# Nemotron: ReLU squared after LayerNorms with biases.
_PLAIN_FFN_ARCHS = {"starcoder2": ("gelu_tanh", True, True), "arcee": ("relu_sq", False, False),
                    "nemotron": ("relu_sq", True, False), "nemotron_h": ("relu_sq", False, False),
                    "nemotron_h_moe": ("relu_sq", False, False)}
# Where each architecture puts its norms (absent: "pre", before attention and before the
# feed-forward): "sandwich", pre and on each sub-layer's output before its residual add (Gemma 2/3,
# GLM-4); "post", only on each sub-layer's output (OLMo 2, EXAONE 4); "parallel", one pre-norm
# whose output attention and the MLP both read, their outputs added to the residual together
# (Cohere). And its QK-norm (absent: none): over each head of Q and K ("head") or over the whole
# Q and K projections ("whole").
_NORMS = {"gemma2": "sandwich", "gemma3": "sandwich", "gemma4": "sandwich", "gemma3n": "sandwich", "glm4": "sandwich", "olmo2": "post", "exaone4": "post",
          "command-r": "parallel", "cohere2": "parallel"}
_QK_NORM = {"gemma4": "head", "gemma3n": "head", "lfm2": "head", "lfm2moe": "head", "qwen3": "head", "qwen35": "head", "qwen35moe": "head", "qwen3next": "head", "qwen3moe": "head", "qwen3vl": "head", "qwen3vlmoe": "head", "gemma3": "head",
            "exaone4": "head", "olmo2": "whole", "olmoe": "whole", "minimax-m2": "whole"}
# SmolLM3 leaves RoPE out of every fourth layer: transformers' default no_rope_layer_interval, and
# the step llama.cpp fixes for GGUF arch smollm3 (which has no key for it).
SMOLLM3_NO_ROPE_INTERVAL = 4
# Architectures whose GGUF keeps HF's half-split RoPE layout (llama.cpp's NEOX rope type); the
# converter permutes the others' Q/K rows for adjacent-pair rotation.
_GGUF_NEOX_ARCHS = ("qwen2", "qwen3", "phi3", "olmo2", "olmoe", "exaone", "exaone4", "seed_oss", "starcoder2", "qwen3moe",
                    "qwen2moe", "nemotron", "glm4moe", "minimax-m2",
                    "gpt-oss",
                    "qwen2vl", "qwen3vl", "qwen3vlmoe") + lfm2.GGUF_ARCHS + deltanet.GGUF_ARCHS
# The architectures whose HF Q/K rows llama.cpp's converter permutes (its NORM rope type).
GGUF_PERMUTED_QK_ARCHS = ("llama", "smollm3", "mistral3", "granite", "granitemoe", "arcee", "granitehybrid")
# gpt-oss: llama.cpp fixes its SwiGLU clamp (LLM_FFN_SWIGLU_OAI_MOE: alpha 1.702, limit 7, no GGUF
# key) and its window pattern (every second layer full attention, from layer 1; no GGUF key either).
GPT_OSS_SWIGLU_ALPHA, GPT_OSS_SWIGLU_LIMIT = 1.702, 7.0
GPT_OSS_SWA_PATTERN = 2
# Whether GGUF MoE weights are renormalised over the selected experts when the file has no
# expert_weights_norm key: llama.cpp's choice per architecture (on for llama and qwen3moe).
_GGUF_MOE_NORM_DEFAULT = {"qwen2moe": False, "olmoe": False, "glm4moe": False, "nemotron_h_moe": False}
# The architectures whose GGUF readers take nextn_predict_layers' blocks out of block_count (the
# multi-token-prediction layers, not run); nemotron_h's prepare_gguf takes the key out itself.
_GGUF_NEXTN_READERS = ("deepseek2", "glm4moe", lfm2.GGUF_MOE_ARCH) + deltanet.GGUF_ARCHS
# Keys llama.cpp reads as one value or one per layer (get_key_or_arr); forgert runs one value for
# every layer, so an array reads as its value when all its entries agree.
_PER_LAYER_KEYS = ("feed_forward_length", "expert_feed_forward_length", "expert_used_count",
                   "attention.head_count", "attention.head_count_kv")
# llama.cpp's expert_gating_func values
_GGUF_GATING = {1: "softmax", 2: "sigmoid"}
# The default context is the model's training length, capped to bound KV-cache memory
# (f16 K and V: 2 * 2 bytes * n_layers * kv_dim per position; latent attention one row, not two).
DEFAULT_N_CTX_CAP = 8192


# The kinds of layer (ModelConfig::LayerKind's order): attention, Gated DeltaNet (Qwen3.5), short
# convolution (LFM2), Mamba2 (Granite 4.0-H). The recurrent kinds keep a fixed-size state per sequence.
LAYER_KINDS = ("attention", "gated_delta_net", "short_conv", "mamba2")


@dataclass
class ModelConfig:
    arch: str                 # "llama" | "qwen2" | "qwen3" | "smollm3" | "phi3" | "qwen3moe" | "qwen2moe" (the file's)
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab: int
    context_length: int       # training context length from the model
    rms_eps: float
    rope_theta: float
    rope_neox: bool           # False: adjacent pairs (GGUF llama, permuted weights); True: half split
    rope_scaling: dict | None = None
    # RoPE frequencies, scaling applied: float32 [rope_dim // 2], or [n_tables, rope_dim // 2]
    # when layers differ (Gemma 3's local and global bases; layer_rope picks the row).
    rope_freqs: np.ndarray = field(default=None, repr=False)
    rope_dim: int | None = None      # rotated dims per head (partial rotary); None: all of head_dim
    rope_attn_factor: float = 1.0    # multiplies cos and sin (YaRN's mscale, LongRoPE's factor)
    rope_table_attn_factor: list[float] | None = None   # per RoPE table where they differ (OLMo 3)
    vision_language: str | None = None   # the HF vision-language model_type whose language model this is
    local_rope_theta: float | None = None   # Gemma: its local layers' RoPE base
    layer_rope: list[int] | None = None   # [n_layers] RoPE table per layer, -1: no RoPE; None: table 0
    tied_embeddings: bool = False
    # Sliding-window attention (Mistral 7B v0.1: 4096): a token attends to itself and the
    # sliding_window - 1 before it, in layers sliding_window_from.. (Qwen2's max_window_layers;
    # every layer for Mistral). None: full causal attention.
    sliding_window: int | None = None
    sliding_window_from: int = 0
    # Any other per-layer pattern (interleaved local and global layers): [n_layers] windows,
    # 0 = full attention. When set it decides over sliding_window / sliding_window_from.
    layer_window: list[int] | None = None
    # Mixture of experts (Mixtral; llama.cpp writes it as arch "llama" with expert_count):
    # n_expert > 0 routes each token to n_expert_used SwiGLU experts of width expert_ffn_dim,
    # weighted by the router's softmax, renormalised over the selected experts when
    # expert_norm_topk; shared_ffn_dim > 0 adds a sigmoid-gated shared expert (Qwen2-MoE).
    n_expert: int = 0
    n_expert_used: int = 0
    expert_ffn_dim: int = 0
    expert_norm_topk: bool = True
    # gpt-oss's clamped SwiGLU experts: limit > 0 clamps (gate <= limit, |up| <= limit) and
    # uses (up + 1) * gate * sigmoid(alpha * gate); 0: silu(gate) * up.
    swiglu_limit: float = 0.0
    swiglu_alpha: float = GPT_OSS_SWIGLU_ALPHA
    shared_ffn_dim: int = 0
    # DeepSeek V3's router (GLM-4.5; ModelConfig in src/cpp/model/config.h): "sigmoid" scores each
    # expert alone; a selection bias (exp_probs_b) steers the choice only; the experts fall in
    # expert_groups groups of which expert_groups_used are chosen from; the weights times
    # expert_weights_scale. shared_expert_gated: Qwen2-MoE's sigmoid gate on the shared expert.
    router: str = "softmax"
    router_select_bias: bool = False
    expert_groups: int = 1
    expert_groups_used: int = 1
    expert_weights_scale: float = 1.0
    shared_expert_gated: bool = True
    n_dense_lead: int = 0            # leading layers with a dense feed-forward (width ffn_dim) in an MoE model
    mtp_layers: int = 0              # multi-token-prediction layers after the n_layers, in the file, not run
    qk_norm_of_file: str | None = None   # the QK-norm where the file decides it (GLM-4.5: use_qk_norm)
    # Multi-head latent attention (DeepSeek V2 / V3; ModelConfig in src/cpp/model/config.h): the
    # latent's rank (> 0: MLA), Q's low rank (0: a plain q projection), each head's value width.
    # head_dim is then the query / key head (nope + rope dims), rope_dim the rope part.
    mla_kv_lora: int = 0
    mla_q_lora: int = 0
    mla_v_head_dim: int = 0
    # What replaces attention per layer (LAYER_KINDS; ModelConfig::LayerKind in
    # src/cpp/model/config.h), None: attention everywhere; the recurrent layers' convolution width.
    layer_kinds: list[str] | None = None
    ssm_conv_kernel: int = 0
    # Gated DeltaNet hybrids (deltanet.py): key and value heads and their widths; the value heads'
    # order (True: llama.cpp's tiled, False: HF's grouped); and the attention layers' output gate
    # (each head's query followed by its gate in attn_q).
    ssm_k_heads: int = 0
    ssm_v_heads: int = 0
    ssm_k_dim: int = 0
    ssm_v_dim: int = 0
    ssm_v_tiled: bool = False
    attn_output_gate: bool = False
    # Layers without a feed-forward (0; Nemotron-H), and which file blocks each layer's mixer and MLP
    # come from (nemotron_h.layer_tensors); None: one block a layer, every layer with a feed-forward.
    layer_ffn: list[int] | None = None
    layer_blocks: list | None = None
    rope_sections: list[int] | None = None   # Qwen3.5's multimodal RoPE sections (text: 1-D RoPE; kept for export)
    # Gemma 2 / 3 (gemma.py); the defaults are Llama's.
    ffn_act: str = "silu"            # "gelu_tanh": GeGLU feed-forward
    embed_scale: float = 1.0         # embeddings times this (Gemma: sqrt(dim))
    attn_scale: float | None = None  # attention score scale; None: 1 / sqrt(head_dim)
    attn_softcap: float = 0.0        # > 0: scores become cap * tanh(s / cap)
    final_softcap: float = 0.0       # > 0: logits soft-capped the same way
    norm_shift: float = 0.0          # added to every RMSNorm weight on load (HF Gemma stores w for 1 + w)
    # Llama 4 / Mistral 3 query temperature (beta, floor): q *= 1 + beta ln(floor(pos / floor) + 1),
    # 1 below position `floor` (the YaRN original context). None: none.
    attn_temperature: tuple | None = None
    # Granite: each sub-layer's output times residual_scale before the residual add; the logits
    # divided by logit_scale (its embedding and attention multipliers are embed_scale, attn_scale).
    residual_scale: float = 1.0
    logit_scale: float = 1.0
    # Gemma 4 (gemma4.py; ModelConfig in src/cpp/model/config.h): per-layer head widths and KV heads
    # (None: head_dim / n_kv_heads everywhere), layers whose V is K's projection, V's weightless
    # RMSNorm, each layer's output scalar (None: 1).
    layer_head_dim: list[int] | None = None
    layer_n_kv_heads: list[int] | None = None
    layer_v_is_k: list[int] | None = None
    v_norm: bool = False
    layer_out_scale: list[float] | None = None
    # Gemma 4 E2B / E4B: per-layer embeddings' width (0: none) and scale, each layer's K/V source
    # (KV sharing; None: its own), per-layer feed-forward widths (None: ffn_dim everywhere).
    ple_dim: int = 0
    ple_embed_scale: float = 1.0
    layer_kv_source: list[int] | None = None
    layer_ffn_dim: list[int] | None = None
    moe_beside_dense: bool = False   # Gemma 4 26B-A4B: a dense MLP beside the experts (gemma4.py)
    # Gemma 3n (gemma3n.py): AltUp's stream count (0: none), LAuReL's rank, whether the corrected
    # active stream is scaled, each layer's gate cut (the normal quantile of its sparsity; None: none).
    ple_vocab: int = 0   # the per-layer table's rows when fewer than vocab (Gemma 3n HF); 0: vocab
    altup_n: int = 0
    laurel_rank: int = 0
    altup_correct_scale: bool = False
    layer_sparsity: list[float] | None = None
    # Nemotron 3 (nemotron_h.py): ungated ReLU-squared experts and shared expert, down(relu(up x)^2);
    # moe_latent_dim > 0 (Nemotron 3 Super): the experts run on a latent of that width.
    experts_relu_sq: bool = False
    moe_latent_dim: int = 0

    def has_layer_kind(self, kind: str) -> bool:
        return self.layer_kinds is not None and kind in self.layer_kinds

    def kv_bytes_per_position(self) -> int:
        """The f16 K and V bytes one position of one sequence takes: attention layers only (latent
        attention's one row, V being read from it)."""
        attn = [l for l in range(self.n_layers) if (self.layer_kinds is None or self.layer_kinds[l] == "attention")
                and (self.layer_kv_source is None or self.layer_kv_source[l] == l)]   # KV-sharing layers keep none
        rows = 1 if self.mla_kv_lora else 2
        return sum(rows * self.kv_dim_of(l) * 2 for l in attn)

    def kv_dim_of(self, layer: int) -> int:
        """A layer's K (or V) row width: its KV heads times its head width (Gemma 4's differ per layer);
        latent attention's cached latent row, kv_lora + rope."""
        if self.mla_kv_lora:
            return self.mla_kv_lora + self.rotated_dims
        heads = self.n_kv_heads if self.layer_n_kv_heads is None else self.layer_n_kv_heads[layer]
        return heads * (self.head_dim if self.layer_head_dim is None else self.layer_head_dim[layer])

    def state_bytes(self) -> int:
        """The f32 recurrent states one sequence keeps, whatever its length (the core's conv_state_ /
        ssm_state_): per Gated DeltaNet layer its convolution's last inputs and a [k_dim, v_dim] state
        per value head; per Mamba2 layer the same sizes (its groups' B and C as keys, the heads' x as
        values: a [head_dim, d_state] state per head); per short-convolution layer its convolution's
        last inputs."""
        if self.layer_kinds is None:
            return 0
        history = max(self.ssm_conv_kernel - 1, 0)
        delta = (history * (2 * self.ssm_k_heads * self.ssm_k_dim + self.ssm_v_heads * self.ssm_v_dim)
                 + self.ssm_v_heads * self.ssm_k_dim * self.ssm_v_dim)
        return 4 * ((self.layer_kinds.count("gated_delta_net") + self.layer_kinds.count("mamba2")) * delta
                    + self.layer_kinds.count("short_conv") * history * self.dim)

    def windows(self) -> list[int]:
        """The attention window of each layer (0: full causal attention)."""
        if self.layer_window is not None:
            return [int(w) for w in self.layer_window]
        w = int(self.sliding_window or 0)
        return [w if i >= self.sliding_window_from else 0 for i in range(self.n_layers)]

    @property
    def norms(self) -> str:
        """"pre", "sandwich", "post" or "parallel" (_NORMS)."""
        return _NORMS.get(self.arch, "pre")

    @property
    def norm_kind(self) -> str:
        """"rms", or "layer" (LayerNorm: _LAYER_NORM_ARCHS; StarCoder2's with biases)."""
        return "layer" if self.arch in _LAYER_NORM_ARCHS else "rms"

    @property
    def qk_norm(self) -> str:
        """"none", "head" or "whole" (_QK_NORM, or the file's own where it decides: qk_norm_of_file)."""
        return self.qk_norm_of_file or _QK_NORM.get(self.arch, "none")

    @property
    def rotated_dims(self) -> int:
        return self.head_dim if self.rope_dim is None else self.rope_dim

    def features(self) -> list[str]:
        """What this model's forward pass does beyond a plain Llama, for `forgert info`."""
        out = []
        if self.arch in ("qwen2", "qwen2moe", "qwen2vl"):
            out.append("QKV bias")
        if self.arch in _TEXT_OF_VISION_ARCHS or self.vision_language:
            out.append("the language model of a vision model: text only (images need its vision encoder, "
                       "which forgert does not run)")
        if self.qk_norm == "head":
            out.append("QK-norm (RMSNorm on each head of Q and K)")
        elif self.qk_norm == "whole":
            out.append("QK-norm (RMSNorm over all of Q and over all of K)")
        if self.n_expert:
            out.append(f"mixture of experts: {self.n_expert_used} of {self.n_expert} experts per token (width "
                       f"{self.expert_ffn_dim}{', renormalised' if self.expert_norm_topk else ''})"
                       + (f", a shared expert of width {self.shared_ffn_dim}" if self.shared_ffn_dim else ""))
            if self.router == "sigmoid" or self.router_select_bias:
                out.append(f"{self.router} router" + (" with a selection bias" if self.router_select_bias else "")
                           + (f", {self.expert_groups_used} of {self.expert_groups} expert groups"
                              if self.expert_groups > 1 else "")
                           + (f", weights times {self.expert_weights_scale:g}" if self.expert_weights_scale != 1 else ""))
            if self.experts_relu_sq:
                out.append("ungated ReLU-squared experts and shared expert (Nemotron 3)"
                           + (f", run on a latent of width {self.moe_latent_dim}" if self.moe_latent_dim else ""))
            if self.n_dense_lead:
                out.append(f"dense feed-forward (width {self.ffn_dim}) in the first {self.n_dense_lead} "
                           f"layer{'s' if self.n_dense_lead > 1 else ''}")
        if self.mla_kv_lora:
            out.append(f"multi-head latent attention (latent {self.mla_kv_lora}"
                       + (f", query rank {self.mla_q_lora}" if self.mla_q_lora else "")
                       + f"; heads of {self.head_dim - self.rotated_dims} + {self.rotated_dims} rotated dims, "
                         f"values of {self.mla_v_head_dim})")
        if self.has_layer_kind("short_conv"):
            out.append(f"short convolutions in {self.layer_kinds.count('short_conv')} of {self.n_layers} layers "
                       f"(width {self.ssm_conv_kernel}); a fixed-size state per sequence in those layers")
        if self.has_layer_kind("gated_delta_net"):
            n_rec = self.layer_kinds.count("gated_delta_net")
            out.append(f"Gated DeltaNet in {n_rec} of {self.n_layers} layers (key heads {self.ssm_k_heads} x "
                       f"{self.ssm_k_dim}, value heads {self.ssm_v_heads} x {self.ssm_v_dim}, convolution "
                       f"{self.ssm_conv_kernel}); a fixed-size state per sequence in those layers")
        if self.has_layer_kind("mamba2"):
            out.append(f"Mamba2 in {self.layer_kinds.count('mamba2')} of {self.n_layers} layers ({self.ssm_v_heads} "
                       f"heads of {self.ssm_v_dim}, {self.ssm_k_heads} group{'s' if self.ssm_k_heads > 1 else ''}, "
                       f"state {self.ssm_k_dim}, convolution {self.ssm_conv_kernel}); a fixed-size state per "
                       f"sequence in those layers")
        if self.layer_ffn is not None and not all(self.layer_ffn):
            out.append(f"a feed-forward in {sum(map(bool, self.layer_ffn))} of {self.n_layers} layers (Nemotron-H's "
                       f"{sum(1 for _, m in self.layer_blocks or [] if m is not None) + self.n_layers} blocks: "
                       f"each mixer with the MLP or MoE block after it)")
        if self.attn_output_gate:
            out.append("gated attention output (sigmoid of a per-head gate)")
        if self.mtp_layers:
            out.append(f"{self.mtp_layers} multi-token-prediction layer{'s' if self.mtp_layers > 1 else ''} "
                       f"in the file, not run")
        if self.arch == "phi3":
            out.append("fused qkv and gate_up (split zero-copy)")
        if self.layer_head_dim is not None:   # Gemma 4
            shapes = sorted({(h, k) for h, k in zip(self.layer_head_dim, self.layer_n_kv_heads or
                                                     [self.n_kv_heads] * self.n_layers)})
            out.append("per-layer attention shapes: " + ", ".join(f"{k} KV heads of {h}" for h, k in shapes))
        if self.layer_v_is_k and any(self.layer_v_is_k):
            out.append(f"V is K's projection in layers {', '.join(str(i) for i, v in enumerate(self.layer_v_is_k) if v)}")
        if self.v_norm:
            out.append("V RMS-normed over each head (no weight)")
        if self.layer_out_scale is not None:
            out.append("each layer's output times its scalar")
        if self.ple_dim:
            out.append(f"per-layer embeddings ({self.ple_dim} per layer)")
        if self.altup_n:
            out.append(f"AltUp: {self.altup_n} streams; LAuReL of rank {self.laurel_rank}")
        if self.layer_sparsity is not None:
            sparse = [l for l, m in enumerate(self.layer_sparsity) if m]
            out.append(f"sparse gates (gaussian top-k) in layers {sparse[0]}-{sparse[-1]}")
        shared = [l for l, s in enumerate(self.layer_kv_source or []) if s != l]
        if shared:
            out.append(f"KV sharing: layers {shared[0]}-{shared[-1]} read earlier layers' K/V")
        if self.layer_ffn_dim is not None:
            out.append(f"per-layer MLP widths {sorted(set(self.layer_ffn_dim))}")
        if self.head_dim * self.n_heads != self.dim:
            out.append(f"head_dim {self.head_dim} (q width {self.head_dim * self.n_heads} != dim {self.dim})")
        s = self.rope_scaling or {}
        if s.get("type") == "yarn":
            out.append(f"YaRN x{s['factor']:g} over an original context of {s['original_max_position_embeddings']} "
                       f"(attention factor {self.rope_attn_factor:.4g})")
        elif s.get("type") == "dynamic":
            out.append(f"dynamic NTK x{s['factor']:g} past {s['max_position_embeddings']} tokens (computed for n_ctx)")
        elif s.get("type") in ("linear", "llama3"):
            out.append(f"{s['type']} RoPE scaling x{s['factor']:g}")
        elif s.get("type") == "longrope":
            out.append(f"longrope RoPE scaling over an original context of {s['original_max_position_embeddings']} "
                       f"(attention factor {self.rope_attn_factor:.4g}; long factors when n_ctx exceeds it)")
        elif s:
            out.append(f"{s['type']} RoPE scaling")
        if self.residual_scale != 1.0 or self.logit_scale != 1.0:
            out.append(f"sub-layer outputs times {self.residual_scale:g}, logits divided by {self.logit_scale:g}")
        if self.attn_temperature is not None:
            out.append(f"query temperature 1 + {self.attn_temperature[0]:g} ln(floor(pos / "
                       f"{self.attn_temperature[1]}) + 1)")
        if self.rope_dim is not None and self.rope_dim != self.head_dim:
            out.append(f"partial rotary ({self.rope_dim} of {self.head_dim} dims)")
        nope = [i for i, t in enumerate(self.layer_rope or []) if t < 0]
        if nope:
            out.append(f"no RoPE (NoPE) in layers {', '.join(map(str, nope))}")
        if self.layer_rope is not None and self.rope_freqs is not None and self.rope_freqs.ndim == 2:
            out.append(f"{self.rope_freqs.shape[0]} RoPE tables (local / global layers)")
        if self.ffn_act == "gelu_tanh":
            out.append("GeGLU feed-forward (tanh GELU)")
        if self.embed_scale != 1.0:
            out.append(f"embeddings scaled by {self.embed_scale:g}")
        if self.attn_scale:
            out.append(f"attention scale {self.attn_scale:.6g}")
        if self.attn_softcap:
            out.append(f"attention-logit soft-capping {self.attn_softcap:g}")
        if self.final_softcap:
            out.append(f"final-logit soft-capping {self.final_softcap:g}")
        if self.norms == "sandwich":
            out.append("post-attention and post-feed-forward norms")
        elif self.norms == "post":
            out.append("norms on each sub-layer's output only (no pre-norms)")
        elif self.norms == "parallel":
            out.append("attention and feed-forward in parallel from one pre-norm")
        plain = _PLAIN_FFN_ARCHS.get(self.arch)
        if self.norm_kind == "layer":
            out.append("LayerNorm (with bias)" if plain and plain[1] else "LayerNorm (no bias)")
        if plain:
            out.append(f"plain {'GELU' if plain[0] == 'gelu_tanh' else 'ReLU-squared'} feed-forward"
                       f"{' with biases' if plain[2] else ''} (no gate)")
        windows = self.windows()
        if any(windows):
            slid = [i for i, w in enumerate(windows) if w]
            where = "every layer" if len(slid) == self.n_layers else f"layers {', '.join(map(str, slid))}"
            out.append(f"sliding window {max(windows)} in {where}")
        return out

    def freqs_for(self, n_ctx: int) -> np.ndarray:
        """rope_freqs for a context of n_ctx: dynamic NTK's base and LongRoPE's short or long
        factors depend on it (rope.rope_freqs, rope.longrope_factors)."""
        if (self.rope_scaling or {}).get("type") in ("dynamic", "longrope"):
            return rope_freqs(self.rope_theta, self.rotated_dims, self.rope_scaling, n_ctx)
        return self.rope_freqs

    def core_dict(self, n_ctx: int) -> dict:
        d = {
            "arch": _CORE_ARCH.get(self.arch, self.arch), "n_layers": self.n_layers, "dim": self.dim, "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim, "ffn_dim": self.ffn_dim,
            "vocab": self.vocab, "n_ctx": int(n_ctx), "rms_eps": float(self.rms_eps),
            "rope_neox": bool(self.rope_neox), "rope_freqs": self.freqs_for(n_ctx),
            # 0 with per-layer head widths: each layer rotates its whole head
            "rope_dim": int(self.rope_dim or (0 if self.layer_head_dim else self.head_dim)), "rope_attn_factor": float(self.rope_attn_factor),
            "layer_window": self.windows(), "norms": self.norms, "qk_norm": self.qk_norm, "norm_kind": self.norm_kind,
        }
        if self.arch in _PLAIN_FFN_ARCHS:
            act, norm_bias, ffn_bias = _PLAIN_FFN_ARCHS[self.arch]
            d.update(norm_bias=norm_bias, ffn_gated=False, ffn_bias=ffn_bias, ffn_act=act)
        if self.layer_rope is not None:
            d["layer_rope"] = [int(t) for t in self.layer_rope]
        if self.rope_table_attn_factor is not None:
            d["rope_table_attn_factor"] = [float(f) for f in self.rope_table_attn_factor]
        if self.attn_temperature is not None:
            d.update(attn_temp_beta=float(self.attn_temperature[0]), attn_temp_floor=int(self.attn_temperature[1]))
        if self.residual_scale != 1.0 or self.logit_scale != 1.0:
            d.update(residual_scale=float(self.residual_scale), logit_scale=float(self.logit_scale))
        if self.n_expert:
            d.update(n_expert=self.n_expert, n_expert_used=self.n_expert_used, expert_ffn_dim=self.expert_ffn_dim,
                     expert_norm_topk=bool(self.expert_norm_topk), shared_ffn_dim=self.shared_ffn_dim,
                     router=self.router, router_select_bias=bool(self.router_select_bias),
                     expert_groups=self.expert_groups, expert_groups_used=self.expert_groups_used,
                     expert_weights_scale=float(self.expert_weights_scale),
                     shared_expert_gated=bool(self.shared_expert_gated), n_dense_lead=self.n_dense_lead,
                     moe_beside_dense=bool(self.moe_beside_dense))
            if self.experts_relu_sq:
                d.update(experts_relu_sq=True, moe_latent_dim=int(self.moe_latent_dim))
        if self.mla_kv_lora:
            d.update(mla_kv_lora=self.mla_kv_lora, mla_q_lora=self.mla_q_lora, mla_v_head_dim=self.mla_v_head_dim)
        if self.layer_kinds is not None:
            d.update(layer_kind=[LAYER_KINDS.index(k) for k in self.layer_kinds], ssm_conv_kernel=self.ssm_conv_kernel)
        if self.has_layer_kind("gated_delta_net") or self.has_layer_kind("mamba2"):
            d.update(ssm_k_heads=self.ssm_k_heads, ssm_v_heads=self.ssm_v_heads, ssm_k_dim=self.ssm_k_dim,
                     ssm_v_dim=self.ssm_v_dim, ssm_v_tiled=bool(self.ssm_v_tiled))
        if self.attn_output_gate:
            d["attn_output_gate"] = True
        if self.layer_ffn is not None:
            d["layer_ffn"] = [int(f) for f in self.layer_ffn]
        if self.swiglu_limit:
            d.update(swiglu_limit=float(self.swiglu_limit), swiglu_alpha=float(self.swiglu_alpha))
        if self.embed_scale != 1.0 or self.attn_scale:   # Gemma, Granite
            d.update(embed_scale=float(self.embed_scale), attn_scale=float(self.attn_scale or 0.0))
        if self.arch in gemma.GEMMA_ARCHS + (gemma4.GGUF_ARCH, gemma3n.GGUF_ARCH):
            d.update(ffn_act=self.ffn_act, attn_softcap=float(self.attn_softcap), final_softcap=float(self.final_softcap))
        for key in ("layer_head_dim", "layer_n_kv_heads", "layer_v_is_k", "layer_kv_source", "layer_ffn_dim"):
            if getattr(self, key) is not None:
                d[key] = [int(v) for v in getattr(self, key)]
        if self.v_norm:
            d["v_norm"] = True
        if self.layer_out_scale is not None:
            d["layer_out_scale"] = [float(v) for v in self.layer_out_scale]
        if self.ple_dim:
            d.update(ple_dim=int(self.ple_dim), ple_embed_scale=float(self.ple_embed_scale))
            if self.ple_vocab:
                d["ple_vocab"] = int(self.ple_vocab)
        if self.altup_n:
            d.update(altup_n=int(self.altup_n), laurel_rank=int(self.laurel_rank),
                     altup_correct_scale=bool(self.altup_correct_scale))
            if self.layer_sparsity is not None:
                d["layer_sparsity"] = [float(v) for v in self.layer_sparsity]
        return d


def _fail(source, problem):
    raise ModelFormatError(f"{source}: {problem}")


# llama.cpp's architectures of the families forgert runs whose math forgert does not compute,
# each refused with what it is (src/models/<name>.cpp) rather than as an unknown name.
_GGUF_NEAR_ARCHS = {
    "llama-embed": "Llama-Embed-Nemotron (LlamaBidirectionalModel), a Llama embedding model with bidirectional "
                   "attention and no output head; forgert runs causal attention only",
    "gemma-embedding": "EmbeddingGemma, a Gemma 3 embedding model with bidirectional attention (symmetric "
                       "windows) and sentence-transformers dense layers; forgert runs causal attention only",
    "granite_swa": "Granite with sliding-window attention layers, attention sinks and a per-layer RoPE "
                   "pattern, which forgert's granite does not have",
    "gemma4-assistant": "Gemma 4's speculative-decoding assistant (it reads the target model's hidden states "
                        "and shared K/V), not a model that runs on its own; load the Gemma 4 model itself",
    # their relatives whose math differs from what forgert runs
    "deepseek32": "DeepSeek V3.2: deepseek2's latent attention with a lightning indexer choosing the keys each "
                  "query attends (DeepSeek Sparse Attention)",
    "glm-dsa": "GLM-5: deepseek2's latent attention with DeepSeek Sparse Attention's indexer",
    "deepseek4": "DeepSeek V4: sparse attention with an indexer and hyper-connections (several residual streams)",
    "deepseek2-ocr": "DeepSeek-OCR's language model: DeepSeek's experts under plain multi-head attention, "
                     "not latent attention",
    "glm5-next": "GLM-5-Next: Kimi Delta Attention layers, latent attention with a sparse-attention indexer "
                 "and hyper-connections",
    "kimi-linear": "Kimi Linear: Kimi Delta Attention layers with latent attention",
    "kimi-k3": "Kimi K3: Kimi Delta Attention layers with latent attention and cross-layer residual attention",
    "minimax-m3": "MiniMax-M3: MiniMax Sparse Attention with DeepSeek-style experts",
    "graniteswitch": "Granite Switch: LoRA adapters chosen per token",
}


@dataclass(frozen=True)
class TensorCensus:
    """What a model's files hold, to bound every count their headers claim before anything is
    sized from it (a block_count of 2**32 would otherwise build 2**32 layers of tensor specs)."""
    n_tensors: int     # tensors in the file(s)
    max_extent: int    # the largest dimension of any of them

    @classmethod
    def of(cls, shapes) -> "TensorCensus":
        shapes = list(shapes)
        return cls(len(shapes), max((int(d) for s in shapes for d in s), default=0))


def _get_int(meta, key, source, default=None, minimum=1, maximum=None, held_by=""):
    """An integer field; with `maximum`, one the file can hold (`held_by` says why it cannot be larger)."""
    v = meta.get(key, default)
    if v is None:
        _fail(source, f"missing metadata '{key}'")
    if isinstance(v, (bool, float)) or not isinstance(v, (int, np.integer)) or v < minimum:
        _fail(source, f"metadata '{key}' must be an integer >= {minimum}, got {v!r}")
    if maximum is not None and v > maximum:
        _fail(source, f"metadata '{key}' = {v} is more than {held_by} ({maximum})")
    return int(v)


def _layer_bound(census: TensorCensus) -> dict:
    return dict(maximum=census.n_tensors, held_by="the number of tensors in the file")


def _extent_bound(census: TensorCensus) -> dict:
    return dict(maximum=census.max_extent, held_by="the largest tensor dimension in the file")


def _get_float(meta, key, source, default=None, positive=True):
    v = meta.get(key, default)
    if v is None:
        _fail(source, f"missing metadata '{key}'")
    is_number = isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
    if not is_number or not math.isfinite(v) or (positive and v <= 0):
        _fail(source, f"metadata '{key}' must be a positive number, got {v!r}")
    return float(v)


# The native core's bounds (ModelConfig::validate, src/cpp/model/weights.cpp), far above any
# released model: a header past them is refused by name before any size is computed from it.
_CORE_LIMITS = {"n_layers": 1024, "dim": 1 << 16, "n_heads": 1 << 12, "n_kv_heads": 1 << 12, "head_dim": 1024,
                "ffn_dim": 1 << 20, "vocab": 1 << 24}
_CORE_MAX_Q_DIM = 1 << 20


def _check_bounds(cfg: ModelConfig, source):
    for field, limit in _CORE_LIMITS.items():
        if getattr(cfg, field) > limit:
            _fail(source, f"{field} = {getattr(cfg, field)} exceeds forgert's limit of {limit}")
    if cfg.n_heads * cfg.head_dim > _CORE_MAX_Q_DIM:
        _fail(source, f"n_heads * head_dim = {cfg.n_heads} * {cfg.head_dim} exceeds forgert's limit of "
                      f"{_CORE_MAX_Q_DIM}")


def _check_rope_dim(rope_dim: int, head_dim: int, source, what: str):
    if not 2 <= rope_dim <= head_dim or rope_dim % 2:
        _fail(source, f"{what} {rope_dim} must be even, from 2 to head_dim {head_dim}")


def _set_rope_tables(cfg: ModelConfig):
    """rope_freqs (for the model's whole context: LongRoPE's table is picked again per n_ctx by
    freqs_for) and the cos/sin scale."""
    cfg.rope_freqs = rope_freqs(cfg.rope_theta, cfg.rotated_dims, cfg.rope_scaling, cfg.context_length)
    cfg.rope_attn_factor = (cfg.rope_scaling or {}).get("attn_factor", 1.0)


def _check_geometry(cfg: ModelConfig, source, census: TensorCensus):
    q_dim = cfg.n_heads * cfg.head_dim
    if q_dim > census.max_extent:
        _fail(source, f"{cfg.n_heads} heads x head_dim {cfg.head_dim} = {q_dim} is more than the largest "
                      f"tensor dimension in the file ({census.max_extent})")
    if cfg.n_heads % cfg.n_kv_heads:
        _fail(source, f"{cfg.n_heads} attention heads is not a multiple of {cfg.n_kv_heads} KV heads")
    if cfg.head_dim % 2:
        _fail(source, f"head_dim {cfg.head_dim} must be even for RoPE")


def _check_factors(values, n, what, source) -> np.ndarray:
    factors = np.asarray(values, dtype=np.float64).reshape(-1)
    if factors.shape != (n,) or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        _fail(source, f"{what} must hold {n} positive factors")
    return factors


def _gguf_longrope(meta, p, source, rope_dim, context_length, long_short) -> dict:
    """LongRoPE as llama.cpp's converter writes it: rope_factors_long/short.weight, the original
    context in rope.scaling.original_context_length, the cos/sin scale in rope.scaling.attn_factor."""
    long_f, short_f = long_short
    original = _get_int(meta, p + "rope.scaling.original_context_length", source, default=context_length, minimum=2)
    return {"type": "longrope",
            "long_factor": _check_factors(long_f, rope_dim // 2, "rope_factors_long.weight", source),
            "short_factor": _check_factors(short_f, rope_dim // 2, "rope_factors_short.weight", source),
            "original_max_position_embeddings": original,
            "attn_factor": _get_float(meta, p + "rope.scaling.attn_factor", source, default=1.0)}


def config_from_gguf(meta: dict, vocab: int, source: str, census: TensorCensus, rope_factors=None,
                     longrope_factors=None) -> ModelConfig:
    """meta: GGUF metadata; vocab: rows of token_embd.weight; census: the file's tensors;
    rope_factors: rope_freqs.weight values or None; longrope_factors: (rope_factors_long.weight,
    rope_factors_short.weight) values or None."""
    arch = meta.get("general.architecture")
    if arch is None:
        _fail(source, "missing metadata 'general.architecture'")
    if arch == "clip":   # llama.cpp's mmproj files: a vision encoder and projector
        _fail(source, "a vision encoder (an mmproj file), not a language model: pass the model's own GGUF; "
                      "forgert runs vision-language models on text and does not run their vision encoders")
    if arch in _GGUF_NEAR_ARCHS:
        _fail(source, f"architecture '{arch}' is not supported: {_GGUF_NEAR_ARCHS[arch]}")
    if arch not in SUPPORTED_ARCHS:
        _fail(source, f"unsupported architecture '{arch}' (forgert runs: {', '.join(SUPPORTED_ARCHS)})")
    causal = meta.get(arch + ".attention.causal", True)   # llama.cpp's hparams.causal_attn
    if not (isinstance(causal, (bool, np.bool_)) and bool(causal)):
        _fail(source, f"metadata '{arch}.attention.causal' is {causal!r}: bidirectional attention (an encoder / "
                      "embedding model) is not supported: forgert runs causal attention only")
    if arch in (gemma4.GGUF_ARCH, gemma3n.GGUF_ARCH):   # per-layer attention shapes; AltUp, LAuReL: their own readers
        cfg = (gemma4.config_from_gguf(meta, vocab, source, census, rope_factors) if arch == gemma4.GGUF_ARCH
               else gemma3n.config_from_gguf(meta, vocab, source, census))
        _gguf_rope_attn_factor(meta, arch + ".", cfg, source)
        return cfg
    p = arch + "."
    blocks_meta = meta
    if arch in nemotron_h.GGUF_ARCHS:   # per-block arrays as the scalars read below (its blocks: apply_gguf)
        meta = nemotron_h.prepare_gguf(meta, p, source)
    else:   # lfm2 / granitehybrid read head_count_kv's per-layer list themselves
        meta = _uniform_per_layer(meta, p, source, lfm2.GGUF_ARCHS + mamba2.GGUF_ARCHS)
    extent = _extent_bound(census)
    n_heads = _get_int(meta, p + "attention.head_count", source, **extent)
    dim = _get_int(meta, p + "embedding_length", source, **extent)
    head_dim = _get_int(meta, p + "attention.key_length", source, default=dim // n_heads, **extent)
    value_len = _get_int(meta, p + "attention.value_length", source, default=head_dim)
    if arch == "deepseek2":   # latent attention: the heads' own widths (a split-MLA file's key_length is the latent's)
        head_dim, value_len = _deepseek2_head_widths(meta, p, source, head_dim, value_len, extent)
    elif value_len != head_dim:
        _fail(source, f"attention.value_length {value_len} differs from key_length {head_dim}")
    rope_dim = _get_int(meta, p + "rope.dimension_count", source, default=head_dim, **extent)
    _check_rope_dim(rope_dim, head_dim, source, "rope.dimension_count")
    context_length = _get_int(meta, p + "context_length", source)
    theta = _get_float(meta, p + "rope.freq_base", source, default=10000.0)

    scaling = None
    kind = meta.get(p + "rope.scaling.type", "none")
    if not isinstance(kind, str):
        _fail(source, f"metadata '{p}rope.scaling.type' must be a string, got {kind!r}")
    legacy_linear = meta.get(p + "rope.scale_linear")
    if kind == "linear" or (kind == "none" and legacy_linear not in (None, 1.0)):
        factor = _get_float(meta, p + "rope.scaling.factor", source, default=legacy_linear)
        if factor != 1.0:
            scaling = {"type": "linear", "factor": factor}
    elif kind == "yarn":
        scaling = _gguf_yarn(meta, p, source)
    elif kind != "none":
        _fail(source, f"unsupported RoPE scaling type '{kind}'")
    if rope_factors is not None:
        if scaling is not None:
            _fail(source, "both rope_freqs.weight and rope.scaling are set")
        scaling = {"type": "factors", "factors": _check_factors(rope_factors, rope_dim // 2, "rope_freqs.weight",
                                                                source)}
    if longrope_factors is not None:
        if scaling is not None:
            _fail(source, "rope_factors_long/short.weight given with another RoPE scaling")
        scaling = _gguf_longrope(meta, p, source, rope_dim, context_length, longrope_factors)
    window = meta.get(p + "attention.sliding_window")

    lfm2_kinds = None
    if arch in lfm2.GGUF_ARCHS + mamba2.GGUF_ARCHS:   # head_count_kv lists every layer, 0 for a recurrent one
        n_kv_heads, lfm2_kinds = lfm2.gguf_kv_heads(meta, p, source)
        n_kv_heads = _get_int({"kv": n_kv_heads}, "kv", source, **extent)
    else:
        n_kv_heads = _get_int(meta, p + "attention.head_count_kv", source, default=n_heads, **extent)
    cfg = ModelConfig(
        arch=arch,
        n_layers=_get_int(meta, p + "block_count", source, **_layer_bound(census)),
        dim=dim, n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        ffn_dim=_get_int(meta, p + "feed_forward_length", source, **extent),
        vocab=vocab,
        context_length=context_length,
        rms_eps=_get_float(meta, p + ("attention.layer_norm_epsilon" if arch in _LAYER_NORM_ARCHS
                                      else "attention.layer_norm_rms_epsilon"), source),
        rope_theta=theta,
        # llama.cpp's converter permutes llama Q/K rows for adjacent-pair rotation; qwen2 keeps HF's layout.
        rope_neox=(arch in _GGUF_NEOX_ARCHS),
        rope_scaling=scaling,
        rope_dim=None if rope_dim == head_dim else rope_dim,
        # phi3's converter writes 0 for "no window" (Phi-4)
        sliding_window=(_get_int(meta, p + "attention.sliding_window", source, minimum=0) or None
                        if window is not None else None),
    )
    _gguf_experts(meta, p, cfg, source, census)
    if arch == "deepseek2":
        _deepseek2_gguf(meta, p, cfg, source, value_len)
    if arch in deltanet.GGUF_ARCHS:
        deltanet.apply_gguf(meta, p, cfg, source, census.max_extent)
    if arch in lfm2.GGUF_ARCHS:
        lfm2.apply_gguf(meta, p, cfg, lfm2_kinds, source)
    if arch in mamba2.GGUF_ARCHS:
        mamba2.apply_gguf(meta, p, cfg, lfm2_kinds, source, census.max_extent)
    if arch in nemotron_h.GGUF_ARCHS:
        nemotron_h.apply_gguf(blocks_meta, p, cfg, source, census.max_extent)
    if arch == lfm2.GGUF_MOE_ARCH:   # leading dense layers, a sigmoid router with its bias (exp_probs_b)
        if not cfg.n_expert:
            _fail(source, "lfm2moe without expert_count")
        _gguf_deepseek_style_moe(meta, p, cfg, source, default_gating=2)
        cfg.router_select_bias = True
        _check_router(cfg, source)
    _check_bounds(cfg, source)
    _check_geometry(cfg, source, census)
    if arch == "smollm3":
        cfg.layer_rope = _no_rope_every(SMOLLM3_NO_ROPE_INTERVAL, cfg.n_layers)
    if arch in mamba2.GGUF_ARCHS:   # Granite's multipliers; a dense model's MLP is the shared one
        _granite_gguf(meta, p, cfg, source)
        if not cfg.n_expert:
            cfg.ffn_dim = _get_int(meta, p + "expert_shared_feed_forward_length", source, default=cfg.ffn_dim,
                                   **extent)
    if arch in ("granite", "granitemoe"):
        _granite_gguf(meta, p, cfg, source)
        if cfg.shared_ffn_dim:
            _fail(source, f"{arch} with a shared expert (granitemoeshared's, added ungated) is not supported")
    if arch == "mistral3":
        _attn_temperature(cfg, _get_float(meta, p + "attention.temperature_scale", source, default=0.0,
                                          positive=False), source, "attention.temperature_scale")
    if arch == "gpt-oss":
        _gpt_oss_gguf(meta, p, cfg, source)
    if arch == "exaone4":
        _exaone4_gguf(meta, p, cfg, source)
    if arch in ("glm4", "ernie4_5"):
        _no_mrope_or_mtp(meta, p, source)
    if arch == "glm4moe":
        _glm4moe_gguf(meta, p, cfg, source)
    if arch == "minimax-m2":
        _minimax_m2_gguf(meta, p, cfg, source)
    if arch == "ernie4_5-moe":
        _no_mrope_or_mtp(meta, p, source)
        _ernie4_5_moe_gguf(meta, p, cfg, source)
    if arch in ("command-r", "cohere2"):
        _cohere_gguf(meta, p, cfg, source)
    if arch in _TEXT_OF_VISION_ARCHS + deltanet.MROPE_ARCHS + ("glm4moe",):   # multimodal RoPE: 1-D on text
        sections = _int_list(meta, p + "rope.dimension_sections", source)
        if any(s < 0 for s in sections) or sum(sections) > (rope_dim // 2):
            _fail(source, f"rope.dimension_sections {sections} do not fit the {rope_dim // 2} rotated pairs")
    _set_rope_tables(cfg)
    if arch == "olmo2" and cfg.sliding_window:   # OLMo 3, as llama.cpp's olmo2 loader reads it
        local = gemma.swa_layers(meta.get(p + "attention.sliding_window_pattern", 4), cfg.n_layers, source)
        local_theta = _get_float(meta, p + "rope.freq_base_swa", source, default=cfg.rope_theta)
        _olmo3_layers(cfg, local, cfg.sliding_window, local_theta, None, source)
    if arch in gemma.GEMMA_ARCHS:
        gemma.apply_gguf(meta, cfg, source)
    _gguf_rope_attn_factor(meta, p, cfg, source)
    _unread_expert_groups(meta, p, cfg, source)
    if arch not in _GGUF_NEXTN_READERS and _get_int(meta, p + "nextn_predict_layers", source, default=0, minimum=0):
        # llama.cpp reads the key for every architecture (its blocks after the model's own, not run)
        _fail(source, f"{arch} with nextn_predict_layers (multi-token-prediction layers) is not supported")
    return cfg


def _gguf_rope_attn_factor(meta, p, cfg: ModelConfig, source) -> None:
    """rope.scaling.attn_factor beside no scaling, linear scaling or rope_freqs.weight: llama.cpp
    multiplies every rotation's cos and sin by it whatever the scaling (llama_context's
    yarn_attn_factor *= hparams.rope_attn_factor; the converter writes it so beside a YaRN ramp it
    bakes into rope_freqs). YaRN and LongRoPE read it with their other keys."""
    if (cfg.rope_scaling or {}).get("type") in ("yarn", "longrope"):
        return
    factor = _get_float(meta, p + "rope.scaling.attn_factor", source, default=1.0)
    if factor == 1.0:
        return
    if np.ndim(cfg.rope_freqs) > 1 or cfg.rope_table_attn_factor is not None:
        _fail(source, f"rope.scaling.attn_factor {factor:g} beside per-layer RoPE tables is not supported")
    cfg.rope_attn_factor = factor


def _unread_expert_groups(meta, p, cfg: ModelConfig, source) -> None:
    """llama.cpp reads expert_group_count for every architecture and chooses each token's experts
    within the best expert_group_used_count groups wherever it is above 1 (build_moe_ffn); forgert
    reads it where the architecture's reader does (deepseek2, glm4moe, lfm2moe), and refuses it
    elsewhere rather than route over all the experts."""
    if cfg.expert_groups != 1:
        return
    groups = _get_int(meta, p + "expert_group_count", source, default=1)
    if groups > 1:
        _fail(source, f"expert_group_count {groups} (experts chosen within the best expert_group_used_count groups) "
                      f"on {p[:-1]} is not supported")


def _uniform_per_layer(meta: dict, p: str, source, kv_lists_own: tuple) -> dict:
    """meta with each of _PER_LAYER_KEYS that the file writes per layer (an array, as llama.cpp's
    get_key_or_arr reads it) as its one value where every layer's agrees; an array whose layers
    differ is refused by name. kv_lists_own: architectures whose head_count_kv list says which
    layers attend (read by their own modules), left as it is."""
    out = None
    for name in _PER_LAYER_KEYS:
        key = p + name
        v = meta.get(key)
        if not isinstance(v, (list, tuple, np.ndarray)) or (name == "attention.head_count_kv"
                                                            and p[:-1] in kv_lists_own):
            continue
        values = _int_list(meta, key, source)
        if not values:
            _fail(source, f"metadata '{key}' is an empty array")
        if len(set(values)) != 1:
            _fail(source, f"metadata '{key}' differs between layers ({values}): per-layer widths and counts "
                          f"are not supported")
        out = dict(meta) if out is None else out
        out[key] = values[0]
    return meta if out is None else out


def _gpt_oss_gguf(meta, p, cfg: ModelConfig, source):
    """llama.cpp's gpt-oss: the clamped SwiGLU it fixes rather than reads; the windowed layers
    from attention.sliding_window_pattern (a period or one bool per layer, as its load_swa_pattern
    reads it) or, where the file has none, every layer but each GPT_OSS_SWA_PATTERN-th (layers 0,
    2, .. sliding, as HF's layer_types alternate sliding_attention / full_attention). Its loader
    reads a rope.freq_base_swa for the windowed layers too: one other than rope.freq_base is
    refused (forgert runs gpt-oss's layers at one base)."""
    if not cfg.n_expert:
        _fail(source, "gpt-oss without expert_count")
    if not cfg.sliding_window:
        _fail(source, "gpt-oss without attention.sliding_window")
    cfg.swiglu_limit, cfg.swiglu_alpha = GPT_OSS_SWIGLU_LIMIT, GPT_OSS_SWIGLU_ALPHA
    local = gemma.swa_layers(meta.get(p + "attention.sliding_window_pattern", GPT_OSS_SWA_PATTERN), cfg.n_layers,
                             source)
    cfg.layer_window = [cfg.sliding_window if is_local else 0 for is_local in local]
    theta_swa = _get_float(meta, p + "rope.freq_base_swa", source, default=cfg.rope_theta)
    if theta_swa != cfg.rope_theta:
        _fail(source, f"gpt-oss with rope.freq_base_swa {theta_swa} beside rope.freq_base {cfg.rope_theta} "
                      f"(the windowed layers at their own RoPE base) is not supported")


def _gpt_oss_windows(cfg: ModelConfig) -> list:
    return [cfg.sliding_window if i % GPT_OSS_SWA_PATTERN < GPT_OSS_SWA_PATTERN - 1 else 0
            for i in range(cfg.n_layers)]


def _gpt_oss_hf(hf: dict, cfg: ModelConfig, source):
    """transformers' GptOss: a softmax over the selected router logits (the same as renormalising
    over them), SwiGLU clamped at swiglu_limit (GptOssExperts fixes alpha at 1.702), the windows
    from layer_types (llama.cpp's alternation where a config lacks them)."""
    if not cfg.n_expert:
        _fail(source, "gpt_oss without num_local_experts")
    if not cfg.sliding_window:
        _fail(source, "gpt_oss without sliding_window")
    quant = hf.get("quantization_config")
    if quant is not None and (not isinstance(quant, dict) or quant.get("quant_method") != "mxfp4"):
        _fail(source, f"quantization_config {quant!r} is not supported (gpt-oss: quant_method mxfp4 only)")
    cfg.expert_norm_topk = True
    cfg.swiglu_limit = _get_float(hf, "swiglu_limit", source, default=GPT_OSS_SWIGLU_LIMIT)
    cfg.swiglu_alpha = GPT_OSS_SWIGLU_ALPHA
    if cfg.layer_window is None:
        cfg.layer_window = _gpt_oss_windows(cfg)


def _check_experts(cfg: ModelConfig, source):
    if cfg.n_expert_used > cfg.n_expert:
        _fail(source, f"{cfg.n_expert_used} experts used per token of only {cfg.n_expert}")


def _gguf_experts(meta, p, cfg: ModelConfig, source, census: TensorCensus):
    """llama.cpp's MoE keys: expert_count, expert_used_count, expert_feed_forward_length (the
    experts' width where it differs from feed_forward_length), expert_shared_feed_forward_length,
    expert_weights_norm (llama.cpp renormalises the selected weights for llama and qwen3moe)."""
    if _get_int(meta, p + "expert_count", source, default=0, minimum=0) == 0:
        return
    extent = _extent_bound(census)
    cfg.n_expert = _get_int(meta, p + "expert_count", source, **extent)
    cfg.n_expert_used = _get_int(meta, p + "expert_used_count", source, **extent)
    cfg.expert_ffn_dim = _get_int(meta, p + "expert_feed_forward_length", source, default=cfg.ffn_dim, **extent)
    cfg.shared_ffn_dim = _get_int(meta, p + "expert_shared_feed_forward_length", source, default=0, minimum=0,
                                  **extent)
    norm = meta.get(p + "expert_weights_norm", _GGUF_MOE_NORM_DEFAULT.get(p[:-1], True))
    if not isinstance(norm, (bool, np.bool_)):
        _fail(source, f"metadata '{p}expert_weights_norm' must be a bool, got {norm!r}")
    cfg.expert_norm_topk = bool(norm)
    _check_experts(cfg, source)


def _hf_experts(hf: dict, cfg: ModelConfig, source, census: TensorCensus):
    """Mixtral (num_local_experts; the selected weights always renormalised) and Qwen-MoE
    (num_experts, moe_intermediate_size, norm_topk_prob) routers."""
    key = "num_local_experts" if "num_local_experts" in hf else "num_experts"
    if not hf.get(key):
        return
    extent = _extent_bound(census)
    cfg.n_expert = _get_int(hf, key, source, **extent)
    cfg.n_expert_used = _get_int(hf, "num_experts_per_tok", source, **extent)
    cfg.expert_ffn_dim = _get_int(hf, "moe_intermediate_size", source, default=cfg.ffn_dim, **extent)
    cfg.shared_ffn_dim = _get_int(hf, "shared_expert_intermediate_size", source, default=0, minimum=0, **extent)
    # Mixtral always renormalises; Qwen-MoE when norm_topk_prob (transformers' default: false, Qwen3-Next's true).
    # Granite MoE: a softmax over the top-k logits, the same as renormalising.
    cfg.expert_norm_topk = (True if hf.get("model_type") in ("mixtral", "granitemoe", "granitemoehybrid", "minimax_m2", "qwen3_5_moe_text")
                            else bool(hf.get("norm_topk_prob", hf.get("model_type") == "qwen3_next")))
    if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
        _fail(source, "dense layers between MoE layers (mlp_only_layers, decoder_sparse_step) are not supported")
    _check_experts(cfg, source)


def _check_router(cfg: ModelConfig, source) -> None:
    """The DeepSeek V3 router's settings fit the experts (the core checks the same, less kindly)."""
    if cfg.n_dense_lead > cfg.n_layers:
        _fail(source, f"{cfg.n_dense_lead} leading dense layers of only {cfg.n_layers}")
    g, used = cfg.expert_groups, cfg.expert_groups_used
    if g > 1:
        if g > 64 or cfg.n_expert % g or cfg.n_expert // g < 2:
            _fail(source, f"{cfg.n_expert} experts do not split into {g} groups of 2 or more (at most 64 groups)")
        if not 1 <= used <= g or used * (cfg.n_expert // g) < cfg.n_expert_used:
            _fail(source, f"{used} of {g} expert groups cannot hold the {cfg.n_expert_used} experts used per token")


def _glm4moe_gguf(meta, p, cfg: ModelConfig, source) -> None:
    """llama.cpp's glm4moe keys: block_count counts the nextn_predict_layers (multi-token
    prediction, not run here) after the model's own; leading_dense_block_count dense layers of
    feed_forward_length, then experts of expert_feed_forward_length with expert_shared_count
    shared experts (one SwiGLU of their summed width, ungated); expert_gating_func (sigmoid when
    absent, as llama.cpp), a selection bias per expert (exp_probs_b), expert_group_count /
    expert_group_used_count, expert_weights_scale and expert_weights_norm (off when absent);
    rope.dimension_sections where the file is a vision model's language model (GLM-4.5V), run on text."""
    if not cfg.n_expert:
        _fail(source, "glm4moe without expert_count")
    if any(_int_list(meta, p + "rope.dimension_sections", source)):
        # GLM-4.5V / 4.6V's language model, as llama.cpp's converter writes it: its multimodal
        # RoPE gives a text token the same position in every section, 1-D RoPE (checked below)
        cfg.vision_language = "glm4v_moe"
    _gguf_deepseek_style_moe(meta, p, cfg, source, default_gating=2)
    cfg.router_select_bias = True
    _check_router(cfg, source)


def _gguf_deepseek_style_moe(meta, p, cfg: ModelConfig, source, default_gating: int) -> None:
    """The keys llama.cpp's glm4moe and deepseek2 share: nextn_predict_layers (multi-token
    prediction blocks after the model's own, counted in block_count, not run here),
    leading_dense_block_count dense layers, expert_shared_count shared experts (one ungated SwiGLU
    of their summed width), expert_gating_func (default_gating when absent), expert_group_count /
    expert_group_used_count and expert_weights_scale (0: none, as llama.cpp reads it)."""
    nextn = _get_int(meta, p + "nextn_predict_layers", source, default=0, minimum=0)
    if nextn >= cfg.n_layers:
        _fail(source, f"nextn_predict_layers = {nextn} leaves none of the {cfg.n_layers} blocks to run")
    cfg.n_layers -= nextn
    cfg.mtp_layers = nextn
    cfg.n_dense_lead = _get_int(meta, p + "leading_dense_block_count", source, default=0, minimum=0)
    shared = _get_int(meta, p + "expert_shared_count", source, default=0, minimum=0, maximum=cfg.n_expert,
                      held_by="expert_count")
    cfg.shared_ffn_dim = cfg.expert_ffn_dim * shared
    cfg.shared_expert_gated = False
    gating = _get_int(meta, p + "expert_gating_func", source, default=default_gating)
    if gating not in _GGUF_GATING:
        _fail(source, f"expert_gating_func {gating} is not supported (1: softmax, 2: sigmoid)")
    cfg.router = _GGUF_GATING[gating]
    cfg.expert_groups = _get_int(meta, p + "expert_group_count", source, default=1)
    cfg.expert_groups_used = _get_int(meta, p + "expert_group_used_count", source, default=1)
    scale = _get_float(meta, p + "expert_weights_scale", source, default=1.0, positive=False)
    cfg.expert_weights_scale = scale if scale > 0 else 1.0


def _glm4moe_hf(hf: dict, cfg: ModelConfig, source, census: TensorCensus) -> None:
    """transformers' Glm4MoeConfig: n_routed_experts of moe_intermediate_size, num_experts_per_tok,
    n_shared_experts (one ungated SwiGLU of their summed width), first_k_dense_replace dense layers
    of intermediate_size, Glm4MoeTopkRouter's sigmoid scores with e_score_correction_bias, n_group /
    topk_group, norm_topk_prob and routed_scaling_factor; use_qk_norm (GLM-4.5 355B). The
    checkpoint's num_nextn_predict_layers layers after num_hidden_layers are not run (nor by
    transformers)."""
    extent = _extent_bound(census)
    cfg.n_expert = _get_int(hf, "n_routed_experts", source, **extent)
    cfg.n_expert_used = _get_int(hf, "num_experts_per_tok", source, **extent)
    cfg.expert_ffn_dim = _get_int(hf, "moe_intermediate_size", source, **extent)
    cfg.shared_ffn_dim = cfg.expert_ffn_dim * _get_int(hf, "n_shared_experts", source, default=0, minimum=0,
                                                       maximum=cfg.n_expert, held_by="n_routed_experts")
    cfg.shared_expert_gated = False
    cfg.n_dense_lead = _get_int(hf, "first_k_dense_replace", source, default=0, minimum=0)
    cfg.router, cfg.router_select_bias = "sigmoid", True
    cfg.expert_groups = _get_int(hf, "n_group", source, default=1)
    cfg.expert_groups_used = _get_int(hf, "topk_group", source, default=1)
    cfg.expert_norm_topk = bool(hf.get("norm_topk_prob", True))
    cfg.expert_weights_scale = _get_float(hf, "routed_scaling_factor", source, default=1.0)
    cfg.mtp_layers = _get_int(hf, "num_nextn_predict_layers", source, default=0, minimum=0)
    cfg.qk_norm_of_file = "head" if hf.get("use_qk_norm") else "none"
    if hf.get("hidden_act", "silu") != "silu":
        _fail(source, f"hidden_act '{hf.get('hidden_act')}' is not supported (GLM-4.5 uses silu)")
    _check_experts(cfg, source)
    _check_router(cfg, source)


def _minimax_m2_gguf(meta, p, cfg: ModelConfig, source) -> None:
    """llama.cpp's minimax-m2: expert_gating_func (sigmoid as its converter writes it), the
    selection bias (exp_probs_b) required, the weights always renormalised, times
    expert_weights_scale where the file has one."""
    if not cfg.n_expert:
        _fail(source, "minimax-m2 without expert_count")
    gating = _get_int(meta, p + "expert_gating_func", source, default=2)
    if gating not in _GGUF_GATING:
        _fail(source, f"expert_gating_func {gating} is not supported (1: softmax, 2: sigmoid)")
    cfg.router, cfg.router_select_bias, cfg.expert_norm_topk = _GGUF_GATING[gating], True, True
    scale = _get_float(meta, p + "expert_weights_scale", source, default=1.0, positive=False)
    cfg.expert_weights_scale = scale if scale > 0 else 1.0
    _check_router(cfg, source)


def _ernie4_5_moe_gguf(meta, p, cfg: ModelConfig, source) -> None:
    """llama.cpp's ernie4_5-moe keys: leading_dense_block_count dense layers, then an MoE layer every
    interleave_moe_layer_step (only 1, every layer, is supported: llama.cpp loads experts for
    every later layer too); the shared experts' summed width (expert_shared_feed_forward_length,
    read by _gguf_experts), added ungated; the softmax weights always renormalised, times
    expert_weights_scale. Whether the router has its selection bias (exp_probs_b, optional in
    llama.cpp) is read from the tensors (loader.py)."""
    if not cfg.n_expert:
        _fail(source, "ernie4_5-moe without expert_count")
    step = _get_int(meta, p + "interleave_moe_layer_step", source, default=1)
    if step != 1:
        _fail(source, f"interleave_moe_layer_step = {step} (dense layers between MoE layers) is not supported")
    cfg.n_dense_lead = _get_int(meta, p + "leading_dense_block_count", source, default=0, minimum=0)
    cfg.shared_expert_gated = False
    cfg.expert_norm_topk = True
    scale = _get_float(meta, p + "expert_weights_scale", source, default=1.0, positive=False)
    cfg.expert_weights_scale = scale if scale > 0 else 1.0
    _check_router(cfg, source)


def _ernie4_5_moe_hf(hf: dict, cfg: ModelConfig, source, census: TensorCensus) -> None:
    """transformers' Ernie4_5_MoeConfig (ERNIE's own key names, or transformers' aliases):
    moe_num_experts of moe_intermediate_size, moe_k per token, moe_num_shared_experts (one
    ungated SwiGLU of their summed width), MoE layers from moe_layer_start_index to the last
    (moe_layer_end_index -1 or the last layer, moe_layer_interval 1: other patterns are refused);
    the router's softmax probabilities plus moe_statics' e_score_correction_bias choose, the
    chosen probabilities renormalised (moe_norm_min's clamp of their sum is below any sum)."""
    extent = _extent_bound(census)
    get = lambda key, alias, **kw: _get_int(hf, key if key in hf else alias, source, **kw)   # noqa: E731
    cfg.n_expert = get("moe_num_experts", "num_experts", **extent)
    cfg.n_expert_used = get("moe_k", "num_experts_per_tok", **extent)
    cfg.expert_ffn_dim = _get_int(hf, "moe_intermediate_size", source, **extent)
    cfg.shared_ffn_dim = cfg.expert_ffn_dim * _get_int(hf, "moe_num_shared_experts", source, default=0, minimum=0,
                                                       maximum=cfg.n_expert, held_by="moe_num_experts")
    cfg.shared_expert_gated = False
    cfg.n_dense_lead = _get_int(hf, "moe_layer_start_index", source, default=1, minimum=0)
    end = hf.get("moe_layer_end_index", -1)
    interval = hf.get("moe_layer_interval", 1)
    if end not in (-1, cfg.n_layers - 1) or interval != 1:
        _fail(source, f"MoE layers other than every layer from moe_layer_start_index to the last "
                      f"(moe_layer_end_index {end!r}, moe_layer_interval {interval!r}) are not supported")
    cfg.router, cfg.router_select_bias, cfg.expert_norm_topk = "softmax", True, True
    _check_experts(cfg, source)
    _check_router(cfg, source)


def _deepseek2_head_widths(meta, p, source, key_len: int, value_len: int, extent: dict) -> tuple:
    """(query / key head width, value head width) of a deepseek2 GGUF: key_length_mla and
    value_length_mla where the converter split attn_kv_b into attn_k_b / attn_v_b (its key_length
    and value_length then describe the latent), else key_length and value_length."""
    k = _get_int(meta, p + "attention.key_length_mla", source, default=key_len, **extent)
    v = _get_int(meta, p + "attention.value_length_mla", source, default=value_len, **extent)
    if v > k:
        _fail(source, f"value heads of {v} wider than the key heads of {k} are not supported")
    return k, v


def _mla_attention_scale(cfg: ModelConfig) -> float:
    """1 / sqrt(query head width), times YaRN's mscale(factor, mscale_all_dim)^2 where the model
    scales its context with it (transformers' yarn_apply_mscale, llama.cpp's kq_scale)."""
    s = cfg.rope_scaling or {}
    m = yarn_mscale(s["factor"], s["mscale_all_dim"]) if s.get("type") == "yarn" and s.get("mscale_all_dim") else 1.0
    return cfg.head_dim ** -0.5 * m * m


def _deepseek_moe(cfg: ModelConfig, source) -> None:
    """What DeepSeek's routers share, after the keys are read: an ungated shared expert, and the checks."""
    cfg.shared_expert_gated = False
    _check_experts(cfg, source)
    _check_router(cfg, source)


def _deepseek2_gguf(meta, p, cfg: ModelConfig, source, value_len: int) -> None:
    """llama.cpp's deepseek2 keys: attention.kv_lora_rank, attention.q_lora_rank (absent or 0: a
    plain q projection, as DeepSeek-V2-Lite), rope.dimension_count (the rope part of each head);
    leading_dense_block_count dense layers, then experts (expert_shared_count shared, ungated)
    under expert_gating_func (softmax when absent, as llama.cpp reads DeepSeek V2 files) with an
    optional selection bias (exp_probs_b, read from the tensors), expert_group_count /
    expert_group_used_count, expert_weights_norm (off when absent) and expert_weights_scale;
    nextn_predict_layers (multi-token prediction) after the model's own layers, not run."""
    if not cfg.n_expert:
        _fail(source, "deepseek2 without expert_count")
    cfg.mla_kv_lora = _get_int(meta, p + "attention.kv_lora_rank", source)
    cfg.mla_q_lora = _get_int(meta, p + "attention.q_lora_rank", source, default=0, minimum=0)
    cfg.mla_v_head_dim = value_len
    cfg.n_kv_heads = cfg.n_heads          # a split-MLA file says 1 (its latent is one shared head)
    if cfg.rope_dim is None:
        _fail(source, "deepseek2 without rope.dimension_count below the head width")
    # expert_gating_func absent: softmax (DeepSeek V2's files), or sigmoid for GLM-4.7-Flash's, as
    # llama.cpp tells them apart (its trunk of 47 or 48 layers and its vocabulary)
    nextn = meta.get(p + "nextn_predict_layers", 0)
    glm47_lite = cfg.n_layers - (nextn if isinstance(nextn, int) else 0) in (47, 48) and cfg.vocab == 154880
    _gguf_deepseek_style_moe(meta, p, cfg, source, default_gating=2 if glm47_lite else 1)
    cfg.attn_scale = _mla_attention_scale(cfg)
    beta = _get_float(meta, p + "attention.temperature_scale", source, default=0.0, positive=False)
    if beta:   # Mistral 4 / Mistral Large 3: Llama 4's query temperature from temperature_length on
        cfg.attn_temperature = (beta, _get_int(meta, p + "attention.temperature_length", source))
    _deepseek_moe(cfg, source)


def _deepseek_hf(hf: dict, cfg: ModelConfig, source, census: TensorCensus) -> None:
    """transformers' DeepseekV2Config / DeepseekV3Config: kv_lora_rank, q_lora_rank (null: a plain
    q_proj), qk_nope_head_dim + qk_rope_head_dim per query / key head, v_head_dim; RoPE over
    adjacent pairs (V2 always, V3 unless rope_interleave is false); first_k_dense_replace dense
    layers, then n_routed_experts of moe_intermediate_size with n_shared_experts shared, routed by
    DeepSeek V2's softmax (topk_method greedy; group_limited_greedy's per-group maximum is refused
    with groups) or V3's sigmoid router (noaux_tc: e_score_correction_bias, n_group / topk_group,
    norm_topk_prob), the weights times routed_scaling_factor; num_nextn_predict_layers not run.
    GLM-4.7-Flash (glm4_moe_lite) is DeepSeek V3's attention with GLM-4.5's router (V3's) and
    mlp_layer_types naming the dense and the MoE layers (the dense ones must lead). Mistral 4 is
    DeepSeek V3's attention with Llama 4's query temperature (rope_parameters' llama_4_scaling_beta
    from YaRN's original context on) and a softmax router choosing within groups (top-2 sums),
    renormalised when norm_topk_prob."""
    extent = _extent_bound(census)
    if hf.get("attention_bias"):
        _fail(source, "attention_bias=true on latent attention is not supported")
    if hf.get("moe_layer_freq", 1) != 1:
        _fail(source, f"moe_layer_freq {hf.get('moe_layer_freq')!r} (dense layers between MoE layers) is not supported")
    nope = _get_int(hf, "qk_nope_head_dim", source, **extent)
    rope = _get_int(hf, "qk_rope_head_dim", source, **extent)
    cfg.head_dim, cfg.rope_dim, cfg.n_kv_heads = nope + rope, rope, cfg.n_heads
    cfg.mla_kv_lora = _get_int(hf, "kv_lora_rank", source, **extent)
    cfg.mla_q_lora = _get_int(hf, "q_lora_rank", source, default=0, minimum=0, **extent) if hf.get("q_lora_rank") else 0
    cfg.mla_v_head_dim = _get_int(hf, "v_head_dim", source, **extent)
    if cfg.mla_v_head_dim > cfg.head_dim:
        _fail(source, f"v_head_dim {cfg.mla_v_head_dim} wider than the key heads of {cfg.head_dim} is not supported")
    cfg.rope_neox = hf.get("model_type") != "deepseek_v2" and hf.get("rope_interleave", True) is False
    cfg.n_expert = _get_int(hf, "n_routed_experts", source, **extent)
    cfg.n_expert_used = _get_int(hf, "num_experts_per_tok", source, **extent)
    cfg.expert_ffn_dim = _get_int(hf, "moe_intermediate_size", source, **extent)
    cfg.shared_ffn_dim = cfg.expert_ffn_dim * _get_int(hf, "n_shared_experts", source, default=0, minimum=0,
                                                       maximum=cfg.n_expert, held_by="n_routed_experts")
    cfg.n_dense_lead = _get_int(hf, "first_k_dense_replace", source, default=0, minimum=0)
    kinds = hf.get("mlp_layer_types")
    if kinds is not None:   # GLM-4.7-Flash: ["dense", ..., "sparse", ...]
        lead = next((i for i, k in enumerate(kinds) if k != "dense"), len(kinds)) if isinstance(kinds, list) else -1
        if lead < 0 or len(kinds) != cfg.n_layers or any(k != "sparse" for k in kinds[lead:]):
            _fail(source, f"mlp_layer_types must be dense layers then sparse ones, one per layer, got {kinds!r}")
        cfg.n_dense_lead = lead
    cfg.expert_weights_scale = _get_float(hf, "routed_scaling_factor", source, default=1.0)
    groups, used = hf.get("n_group") or 1, hf.get("topk_group") or 1
    method = hf.get("topk_method", {"deepseek_v2": "greedy", "mistral4": "softmax_groups"}.get(hf.get("model_type"),
                                                                                              "noaux_tc"))
    if method in ("noaux_tc", "softmax_groups"):
        # groups by top-2 sum; V3's sigmoid scores with a selection bias, Mistral4TopkRouter's softmax
        cfg.router = "sigmoid" if method == "noaux_tc" else "softmax"
        cfg.router_select_bias = method == "noaux_tc"
        cfg.expert_groups = _get_int({"n_group": groups}, "n_group", source)
        cfg.expert_groups_used = _get_int({"topk_group": used}, "topk_group", source)
        cfg.expert_norm_topk = bool(hf.get("norm_topk_prob", True))
    elif method in ("greedy", "group_limited_greedy"):   # V2: softmax over all, not renormalised
        if method == "group_limited_greedy" and groups > 1:
            _fail(source, "topk_method group_limited_greedy with n_group > 1 (DeepSeek-V2's choice of groups by "
                          "their largest score) is not supported")
        cfg.router, cfg.expert_norm_topk = "softmax", False
    else:
        _fail(source, f"topk_method '{method}' is not supported (greedy, group_limited_greedy, noaux_tc)")
    cfg.mtp_layers = _get_int(hf, "num_nextn_predict_layers", source, default=0, minimum=0)
    cfg.attn_scale = _mla_attention_scale(cfg)
    if hf.get("model_type") == "mistral4":
        beta = (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("llama_4_scaling_beta") or 0.0
        _attn_temperature(cfg, _get_float({"llama_4_scaling_beta": beta}, "llama_4_scaling_beta", source,
                                          positive=False), source, "llama_4_scaling_beta")
    _deepseek_moe(cfg, source)


def _local_rope_global_nope(cfg: ModelConfig, local: list, window: int) -> None:
    """Hybrid attention whose global layers have no RoPE (EXAONE 4's 32B, Command R7B): local
    layers with a window and RoPE, global layers with neither."""
    cfg.sliding_window = window
    cfg.layer_window = [window if is_local else 0 for is_local in local]
    cfg.layer_rope = [0 if is_local else -1 for is_local in local]


def _cohere_gguf(meta, p, cfg: ModelConfig, source) -> None:
    """llama.cpp's command-r / cohere2 keys: logit_scale (the logits multiplied by it; optional
    for command-r), and for cohere2 its window and attention.sliding_window_pattern (default 4)."""
    scale = _get_float(meta, p + "logit_scale", source, default=None if p == "cohere2." else 1.0)
    cfg.logit_scale = 1.0 / scale   # the core divides
    if p == "cohere2.":
        if not cfg.sliding_window:
            _fail(source, "cohere2 without attention.sliding_window")
        local = gemma.swa_layers(meta.get(p + "attention.sliding_window_pattern", 4), cfg.n_layers, source)
        _local_rope_global_nope(cfg, local, cfg.sliding_window)
        _local_theta(meta, p, cfg, source)
    elif cfg.sliding_window:
        _fail(source, "command-r with attention.sliding_window is not supported (Command R7B is cohere2)")


def _int_list(meta, key, source) -> list:
    """An integer or an array of integers under key ([] when absent)."""
    v = meta.get(key, [])
    values = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in values):
        _fail(source, f"metadata '{key}' must be integers, got {v!r}")
    return [int(x) for x in values]


def _no_mrope_or_mtp(meta, p, source) -> None:
    """What a glm4 / ernie4_5 file may hold beyond the text models forgert runs, refused by name:
    multimodal RoPE sections (GLM-4V, PaddleOCR-VL) and multi-token-prediction layers."""
    arch = p[:-1]
    if any(_int_list(meta, p + "rope.dimension_sections", source)):
        _fail(source, f"{arch} with rope.dimension_sections (a vision model's multimodal RoPE) is not supported")
    if _get_int(meta, p + "nextn_predict_layers", source, default=0, minimum=0):
        _fail(source, f"{arch} with nextn_predict_layers (multi-token-prediction layers) is not supported")


def _olmo3_layers(cfg: ModelConfig, local: list, window: int, local_theta: float, local_scaling, source) -> None:
    """OLMo 3's hybrid attention, after _set_rope_tables gave cfg the global layers' RoPE: local
    layers windowed and rotated by their own table (no YaRN: llama.cpp's freq_scale 1, attention
    factor 1), the global ones by cfg's, each table with its own cos/sin factor."""
    if (cfg.rope_scaling or {}).get("type") in ("dynamic", "longrope"):
        _fail(source, f"{cfg.rope_scaling['type']} RoPE scaling beside OLMo 3's local layers is not supported")
    local_scaling = local_scaling or None
    local_freqs = rope_freqs(local_theta, cfg.rotated_dims, local_scaling, cfg.context_length)
    cfg.layer_window = [window if is_local else 0 for is_local in local]
    cfg.rope_freqs = np.stack([local_freqs, cfg.rope_freqs]).astype(np.float32)
    cfg.layer_rope = [0 if is_local else 1 for is_local in local]
    cfg.rope_table_attn_factor = [(local_scaling or {}).get("attn_factor", 1.0), cfg.rope_attn_factor]


def _olmo3_hf(hf: dict, cfg: ModelConfig, source):
    """OLMo 3's local layers (HF layer_types, by default every fourth layer global) and their
    RoPE: transformers 5's rope_parameters per layer kind, or transformers 4's rope_theta with
    rope_scaling for the global layers only. Returns (local flags, window, local theta, local
    scaling); cfg's own RoPE becomes the global layers'."""
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 4 else "full_attention"
                                      for i in range(cfg.n_layers)]
    if not isinstance(types, list) or len(types) != cfg.n_layers or \
            set(types) - {"full_attention", "sliding_attention"}:
        _fail(source, f"layer_types must give full_attention or sliding_attention for each of the "
                      f"{cfg.n_layers} layers, got {types!r}")
    window = hf.get("sliding_window", 4096)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        _fail(source, f"sliding_window must be a positive integer, got {window!r}")
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:   # transformers 5
        cfg.rope_theta, cfg.rope_scaling = gemma.hf_rope_of(params.get("full_attention", {}), hf, source)
        l_theta, l_scaling = gemma.hf_rope_of(params.get("sliding_attention", {}), hf, source)
    else:                                                             # transformers 4: scaling on global layers
        l_theta, l_scaling = cfg.rope_theta, None
    return [t == "sliding_attention" for t in types], window, l_theta, l_scaling


def _exaone4_gguf(meta, p, cfg: ModelConfig, source) -> None:
    """llama.cpp's exaone4 loader: a 64-layer file (the 32B) is hybrid, window attention.sliding_window
    (4096 when absent) in the layers of attention.sliding_window_pattern (default 4: three local, one
    global); other files run every layer global with RoPE. A file from the converter that lists the
    pattern (one bool per layer) is read as the HF config it came from, whatever its depth."""
    pattern = meta.get(p + "attention.sliding_window_pattern")
    if cfg.n_layers != 64 and not isinstance(pattern, (list, tuple, np.ndarray)):
        cfg.sliding_window, cfg.layer_window, cfg.layer_rope = None, None, None   # every layer global, RoPE
        return
    window = cfg.sliding_window or 4096
    _local_rope_global_nope(cfg, gemma.swa_layers(4 if pattern is None else pattern, cfg.n_layers, source), window)
    _local_theta(meta, p, cfg, source)


def _local_theta(meta, p, cfg: ModelConfig, source) -> None:
    """cohere2's and hybrid exaone4's RoPE base: llama.cpp rotates their local layers at
    rope.freq_base_swa (default rope.freq_base); the global ones have no RoPE, so it is the only one."""
    cfg.rope_theta = _get_float(meta, p + "rope.freq_base_swa", source, default=cfg.rope_theta)


def _exaone4_hf(hf: dict, cfg: ModelConfig, source) -> None:
    """As transformers' Exaone4Attention: with sliding_window set, layer_types' sliding layers
    are local with RoPE and the rest global without it (layer_types, or else sliding_window_pattern:
    an int n, every n-th layer global, or a string such as "LLLG" repeated); without it every layer
    is global with RoPE."""
    window = hf.get("sliding_window")
    if window is None:
        cfg.sliding_window, cfg.layer_window, cfg.layer_rope = None, None, None   # every layer global, RoPE
        return
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        _fail(source, f"sliding_window must be a positive integer, got {window!r}")
    types = hf.get("layer_types")
    if types is not None:   # already checked by _hf_layer_types
        local = [t == "sliding_attention" for t in types]
    else:
        pattern = hf.get("sliding_window_pattern", 4)
        if isinstance(pattern, str) and pattern and set(pattern) <= {"L", "G"}:
            local = [pattern[i % len(pattern)] == "L" for i in range(cfg.n_layers)]
        elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 1:
            local = [(i + 1) % pattern != 0 for i in range(cfg.n_layers)]
        else:
            _fail(source, f"sliding_window_pattern must be a positive integer or a string of L and G, got {pattern!r}")
    _local_rope_global_nope(cfg, local, window)


def _no_rope_every(interval: int, n_layers: int) -> list:
    """layer_rope with RoPE left out of layers interval-1, 2*interval-1, ... (-1: no RoPE)."""
    return [-1 if (i + 1) % interval == 0 else 0 for i in range(n_layers)]


def _hf_no_rope_layers(hf: dict, n_layers: int, source) -> list:
    """SmolLM3's layer_rope: config no_rope_layers (1: RoPE, 0: none, per layer), or else every
    no_rope_layer_interval-th layer without RoPE, as SmolLM3Config derives it."""
    flags = hf.get("no_rope_layers")
    if flags is None:
        return _no_rope_every(_get_int(hf, "no_rope_layer_interval", source, default=SMOLLM3_NO_ROPE_INTERVAL),
                              n_layers)
    if not isinstance(flags, list) or len(flags) != n_layers or any(f not in (0, 1) for f in flags):
        _fail(source, f"no_rope_layers must list 0 or 1 for each of the {n_layers} layers, got {flags!r}")
    return [0 if f else -1 for f in flags]


def _granite_gguf(meta, p, cfg: ModelConfig, source) -> None:
    """llama.cpp's granite keys: logit_scale (required), residual_scale, embedding_scale and
    attention.scale (0 or absent: none), and rope.scaling.finetuned, false meaning no RoPE at all."""
    cfg.logit_scale = _get_float(meta, p + "logit_scale", source)
    for key, field in (("residual_scale", "residual_scale"), ("embedding_scale", "embed_scale"),
                       ("attention.scale", "attn_scale")):
        v = _get_float(meta, p + key, source, default=0.0, positive=False)
        if v < 0:
            _fail(source, f"metadata '{p}{key}' must not be negative, got {v}")
        if v:
            setattr(cfg, field, v)
    finetuned = meta.get(p + "rope.scaling.finetuned", True)
    if not isinstance(finetuned, bool):
        _fail(source, f"metadata '{p}rope.scaling.finetuned' must be a bool, got {finetuned!r}")
    if not finetuned:
        cfg.layer_rope = [-1] * cfg.n_layers


def _attn_temperature(cfg: ModelConfig, beta: float, source, key: str) -> None:
    """Mistral 3's query temperature: its floor is YaRN's original context (llama.cpp and
    transformers both take it from there)."""
    if beta == 0.0:
        return
    if (cfg.rope_scaling or {}).get("type") != "yarn":
        _fail(source, f"{key} {beta} without YaRN's original context length")
    cfg.attn_temperature = (beta, int(cfg.rope_scaling["original_max_position_embeddings"]))


def _gguf_yarn(meta, p, source) -> dict:
    """YaRN from the keys llama.cpp reads: rope.scaling.factor and .original_context_length, the
    optional yarn_beta_fast / yarn_beta_slow / yarn_ext_factor (32, 1, 1 by default), and the
    attention factor llama.cpp derives: 0.1 ln(factor) + 1, times rope.scaling.attn_factor."""
    factor = _get_float(meta, p + "rope.scaling.factor", source)
    log_mul = _get_float(meta, p + "rope.scaling.yarn_log_multiplier", source, default=0.0, positive=False)
    if log_mul != 0.0 and p not in ("mistral3.", "deepseek2."):
        _fail(source, "YaRN with rope.scaling.yarn_log_multiplier (DeepSeek's mscale_all_dim) is not supported")
    ext = meta.get(p + "rope.scaling.yarn_ext_factor", 1.0)
    if isinstance(ext, bool) or not isinstance(ext, (int, float, np.number)) or not 0 <= ext <= 1:
        _fail(source, f"metadata '{p}rope.scaling.yarn_ext_factor' must be in [0, 1], got {ext!r}")
    if ext == 0:   # llama.cpp: no extrapolated share and no attention factor but attn_factor
        return {"type": "linear", "factor": factor,
                "attn_factor": _get_float(meta, p + "rope.scaling.attn_factor", source, default=1.0)}
    if p == "deepseek2.":
        # its converter writes 0.1 mscale_all_dim; llama.cpp takes mscale equal to it, so cos and sin
        # keep a factor of 1 and the softmax scale takes yarn_mscale(factor, mscale_all_dim)^2
        if log_mul == 0.0:
            _fail(source, "deepseek2 YaRN without rope.scaling.yarn_log_multiplier is not supported")
        log_mul /= 0.1
    return {
        "type": "yarn", "factor": factor,
        **({"mscale_all_dim": log_mul} if p == "deepseek2." else {}),
        "original_max_position_embeddings": _get_int(meta, p + "rope.scaling.original_context_length", source,
                                                     default=meta.get(p + "context_length")),
        "beta_fast": _get_float(meta, p + "rope.scaling.yarn_beta_fast", source, default=32.0),
        "beta_slow": _get_float(meta, p + "rope.scaling.yarn_beta_slow", source, default=1.0),
        "ext_factor": float(ext),
        # mistral3: the multiplier is transformers' mscale_all_dim (mscale 1), as llama.cpp reads it
        "attn_factor": (1.0 if p == "deepseek2." else
                        yarn_mscale(factor) / yarn_mscale(factor, log_mul) if log_mul else yarn_mscale(factor))
        * _get_float(meta, p + "rope.scaling.attn_factor", source, default=1.0),
    }


def _hf_yarn(scaling_in: dict, hf: dict, source) -> dict:
    """transformers' _compute_yarn_parameters' inputs; attn_factor as it derives attention_factor."""
    for key in ("original_max_position_embeddings", "factor", "attention_factor", "mscale", "mscale_all_dim",
                "beta_fast", "beta_slow"):
        v = scaling_in.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            _fail(source, f"rope scaling 'yarn' {key} must be a number, got {v!r}")
        if v is not None and not math.isfinite(v):
            _fail(source, f"rope scaling 'yarn' has a non-finite {key}: {v!r}")
    orig = scaling_in.get("original_max_position_embeddings")
    if orig is None:
        _fail(source, "rope scaling 'yarn' is missing 'original_max_position_embeddings'")
    if orig < 1:
        _fail(source, f"rope scaling 'yarn' original_max_position_embeddings must be >= 1, got {orig!r}")
    orig = int(orig)
    factor = scaling_in.get("factor")
    factor = float(factor) if factor is not None else _get_int(hf, "max_position_embeddings", source) / orig
    attn = scaling_in.get("attention_factor")
    if attn is None:
        mscale, mscale_all_dim = scaling_in.get("mscale"), scaling_in.get("mscale_all_dim")
        attn = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim) if mscale and mscale_all_dim
                else yarn_mscale(factor))
    out = {"type": "yarn", "factor": factor, "original_max_position_embeddings": orig,
           "beta_fast": float(scaling_in.get("beta_fast") or 32), "beta_slow": float(scaling_in.get("beta_slow") or 1),
           "truncate": bool(scaling_in.get("truncate", True)), "attn_factor": float(attn)}
    if scaling_in.get("mscale_all_dim"):   # DeepSeek: the softmax scale's factor (_mla_attention_scale)
        out["mscale_all_dim"] = float(scaling_in["mscale_all_dim"])
    if not all(math.isfinite(v) and v > 0 for v in (factor, out["beta_fast"], out["beta_slow"], out["attn_factor"])):
        _fail(source, f"rope scaling 'yarn' has a non-positive or non-finite parameter: {scaling_in!r}")
    return out


def _hf_rope(hf: dict, source):
    """(theta, scaling) from either transformers 4 (rope_theta + rope_scaling) or 5 (rope_parameters)."""
    for key in ("rope_parameters", "rope_scaling"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            _fail(source, f"{key} must be a JSON object, got {hf[key]!r}")
    params = hf.get("rope_parameters") or {}
    scaling_in = hf.get("rope_scaling") or params
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 0:
        _fail(source, f"rope_theta must be a positive number, got {theta!r}")
    kind = scaling_in.get("rope_type", scaling_in.get("type", "default")) if scaling_in else "default"
    if kind == "mrope":
        kind = "default"    # Qwen2-VL's multimodal RoPE (transformers 4's spelling): 1-D RoPE on text
    if kind == "su" or (kind == "yarn" and hf.get("model_type") == "phi3"):
        kind = "longrope"   # Phi-3's legacy names for LongRoPE (transformers' Phi3Config renames them too)
    if kind == "default":
        return float(theta), None
    try:
        if kind == "longrope":
            return float(theta), _hf_longrope(hf, scaling_in, source)
        if kind == "linear":
            return float(theta), {"type": "linear", "factor": float(scaling_in["factor"])}
        if kind == "yarn":
            return float(theta), _hf_yarn(scaling_in, hf, source)
        if kind == "dynamic":
            return float(theta), {"type": "dynamic", "factor": float(scaling_in["factor"]),
                                  "max_position_embeddings": _get_int(hf, "max_position_embeddings", source)}
        if kind == "llama3":
            return float(theta), {
                "type": "llama3", "factor": float(scaling_in["factor"]),
                "low_freq_factor": float(scaling_in["low_freq_factor"]),
                "high_freq_factor": float(scaling_in["high_freq_factor"]),
                "original_max_position_embeddings": int(scaling_in["original_max_position_embeddings"]),
            }
    except KeyError as e:
        _fail(source, f"rope scaling '{kind}' is missing {e.args[0]!r}")
    _fail(source, f"unsupported RoPE scaling type '{kind}'")


def _hf_factor_list(scaling: dict, key: str, source) -> np.ndarray:
    v = scaling[key]
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        _fail(source, f"rope scaling {key} must be a list of numbers")
    return np.asarray(v, dtype=np.float64)


def _hf_longrope(hf: dict, scaling: dict, source) -> dict:
    """LongRoPE as transformers reads it (_compute_longrope_parameters): a top-level
    original_max_position_embeddings wins over the scaling dict's (Phi-3 writes it there), and the
    attention factor defaults to sqrt(1 + ln(s) / ln(original)), s = factor or max_pos / original."""
    key = "original_max_position_embeddings"
    original = _get_int({key: hf.get(key, scaling.get(key, hf.get("max_position_embeddings")))}, key, source,
                        minimum=2)
    attn = scaling.get("attention_factor")
    if attn is None:
        factor = scaling.get("factor")
        if factor is not None:
            factor = _get_float({"rope_scaling.factor": factor}, "rope_scaling.factor", source)
            attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        else:
            attn = longrope_attn_factor(_get_int(hf, "max_position_embeddings", source), original)
    return {"type": "longrope", "long_factor": _hf_factor_list(scaling, "long_factor", source),
            "short_factor": _hf_factor_list(scaling, "short_factor", source),
            "original_max_position_embeddings": original,
            "attn_factor": _get_float({"rope_scaling.attention_factor": attn}, "rope_scaling.attention_factor",
                                      source)}


def _hf_rope_dim(hf: dict, head_dim: int, source):
    """partial_rotary_factor (top level, or in rope_parameters: transformers 5) -> rotated dims."""
    factor = (hf.get("rope_parameters") or {}).get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    factor = _get_float({"partial_rotary_factor": factor}, "partial_rotary_factor", source)
    if factor > 1.0:
        _fail(source, f"partial_rotary_factor must be in (0, 1], got {factor}")
    rope_dim = int(head_dim * factor)
    _check_rope_dim(rope_dim, head_dim, source, "partial_rotary_factor * head_dim =")
    return None if rope_dim == head_dim else rope_dim


def _hf_layer_types(hf: dict, cfg: ModelConfig, source) -> None:
    """transformers 5 spells out which layers use the window ("layer_types"); when present it
    decides, in any pattern (a suffix of the layers, or local layers between global ones)."""
    types = hf.get("layer_types")
    if types is None:
        return
    if not isinstance(types, list) or len(types) != cfg.n_layers:
        _fail(source, f"layer_types must list one entry per layer ({cfg.n_layers}), got {types!r}")
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        _fail(source, f"unsupported layer_types {sorted(map(str, unknown))}")
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if not sliding:
        cfg.sliding_window, cfg.sliding_window_from = None, 0
        return
    if not cfg.sliding_window:
        window = hf.get("sliding_window")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            _fail(source, f"layer_types has sliding_attention layers but sliding_window is {window!r}")
        cfg.sliding_window = window
    if sliding == list(range(sliding[0], cfg.n_layers)):   # a suffix: Mistral, Qwen2
        cfg.sliding_window_from = sliding[0]
    else:                                                  # interleaved local and global layers
        cfg.layer_window = [cfg.sliding_window if t == "sliding_attention" else 0 for t in types]


def config_from_hf(hf: dict, source: str, census: TensorCensus) -> ModelConfig:
    """hf: the parsed config.json of a Llama / Mistral / Qwen2 / Qwen3 / SmolLM3 / Phi-3 model directory;
    census: its tensors."""
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        _fail(source, f"unsupported model_type '{model_type}' (forgert runs: {', '.join(HF_MODEL_TYPES)})")
    if model_type == gemma4.HF_TEXT_TYPE:   # per-layer attention shapes: its own reader
        return gemma4.config_from_hf(hf, source, census)
    if model_type == gemma3n.HF_TEXT_TYPE:   # AltUp, LAuReL: its own reader
        return gemma3n.config_from_hf(hf, source, census)
    if model_type in ("lfm2", "lfm2_moe"):   # LFM2's own key names, and its MLP's width as transformers computes it
        hf = {**hf, "tie_word_embeddings": hf.get("tie_embedding", hf.get("tie_word_embeddings", True))}
        if model_type == "lfm2":
            hf["intermediate_size"] = lfm2.hf_ffn_dim(hf)
        if "norm_eps" in hf and "rms_norm_eps" not in hf:
            hf["rms_norm_eps"] = hf["norm_eps"]
    if model_type in nemotron_h.HF_MODEL_TYPES:   # its blocks paired into the core's layers, its eps key
        hf = nemotron_h.prepare_hf(hf, source)
    if model_type == "exaone":   # EXAONE 3 / 3.5's own key names (transformers' attribute_map)
        hf = {**hf, **{new: hf[old] for old, new in (("num_layers", "num_hidden_layers"),
                                                      ("layer_norm_epsilon", "rms_norm_eps"))
                       if old in hf and new not in hf}}
    # Encoder-style checkpoints of decoder architectures (EmbeddingGemma's gemma3_text, LLM2Vec-like
    # embedders) attend both ways: run causally they would embed wrongly without a word
    if hf.get("use_bidirectional_attention") or hf.get("is_causal") is False:
        key = "use_bidirectional_attention" if hf.get("use_bidirectional_attention") else "is_causal=false"
        _fail(source, f"bidirectional attention ({key}) is not supported: forgert runs causal attention only")
    if hf.get("mlp_bias"):
        _fail(source, "mlp_bias=true is not supported")
    if model_type in ("ernie4_5", "ernie4_5_moe") and hf.get("use_bias"):
        _fail(source, "use_bias=true (biases on the MLP's projections too) is not supported")
    if model_type == "starcoder2":
        act = hf.get("hidden_act", "gelu_pytorch_tanh")
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            _fail(source, f"hidden_act '{act}' is not supported (StarCoder2 uses gelu_pytorch_tanh)")
        if hf.get("use_bias") is False:
            _fail(source, "use_bias=false (StarCoder2 without its biases) is not supported")
    if model_type in ("arcee", "nemotron") and hf.get("hidden_act", "relu2") != "relu2":
        _fail(source, f"hidden_act '{hf.get('hidden_act')}' is not supported ({model_type} uses relu2)")
    if model_type == "nemotron" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        _fail(source, "attention_bias / mlp_bias on Nemotron are not supported")
    if model_type == "olmoe" and hf.get("clip_qkv") is not None:
        _fail(source, "clip_qkv (clamping Q, K and V) is not supported")
    if model_type == "cohere" and hf.get("use_qk_norm"):
        _fail(source, "use_qk_norm=true (Command R+'s per-head LayerNorms of Q and K) is not supported")
    extent = _extent_bound(census)
    n_heads = _get_int(hf, "num_attention_heads", source, **extent)
    dim = _get_int(hf, "hidden_size", source, **extent)
    theta, scaling = _hf_rope(hf, source)
    head_dim = (_get_int(hf, "head_dim", source, default=dim // n_heads, **extent) if hf.get("head_dim")
                else dim // n_heads)
    rope_dim = _hf_rope_dim(hf, head_dim, source)
    if scaling is not None and scaling["type"] == "longrope":
        for key in ("long_factor", "short_factor"):
            _check_factors(scaling[key], (rope_dim or head_dim) // 2, f"rope scaling {key}", source)
    cfg = ModelConfig(
        arch=HF_MODEL_TYPES[model_type],
        n_layers=_get_int(hf, "num_hidden_layers", source, **_layer_bound(census)),
        dim=dim, n_heads=n_heads,
        n_kv_heads=_get_int(hf, "num_key_value_heads", source, default=n_heads, **extent),
        head_dim=head_dim,
        ffn_dim=_get_int(hf, "intermediate_size", source, **extent),
        vocab=_get_int(hf, "vocab_size", source, **extent),
        context_length=_get_int(hf, "max_position_embeddings", source),
        rms_eps=_get_float(hf, {"cohere": "layer_norm_eps", "cohere2": "layer_norm_eps", "starcoder2": "norm_epsilon",
                                "nemotron": "norm_eps"}.get(model_type, "rms_norm_eps"), source,
                           default=1e-5 if model_type in ("cohere", "cohere2", "starcoder2", "nemotron") else 1e-6),
        rope_theta=theta,
        rope_neox=model_type not in _HF_ADJACENT_PAIR_ROPE,
        rope_scaling=scaling,
        rope_dim=rope_dim,
        # Cohere's configs tie by default (and may leave the key out)
        tied_embeddings=bool(hf.get("tie_word_embeddings", model_type in ("cohere", "cohere2"))),
    )
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True):   # Qwen2 configs carry it switched off
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            _fail(source, f"sliding_window must be a positive integer, got {window!r}")
        cfg.sliding_window = window
        if model_type in ("qwen2", "qwen3", "qwen3_moe", "qwen2_moe"):   # windows only the layers from max_window_layers on
            cfg.sliding_window_from = _get_int(hf, "max_window_layers", source, default=28, minimum=0)
    if model_type in deltanet.HF_TEXT_TYPES:   # its layer_types name recurrent layers, not windows
        deltanet.apply_hf(hf, cfg, source, census.max_extent)
    elif model_type in ("lfm2", "lfm2_moe"):   # likewise its convolution layers
        lfm2.apply_hf(hf, cfg, source)
    elif model_type in mamba2.HF_MODEL_TYPES or model_type in nemotron_h.HF_MODEL_TYPES:   # Mamba2 layers (below)
        pass
    else:
        _hf_layer_types(hf, cfg, source)
    _hf_experts(hf, cfg, source, census)
    if model_type in mamba2.HF_MODEL_TYPES:
        mamba2.apply_hf(hf, cfg, source, census.max_extent)
    if model_type in nemotron_h.HF_MODEL_TYPES:
        nemotron_h.apply_hf(hf, cfg, source, census.max_extent)
    if model_type == "glm4_moe":
        _glm4moe_hf(hf, cfg, source, census)
    if model_type == "ernie4_5_moe":
        _ernie4_5_moe_hf(hf, cfg, source, census)
    if model_type in ("deepseek_v2", "deepseek_v3", "glm4_moe_lite", "mistral4"):
        _deepseek_hf(hf, cfg, source, census)
    if model_type == "lfm2_moe":
        if not cfg.n_expert:
            _fail(source, "lfm2_moe without num_experts")
        lfm2.apply_hf_moe(hf, cfg, source)
        _check_router(cfg, source)
    if model_type == "minimax_m2":   # MiniMaxM2TopKRouter: sigmoid, the bias choosing, renormalised
        if not cfg.n_expert:
            _fail(source, "minimax_m2 without num_local_experts")
        cfg.router, cfg.router_select_bias, cfg.expert_norm_topk = "sigmoid", True, True
    if model_type == "gpt_oss":
        _gpt_oss_hf(hf, cfg, source)
    if model_type == "smollm3":
        cfg.layer_rope = _hf_no_rope_layers(hf, cfg.n_layers, source)
    if model_type == "exaone4":
        _exaone4_hf(hf, cfg, source)
    olmo3 = _olmo3_hf(hf, cfg, source) if model_type == "olmo3" else None
    if model_type in ("nemotron",) + tuple(deltanet.HF_TEXT_TYPES):   # norms computing x times (1 + w)
        cfg.norm_shift = 1.0
    cfg.vision_language = hf.get("vision_language")   # set by vision_language.language_config
    if model_type in ("cohere", "cohere2"):
        cfg.logit_scale = 1.0 / _get_float(hf, "logit_scale", source, default=0.0625)
    if model_type == "cohere2":   # layer_types (_hf_layer_types read them) or its default pattern of 4
        windows = cfg.windows()
        types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % int(hf.get("sliding_window_pattern", 4))
                                          else "full_attention" for i in range(cfg.n_layers)]
        _local_rope_global_nope(cfg, [t == "sliding_attention" for t in types],
                       max(windows) if any(windows) else int(hf.get("sliding_window") or 4096))
    if model_type in ("granite", "granitemoe") + tuple(mamba2.HF_MODEL_TYPES):
        cfg.embed_scale = _get_float(hf, "embedding_multiplier", source, default=1.0)
        cfg.attn_scale = _get_float(hf, "attention_multiplier", source, default=cfg.head_dim ** -0.5)
        cfg.residual_scale = _get_float(hf, "residual_multiplier", source, default=1.0)
        cfg.logit_scale = _get_float(hf, "logits_scaling", source, default=1.0)
    if model_type == "ministral3":
        beta = (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("llama_4_scaling_beta") or 0.0
        _attn_temperature(cfg, _get_float({"llama_4_scaling_beta": beta}, "llama_4_scaling_beta", source,
                                          positive=False), source, "llama_4_scaling_beta")
    _check_bounds(cfg, source)
    _check_geometry(cfg, source, census)
    _set_rope_tables(cfg)
    if olmo3 is not None:
        _olmo3_layers(cfg, *olmo3, source)
    if cfg.arch in gemma.GEMMA_ARCHS:
        gemma.apply_hf(hf, cfg, source)
    return cfg
