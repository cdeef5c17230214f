#include "weights.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tensor_layout.h"

namespace forgert {

namespace {
// Bounds far above any released model, chosen so that every size derived from the header
// (q_dim, cache and tensor bytes) fits int64 and the per-dimension ints: the checks below are
// what make the int arithmetic of the forward pass safe.
constexpr int kMaxLatentRow = 576;  // the CPU's kMaxHeadDim, Metal's FG_ATTN_MAX_HEAD_DIM
constexpr int64_t kMaxLayers = 1024, kMaxDim = 1 << 16, kMaxHeads = 1 << 12, kMaxHeadDim = 1024,
                  kMaxQDim = 1 << 20, kMaxFfnDim = 1 << 20, kMaxVocab = 1 << 24, kMaxCtx = 1 << 24,
                  kMaxExperts = 1 << 12;
constexpr int64_t kMaxKvCacheBytes = int64_t(1) << 48;  // 256 TiB: beyond any machine
constexpr int64_t kMaxTensorExtent = int64_t(1) << 40;  // rows or cols of one weight tensor

// a * b, or InputError naming `what` when it does not fit int64 (operands are >= 0).
int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) throw InputError(what + " overflows 64-bit arithmetic");
    return r;
}
}  // namespace

void ModelConfig::validate() const {
    auto need = [](bool ok, const std::string& what) {
        if (!ok) throw InputError("invalid model config: " + what);
    };
    auto in_range = [&](const char* field, int64_t v, int64_t lo, int64_t hi) {
        need(v >= lo && v <= hi, std::string(field) + " = " + std::to_string(v) + " is outside " +
                                     std::to_string(lo) + ".." + std::to_string(hi));
    };
    need(arch == "llama" || arch == "qwen2" || arch == "qwen3" || is_gemma() || is_gpt_oss(),
         "unsupported architecture '" + arch + "' (supported: llama, qwen2, qwen3, gemma2, gemma3, gpt-oss)");
    in_range("n_layers", n_layers, 1, kMaxLayers);
    in_range("dim", dim, 1, kMaxDim);
    in_range("n_heads", n_heads, 1, kMaxHeads);
    in_range("n_kv_heads", n_kv_heads, 1, kMaxHeads);
    need(n_heads % n_kv_heads == 0, "n_heads = " + std::to_string(n_heads) +
                                        " must be a positive multiple of n_kv_heads = " + std::to_string(n_kv_heads));
    in_range("head_dim", head_dim, 2, kMaxHeadDim);
    need(head_dim % 2 == 0, "head_dim = " + std::to_string(head_dim) + " must be even for RoPE");
    // Products in int64 (the fields are bounded, so these cannot overflow) before q_dim() /
    // kv_dim() compute them in int.
    in_range("q_dim (n_heads * head_dim)", (int64_t)n_heads * head_dim, 1, kMaxQDim);
    in_range("ffn_dim", ffn_dim, 1, kMaxFfnDim);
    in_range("n_expert", n_expert, 0, kMaxExperts);
    if (is_moe()) {
        in_range("n_expert_used", n_expert_used, 1, n_expert);
        in_range("expert_ffn_dim", expert_ffn_dim, 1, kMaxFfnDim);
        in_range("shared_ffn_dim", shared_ffn_dim, 0, kMaxFfnDim);
        in_range("n_dense_lead", n_dense_lead, 0, n_layers);
        // The router's own rules (the op checks the same each call): groups, expert_weights_scale.
        const Backend::MoeRouting routing{router_sigmoid, expert_norm_topk, expert_weights_scale, expert_groups,
                                          expert_groups_used};
        const std::string why = moe_routing_problem(routing, n_expert, n_expert_used);
        need(why.empty(), "the router: " + why + " (expert_groups, expert_groups_used, expert_weights_scale)");
    } else {
        need(n_expert_used == 0 && shared_ffn_dim == 0 && n_dense_lead == 0,
             "n_expert_used, shared_ffn_dim and n_dense_lead need experts (n_expert = 0)");
    }
    if (is_mla()) {
        in_range("mla_kv_lora", mla_kv_lora, 1, kMaxDim);
        in_range("mla_q_lora", mla_q_lora, 0, kMaxDim);
        in_range("mla_v_head_dim", mla_v_head_dim, 1, head_dim);
        need(n_kv_heads == n_heads, "multi-head latent attention has a K and V per head (n_kv_heads == n_heads)");
        need(rope_dim >= 2 && rope_dim < head_dim, "multi-head latent attention rotates part of each head (rope_dim)");
        need(mla_kv_lora + rope_dim <= kMaxLatentRow,
             "multi-head latent attention caches rows of mla_kv_lora + rope_dim <= " + std::to_string(kMaxLatentRow) +
                 " values (the attention kernels' widest head)");
    } else {
        need(mla_q_lora == 0 && mla_v_head_dim == 0, "mla_q_lora and mla_v_head_dim need mla_kv_lora");
    }
    need(layer_ffn.empty() || (int64_t)layer_ffn.size() == n_layers,
         "layer_ffn has " + std::to_string(layer_ffn.size()) + " entries for " + std::to_string(n_layers) + " layers");
    for (int f : layer_ffn)
        need(f >= 0 && f <= (is_moe() ? 2 : 1) && (f != 2 || n_dense_lead == 0),
             "layer_ffn entries are 0 (none), 1 (dense) or 2 (experts, in a model with experts and no leading "
             "dense layers), got " + std::to_string(f));
    need(!experts_relu_sq || (is_moe() && !ffn_gated && ffn_relu_sq && swiglu_limit == 0.0f && !moe_beside_dense &&
                              !shared_expert_gated),
         "ungated ReLU-squared experts (Nemotron 3) go with a plain ReLU-squared feed-forward, an ungated shared "
         "expert and no other expert variant");
    in_range("moe_latent_dim", moe_latent_dim, 0, kMaxDim);
    need(moe_latent_dim == 0 || experts_relu_sq, "a latent MoE (moe_latent_dim) is Nemotron 3 Super's, with its "
                                                 "ReLU-squared experts");
    need(layer_kind.empty() || (int64_t)layer_kind.size() == n_layers,
         "layer_kind has " + std::to_string(layer_kind.size()) + " entries for " + std::to_string(n_layers) + " layers");
    for (int k : layer_kind)
        need(k >= 0 && k <= static_cast<int>(LayerKind::Mamba2),
             "layer_kind " + std::to_string(k) +
                 " is not 0 (attention), 1 (Gated DeltaNet), 2 (short convolution) or 3 (Mamba2)");
    if (has_recurrent()) {  // the convolution op's bounds, and what the forward pass supports
        in_range("ssm_conv_kernel", ssm_conv_kernel, 1, 16);
        need(!is_mla() && !post_norms && pre_norms && !parallel_block,
             "recurrent layers are supported with pre-norms only (no latent attention, post-norms or parallel block)");
    }
    if (has_layer_kind(LayerKind::Mamba2)) {  // mamba2_scan's bounds (d_state <= 256)
        in_range("ssm_k_heads (Mamba2's groups)", ssm_k_heads, 1, kMaxHeads);
        in_range("ssm_v_heads (Mamba2's heads)", ssm_v_heads, 1, kMaxHeads);
        in_range("ssm_k_dim (Mamba2's d_state)", ssm_k_dim, 1, 256);
        in_range("ssm_v_dim (Mamba2's head_dim)", ssm_v_dim, 1, 1024);
        need(ssm_v_heads % ssm_k_heads == 0, "Mamba2's heads (ssm_v_heads = " + std::to_string(ssm_v_heads) +
                                                 ") must be a multiple of its groups (ssm_k_heads = " +
                                                 std::to_string(ssm_k_heads) + ")");
    }
    if (has_layer_kind(LayerKind::GatedDeltaNet)) {
        in_range("ssm_k_heads", ssm_k_heads, 1, kMaxHeads);
        in_range("ssm_v_heads", ssm_v_heads, 1, kMaxHeads);
        in_range("ssm_k_dim", ssm_k_dim, 1, 256);
        in_range("ssm_v_dim", ssm_v_dim, 1, 256);
        need(ssm_v_heads % ssm_k_heads == 0, "ssm_v_heads = " + std::to_string(ssm_v_heads) +
                                                 " must be a multiple of ssm_k_heads = " + std::to_string(ssm_k_heads));
    }
    need(!attn_output_gate || !is_mla(), "attn_output_gate with latent attention is not supported");
    in_range("vocab", vocab, 1, kMaxVocab);
    in_range("n_ctx", n_ctx, 1, kMaxCtx);
    // Per-layer shapes (Gemma 4), each bounded as the uniform ones are.
    for (const auto* list : {&layer_head_dim, &layer_n_kv_heads, &layer_v_is_k})
        need(list->empty() || (int64_t)list->size() == n_layers,
             "a per-layer list (layer_head_dim, layer_n_kv_heads, layer_v_is_k) has " + std::to_string(list->size()) +
                 " entries for " + std::to_string(n_layers) + " layers");
    need(layer_out_scale.empty() || (int64_t)layer_out_scale.size() == n_layers,
         "layer_out_scale has " + std::to_string(layer_out_scale.size()) + " entries for " + std::to_string(n_layers) +
             " layers");
    for (float f : layer_out_scale)
        need(std::isfinite(f), "layer_out_scale " + std::to_string(f) + " must be finite");
    int64_t kv_row = 0;  // one position's K (or V) elements, all layers
    for (int l = 0; l < n_layers; l++) {
        const std::string at = "[" + std::to_string(l) + "]";
        if (!layer_head_dim.empty()) {
            in_range(("layer_head_dim" + at).c_str(), layer_head_dim[l], 2, kMaxHeadDim);
            need(layer_head_dim[l] % 2 == 0, "layer_head_dim" + at + " must be even for RoPE");
            in_range(("q_dim of layer " + std::to_string(l)).c_str(), (int64_t)n_heads * layer_head_dim[l], 1, kMaxQDim);
        }
        if (!layer_n_kv_heads.empty()) {
            in_range(("layer_n_kv_heads" + at).c_str(), layer_n_kv_heads[l], 1, kMaxHeads);
            need(n_heads % layer_n_kv_heads[l] == 0, "n_heads must be a multiple of layer_n_kv_heads" + at);
        }
        kv_row += (int64_t)n_kv_heads_of(l) * head_dim_of(l);
    }
    need(layer_kv_source.empty() || (int64_t)layer_kv_source.size() == n_layers,
         "layer_kv_source has " + std::to_string(layer_kv_source.size()) + " entries for " + std::to_string(n_layers) +
             " layers");
    for (int l = 0; l < (int)layer_kv_source.size(); l++) {
        const int s = layer_kv_source[l];
        need(s >= 0 && s <= l && !shares_kv(s) && !is_recurrent(l) && !is_recurrent(s) &&
                 head_dim_of(s) == head_dim_of(l) && n_kv_heads_of(s) == n_kv_heads_of(l),
             "layer_kv_source[" + std::to_string(l) + "] = " + std::to_string(s) +
                 " is not an earlier attention layer of the same shape that keeps its own K/V");
    }
    need(layer_ffn_dim.empty() || ((int64_t)layer_ffn_dim.size() == n_layers && !is_moe()),
         "layer_ffn_dim must list one width per layer, for a dense model");
    for (int f : layer_ffn_dim) in_range("layer_ffn_dim", f, 1, kMaxFfnDim);
    in_range("ple_dim", ple_dim, 0, kMaxDim);
    in_range("ple_vocab", ple_vocab, 0, vocab);
    in_range("altup_n", altup_n, 0, 16);
    in_range("laurel_rank", laurel_rank, 0, kMaxDim);
    need(altup_n != 1, "altup_n must be 0 (no AltUp) or at least 2 streams");
    need(altup_n == 0 || (ple_dim > 0 && laurel_rank > 0 && post_norms && qk_norm == QkNorm::PerHead &&
                          !is_moe() && !is_mla() && !has_recurrent()),
         "AltUp (Gemma 3n) needs per-layer embeddings, LAuReL, sandwich norms and a per-head QK-norm, "
         "without experts, latent attention or recurrent layers");
    need(layer_sparsity.empty() || ((int64_t)layer_sparsity.size() == n_layers && altup_n > 0),
         "layer_sparsity must list one value per layer, for a Gemma 3n (AltUp) model");
    for (float s : layer_sparsity) need(std::isfinite(s) && s >= 0.0f, "layer_sparsity values must be finite and >= 0");
    need(std::isfinite(ple_embed_scale), "ple_embed_scale must be finite");
    need(ple_dim == 0 || (!is_mla() && !has_recurrent() && !is_moe() && residual_scale == 1.0f),
         "per-layer embeddings with latent attention, recurrent layers, experts or residual_scale are not supported");
    need(!is_mla() || (layer_head_dim.empty() && layer_n_kv_heads.empty() && layer_v_is_k.empty()),
         "per-layer attention shapes with latent attention are not supported");
    need(!v_norm || !is_mla(), "v_norm with latent attention is not supported");
    const int64_t kv_cache = checked_mul(checked_mul(kv_row, 2 * 2, "KV cache bytes"), n_ctx, "KV cache bytes");
    in_range("KV cache bytes (2 * n_ctx * 2 * the layers' kv_dim)", kv_cache, 1, kMaxKvCacheBytes);
    need(rms_eps > 0.0f, "rms_eps must be positive");
    in_range("rope_dim", rope_dim, 0, layer_head_dim.empty() ? head_dim : *std::min_element(layer_head_dim.begin(), layer_head_dim.end()));
    need(rope_dim % 2 == 0, "rope_dim = " + std::to_string(rope_dim) + " must be even");
    const int64_t half = rope_dims() / 2;
    need(!rope_freqs.empty() && (int64_t)rope_freqs.size() % half == 0,
         "rope_freqs has " + std::to_string(rope_freqs.size()) + " entries, expected a multiple of rope_dim / 2 = " +
             std::to_string(half));
    need(rope_attn_factor > 0.0f && std::isfinite(rope_attn_factor),
         "rope_attn_factor = " + std::to_string(rope_attn_factor) + " must be a positive number");
    need(rope_table_attn_factor.empty() || (int)rope_table_attn_factor.size() == n_rope_tables(),
         "rope_table_attn_factor lists " + std::to_string(rope_table_attn_factor.size()) + " factors for " +
             std::to_string(n_rope_tables()) + " RoPE tables");
    for (float f : rope_table_attn_factor)
        need(f > 0.0f && std::isfinite(f), "rope_table_attn_factor " + std::to_string(f) + " must be a positive number");
    need(std::isfinite(attn_temp_beta) && (attn_temp_beta == 0.0f || attn_temp_floor > 0),
         "attn_temp_beta = " + std::to_string(attn_temp_beta) + " needs a finite value and attn_temp_floor > 0, got " +
             std::to_string(attn_temp_floor));
    need(layer_rope.empty() || (int64_t)layer_rope.size() == n_layers,
         "layer_rope has " + std::to_string(layer_rope.size()) + " entries for " + std::to_string(n_layers) + " layers");
    for (size_t l = 0; l < layer_rope.size(); l++)
        need(layer_rope[l] >= -1 && layer_rope[l] < n_rope_tables(),
             "layer_rope[" + std::to_string(l) + "] = " + std::to_string(layer_rope[l]) + " is not -1 or one of the " +
                 std::to_string(n_rope_tables()) + " RoPE tables");
    need(layer_window.empty() || (int64_t)layer_window.size() == n_layers,
         "layer_window has " + std::to_string(layer_window.size()) + " entries for " + std::to_string(n_layers) +
             " layers");
    auto finite_at_least = [&](const char* field, float v, float lo) {
        need(std::isfinite(v) && v >= lo, std::string(field) + " = " + std::to_string(v) + " must be a finite number >= " +
                                              std::to_string(lo));
    };
    finite_at_least("embed_scale", embed_scale, 0.0f);
    finite_at_least("attn_scale", attn_scale, 0.0f);
    finite_at_least("attn_softcap", attn_softcap, 0.0f);
    finite_at_least("final_softcap", final_softcap, 0.0f);
    finite_at_least("residual_scale", residual_scale, 0.0f);
    need(std::isfinite(logit_scale) && logit_scale > 0.0f,
         "logit_scale = " + std::to_string(logit_scale) + " must be a positive number");
    need(residual_scale == 1.0f || shared_ffn_dim == 0 || !shared_expert_gated,
         "residual_scale with a gated shared expert is not supported");  // Granite 4.0-H's is ungated
    need(!post_norms || n_expert == 0 || moe_beside_dense, "post-norms with experts are not supported");
    need(!moe_beside_dense || (is_moe() && post_norms && ffn_gelu && shared_ffn_dim == 0 && n_dense_lead == 0 &&
                               !router_sigmoid && swiglu_limit == 0.0f),
         "moe_beside_dense is Gemma 4's layout: experts under a softmax router beside a dense GeGLU MLP, post-norms");
    need(!post_norms || residual_scale == 1.0f, "post-norms with residual_scale are not supported");
    need(pre_norms || post_norms, "a layer needs its pre-norms or its post-norms");
    need(ffn_gated || ((ffn_gelu || ffn_relu_sq) && (n_expert == 0 || experts_relu_sq) && pre_norms && !post_norms),
         "a plain (ungated) feed-forward is a dense GELU or ReLU-squared one after a pre-norm");
    need(!ffn_relu_sq || !ffn_gated, "ReLU-squared is a plain feed-forward's activation only");
    need(!norm_bias || (pre_norms && !post_norms), "norm biases are on pre-norms only");
    need(!parallel_block || (pre_norms && !post_norms && n_expert == 0 && residual_scale == 1.0f),
         "a parallel block has one pre-norm, no post-norms, no experts and no residual_scale");
    finite_at_least("swiglu_limit", swiglu_limit, 0.0f);
    finite_at_least("swiglu_alpha", swiglu_alpha, 0.0f);
    for (size_t l = 0; l < layer_window.size(); l++)
        need(layer_window[l] >= 0, "layer_window[" + std::to_string(l) + "] = " + std::to_string(layer_window[l]) +
                                       " must be >= 0 (0: full attention)");
}

namespace {

bool is_weight_type(DType t) {
    return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 || t == DType::Q4_0 ||
           t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 || t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K ||
           t == DType::IQ4_NL || t == DType::IQ4_XS || t == DType::MXFP4 || is_iq_lattice(t);
}

std::string shape_str(int64_t rows, int64_t cols) {
    return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

// A 2-D tensor, or a 3-D expert stack (n_expert blocks of [rows, cols]).
void check_host_tensor(const std::string& name, const HostTensor& t) {
    if (!is_weight_type(t.type)) throw InputError("tensor '" + name + "' has unsupported type " + dtype_name(t.type));
    if (t.rows <= 0 || t.cols <= 0 || t.n_expert < 0) throw InputError("tensor '" + name + "' has an empty shape");
    if (t.rows > kMaxTensorExtent || t.cols > kMaxTensorExtent || t.n_expert > kMaxExperts)
        throw InputError("tensor '" + name + "' has shape " + shape_str(t.rows, t.cols) + ", beyond " +
                         std::to_string(kMaxTensorExtent) + " rows or columns");
    if (t.cols % dtype_block_elems(t.type) != 0)
        throw InputError("tensor '" + name + "' of type " + dtype_name(t.type) + " has " + std::to_string(t.cols) +
                         " columns, not a multiple of the block size " + std::to_string(dtype_block_elems(t.type)));
    const int64_t expect = checked_mul(checked_mul(row_bytes(t.type, t.cols), t.rows, "tensor '" + name + "' byte size"),
                                       std::max<int64_t>(t.n_expert, 1), "tensor '" + name + "' byte size");
    if ((int64_t)t.nbytes != expect)
        throw InputError("tensor '" + name + "' has " + std::to_string(t.nbytes) + " bytes, expected " +
                         std::to_string(expect) + " for " + dtype_name(t.type) + " " + shape_str(t.rows, t.cols) +
                         (t.n_expert ? " x " + std::to_string(t.n_expert) + " experts" : ""));
    if (!t.data) throw InputError("tensor '" + name + "' has no data");
}

// The 2-D pieces of a host tensor: itself, or each expert of a per-expert list.
std::vector<const HostTensor*> pieces(const HostTensor& t) {
    std::vector<const HostTensor*> out;
    if (t.experts.empty()) out.push_back(&t);
    for (const HostTensor& e : t.experts) out.push_back(&e);
    return out;
}

// One zero-copy buffer per allocation (per mmap'd file): a GPU backend wraps each file
// once. Ranges of different allocations are never merged, however close: the memory
// between them may be unmapped, or another file's mapping.
class Wrapper {
public:
    Wrapper(const std::map<std::string, HostTensor>& tensors, Backend& be, ModelWeights& w) {
        for (auto& [name, whole] : tensors) for (const HostTensor* piece : pieces(whole)) {
            const HostTensor& t = *piece;
            const uintptr_t b = (uintptr_t)t.data, e = b + t.nbytes;
            auto [it, added] = index_.emplace(allocation(t), regions_.size());
            if (added) regions_.push_back({b, e, 0, {}});
            Region& r = regions_[it->second];
            r.begin = std::min(r.begin, b);
            r.end = std::max(r.end, e);
            if (t.nbytes > r.largest) r.largest = t.nbytes, r.largest_name = name;
        }
        for (const Region& r : regions_) {
            try {
                w.buffers.push_back(be.wrap_host(reinterpret_cast<void*>(r.begin), r.end - r.begin, r.largest));
            } catch (const InputError& e) {
                throw InputError("tensor '" + r.largest_name + "': " + e.what());
            }
            bufs_.push_back(w.buffers.back().get());
        }
    }
    Tensor view(const HostTensor& t) const {
        const size_t i = index_.at(allocation(t));
        return make_tensor(bufs_[i], (uintptr_t)t.data - regions_[i].begin, t.type, t.rows * std::max<int64_t>(t.n_expert, 1),
                           t.cols);
    }

private:
    struct Region {
        uintptr_t begin, end;
        size_t largest;  // bytes of its largest tensor: how far a GPU's buffer views must overlap
        std::string largest_name;
    };
    // The allocation holding t, or t's own address when unknown (or when t lies outside it).
    static uintptr_t allocation(const HostTensor& t) {
        const uintptr_t a = (uintptr_t)t.alloc, p = (uintptr_t)t.data;
        return t.alloc && p >= a && p + t.nbytes <= a + t.alloc_bytes ? a : p;
    }
    std::vector<Region> regions_;
    std::vector<Buffer*> bufs_;
    std::map<uintptr_t, size_t> index_;
};

// The n_expert [rows, cols] views of an expert stack: row ranges of a 3-D tensor, or the
// per-expert tensors as listed.
std::vector<Tensor> expert_stack(const TensorSpec& s, const HostTensor& t, const Wrapper& wrap) {
    const std::string want = std::to_string(s.n_expert) + " x " + shape_str(s.rows, s.cols);
    std::vector<Tensor> out;
    if (t.experts.empty()) {
        if (t.n_expert != s.n_expert || t.rows != s.rows || t.cols != s.cols)
            throw InputError("tensor '" + s.name + "' has shape " + std::to_string(t.n_expert) + " x " +
                             shape_str(t.rows, t.cols) + ", expected " + want + " (experts x [rows, cols])");
        const Tensor whole = wrap.view(t);  // [n_expert * rows, cols]
        for (int64_t e = 0; e < s.n_expert; e++) out.push_back(whole.slice_rows(e * s.rows, s.rows));
        return out;
    }
    if ((int64_t)t.experts.size() != s.n_expert)
        throw InputError("tensor '" + s.name + "' lists " + std::to_string(t.experts.size()) + " experts, expected " +
                         std::to_string(s.n_expert));
    for (size_t e = 0; e < t.experts.size(); e++) {
        const HostTensor& x = t.experts[e];
        if (x.rows != s.rows || x.cols != s.cols)
            throw InputError("tensor '" + s.name + "' expert " + std::to_string(e) + " has shape " +
                             shape_str(x.rows, x.cols) + ", expected " + shape_str(s.rows, s.cols));
        out.push_back(wrap.view(x));
    }
    return out;
}

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, const std::map<std::string, HostTensor>& tensors, Backend& be) {
    cfg.validate();
    for (auto& [name, t] : tensors) {
        if (t.experts.empty()) {
            check_host_tensor(name, t);
            continue;
        }
        for (size_t e = 0; e < t.experts.size(); e++) {
            const HostTensor& x = t.experts[e];
            if (!x.experts.empty() || x.n_expert) throw InputError("tensor '" + name + "': an expert's tensor is 2-D");
            check_host_tensor(name + "' expert '" + std::to_string(e), x);
            if (x.type != t.experts[0].type)
                throw InputError("tensor '" + name + "': expert " + std::to_string(e) + " is " + dtype_name(x.type) +
                                 ", expert 0 is " + dtype_name(t.experts[0].type) + " (one type per expert stack)");
        }
    }

    // Every tensor the architecture knows, checked and wrapped; a tensor it does not know is an
    // error: running without it would compute a different model than the file describes.
    const std::vector<TensorSpec> layout = tensor_layout(cfg);
    std::map<std::string, const TensorSpec*> known;
    for (auto& s : layout) known[s.name] = &s;
    for (auto& [name, t] : tensors) {
        if (!known.count(name))
            throw InputError("unexpected tensor '" + name + "' for a " + std::to_string(cfg.n_layers) + "-layer " +
                             cfg.arch + " model");
    }

    ModelWeights w;
    Wrapper wrap(tensors, be, w);
    std::map<std::string, Tensor> views;  // the tensors present, by name
    std::vector<std::string> in_order;    // their names in the layout's order, a decode's
    std::map<std::string, std::vector<Tensor>> stacks;  // expert stacks, one view per expert
    for (auto& s : layout) {
        auto it = tensors.find(s.name);
        if (it == tensors.end()) {
            if (s.required) throw InputError("missing tensor '" + s.name + "'");
            continue;
        }
        const HostTensor& t = it->second;
        if (s.n_expert > 0) {
            stacks[s.name] = expert_stack(s, t, wrap);
            be.prepare_experts(stacks[s.name], w.prepared);
            continue;
        }
        if (t.n_expert || !t.experts.empty())
            throw InputError("tensor '" + s.name + "' is an expert stack, expected one matrix " + shape_str(s.rows, s.cols));
        if (t.rows != s.rows || t.cols != s.cols)
            throw InputError("tensor '" + s.name + "' has shape " + shape_str(t.rows, t.cols) + ", expected " +
                             shape_str(s.rows, s.cols));
        if (s.f32_only && t.type != DType::F32)
            throw InputError("tensor '" + s.name + "' must be F32 (norms and biases), got " + dtype_name(t.type));
        views[s.name] = wrap.view(t);
        in_order.push_back(s.name);
    }
    // Each matrix as the backend reads it (a repacked copy where it repacks; the file's view
    // otherwise). A tied embedding is one tensor, so the output matmul reads the same copy.
    // Prepared in the order a decode reads them: the copies of one layer then lie side by side.
    // An untied token embedding is read only by get_rows (a few rows a token), which the file's
    // layout serves as fast: a copy would add its whole size to memory for nothing (282 MiB in
    // a Llama 3 8B Q4_0, whose peak RSS then exceeded the file + KV cache + 64 MB rule).
    // Gemma 4's per-layer embedding table likewise (its rows gathered, never multiplied; 2.3 GiB in
    // E2B's Q8_0): it stays the file's mapping.
    const bool embd_rows_only = views.count("output.weight") > 0;
    for (const std::string& name : in_order)
        if (!(embd_rows_only && name == "token_embd.weight") && name != "per_layer_token_embd.weight")
            views[name] = be.prepare_weight(views[name], w.prepared);
    // Absent optional tensors stay empty (rows == 0).
    auto at = [&](const std::string& name) {
        auto it = views.find(name);
        return it == views.end() ? Tensor{} : it->second;
    };

    w.token_embd = at("token_embd.weight");
    w.output_norm = at("output_norm.weight");
    w.output_norm_b = at("output_norm.bias");
    w.output = views.count("output.weight") ? at("output.weight") : w.token_embd;
    w.per_layer_token_embd = at("per_layer_token_embd.weight");
    w.per_layer_model_proj = at("per_layer_model_proj.weight");
    w.per_layer_proj_norm = at("per_layer_proj_norm.weight");
    for (int i = 0; i + 1 < cfg.altup_n; i++) {
        w.altup_proj.push_back(at("altup_proj." + std::to_string(i) + ".weight"));
        w.altup_unembd_proj.push_back(at("altup_unembd_proj." + std::to_string(i) + ".weight"));
    }
    for (int l = 0; l < cfg.n_layers; l++) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights L;
        L.attn_norm = at(p + "attn_norm.weight");
        L.attn_norm_b = at(p + "attn_norm.bias");
        L.ffn_norm_b = at(p + "ffn_norm.bias");
        L.b_up = at(p + "ffn_up.bias");
        L.b_down = at(p + "ffn_down.bias");
        L.wq = at(p + "attn_q.weight");
        L.wk = at(p + "attn_k.weight");
        L.wv = at(p + "attn_v.weight");
        L.bq = at(p + "attn_q.bias");
        L.bk = at(p + "attn_k.bias");
        L.bv = at(p + "attn_v.bias");
        L.q_norm = at(p + "attn_q_norm.weight");
        L.k_norm = at(p + "attn_k_norm.weight");
        L.wo = at(p + "attn_output.weight");
        L.bo = at(p + "attn_output.bias");
        L.ssm_qkv = at(p + "attn_qkv.weight");
        L.ssm_gate = at(p + "attn_gate.weight");
        L.ssm_beta = at(p + "ssm_beta.weight");
        L.ssm_alpha = at(p + "ssm_alpha.weight");
        L.ssm_conv1d = at(p + "ssm_conv1d.weight");
        L.ssm_dt_bias = at(p + "ssm_dt.bias");
        L.ssm_a = at(p + "ssm_a");
        L.ssm_norm = at(p + "ssm_norm.weight");
        L.ssm_out = at(p + "ssm_out.weight");
        L.ssm_in = at(p + "ssm_in.weight");
        L.ssm_conv1d_b = at(p + "ssm_conv1d.bias");
        L.ssm_d = at(p + "ssm_d");
        L.sc_in_proj = at(p + "shortconv.in_proj.weight");
        L.sc_conv = at(p + "shortconv.conv.weight");
        L.sc_out_proj = at(p + "shortconv.out_proj.weight");
        if (!cfg.is_gpt_oss()) L.attn_post_norm = at(p + "post_attention_norm.weight");  // gpt-oss: its ffn_norm
        L.attn_sinks = at(p + "attn_sinks.weight");
        L.router_b = at(p + "ffn_gate_inp.bias");
        L.gate_exps_b = at(p + "ffn_gate_exps.bias");
        L.up_exps_b = at(p + "ffn_up_exps.bias");
        L.down_exps_b = at(p + "ffn_down_exps.bias");
        L.ffn_norm = at(p + ffn_norm_name(cfg));
        L.ffn_post_norm = at(p + "post_ffw_norm.weight");
        L.w_gate = at(p + "ffn_gate.weight");
        L.w_up = at(p + "ffn_up.weight");
        L.w_down = at(p + "ffn_down.weight");
        L.router = at(p + "ffn_gate_inp.weight");
        L.router_in_scale = at(p + "ffn_gate_inp.scale");
        L.expert_out_scale = at(p + "ffn_down_exps.scale");
        L.ffn_post_norm_1 = at(p + "post_ffw_norm_1.weight");
        L.ffn_pre_norm_2 = at(p + "pre_ffw_norm_2.weight");
        L.ffn_post_norm_2 = at(p + "post_ffw_norm_2.weight");
        L.gate_exps = stacks[p + "ffn_gate_exps.weight"];
        L.up_exps = stacks[p + "ffn_up_exps.weight"];
        L.down_exps = stacks[p + "ffn_down_exps.weight"];
        L.shared_gate_inp = at(p + "ffn_gate_inp_shexp.weight");
        L.shared_gate = at(p + "ffn_gate_shexp.weight");
        L.shared_up = at(p + "ffn_up_shexp.weight");
        L.shared_down = at(p + "ffn_down_shexp.weight");
        L.router_select_b = at(p + "exp_probs_b.bias");
        L.latent_down = at(p + "ffn_latent_down.weight");
        L.latent_up = at(p + "ffn_latent_up.weight");
        L.wq_a = at(p + "attn_q_a.weight");
        L.q_a_norm = at(p + "attn_q_a_norm.weight");
        L.wq_b = at(p + "attn_q_b.weight");
        L.wkv_a = at(p + "attn_kv_a_mqa.weight");
        L.ple_inp_gate = at(p + "inp_gate.weight");
        L.ple_proj = at(p + "proj.weight");
        L.ple_post_norm = at(p + "post_norm.weight");
        L.altup_router = at(p + "altup_router.weight");
        L.altup_router_norm = at(p + "altup_router_norm.weight");
        L.altup_predict_coef = at(p + "altup_predict_coef.weight");
        L.altup_correct_coef = at(p + "altup_correct_coef.weight");
        L.altup_correct_scale = at(p + "altup_correct_scale.weight");
        L.laurel_l = at(p + "laurel_l.weight");
        L.laurel_r = at(p + "laurel_r.weight");
        L.laurel_post_norm = at(p + "laurel_post_norm.weight");
        L.kv_a_norm = at(p + "attn_kv_a_norm.weight");
        if (cfg.is_mla()) {  // each head's rows of the absorbed K and V expansions
            const Tensor kb = at(p + "attn_k_b_heads.weight"), vb = at(p + "attn_v_b_heads.weight");
            for (int h = 0; h < cfg.n_heads; h++) {
                L.wk_b.push_back(kb.slice_rows((int64_t)h * cfg.mla_kv_lora, cfg.mla_kv_lora));
                L.wv_b.push_back(vb.slice_rows((int64_t)h * cfg.mla_v_head_dim, cfg.mla_v_head_dim));
            }
        }
        w.layers.push_back(L);
    }
    return w;
}

}  // namespace forgert
