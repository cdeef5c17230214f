#include "weights.h"

#include <algorithm>
#include <cstdint>

namespace forgert {

void ModelConfig::validate() const {
    auto need = [](bool ok, const std::string& what) {
        if (!ok) throw InputError("invalid model config: " + what);
    };
    need(arch == "llama" || arch == "qwen2", "unsupported architecture '" + arch + "' (supported: llama, qwen2)");
    need(n_layers > 0 && n_layers <= 1024, "n_layers = " + std::to_string(n_layers));
    need(dim > 0 && dim <= (1 << 16), "dim = " + std::to_string(dim));
    need(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0,
         "n_heads = " + std::to_string(n_heads) + " must be a positive multiple of n_kv_heads = " +
             std::to_string(n_kv_heads));
    need(head_dim > 0 && head_dim % 2 == 0 && head_dim <= 1024, "head_dim = " + std::to_string(head_dim));
    need(ffn_dim > 0, "ffn_dim = " + std::to_string(ffn_dim));
    need(vocab > 0, "vocab = " + std::to_string(vocab));
    need(n_ctx > 0 && n_ctx <= (1 << 24), "n_ctx = " + std::to_string(n_ctx));
    need(rms_eps > 0.0f, "rms_eps must be positive");
    need((int)rope_freqs.size() == head_dim / 2, "rope_freqs has " + std::to_string(rope_freqs.size()) +
                                                     " entries, expected head_dim / 2 = " + std::to_string(head_dim / 2));
    need(sliding_window >= 0 && sliding_window_from >= 0,
         "sliding_window = " + std::to_string(sliding_window) + ", from layer " + std::to_string(sliding_window_from));
}

namespace {

bool is_weight_type(DType t) {
    return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0 || t == DType::Q4_0 ||
           t == DType::Q4_1;
}

std::string shape_str(int64_t rows, int64_t cols) {
    return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

// One zero-copy buffer per allocation (per mmap'd file): a GPU backend wraps each file
// once. Ranges of different allocations are never merged, however close: the memory
// between them may be unmapped, or another file's mapping.
class Wrapper {
public:
    Wrapper(const std::map<std::string, HostTensor>& tensors, Backend& be, ModelWeights& w) {
        for (auto& [name, t] : tensors) {
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
        return make_tensor(bufs_[i], (uintptr_t)t.data - regions_[i].begin, t.type, t.rows, t.cols);
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

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, const std::map<std::string, HostTensor>& tensors, Backend& be) {
    cfg.validate();
    for (auto& [name, t] : tensors) {
        if (!is_weight_type(t.type))
            throw InputError("tensor '" + name + "' has unsupported type " + dtype_name(t.type));
        if (t.rows <= 0 || t.cols <= 0) throw InputError("tensor '" + name + "' has an empty shape");
        if (t.cols % dtype_block_elems(t.type) != 0)
            throw InputError("tensor '" + name + "' of type " + dtype_name(t.type) + " has " + std::to_string(t.cols) +
                             " columns, not a multiple of the block size " +
                             std::to_string(dtype_block_elems(t.type)));
        const int64_t expect = row_bytes(t.type, t.cols) * t.rows;
        if ((int64_t)t.nbytes != expect)
            throw InputError("tensor '" + name + "' has " + std::to_string(t.nbytes) + " bytes, expected " +
                             std::to_string(expect) + " for " + dtype_name(t.type) + " " + shape_str(t.rows, t.cols));
        if (!t.data) throw InputError("tensor '" + name + "' has no data");
    }

    ModelWeights w;
    Wrapper wrap(tensors, be, w);
    auto get = [&](const std::string& name, int64_t rows, int64_t cols, bool f32_only) -> Tensor {
        auto it = tensors.find(name);
        if (it == tensors.end()) throw InputError("missing tensor '" + name + "'");
        const HostTensor& t = it->second;
        if (t.rows != rows || t.cols != cols)
            throw InputError("tensor '" + name + "' has shape " + shape_str(t.rows, t.cols) + ", expected " +
                             shape_str(rows, cols));
        if (f32_only && t.type != DType::F32)
            throw InputError("tensor '" + name + "' must be F32 (norms and biases), got " + dtype_name(t.type));
        return wrap.view(t);
    };
    auto has = [&](const std::string& name) { return tensors.count(name) != 0; };

    w.token_embd = get("token_embd.weight", cfg.vocab, cfg.dim, false);
    w.output_norm = get("output_norm.weight", 1, cfg.dim, true);
    w.output = has("output.weight") ? get("output.weight", cfg.vocab, cfg.dim, false) : w.token_embd;
    const bool qkv_bias = cfg.arch == "qwen2";
    for (int l = 0; l < cfg.n_layers; l++) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights L;
        L.attn_norm = get(p + "attn_norm.weight", 1, cfg.dim, true);
        L.wq = get(p + "attn_q.weight", cfg.q_dim(), cfg.dim, false);
        L.wk = get(p + "attn_k.weight", cfg.kv_dim(), cfg.dim, false);
        L.wv = get(p + "attn_v.weight", cfg.kv_dim(), cfg.dim, false);
        if (qkv_bias) {
            L.bq = get(p + "attn_q.bias", 1, cfg.q_dim(), true);
            L.bk = get(p + "attn_k.bias", 1, cfg.kv_dim(), true);
            L.bv = get(p + "attn_v.bias", 1, cfg.kv_dim(), true);
        }
        L.wo = get(p + "attn_output.weight", cfg.dim, cfg.q_dim(), false);
        L.ffn_norm = get(p + "ffn_norm.weight", 1, cfg.dim, true);
        L.w_gate = get(p + "ffn_gate.weight", cfg.ffn_dim, cfg.dim, false);
        L.w_up = get(p + "ffn_up.weight", cfg.ffn_dim, cfg.dim, false);
        L.w_down = get(p + "ffn_down.weight", cfg.dim, cfg.ffn_dim, false);
        w.layers.push_back(L);
    }
    return w;
}

}  // namespace forgert
