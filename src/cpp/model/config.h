// Hyperparameters of a Llama-family decoder (Llama 2/3, SmolLM2/3, Mistral, Qwen2, Qwen3), with the
// per-layer attention settings (window, RoPE table) later families vary.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace forgert {

struct ModelConfig {
    std::string arch;       // "llama", "qwen2" (QKV bias), "qwen3", "gemma2" / "gemma3" (GELU, soft caps),
                            // "gpt-oss"; the norms' places are their own fields below
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
    int rope_dim = 0;       // rotated dims per head (partial rotary); 0: all of head_dim
    float rope_attn_factor = 1.0f;  // multiplies cos and sin (YaRN's mscale, LongRoPE)
    // Per RoPE table, where the tables differ in it (OLMo 3: YaRN's mscale on the global layers' table,
    // 1 on the local layers' unscaled one); empty: rope_attn_factor for every table.
    std::vector<float> rope_table_attn_factor;
    // Query temperature (Llama 4, Mistral 3): see RopeKvParams::q_temp_beta; 0: none.
    float attn_temp_beta = 0.0f;
    int attn_temp_floor = 0;
    // RoPE frequency tables, [n_tables][rope_dim / 2] flattened, scaling already applied;
    // layer l uses table layer_rope[l], or no RoPE at all when it is -1 (SmolLM3's NoPE
    // layers). Several tables: Gemma 3's local and global layers have different bases.
    std::vector<float> rope_freqs;
    std::vector<int> layer_rope;    // [n_layers]; empty: every layer uses table 0
    // Attention window per layer: > 0: a token attends to itself and the window - 1 keys
    // before it (Mistral, Qwen2's upper layers, Gemma's local layers); 0: full causal.
    std::vector<int> layer_window;  // [n_layers]; empty: full attention everywhere
    // Mixture of experts (Mixtral, Qwen3-MoE): n_expert > 0 makes every layer's feed-forward a
    // router over n_expert SwiGLU experts of width expert_ffn_dim, n_expert_used of them per
    // token, their outputs summed weighted by the router's softmax over all experts (renormalised
    // over the selected ones when expert_norm_topk). shared_ffn_dim > 0 adds a shared SwiGLU
    // expert every token runs, scaled by sigmoid(w_shared_gate x) (Qwen2-MoE). ffn_dim is then the
    // width of the leading dense layers' feed-forward (n_dense_lead below), unused without them.
    int n_expert = 0;
    int n_expert_used = 0;
    int expert_ffn_dim = 0;
    bool expert_norm_topk = true;
    int shared_ffn_dim = 0;
    // DeepSeek V3's router (GLM-4.5): router_sigmoid scores each expert by sigmoid(logit) on its
    // own instead of the softmax over all; router_select_bias adds a learned per-expert bias
    // (exp_probs_b; ERNIE 4.5's too, on softmax scores) to the scores for choosing only, the
    // weights being the unbiased scores;
    // the experts fall in expert_groups groups of which only the expert_groups_used with the
    // largest top-2 sums are chosen from; the chosen weights (renormalised or not) are multiplied
    // by expert_weights_scale. shared_expert_gated: the shared expert's output times
    // sigmoid(w_shared_gate x) (Qwen2-MoE), or added as it is (GLM-4.5).
    bool router_sigmoid = false;
    bool router_select_bias = false;
    int expert_groups = 1;
    int expert_groups_used = 1;
    float expert_weights_scale = 1.0f;
    bool shared_expert_gated = true;
    // Gemma 4's MoE layers (26B-A4B): a dense GeGLU MLP (ffn_norm, ffn_gate/up/down, width ffn_dim,
    // post_ffw_norm_1) and the experts (pre_ffw_norm_2, GeGLU experts, post_ffw_norm_2) side by
    // side, their sum through post_ffw_norm into x; the router reads rms_norm(x) * ffn_gate_inp.scale /
    // sqrt(dim), and each chosen expert's weight is times its ffn_down_exps.scale.
    bool moe_beside_dense = false;
    // The first n_dense_lead layers of an MoE model have a dense SwiGLU feed-forward of width
    // ffn_dim instead of experts (GLM-4.5, DeepSeek: first_k_dense_replace).
    int n_dense_lead = 0;
    // gpt-oss's clamped SwiGLU experts: swiglu_limit > 0 makes each expert
    // (clamp(up, +-limit) + 1) * g * sigmoid(alpha * g) with g = min(gate, limit); 0: silu(gate) * up.
    float swiglu_limit = 0.0f;
    float swiglu_alpha = 1.702f;
    // Nemotron 3's experts (nemotron_h_moe): experts_relu_sq makes each routed expert and the
    // shared one ungated, down(max(up x, 0)^2) (no ffn_gate_exps / ffn_gate_shexp). moe_latent_dim
    // > 0 (Nemotron 3 Super's latent MoE) runs the routed experts on ffn_latent_down xn (width
    // moe_latent_dim) and brings their weighted sum back by ffn_latent_up; the router and the
    // shared expert read xn itself.
    bool experts_relu_sq = false;
    int moe_latent_dim = 0;

    // Multi-head latent attention (DeepSeek V2 / V3): mla_kv_lora > 0 makes each layer's K and V
    // come from one latent row per token, [rope_dim shared key | mla_kv_lora latent] (the loader
    // moves DeepSeek's rope part first), the latent RMS-normed; the cache holds that row alone
    // (kv_dim_of: mla_kv_lora + rope_dim, one f16 row per token, V read from the same rows).
    // Attention is absorbed (llama_model.cpp latent_attention): each head's query [rope part |
    // k_b_h^T nope part] scores the cached rows as one KV head shared by all heads, and its output's
    // latent columns go through v_b_h to mla_v_head_dim values before attn_output. Q from a
    // low-rank pair (attn_q_a, its norm, attn_q_b) when mla_q_lora > 0, each head [rope, nope]
    // (head_dim wide). n_kv_heads == n_heads (the file's count; the cache has one row).
    int mla_kv_lora = 0;
    int mla_q_lora = 0;
    int mla_v_head_dim = 0;
    bool is_mla() const { return mla_kv_lora > 0; }

    // What replaces attention in a layer. Recurrent kinds keep a state per KV slot instead of K/V
    // rows, so a sequence can only continue from the position its state holds.
    enum class LayerKind : int { Attention = 0, GatedDeltaNet = 1, ShortConv = 2, Mamba2 = 3 };
    std::vector<int> layer_kind;  // [n_layers] of LayerKind; empty: attention everywhere
    // Short convolutions (LFM2): shortconv.in_proj [3 dim, dim] gives B, C and x; the layer's
    // output is shortconv.out_proj (C * conv(B * x)), conv the causal depthwise convolution of
    // width ssm_conv_kernel without activation (conv1d_state, dim channels).
    //
    // Gated DeltaNet hybrids (Qwen3.5 / Qwen3.6, arch qwen35 / qwen35moe): the GatedDeltaNet layers replace attention by a linear-attention recurrence
    // (Backend::gated_delta_rule) over a causal depthwise convolution (conv1d_state with SiLU, width
    // ssm_conv_kernel) of one projection attn_qkv [q | k | v]; its output is RMS-normed per value
    // head, times silu(attn_gate x), into ssm_out. Keys and queries have ssm_k_heads heads of
    // ssm_k_dim, values ssm_v_heads of ssm_v_dim; ssm_v_tiled: the value heads in the order
    // llama.cpp's converter writes (see DeltaNetParams).
    //
    // Mamba2 (Granite 4.0-H, arch granitehybrid; mamba2_layer in llama_model.cpp): ssm_in gives
    // z | xBC | dt, xBC goes through conv1d_state with bias and SiLU, then Backend::mamba2_scan, the
    // output gated and RMS-normed per group into ssm_out. Its sizes reuse the fields below, as
    // B and C play the keys' part and x the values': ssm_k_heads = n_groups, ssm_k_dim = d_state,
    // ssm_v_heads = the heads, ssm_v_dim = head_dim (so ssm_conv_channels() is xBC's width and
    // the state per slot n_heads * head_dim * d_state, as a delta rule's).
    int ssm_conv_kernel = 0;  // the convolution's width, every recurrent kind's
    int ssm_k_heads = 0, ssm_v_heads = 0, ssm_k_dim = 0, ssm_v_dim = 0;
    bool ssm_v_tiled = false;
    // Gated attention (Qwen3.5's attention layers): attn_q is [n_heads * 2 * head_dim, dim], each
    // head's query then its gate; the attention output is multiplied by sigmoid(gate) before attn_output.
    bool attn_output_gate = false;
    // Each layer's feed-forward (Nemotron-H / Nemotron 3): 0 none (a mixer block followed by another
    // mixer block rather than by its MLP or MoE block), 1 the dense one, 2 the experts (layer_is_moe).
    // Empty: every layer has one (experts or dense as n_expert / n_dense_lead say).
    std::vector<int> layer_ffn;  // [n_layers]
    bool has_ffn(int layer) const { return layer_ffn.empty() || layer_ffn[layer] != 0; }
    LayerKind kind_of(int layer) const {
        return layer_kind.empty() ? LayerKind::Attention : static_cast<LayerKind>(layer_kind[layer]);
    }
    bool is_recurrent(int layer) const { return kind_of(layer) != LayerKind::Attention; }
    bool is_delta_net(int layer) const { return kind_of(layer) == LayerKind::GatedDeltaNet; }
    bool is_short_conv(int layer) const { return kind_of(layer) == LayerKind::ShortConv; }
    bool is_mamba2(int layer) const { return kind_of(layer) == LayerKind::Mamba2; }
    bool has_layer_kind(LayerKind k) const {
        for (int r : layer_kind)
            if (r == static_cast<int>(k)) return true;
        return false;
    }
    bool has_recurrent() const {
        return has_layer_kind(LayerKind::GatedDeltaNet) || has_layer_kind(LayerKind::ShortConv) ||
               has_layer_kind(LayerKind::Mamba2);
    }
    // The convolution's channels in a recurrent layer: q | k | v (Gated DeltaNet), x | B | C (Mamba2)
    // or B * x (short conv).
    int conv_channels(int layer) const { return is_short_conv(layer) ? dim : ssm_conv_channels(); }
    int ssm_qk_width() const { return ssm_k_heads * ssm_k_dim; }
    int ssm_value_width() const { return ssm_v_heads * ssm_v_dim; }
    int ssm_conv_channels() const { return 2 * ssm_qk_width() + ssm_value_width(); }

    // Per-layer attention shapes (Gemma 4: its global layers' heads are global_head_dim wide, with
    // their own KV head count): [n_layers] each, empty: head_dim / n_kv_heads everywhere. Each
    // layer's KV cache is its own width (kv_dim_of); buffers shared by the layers take the widest.
    std::vector<int> layer_head_dim;
    std::vector<int> layer_n_kv_heads;
    // Gemma 4's attention_k_eq_v: layer l with layer_v_is_k[l] has no attn_v, its V being the K
    // projection's output (before k_norm); empty: none. v_norm: V RMS-normed over each head
    // without a weight before it is cached (Gemma 4, every layer).
    std::vector<int> layer_v_is_k;
    bool v_norm = false;
    // Gemma 4's layer_scalar: layer l's output (the whole residual stream) times
    // layer_out_scale[l] at its end; empty: 1 everywhere.
    std::vector<float> layer_out_scale;
    // Gemma 4's KV sharing (E2B / E4B): layer l reads the K/V cache of layer layer_kv_source[l]
    // (itself, or the last earlier layer of its kind that keeps one) and computes no K/V of its own;
    // empty: every layer its own.
    std::vector<int> layer_kv_source;
    // Gemma 4's per-layer embeddings (E2B / E4B): ple_dim > 0 gives every token ple_dim inputs per
    // layer, (per_layer_token_embd[token] * ple_embed_scale + rms_norm(per_layer_model_proj
    // (x * embed_scale) / sqrt(dim))) / sqrt(2), each layer adding rms_norm(proj(gelu(inp_gate x) *
    // its inputs)) * post_norm to x after its feed-forward.
    int ple_dim = 0;
    float ple_embed_scale = 1.0f;
    // Rows of the per-layer embedding table when fewer than vocab (Gemma 3n's HF checkpoints: the
    // text vocabulary only; other ids look up row 0, as transformers does); 0: vocab.
    int ple_vocab = 0;
    int ple_rows() const { return ple_vocab > 0 ? ple_vocab : vocab; }
    // Gemma 3n (altup.cpp): altup_n > 0 keeps the residual stream as altup_n parallel streams
    // (AltUp; stream 0 the active one, which the layer runs on), each layer predicting, running and
    // correcting them; laurel_rank > 0 adds LAuReL's low-rank residual beside attention;
    // layer_sparsity[l] > 0 cuts layer l's gate at mean + std * layer_sparsity[l] (gaussian top-k);
    // altup_correct_scale: the corrected active stream times altup_correct_scale.weight before it
    // gates the per-layer inputs (which go to the other streams).
    int altup_n = 0;
    int laurel_rank = 0;
    bool altup_correct_scale = false;
    std::vector<float> layer_sparsity;
    float sparsity_of(int layer) const { return layer_sparsity.empty() ? 0.0f : layer_sparsity[layer]; }
    // Per-layer feed-forward widths (Gemma 4's use_double_wide_mlp: the KV-sharing layers' MLPs twice
    // as wide); empty: ffn_dim everywhere.
    std::vector<int> layer_ffn_dim;
    int ffn_dim_of(int layer) const { return layer_ffn_dim.empty() ? ffn_dim : layer_ffn_dim[layer]; }
    int max_ffn_dim() const {
        int m = ffn_dim;
        for (int f : layer_ffn_dim) m = std::max(m, f);
        return m;
    }
    int kv_source_of(int layer) const { return layer_kv_source.empty() ? layer : layer_kv_source[layer]; }
    bool shares_kv(int layer) const { return kv_source_of(layer) != layer; }
    bool keeps_kv(int layer) const { return !is_recurrent(layer) && !shares_kv(layer); }  // has K/V cache rows
    int head_dim_of(int layer) const { return layer_head_dim.empty() ? head_dim : layer_head_dim[layer]; }
    int n_kv_heads_of(int layer) const { return layer_n_kv_heads.empty() ? n_kv_heads : layer_n_kv_heads[layer]; }
    int q_dim_of(int layer) const { return n_heads * head_dim_of(layer); }
    int kv_dim_of(int layer) const {  // a cached row's width (latent attention: the latent row)
        return is_mla() ? mla_kv_lora + rope_dims() : n_kv_heads_of(layer) * head_dim_of(layer);
    }
    // Whether V is read from the K cache's rows (latent attention): the layer's V "cache" is its K cache.
    bool v_in_k_cache() const { return is_mla(); }
    bool v_is_k(int layer) const { return !layer_v_is_k.empty() && layer_v_is_k[layer] != 0; }
    float out_scale_of(int layer) const { return layer_out_scale.empty() ? 1.0f : layer_out_scale[layer]; }
    // The widest of the layers' (every layer's when uniform): scratch buffers and saved K/V rows.
    int max_head_dim() const {
        int m = head_dim;
        for (int d : layer_head_dim) m = std::max(m, d);
        return m;
    }
    int max_q_dim() const { return n_heads * max_head_dim(); }
    int max_kv_dim() const {
        int m = 0;
        for (int l = 0; l < n_layers; l++) m = std::max(m, kv_dim_of(l));
        return m;
    }

    bool is_moe() const { return n_expert > 0; }
    // layer_ffn (Nemotron-H / Nemotron 3) names each layer's feed-forward: 0 none, 1 dense, 2 experts.
    bool layer_is_moe(int layer) const {
        return n_expert > 0 && layer >= n_dense_lead && (layer_ffn.empty() || layer_ffn[layer] == 2);
    }
    // The experts' input and output width: the latent's (Nemotron 3 Super), else dim.
    int expert_io_dim() const { return moe_latent_dim > 0 ? moe_latent_dim : dim; }
    // A RoPE table's width: rope_dim, or the widest head (each layer rotates all of its own head,
    // reading its table's first head_dim_of(l) / 2 frequencies).
    int rope_dims() const { return rope_dim > 0 ? rope_dim : max_head_dim(); }
    int rope_dims_of(int layer) const { return rope_dim > 0 ? rope_dim : head_dim_of(layer); }
    int n_rope_tables() const { return rope_dims() >= 2 ? (int)(rope_freqs.size() / (rope_dims() / 2)) : 0; }
    int window_of(int layer) const { return layer_window.empty() ? 0 : layer_window[layer]; }
    int rope_table_of(int layer) const { return layer_rope.empty() ? 0 : layer_rope[layer]; }
    float rope_attn_factor_of(int table) const {
        return table >= 0 && table < (int)rope_table_attn_factor.size() ? rope_table_attn_factor[table] : rope_attn_factor;
    }

    // Gemma 2 / 3 (arch "gemma2", "gemma3"): the settings Llama leaves at their defaults.
    float embed_scale = 1.0f;     // embeddings times this (Gemma: sqrt(dim), in the embedding dtype)
    float attn_scale = 0.0f;      // attention score scale; 0: 1 / sqrt(head_dim) (Gemma: query_pre_attn_scalar^-0.5)
    float attn_softcap = 0.0f;    // > 0: scores soft-capped, cap * tanh(s / cap) (Gemma 2: 50)
    float final_softcap = 0.0f;   // > 0: logits soft-capped the same way (Gemma 2: 30)
    // Granite: each sub-layer's output times residual_scale before the residual add, the logits
    // divided by logit_scale; 1: none.
    float residual_scale = 1.0f;
    float logit_scale = 1.0f;
    bool ffn_gelu = false;        // feed-forward gate activation: tanh-GELU (GeGLU) instead of SiLU
    // Where a layer's RMSNorms sit (the tensor layout and the forward pass read these, never the
    // arch): pre_norms before attention and before the feed-forward (all but OLMo 2 and EXAONE 4);
    // post_norms on each sub-layer's output before its residual add (Gemma 2/3 with pre_norms: the
    // sandwich; OLMo 2 and EXAONE 4 alone). QK-norm: RMSNorm of Q and K before RoPE, over each head
    // (Qwen3, Gemma 3, EXAONE 4: weights [head_dim]) or over the whole projection (OLMo 2: weights
    // [q_dim] and [kv_dim]).
    bool pre_norms = true;
    bool post_norms = false;
    // Cohere (Command-R, Aya): one pre-norm feeds attention and the feed-forward side by side
    // (no ffn_norm; x += attention + feed-forward), and every pre-norm and the final norm is a
    // LayerNorm without bias (the row's mean subtracted; rms_eps is its eps).
    bool parallel_block = false;
    bool layer_norm = false;
    // StarCoder2: every norm has a bias (attn_norm / ffn_norm / output_norm.bias, added after the
    // norm), and the feed-forward is plain: x += w_down gelu_tanh(w_up xn + b_up) + b_down.
    bool norm_bias = false;
    bool ffn_gated = true;   // false: the plain feed-forward (ffn_gelu or ffn_relu_sq set; no ffn_gate)
    bool ffn_relu_sq = false;  // the plain feed-forward's activation max(x, 0)^2 (Arcee) instead of tanh-GELU
    bool ffn_bias = false;   // ffn_up.bias and ffn_down.bias
    enum class QkNorm { None, PerHead, Whole };
    QkNorm qk_norm = QkNorm::None;
    bool is_gemma() const { return arch == "gemma2" || arch == "gemma3"; }
    // gpt-oss (llama.cpp's arch "gpt-oss"): attention sinks, biases everywhere (q/k/v/o, the
    // router, each expert), its feed-forward norm named post_attention_norm.
    bool is_gpt_oss() const { return arch == "gpt-oss"; }
    float attention_scale(int layer) const {
        return attn_scale > 0.0f ? attn_scale : 1.0f / std::sqrt((float)head_dim_of(layer));
    }

    // Valid (and int-sized) only after validate() has bounded the fields.
    int q_dim() const { return n_heads * head_dim; }
    int kv_dim() const { return n_kv_heads * head_dim; }
    // Throws InputError naming the first inconsistent or out-of-bounds field. Every field and
    // product of fields (q_dim, the KV cache's bytes) is bounded so the size arithmetic that
    // follows cannot overflow.
    void validate() const;
};

}  // namespace forgert
