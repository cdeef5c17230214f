// Hyperparameters of a Llama-family decoder (Llama 2/3, SmolLM2/3, Mistral, Qwen2, Qwen3).
#pragma once

#include <string>
#include <vector>

namespace forgert {

struct ModelConfig {
    std::string arch;       // "llama", "qwen2" (QKV bias) or "qwen3" (RMSNorm on each head of Q and K)
    int n_layers = 0;
    int dim = 0;            // residual stream width
    int n_heads = 0;
    int n_kv_heads = 0;     // < n_heads: grouped-query attention
    int head_dim = 0;
    int ffn_dim = 0;
    int vocab = 0;
    int n_ctx = 0;          // KV cache length: positions 0..n_ctx-1
    float rms_eps = 1e-5f;
    bool rope_neox = false; // see RopeKvParams::neox
    std::vector<float> rope_freqs;  // [head_dim / 2], scaling already applied
    int sliding_window = 0;        // > 0: layers from sliding_window_from on attend to this many keys
    int sliding_window_from = 0;   // first such layer (Qwen2's max_window_layers; 0 for Mistral)

    // Valid (and int-sized) only after validate() has bounded the fields.
    int q_dim() const { return n_heads * head_dim; }
    int kv_dim() const { return n_kv_heads * head_dim; }
    // Throws InputError naming the first inconsistent or out-of-bounds field. Every field and
    // product of fields (q_dim, the KV cache's bytes) is bounded so the size arithmetic that
    // follows cannot overflow.
    void validate() const;
};

}  // namespace forgert
