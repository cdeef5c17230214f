#include "weights.h"

#include <algorithm>
#include <cstdint>

#include "tensor_layout.h"

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

// Groups the host ranges into as few zero-copy buffers as possible: tensors of
// one mmap lie close together, so a GPU backend wraps each file once.
class Wrapper {
public:
    Wrapper(const std::map<std::string, HostTensor>& tensors, Backend& be, ModelWeights& w) {
        std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
        for (auto& [name, t] : tensors) ranges.emplace_back((uintptr_t)t.data, (uintptr_t)t.data + t.nbytes);
        std::sort(ranges.begin(), ranges.end());
        constexpr uintptr_t kMaxGap = 64u << 20;  // farther apart: another file
        for (auto& r : ranges) {
            if (!regions_.empty() && r.first <= regions_.back().second + kMaxGap)
                regions_.back().second = std::max(regions_.back().second, r.second);
            else
                regions_.push_back(r);
        }
        for (auto& r : regions_) {
            w.buffers.push_back(be.wrap_host(reinterpret_cast<void*>(r.first), r.second - r.first));
            bufs_.push_back(w.buffers.back().get());
        }
    }
    Tensor view(const HostTensor& t) const {
        const uintptr_t p = (uintptr_t)t.data;
        for (size_t i = 0; i < regions_.size(); i++) {
            if (p >= regions_[i].first && p + t.nbytes <= regions_[i].second)
                return make_tensor(bufs_[i], p - regions_[i].first, t.type, t.rows, t.cols);
        }
        throw std::logic_error("tensor outside the wrapped regions");
    }

private:
    std::vector<std::pair<uintptr_t, uintptr_t>> regions_;
    std::vector<Buffer*> bufs_;
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
    for (auto& s : layout) {
        auto it = tensors.find(s.name);
        if (it == tensors.end()) {
            if (s.required) throw InputError("missing tensor '" + s.name + "'");
            continue;
        }
        const HostTensor& t = it->second;
        if (t.rows != s.rows || t.cols != s.cols)
            throw InputError("tensor '" + s.name + "' has shape " + shape_str(t.rows, t.cols) + ", expected " +
                             shape_str(s.rows, s.cols));
        if (s.f32_only && t.type != DType::F32)
            throw InputError("tensor '" + s.name + "' must be F32 (norms and biases), got " + dtype_name(t.type));
        views[s.name] = wrap.view(t);
    }
    // Absent optional tensors stay empty (rows == 0).
    auto at = [&](const std::string& name) {
        auto it = views.find(name);
        return it == views.end() ? Tensor{} : it->second;
    };

    w.token_embd = at("token_embd.weight");
    w.output_norm = at("output_norm.weight");
    w.output = views.count("output.weight") ? at("output.weight") : w.token_embd;
    for (int l = 0; l < cfg.n_layers; l++) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights L;
        L.attn_norm = at(p + "attn_norm.weight");
        L.wq = at(p + "attn_q.weight");
        L.wk = at(p + "attn_k.weight");
        L.wv = at(p + "attn_v.weight");
        L.bq = at(p + "attn_q.bias");
        L.bk = at(p + "attn_k.bias");
        L.bv = at(p + "attn_v.bias");
        L.wo = at(p + "attn_output.weight");
        L.bo = at(p + "attn_output.bias");
        L.ffn_norm = at(p + "ffn_norm.weight");
        L.w_gate = at(p + "ffn_gate.weight");
        L.w_up = at(p + "ffn_up.weight");
        L.w_down = at(p + "ffn_down.weight");
        w.layers.push_back(L);
    }
    return w;
}

}  // namespace forgert
