// Every tensor each architecture knows, as functions of the config: the one description
// the C++ loader checks against and Python's loader asks for (_core.tensor_layout), so a
// tensor one side knows cannot be dropped by the other.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"

namespace forgert {

struct TensorSpec {
    std::string name;   // GGUF name, e.g. "blk.3.attn_q.bias"
    int64_t rows = 0;   // 1 for vectors
    int64_t cols = 0;
    bool required = true;   // false: used when present (Llama's attention biases, an untied output)
    bool f32_only = false;  // norms and biases: the core takes them as F32
    int64_t n_expert = 0;   // > 0: a stack of n_expert [rows, cols] matrices, one per expert (GGUF's
                            // 3-D ffn_*_exps tensors, or HF's per-expert tensors listed in order)
};

// In load order: globals, then blk.0.., each layer's tensors in forward-pass order.
// Llama's and Qwen3's q/k/v/output biases are optional (llama.cpp loads them when present, and
// HF writes them with attention_bias=true); Qwen2's q/k/v biases are required. The norms follow
// the config's placement fields: attn_norm / ffn_norm with pre_norms, post_attention_norm /
// post_ffw_norm with post_norms, attn_q_norm / attn_k_norm ([head_dim], or [q_dim] / [kv_dim] for
// a whole-row QK-norm) with qk_norm. An MoE model's layers carry the router and expert stacks
// (exp_probs_b.bias with a selection bias, the *_shexp tensors with a shared expert), except its
// first n_dense_lead layers, whose feed-forward is dense. Latent attention (is_mla) replaces
// attn_q/k/v with attn_q (or attn_q_a, attn_q_a_norm, attn_q_b), attn_kv_a_mqa, attn_kv_a_norm and
// the loader's per-head expansions attn_k_b_heads ([n_heads * mla_kv_lora, nope]: head h's k_b
// transposed) and attn_v_b_heads ([n_heads * mla_v_head_dim, mla_kv_lora]); attn_kv_a_mqa's rows
// are [rope_dim shared key | mla_kv_lora latent] (the loader moves the rope part first).
std::vector<TensorSpec> tensor_layout(const ModelConfig& cfg);

// The RMSNorm weight before each feed-forward, without "blk.N.": "ffn_norm.weight", or
// "post_attention_norm.weight" for gpt-oss (llama.cpp's name for the same norm there).
std::string ffn_norm_name(const ModelConfig& cfg);

}  // namespace forgert
