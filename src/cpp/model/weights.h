// The model's weights as tensors over backend buffers (zero-copy views of the
// mmap'd file), built from named host ranges handed over by Python.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "core/backend.h"

namespace forgert {

// A tensor as it lies in host memory; names follow GGUF (docs/design.md).
struct HostTensor {
    const void* data = nullptr;
    size_t nbytes = 0;
    DType type = DType::F32;
    int64_t rows = 0;   // 1 for vectors
    int64_t cols = 0;
    // The allocation the bytes lie in (the mmap of the tensor's file, or the array that owns
    // them); null when unknown, and then the tensor is wrapped on its own.
    const void* alloc = nullptr;
    size_t alloc_bytes = 0;
    // Expert stacks come in two forms: one 3-D tensor (GGUF: n_expert > 0, the bytes hold
    // n_expert blocks of [rows, cols] one after the other), or a list of 2-D tensors, one per
    // expert (HF's mlp.experts.E.*: `experts` non-empty, this tensor's own fields unused).
    int64_t n_expert = 0;
    std::vector<HostTensor> experts;
};

struct LayerWeights {
    Tensor attn_norm;          // f32 [dim]; rows == 0 without pre-norms (OLMo 2, EXAONE 4)
    Tensor attn_norm_b, ffn_norm_b;  // f32 [dim]: the norms' biases (StarCoder2); rows == 0 elsewhere
    Tensor b_up, b_down;       // f32 [ffn_dim], [dim]: the plain feed-forward's biases (StarCoder2)
    Tensor wq, wk, wv;         // [q_dim, dim], [kv_dim, dim], [kv_dim, dim]
    Tensor bq, bk, bv;         // f32 [q_dim], [kv_dim], [kv_dim]; rows == 0 when absent
    Tensor q_norm, k_norm;     // f32 [head_dim] (each head: Qwen3, Gemma 3, EXAONE 4) or [q_dim], [kv_dim] (whole
                               // rows: OLMo 2), before RoPE; rows == 0 when absent
    Tensor wo;                 // [dim, q_dim] ([dim, n_heads * mla_v_head_dim] with latent attention)
    // Multi-head latent attention (cfg.is_mla(); wk/wv are then empty, wq too with mla_q_lora)
    Tensor wq_a, q_a_norm;     // [mla_q_lora, dim], f32 [mla_q_lora]: Q's low-rank pair, its first half and norm
    Tensor wq_b;               // [q_dim, mla_q_lora]
    Tensor wkv_a;              // [mla_kv_lora + rope_dim, dim]: the latent, then the shared rope key
    Tensor kv_a_norm;          // f32 [mla_kv_lora]
    // Per head h (one "expert" each, for matmul_id): wk_b[h] [mla_kv_lora, nope] takes the head's
    // nope query into the latent (q absorbed: k_b_h^T q_nope), wv_b[h] [mla_v_head_dim, mla_kv_lora]
    // the head's attention output over the latent rows into its values.
    std::vector<Tensor> wk_b, wv_b;
    // Short convolution (cfg.is_short_conv(l), LFM2; the attention tensors are then empty)
    Tensor sc_in_proj;         // [3 dim, dim]: B | C | x
    Tensor sc_conv;            // f32 [dim, ssm_conv_kernel]
    Tensor sc_out_proj;        // [dim, dim]
    // Gated DeltaNet (cfg.is_delta_net(l); the attention tensors are then empty)
    Tensor ssm_qkv;            // [C = 2 * ssm_qk_width + ssm_value_width, dim]: q | k | v before the convolution
    Tensor ssm_gate;           // [ssm_value_width, dim]: z, the output norm's gate
    Tensor ssm_beta, ssm_alpha;  // [ssm_v_heads, dim]: per value head, the write strength's and the decay's logits
    Tensor ssm_conv1d;         // f32 [C, ssm_conv_kernel]
    Tensor ssm_dt_bias, ssm_a; // f32 [ssm_v_heads]: the decay's bias and A = -exp(A_log)
    Tensor ssm_norm;           // f32 [ssm_v_dim]: the per-head RMSNorm of the output
    Tensor ssm_out;            // [dim, ssm_value_width]
    // Mamba2 (cfg.is_mamba2(l)): ssm_conv1d, ssm_dt_bias, ssm_a, ssm_out as above (A per head), and
    Tensor ssm_in;             // [ssm_value_width + C + ssm_v_heads, dim]: z | x B C | dt
    Tensor ssm_conv1d_b;       // f32 [C]: the convolution's bias; rows == 0 when absent
    Tensor ssm_d;              // f32 [ssm_v_heads]: the skip x * D
    // (Mamba2's ssm_norm is f32 [n_groups, ssm_value_width / n_groups]: the gated norm's weights per group)
    Tensor bo;                 // f32 [dim]; rows == 0 when absent (all but Llama with attention_bias)
    // Per-layer embeddings (cfg.ple_dim > 0): gate [ple_dim, dim], projection [dim, ple_dim], its norm f32 [dim]
    Tensor ple_inp_gate, ple_proj, ple_post_norm;
    // Gemma 3n (cfg.altup_n = N > 0; rows == 0 elsewhere): AltUp's router [N, dim] and its norm f32
    // [dim], prediction coefficients [N * N, N], correction coefficients [N, N], the corrected
    // stream's scale f32 [dim]; LAuReL's left [laurel_rank, dim], right [dim, laurel_rank], post-norm f32 [dim]
    Tensor altup_router, altup_router_norm, altup_predict_coef, altup_correct_coef, altup_correct_scale;
    Tensor laurel_l, laurel_r, laurel_post_norm;
    Tensor attn_post_norm;     // f32 [dim]: RMSNorm of the attention output before the residual add (Gemma, OLMo 2)
    Tensor ffn_norm;           // f32 [dim]; rows == 0 without pre-norms
    Tensor ffn_post_norm;      // f32 [dim]: RMSNorm of the feed-forward output before the add (Gemma)
    Tensor w_gate, w_up;       // [ffn_dim, dim]
    Tensor w_down;             // [dim, ffn_dim]
    // Mixture of experts (cfg.layer_is_moe(l); the dense w_gate/w_up/w_down are then empty).
    Tensor router;             // [n_expert, dim]
    std::vector<Tensor> gate_exps, up_exps;  // n_expert x [expert_ffn_dim, dim]
    std::vector<Tensor> down_exps;           // n_expert x [dim, expert_ffn_dim]
    Tensor latent_down, latent_up;           // Nemotron 3 Super: [moe_latent_dim, dim], [dim, moe_latent_dim]
    Tensor router_select_b;    // f32 [n_expert]: added to the router's scores for choosing only (DeepSeek V3, GLM-4.5)
    // Gemma 4's MoE layers (cfg.moe_beside_dense; rows == 0 elsewhere): the router input's scale
    // f32 [dim], each expert's output scale f32 [n_expert], the dense MLP's post-norm, the experts'
    // pre- and post-norm f32 [dim]
    Tensor router_in_scale, expert_out_scale, ffn_post_norm_1, ffn_pre_norm_2, ffn_post_norm_2;
    Tensor shared_gate_inp;    // [1, dim]: the shared expert's scale is sigmoid(shared_gate_inp x); rows == 0: ungated
    Tensor shared_gate, shared_up;  // [shared_ffn_dim, dim]; rows == 0 without a shared expert
    Tensor shared_down;        // [dim, shared_ffn_dim]
    // gpt-oss (rows == 0 elsewhere)
    Tensor attn_sinks;         // f32 [n_heads]: a logit per head in the attention softmax's denominator
    Tensor router_b;           // f32 [n_expert]
    Tensor gate_exps_b, up_exps_b;  // f32 [n_expert, expert_ffn_dim]: row e is expert e's bias
    Tensor down_exps_b;        // f32 [n_expert, dim]
};

struct ModelWeights {
    Tensor token_embd;         // [vocab, dim], any weight type
    Tensor output_norm;        // f32 [dim]
    Tensor output_norm_b;      // f32 [dim] (StarCoder2); rows == 0 elsewhere
    Tensor output;             // [vocab, dim]; the same as token_embd when embeddings are tied
    // Per-layer embeddings (cfg.ple_dim > 0; rows == 0 elsewhere)
    Tensor per_layer_token_embd;  // [vocab, n_layers * ple_dim], any weight type (rows gathered, as token_embd)
    Tensor per_layer_model_proj;  // [n_layers * ple_dim, dim]
    Tensor per_layer_proj_norm;   // f32 [ple_dim]
    // Gemma 3n's AltUp (cfg.altup_n = N > 0): streams 1..N-1 from the embeddings, and back [dim, dim] each
    std::vector<Tensor> altup_proj, altup_unembd_proj;
    std::vector<LayerWeights> layers;
    std::vector<std::unique_ptr<Buffer>> buffers;  // zero-copy views that the tensors point into
    std::vector<std::unique_ptr<Buffer>> prepared;  // the backend's copies of weights (Backend::prepare_weight)
};

// Checks every tensor's presence, type and shape against tensor_layout(cfg) and wraps
// the host memory zero-copy; each 2-D matrix then goes through be.prepare_weight (the CPU
// backend's repacking). Throws InputError naming the tensor on a mismatch, a missing
// required tensor or a tensor the architecture does not know.
ModelWeights load_weights(const ModelConfig& cfg, const std::map<std::string, HostTensor>& tensors, Backend& be);

}  // namespace forgert
