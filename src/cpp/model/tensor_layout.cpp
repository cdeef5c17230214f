#include "tensor_layout.h"

namespace forgert {

std::string ffn_norm_name(const ModelConfig& cfg) {
    return cfg.is_gpt_oss() ? "post_attention_norm.weight" : "ffn_norm.weight";
}

std::vector<TensorSpec> tensor_layout(const ModelConfig& cfg) {
    const int64_t dim = cfg.dim;
    const bool gpt_oss = cfg.is_gpt_oss();           // sinks, and biases on every projection
    const bool qkv_bias_required = cfg.arch == "qwen2" || gpt_oss;
    const bool out_bias_known = cfg.arch == "llama" || cfg.arch == "qwen3" || gpt_oss;  // attention_bias=true checkpoints
    const bool pre_norms = cfg.pre_norms, post_norms = cfg.post_norms;
    using QkNorm = ModelConfig::QkNorm;
    std::vector<TensorSpec> out = {
        {"token_embd.weight", cfg.vocab, dim, true, false},
        {"output_norm.weight", 1, dim, true, true},
        {"output_norm.bias", 1, dim, cfg.norm_bias, true},
        {"output.weight", cfg.vocab, dim, false, false},  // absent: tied to token_embd
    };
    if (cfg.ple_dim > 0) {  // Gemma 4's per-layer embeddings
        const int64_t all = (int64_t)cfg.n_layers * cfg.ple_dim;
        out.push_back({"per_layer_token_embd.weight", cfg.ple_rows(), all, true, false});
        out.push_back({"per_layer_model_proj.weight", all, dim, true, false});
        out.push_back({"per_layer_proj_norm.weight", 1, cfg.ple_dim, true, true});
    }
    for (int i = 0; i + 1 < cfg.altup_n; i++) {  // Gemma 3n's AltUp streams: in from the embeddings, out
        out.push_back({"altup_proj." + std::to_string(i) + ".weight", dim, dim, true, false});
        out.push_back({"altup_unembd_proj." + std::to_string(i) + ".weight", dim, dim, true, false});
    }
    for (int l = 0; l < cfg.n_layers; l++) {
        const std::string p = "blk." + std::to_string(l) + ".";
        // this layer's attention shapes (Gemma 4's global layers differ from its local ones)
        const int64_t q = cfg.q_dim_of(l), kv = cfg.kv_dim_of(l), hd = cfg.head_dim_of(l), ffn = cfg.ffn_dim_of(l);
        const int64_t q_norm_width = cfg.qk_norm == QkNorm::Whole ? q : hd,
                      k_norm_width = cfg.qk_norm == QkNorm::Whole ? kv : hd;
        if (cfg.altup_n > 0) {  // Gemma 3n: AltUp's router and coefficients, LAuReL
            const int64_t N = cfg.altup_n;
            out.push_back({p + "altup_router.weight", N, dim, true, false});
            out.push_back({p + "altup_router_norm.weight", 1, dim, true, true});
            out.push_back({p + "altup_predict_coef.weight", N * N, N, true, false});
            out.push_back({p + "altup_correct_coef.weight", N, N, true, false});
            out.push_back({p + "altup_correct_scale.weight", 1, dim, cfg.altup_correct_scale, true});
            out.push_back({p + "laurel_l.weight", cfg.laurel_rank, dim, true, false});
            out.push_back({p + "laurel_r.weight", dim, cfg.laurel_rank, true, false});
            out.push_back({p + "laurel_post_norm.weight", 1, dim, true, true});
        }
        if (pre_norms) out.push_back({p + "attn_norm.weight", 1, dim, true, true});
        if (cfg.norm_bias) out.push_back({p + "attn_norm.bias", 1, dim, true, true});
        if (cfg.is_short_conv(l)) {  // a short convolution in place of attention (LFM2)
            out.push_back({p + "shortconv.in_proj.weight", 3 * dim, dim, true, false});
            out.push_back({p + "shortconv.conv.weight", dim, cfg.ssm_conv_kernel, true, true});
            out.push_back({p + "shortconv.out_proj.weight", dim, dim, true, false});
        } else if (cfg.is_delta_net(l)) {  // Gated DeltaNet in place of attention (Qwen3.5)
            const int64_t C = cfg.ssm_conv_channels(), vw = cfg.ssm_value_width(), nv = cfg.ssm_v_heads;
            out.push_back({p + "attn_qkv.weight", C, dim, true, false});
            out.push_back({p + "attn_gate.weight", vw, dim, true, false});
            out.push_back({p + "ssm_beta.weight", nv, dim, true, false});
            out.push_back({p + "ssm_alpha.weight", nv, dim, true, false});
            out.push_back({p + "ssm_conv1d.weight", C, cfg.ssm_conv_kernel, true, true});
            out.push_back({p + "ssm_dt.bias", 1, nv, true, true});
            out.push_back({p + "ssm_a", 1, nv, true, true});  // -exp(A_log): llama.cpp's name has no suffix
            out.push_back({p + "ssm_norm.weight", 1, cfg.ssm_v_dim, true, true});
            out.push_back({p + "ssm_out.weight", dim, vw, true, false});
        } else if (cfg.is_mamba2(l)) {  // Mamba2 in place of attention (Granite 4.0-H)
            const int64_t C = cfg.ssm_conv_channels(), vw = cfg.ssm_value_width(), nh = cfg.ssm_v_heads;
            const int64_t ng = cfg.ssm_k_heads;
            out.push_back({p + "ssm_in.weight", vw + C + nh, dim, true, false});
            out.push_back({p + "ssm_conv1d.weight", C, cfg.ssm_conv_kernel, true, true});
            out.push_back({p + "ssm_conv1d.bias", 1, C, false, true});
            out.push_back({p + "ssm_dt.bias", 1, nh, true, true});
            out.push_back({p + "ssm_a", 1, nh, true, true});  // -exp(A_log), as for Gated DeltaNet
            out.push_back({p + "ssm_d", 1, nh, true, true});
            out.push_back({p + "ssm_norm.weight", ng, vw / ng, true, true});
            out.push_back({p + "ssm_out.weight", dim, vw, true, false});
        } else if (cfg.is_mla()) {  // Q (or its low-rank pair), the latent and each head's K and V expansions
            const int64_t latent = cfg.mla_kv_lora + cfg.rope_dims(), ql = cfg.mla_q_lora;
            if (ql > 0) {
                out.push_back({p + "attn_q_a.weight", ql, dim, true, false});
                out.push_back({p + "attn_q_a_norm.weight", 1, ql, true, true});
                out.push_back({p + "attn_q_b.weight", q, ql, true, false});
            } else {
                out.push_back({p + "attn_q.weight", q, dim, true, false});
            }
            out.push_back({p + "attn_kv_a_mqa.weight", latent, dim, true, false});
            out.push_back({p + "attn_kv_a_norm.weight", 1, cfg.mla_kv_lora, true, true});
            const int64_t heads = cfg.n_heads, nope = cfg.head_dim - cfg.rope_dims();
            out.push_back({p + "attn_k_b_heads.weight", heads * cfg.mla_kv_lora, nope, true, false});
            out.push_back({p + "attn_v_b_heads.weight", heads * cfg.mla_v_head_dim, cfg.mla_kv_lora, true, false});
            out.push_back({p + "attn_output.weight", dim, (int64_t)cfg.n_heads * cfg.mla_v_head_dim, true, false});
        } else {
            out.push_back({p + "attn_q.weight", cfg.attn_output_gate ? 2 * q : q, dim, true, false});
            if (!cfg.shares_kv(l)) {  // a layer reading another's K/V has no K or V projection
                out.push_back({p + "attn_k.weight", kv, dim, true, false});
                if (!cfg.v_is_k(l)) out.push_back({p + "attn_v.weight", kv, dim, true, false});  // else V is K's projection
            }
            out.push_back({p + "attn_q.bias", 1, cfg.attn_output_gate ? 2 * q : q, qkv_bias_required, true});
            out.push_back({p + "attn_k.bias", 1, kv, qkv_bias_required, true});
            out.push_back({p + "attn_v.bias", 1, kv, qkv_bias_required, true});
        }
        if (cfg.qk_norm != QkNorm::None && !cfg.is_recurrent(l)) {
            out.push_back({p + "attn_q_norm.weight", 1, q_norm_width, true, true});
            if (!cfg.shares_kv(l)) out.push_back({p + "attn_k_norm.weight", 1, k_norm_width, true, true});
        }
        if (!cfg.is_mla() && !cfg.is_recurrent(l)) out.push_back({p + "attn_output.weight", dim, q, true, false});
        if (out_bias_known && !cfg.is_recurrent(l)) out.push_back({p + "attn_output.bias", 1, dim, gpt_oss, true});
        if (gpt_oss) out.push_back({p + "attn_sinks.weight", 1, cfg.n_heads, true, true});
        if (post_norms) out.push_back({p + "post_attention_norm.weight", 1, dim, true, true});
        if (!cfg.has_ffn(l)) continue;  // a mixer alone (Nemotron-H)
        if (pre_norms && !cfg.parallel_block) out.push_back({p + ffn_norm_name(cfg), 1, dim, true, true});
        if (cfg.norm_bias) out.push_back({p + "ffn_norm.bias", 1, dim, true, true});
        if (!cfg.layer_is_moe(l)) {  // a dense model's layer, or one of an MoE model's leading dense layers
            if (cfg.ffn_gated) out.push_back({p + "ffn_gate.weight", ffn, dim, true, false});
            out.push_back({p + "ffn_up.weight", ffn, dim, true, false});
            out.push_back({p + "ffn_down.weight", dim, ffn, true, false});
            if (cfg.ffn_bias) {
                out.push_back({p + "ffn_up.bias", 1, ffn, true, true});
                out.push_back({p + "ffn_down.bias", 1, dim, true, true});
            }
            if (post_norms) out.push_back({p + "post_ffw_norm.weight", 1, dim, true, true});
            if (cfg.ple_dim > 0) {  // its per-layer input's gate, projection and norm
                out.push_back({p + "inp_gate.weight", cfg.ple_dim, dim, true, false});
                out.push_back({p + "proj.weight", dim, cfg.ple_dim, true, false});
                out.push_back({p + "post_norm.weight", 1, dim, true, true});
            }
            continue;
        }
        const int64_t ne = cfg.n_expert, eff = cfg.expert_ffn_dim, sh = cfg.shared_ffn_dim;
        if (cfg.moe_beside_dense) {  // Gemma 4: a dense MLP beside the experts, each with its norms
            out.push_back({p + "ffn_gate.weight", ffn, dim, true, false});
            out.push_back({p + "ffn_up.weight", ffn, dim, true, false});
            out.push_back({p + "ffn_down.weight", dim, ffn, true, false});
            out.push_back({p + "post_ffw_norm.weight", 1, dim, true, true});
            out.push_back({p + "post_ffw_norm_1.weight", 1, dim, true, true});
            out.push_back({p + "pre_ffw_norm_2.weight", 1, dim, true, true});
            out.push_back({p + "post_ffw_norm_2.weight", 1, dim, true, true});
            out.push_back({p + "ffn_gate_inp.scale", 1, dim, true, true});
            out.push_back({p + "ffn_down_exps.scale", 1, ne, true, true});
        }
        out.push_back({p + "ffn_gate_inp.weight", ne, dim, true, false});  // the router
        if (cfg.router_select_bias) out.push_back({p + "exp_probs_b.bias", 1, ne, true, true});
        const int64_t io = cfg.expert_io_dim();  // the latent's width (Nemotron 3 Super), else dim
        if (cfg.moe_latent_dim > 0) {
            out.push_back({p + "ffn_latent_down.weight", io, dim, true, false});
            out.push_back({p + "ffn_latent_up.weight", dim, io, true, false});
        }
        if (!cfg.experts_relu_sq) out.push_back({p + "ffn_gate_exps.weight", eff, io, true, false, ne});
        out.push_back({p + "ffn_up_exps.weight", eff, io, true, false, ne});
        out.push_back({p + "ffn_down_exps.weight", io, eff, true, false, ne});
        if (gpt_oss) {  // the router's bias and each expert's biases, one row per expert
            out.push_back({p + "ffn_gate_inp.bias", 1, ne, true, true});
            out.push_back({p + "ffn_gate_exps.bias", ne, eff, true, true});
            out.push_back({p + "ffn_up_exps.bias", ne, eff, true, true});
            out.push_back({p + "ffn_down_exps.bias", ne, dim, true, true});
        }
        if (sh > 0) {
            if (cfg.shared_expert_gated) out.push_back({p + "ffn_gate_inp_shexp.weight", 1, dim, true, false});
            if (!cfg.experts_relu_sq) out.push_back({p + "ffn_gate_shexp.weight", sh, dim, true, false});
            out.push_back({p + "ffn_up_shexp.weight", sh, dim, true, false});
            out.push_back({p + "ffn_down_shexp.weight", dim, sh, true, false});
        }
    }
    return out;
}

}  // namespace forgert
