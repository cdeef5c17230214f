// forgert._core: argument conversion only; the logic lives in model/ and backends/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/weight_panels.h"
#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/read_bandwidth.h"
#include "core/backend.h"
#include "model/llama_model.h"
#include "model/tensor_layout.h"
#include "ops_binding.h"
#include "pool_binding.h"
#include "sampling/batch_draw.h"
#include "sampling/sampler.h"
#if FORGERT_HAVE_METAL_EMULATOR
#include "backends/metal/device_emulated.h"
#endif

namespace py = pybind11;
using namespace forgert;

namespace {

template <class T>
T get(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw InputError(std::string("model config lacks '") + key + "'");
    try {
        return d[key].cast<T>();
    } catch (const py::cast_error&) {
        throw InputError(std::string("model config '") + key + "' has the wrong type: " +
                         std::string(py::str(d[key].get_type().attr("__name__"))));
    }
}

// Integers are read wide and range-checked here, so a value past int (2**31 from a large
// header) is a ValueError naming the field, not pybind11's cast error; validate() bounds it.
int as_int(const py::handle& v, const std::string& what) {
    PyObject* index = PyNumber_Index(v.ptr());  // ints and NumPy integers; not floats or strings
    if (!index) {
        PyErr_Clear();
        throw InputError("model config " + what + " must be an integer, got " +
                         std::string(py::str(v.get_type().attr("__name__"))));
    }
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (overflow || x < INT32_MIN || x > INT32_MAX)
        throw InputError("model config " + what + " = " + std::string(py::str(v)) + " is out of range");
    return (int)x;
}

template <>
int get<int>(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw InputError(std::string("model config lacks '") + key + "'");
    return as_int(d[key], std::string("'") + key + "'");
}

// A per-layer list of integers (layer_window, layer_rope): a list, tuple or 1-D array.
std::vector<int> get_int_list(const py::dict& d, const char* key) {
    py::object v = d[key];
    if (!py::isinstance<py::sequence>(v) || py::isinstance<py::str>(v))
        throw InputError(std::string("model config '") + key + "' must be a list of integers, got " +
                         std::string(py::str(v.get_type().attr("__name__"))));
    std::vector<int> out;
    for (const py::handle& item : v)
        out.push_back(as_int(item, std::string("'") + key + "[" + std::to_string(out.size()) + "]'"));
    return out;
}

ModelConfig config_from_dict(const py::dict& d) {
    ModelConfig c;
    c.arch = get<std::string>(d, "arch");
    c.n_layers = get<int>(d, "n_layers");
    c.dim = get<int>(d, "dim");
    c.n_heads = get<int>(d, "n_heads");
    c.n_kv_heads = get<int>(d, "n_kv_heads");
    c.head_dim = get<int>(d, "head_dim");
    c.ffn_dim = get<int>(d, "ffn_dim");
    c.vocab = get<int>(d, "vocab");
    c.n_ctx = get<int>(d, "n_ctx");
    c.rms_eps = get<float>(d, "rms_eps");
    c.rope_neox = get<bool>(d, "rope_neox");
    c.rope_dim = d.contains("rope_dim") ? get<int>(d, "rope_dim") : c.head_dim;
    if (d.contains("rope_attn_factor")) c.rope_attn_factor = get<float>(d, "rope_attn_factor");
    if (d.contains("rope_table_attn_factor")) {
        for (py::handle f : d["rope_table_attn_factor"].cast<py::list>()) c.rope_table_attn_factor.push_back(f.cast<float>());
    }
    if (d.contains("attn_temp_beta")) {
        c.attn_temp_beta = get<float>(d, "attn_temp_beta");
        c.attn_temp_floor = get<int>(d, "attn_temp_floor");
    }
    auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(d["rope_freqs"]);
    if (!f) throw InputError("rope_freqs must be a float array");
    c.rope_freqs.assign(f.data(), f.data() + f.size());
    if (d.contains("layer_rope")) c.layer_rope = get_int_list(d, "layer_rope");
    if (d.contains("layer_window")) c.layer_window = get_int_list(d, "layer_window");
    if (d.contains("layer_ffn")) c.layer_ffn = get_int_list(d, "layer_ffn");  // Nemotron-H's layers without one
    // Gemma 4: per-layer attention shapes, V from K, V's norm, each layer's output scale
    if (d.contains("layer_head_dim")) c.layer_head_dim = get_int_list(d, "layer_head_dim");
    if (d.contains("layer_n_kv_heads")) c.layer_n_kv_heads = get_int_list(d, "layer_n_kv_heads");
    if (d.contains("layer_v_is_k")) c.layer_v_is_k = get_int_list(d, "layer_v_is_k");
    if (d.contains("v_norm")) c.v_norm = get<bool>(d, "v_norm");
    if (d.contains("layer_kv_source")) c.layer_kv_source = get_int_list(d, "layer_kv_source");
    if (d.contains("layer_ffn_dim")) c.layer_ffn_dim = get_int_list(d, "layer_ffn_dim");
    if (d.contains("altup_n")) {  // Gemma 3n
        c.altup_n = get<int>(d, "altup_n");
        c.laurel_rank = get<int>(d, "laurel_rank");
        c.altup_correct_scale = get<bool>(d, "altup_correct_scale");
        if (d.contains("layer_sparsity"))
            for (py::handle f : d["layer_sparsity"].cast<py::list>()) c.layer_sparsity.push_back(f.cast<float>());
    }
    if (d.contains("ple_dim")) {
        c.ple_dim = get<int>(d, "ple_dim");
        c.ple_embed_scale = get<float>(d, "ple_embed_scale");
        if (d.contains("ple_vocab")) c.ple_vocab = get<int>(d, "ple_vocab");
    }
    if (d.contains("layer_out_scale")) {
        for (py::handle f : d["layer_out_scale"].cast<py::list>()) c.layer_out_scale.push_back(f.cast<float>());
    }
    if (d.contains("layer_kind")) {  // recurrent layers: Gated DeltaNet (Qwen3.5), short convolutions (LFM2)
        c.layer_kind = get_int_list(d, "layer_kind");
        c.ssm_conv_kernel = get<int>(d, "ssm_conv_kernel");
    }
    if (d.contains("ssm_k_heads")) {  // Gated DeltaNet's heads
        c.ssm_k_heads = get<int>(d, "ssm_k_heads");
        c.ssm_v_heads = get<int>(d, "ssm_v_heads");
        c.ssm_k_dim = get<int>(d, "ssm_k_dim");
        c.ssm_v_dim = get<int>(d, "ssm_v_dim");
        c.ssm_v_tiled = get<bool>(d, "ssm_v_tiled");
    }
    if (d.contains("attn_output_gate")) c.attn_output_gate = get<bool>(d, "attn_output_gate");
    if (d.contains("mla_kv_lora")) {  // multi-head latent attention (DeepSeek V2 / V3)
        c.mla_kv_lora = get<int>(d, "mla_kv_lora");
        c.mla_q_lora = get<int>(d, "mla_q_lora");
        c.mla_v_head_dim = get<int>(d, "mla_v_head_dim");
    }
    if (d.contains("n_expert")) {  // mixture of experts
        c.n_expert = get<int>(d, "n_expert");
        c.n_expert_used = get<int>(d, "n_expert_used");
        c.expert_ffn_dim = get<int>(d, "expert_ffn_dim");
        if (d.contains("expert_norm_topk")) c.expert_norm_topk = get<bool>(d, "expert_norm_topk");
        if (d.contains("shared_ffn_dim")) c.shared_ffn_dim = get<int>(d, "shared_ffn_dim");
        if (d.contains("shared_expert_gated")) c.shared_expert_gated = get<bool>(d, "shared_expert_gated");
        if (d.contains("n_dense_lead")) c.n_dense_lead = get<int>(d, "n_dense_lead");
        if (d.contains("moe_beside_dense")) c.moe_beside_dense = get<bool>(d, "moe_beside_dense");
        if (d.contains("experts_relu_sq")) c.experts_relu_sq = get<bool>(d, "experts_relu_sq");  // Nemotron 3
        if (d.contains("moe_latent_dim")) c.moe_latent_dim = get<int>(d, "moe_latent_dim");
        if (d.contains("router")) {  // "softmax" | "sigmoid"
            const std::string router = get<std::string>(d, "router");
            if (router != "softmax" && router != "sigmoid")
                throw InputError("config 'router' must be softmax or sigmoid, got '" + router + "'");
            c.router_sigmoid = router == "sigmoid";
        }
        if (d.contains("router_select_bias")) c.router_select_bias = get<bool>(d, "router_select_bias");
        if (d.contains("expert_groups")) c.expert_groups = get<int>(d, "expert_groups");
        if (d.contains("expert_groups_used")) c.expert_groups_used = get<int>(d, "expert_groups_used");
        if (d.contains("expert_weights_scale")) c.expert_weights_scale = get<float>(d, "expert_weights_scale");
        if (d.contains("swiglu_limit")) c.swiglu_limit = get<float>(d, "swiglu_limit");
        if (d.contains("swiglu_alpha")) c.swiglu_alpha = get<float>(d, "swiglu_alpha");
    }
    if (d.contains("embed_scale")) c.embed_scale = get<float>(d, "embed_scale");
    if (d.contains("attn_scale")) c.attn_scale = get<float>(d, "attn_scale");
    if (d.contains("attn_softcap")) c.attn_softcap = get<float>(d, "attn_softcap");
    if (d.contains("final_softcap")) c.final_softcap = get<float>(d, "final_softcap");
    if (d.contains("residual_scale")) c.residual_scale = get<float>(d, "residual_scale");
    if (d.contains("logit_scale")) c.logit_scale = get<float>(d, "logit_scale");
    if (d.contains("norms")) {  // "pre" (default), "sandwich" (pre and post), "post", "parallel"
        const std::string n = get<std::string>(d, "norms");
        if (n != "pre" && n != "sandwich" && n != "post" && n != "parallel")
            throw InputError("model config 'norms' must be \"pre\", \"sandwich\", \"post\" or \"parallel\", got \"" +
                             n + "\"");
        c.pre_norms = n != "post";
        c.post_norms = n == "sandwich" || n == "post";
        c.parallel_block = n == "parallel";
    }
    if (d.contains("norm_bias")) c.norm_bias = get<bool>(d, "norm_bias");
    if (d.contains("ffn_gated")) c.ffn_gated = get<bool>(d, "ffn_gated");
    if (d.contains("ffn_bias")) c.ffn_bias = get<bool>(d, "ffn_bias");
    if (d.contains("norm_kind")) {  // "rms" (default) or "layer" (LayerNorm without bias)
        const std::string k = get<std::string>(d, "norm_kind");
        if (k != "rms" && k != "layer")
            throw InputError("model config 'norm_kind' must be \"rms\" or \"layer\", got \"" + k + "\"");
        c.layer_norm = k == "layer";
    }
    if (d.contains("qk_norm")) {  // "none" (default), "head", "whole"
        const std::string q = get<std::string>(d, "qk_norm");
        if (q != "none" && q != "head" && q != "whole")
            throw InputError("model config 'qk_norm' must be \"none\", \"head\" or \"whole\", got \"" + q + "\"");
        c.qk_norm = q == "head" ? ModelConfig::QkNorm::PerHead
                  : q == "whole" ? ModelConfig::QkNorm::Whole : ModelConfig::QkNorm::None;
    }
    if (d.contains("ffn_act")) {
        const std::string act = get<std::string>(d, "ffn_act");
        if (act != "silu" && act != "gelu_tanh" && act != "relu_sq")
            throw InputError("model config 'ffn_act' must be \"silu\", \"gelu_tanh\" or \"relu_sq\", got \"" + act +
                             "\"");
        c.ffn_gelu = act == "gelu_tanh";
        c.ffn_relu_sq = act == "relu_sq";
    }
    return c;
}

// One buffer export (PyObject_GetBuffer) held until destruction: while it lives the exporter
// cannot free or move the memory (closing an mmap raises BufferError), so the zero-copy
// tensors stay valid. Requested C-contiguous: a strided buffer is refused, not misread.
class HeldBuffer {
public:
    HeldBuffer(const py::handle& obj, const std::string& name) {
        if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) {
            PyErr_Clear();
            throw InputError("tensor '" + name + "': data must be a C-contiguous buffer (bytes, mmap, memoryview, "
                             "contiguous numpy array), got " + std::string(py::str(obj.get_type().attr("__name__"))));
        }
        held_ = true;
    }
    ~HeldBuffer() {
        if (held_) PyBuffer_Release(&view_);  // destroyed with the GIL held (Engine's destructor)
    }
    HeldBuffer(const HeldBuffer&) = delete;
    HeldBuffer& operator=(const HeldBuffer&) = delete;
    const void* data() const { return view_.buf; }
    size_t nbytes() const { return (size_t)view_.len; }

private:
    Py_buffer view_{};
    bool held_ = false;
};

// The allocation a tensor's buffer object views: for a NumPy view, the object at the end of
// its .base chain (the mmap of the file, or the array that owns the memory). Ranges of
// different allocations are never wrapped together (weights.cpp).
void find_allocation(const py::handle& buf, HostTensor* t) {
    py::object root = py::reinterpret_borrow<py::object>(buf);
    while (py::isinstance<py::array>(root)) {
        py::object base = root.attr("base");
        if (base.is_none()) break;
        root = base;
    }
    try {
        py::buffer_info whole = py::reinterpret_borrow<py::buffer>(root).request();
        t->alloc = whole.ptr;
        t->alloc_bytes = (size_t)(whole.size * whole.itemsize);
    } catch (const std::exception&) {  // no buffer protocol: the tensor is wrapped on its own
        PyErr_Clear();
    }
}

// A list of (buffer, dtype, shape) tuples: an expert stack given per expert.
bool is_expert_list(const py::handle& v) {
    if (!py::isinstance<py::list>(v)) return false;
    for (auto e : v.cast<py::list>())
        if (!py::isinstance<py::tuple>(e)) return false;
    return true;
}

// _core.RowScores: a batch entry's scoring request (targets, top_k) and, once the pass ran, its
// result, as NumPy arrays the pass writes into (prompt logprobs without [n, vocab] logits).
struct PyRowScores {
    PyRowScores(py::array_t<int32_t, py::array::c_style | py::array::forcecast> t, int k)
        : targets(std::move(t)), top_k(k) {
        if (targets.ndim() != 1) throw InputError("RowScores: targets must be a 1-D array of token ids");
        if (k < 0 || k > LlamaModel::kMaxScoreTop)
            throw InputError("RowScores: top_k must be in 0.." + std::to_string(LlamaModel::kMaxScoreTop) +
                             ", got " + std::to_string(k));
        const py::ssize_t n = targets.size();
        logprob = py::array_t<double>(n);
        top_ids = py::array_t<int32_t>(std::vector<py::ssize_t>{n, k});
        top_logprob = py::array_t<double>(std::vector<py::ssize_t>{n, k});
        std::fill_n(logprob.mutable_data(), n, std::nan(""));  // not scored yet
        std::fill_n(top_ids.mutable_data(), n * k, -1);
        std::fill_n(top_logprob.mutable_data(), n * k, std::nan(""));
    }
    RowScores view() {
        return RowScores{targets.data(), top_k, logprob.mutable_data(), top_ids.mutable_data(),
                         top_logprob.mutable_data()};
    }
    py::array_t<int32_t, py::array::c_style | py::array::forcecast> targets;  // [n]
    int top_k;
    py::array_t<double> logprob;      // [n]
    py::array_t<int32_t> top_ids;     // [n, top_k]
    py::array_t<double> top_logprob;  // [n, top_k]
};

// A loaded model on one backend. Holds a buffer export of each weight buffer (views of the
// mmap'd file) so the memory outlives the zero-copy tensors.
//
// Thread safety: every method that touches the model releases the GIL and then takes mu_, so
// concurrent callers run one at a time, each as if alone (the KV cache, activations and the
// backend's thread pool are shared state). The GIL is never held while waiting for mu_: a
// thread holding mu_ may need the GIL back (it does not today), and a thread blocked on mu_
// must not stall every other Python thread.
class Engine {
public:
    Engine(const py::dict& cfg_dict, const py::dict& tensors, const std::string& backend, int n_threads, int max_batch,
           int n_slots, const std::string& activations) {
        if (max_batch <= 0 || max_batch > kMaxBatch)
            throw InputError("max_batch must be in 1.." + std::to_string(kMaxBatch) + ", got " + std::to_string(max_batch));
        if (n_slots <= 0 || n_slots > kMaxSlots)
            throw InputError("n_slots must be in 1.." + std::to_string(kMaxSlots) + ", got " + std::to_string(n_slots));
        ModelConfig cfg = config_from_dict(cfg_dict);
        cfg.validate();  // before any size is computed from it
        std::map<std::string, HostTensor> host;
        for (auto item : tensors) {
            const std::string name = item.first.cast<std::string>();
            // (buffer, dtype, shape): a matrix (rows, cols) or a 3-D expert stack (n_expert,
            // rows, cols); or a list of (buffer, dtype, (rows, cols)), one per expert.
            HostTensor t;
            if (is_expert_list(item.second)) {
                for (auto e : item.second.cast<py::list>()) t.experts.push_back(host_tensor(name, e, false));
                if (t.experts.empty()) throw InputError("tensor '" + name + "': an empty list of experts");
            } else {
                t = host_tensor(name, item.second, true);
            }
            host[name] = t;
        }
        auto be = make_backend(backend, n_threads);
        // The CPU's int8 paths: "int16" two int8 parts per value (the default), "int8" one
        // (faster batched decode, coarser: docs/design.md "Numerics of the CPU backend").
        cpu::set_activations(*be, activations);
        ModelWeights w = load_weights(cfg, host, *be);
        for (const auto& b : w.buffers) weight_buffers_.emplace_back((uintptr_t)b->host, b->size);
        for (const auto& b : w.prepared) prepared_bytes_ += b->size;
        model_ = std::make_unique<LlamaModel>(cfg, std::move(w), std::move(be), max_batch, n_slots);
    }

    // One (buffer, dtype, shape) entry; a 3-D shape only where allowed (not inside a list of experts).
    HostTensor host_tensor(const std::string& name, const py::handle& entry, bool allow_3d) {
        auto tup = entry.cast<py::tuple>();
        if (tup.size() != 3) throw InputError("tensor '" + name + "': expected (buffer, dtype, shape)");
        const int type = tup[1].cast<int>();
        if (!dtype_is_known(type) || type == FG_I32)
            throw InputError("tensor '" + name + "' has unsupported type id " + std::to_string(type));
        auto shape = tup[2].cast<std::vector<int64_t>>();
        if (shape.size() != 2 && !(allow_3d && shape.size() == 3))
            throw InputError("tensor '" + name + "': shape must be (rows, cols)" +
                             std::string(allow_3d ? " or (n_expert, rows, cols)" : ""));
        keep_alive_.push_back(std::make_unique<HeldBuffer>(tup[0], name));
        HostTensor t;
        t.data = keep_alive_.back()->data();
        t.nbytes = keep_alive_.back()->nbytes();
        t.type = (DType)type;
        t.n_expert = shape.size() == 3 ? shape[0] : 0;
        if (shape.size() == 3 && t.n_expert <= 0) throw InputError("tensor '" + name + "' has no experts");
        t.rows = shape[shape.size() - 2];
        t.cols = shape[shape.size() - 1];
        find_allocation(tup[0], &t);
        return t;
    }

    ~Engine() {
        // The model (and the backend's wrappers of the host memory) goes before the exports.
        model_.reset();
        keep_alive_.clear();
    }

    py::array_t<float> forward(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, int pos,
                               bool all_logits) {
        return output_rows(tokens, pos, all_logits, false);
    }

    // The final hidden states (after the output norm) of the last token, or of every token.
    py::array_t<float> forward_hidden(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                                      int pos, bool all_rows) {
        return output_rows(tokens, pos, all_rows, true);
    }

    // scores: each row scored against its target (one pass of at most max_batch tokens, slot 0).
    void prefill(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, int pos,
                 PyRowScores* scores) {
        const int n = checked_count(tokens);
        const int32_t* src = tokens.data();
        RowScores view;
        if (scores) {
            check_scores(*scores, n, "prefill");
            view = scores->view();
        }
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        if (!scores) return model_->forward(src, n, pos, false, nullptr);
        BatchEntry entry{0, src, n, pos, &view};
        entry.prompt_prefix = true;
        model_->forward_batch(&entry, 1, nullptr);
    }

    int forward_argmax(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, int pos) {
        const int n = checked_count(tokens);
        const int32_t* src = tokens.data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        return model_->forward_argmax(src, n, pos);
    }

    py::array_t<int32_t> forward_rows_argmax(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                                             int pos) {
        const int n = checked_count(tokens);
        py::array_t<int32_t> out(std::vector<py::ssize_t>{(py::ssize_t)n});
        const int32_t* src = tokens.data();
        int32_t* dst = out.mutable_data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->forward_rows_argmax(src, n, pos, dst);
        return out;
    }

    // Evaluates tokens (as forward) and samples the next token from the last row's logits in
    // C++, into a scratch row that never becomes a NumPy array. The sampler's history is not
    // changed (the caller adds the token it keeps).
    int forward_sample(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, int pos,
                       Sampler& sampler) {
        const int n = checked_count(tokens);
        const int32_t* src = tokens.data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        const int vocab = model_->config().vocab;
        logits_row_.resize(vocab);
        model_->forward(src, n, pos, false, logits_row_.data());
        return sampler.sample(logits_row_.data(), vocab, -1.0, host_threads());
    }

    // Samples a logits row Python holds (biased, masked: logprobs, grammars, logit_bias) with the
    // engine's threads, as forward_sample does the engine's own row; the caller's array is not
    // changed (the penalties apply to a copy). The sampler's history is not changed.
    int sample_row(Sampler& sampler, py::array_t<float, py::array::c_style | py::array::forcecast> logits) {
        if (logits.ndim() != 1 || logits.size() == 0) throw InputError("sample_row: logits must be a non-empty row");
        const float* src = logits.data();
        const size_t n = (size_t)logits.size();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        logits_row_.assign(src, src + n);
        return sampler.sample(logits_row_.data(), (int)n, -1.0, host_threads());
    }

    // Pipelined decoding of slot 0 (LlamaModel::decode_begin/next/end): the step that evaluates
    // `token` at pos is committed; decode_next returns the token after it (argmax on the device
    // when the pipeline is greedy, else drawn by `sampler`, whose history is not changed), having
    // first committed the step that evaluates it when `launch`.
    void decode_begin(int32_t token, int pos, bool greedy) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->decode_begin(token, pos, greedy);
    }

    int decode_next(bool launch, Sampler* sampler) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        if (!sampler) return model_->decode_next(launch);
        return model_->decode_next(launch, [this, sampler](float* logits, int vocab) {
            return (int32_t)sampler->sample(logits, vocab, -1.0, host_threads());
        });
    }

    void decode_end() {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->decode_end();
    }

    // One batched pass over several sequences: entries is a list of (slot, tokens, pos) or
    // (slot, tokens, pos, RowScores or None[, prefix]): that entry's rows are scored too, into the
    // RowScores; prefix True marks a chunk of a prompt's prefix (BatchEntry::prompt_prefix: one
    // token of it is not a decode row).
    // run True marks a decode run (BatchEntry::decode_run: a sequence's next token and its draft
    // tokens, every row a decode row whose logits come back).
    // Returns the logits of each entry's output rows (a decode run's every row, another entry's
    // last row), in entry order: f32 [output rows, vocab] (one row an entry without runs).
    py::array_t<float> forward_batch(const py::list& entries) {
        BatchInput in = batch_input(entries);
        const int n = (int)in.entries.size();
        py::array_t<float> out(std::vector<py::ssize_t>{output_rows(in), model_->config().vocab});
        float* dst = out.mutable_data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->forward_batch(in.entries.data(), n, dst);
        return out;
    }

    // The same, returning each output row's greedy next token (argmax on the device), i32 [output rows].
    py::array_t<int32_t> forward_batch_argmax(const py::list& entries) {
        BatchInput in = batch_input(entries);
        const int n = (int)in.entries.size();
        py::array_t<int32_t> out(output_rows(in));
        int32_t* dst = out.mutable_data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->forward_batch_argmax(in.entries.data(), n, dst);
        return out;
    }

    // The same, sampling each entry's next token with its own sampler (parameters, seed and
    // history), as forward_sample does for one sequence; a decode run's rows each with its
    // entry's (the history unchanged between them: a greedy sampler's, for a draft's checks).
    // i32 [output rows].
    py::array_t<int32_t> forward_batch_sample(const py::list& entries, const std::vector<Sampler*>& samplers) {
        BatchInput in = batch_input(entries);
        const int n = (int)in.entries.size();
        if ((int)samplers.size() != n)
            throw InputError("forward_batch_sample: " + std::to_string(samplers.size()) + " samplers for " +
                             std::to_string(n) + " entries");
        for (int e = 0; e < n; e++)
            if (!samplers[e]) throw InputError("forward_batch_sample: sampler " + std::to_string(e) + " is None");
        const py::ssize_t n_out = output_rows(in);
        py::array_t<int32_t> out(n_out);
        int32_t* dst = out.mutable_data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        const int vocab = model_->config().vocab;
        batch_logits_.resize((size_t)n_out * vocab);
        model_->forward_batch(in.entries.data(), n, batch_logits_.data());
        // A decode run's rows each drawn by its entry's sampler; a row it refuses for having no
        // token to draw (NaN...) gets the argmax's sentinel, so that its sequence alone fails. The
        // entries side by side: over a 128256-token vocabulary a draw takes ~0.35 ms (temperature
        // alone), eight one after another a tenth of a 16-core step.
        std::vector<int> rows_of(n);
        for (int e = 0; e < n; e++) rows_of[e] = (int)in.entries[e].output_rows();
        draw_batch(samplers.data(), rows_of.data(), n, batch_logits_.data(), vocab, dst, host_threads());
        return out;
    }

    // uint16 (f16 bits) [n_layers, planes, n, max_kv_dim]: K and V rows of positions 0..n, or K's
    // alone where V is read from them (latent attention: planes 1; LlamaModel::kv_bytes).
    py::array_t<uint16_t> kv_save(int n) {
        const ModelConfig& c = model_->config();
        if (n < 0 || n > c.n_ctx) throw InputError("n must be in 0.." + std::to_string(c.n_ctx) + ", got " + std::to_string(n));
        py::array_t<uint16_t> out(std::vector<py::ssize_t>{c.n_layers, model_->kv_planes(), n, c.max_kv_dim()});
        uint16_t* dst = out.mutable_data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->kv_save(n, dst);
        return out;
    }

    void kv_load(py::array_t<uint16_t, py::array::c_style | py::array::forcecast> kv) {
        const ModelConfig& c = model_->config();
        const int planes = model_->kv_planes();
        if (kv.ndim() != 4 || kv.shape(0) != c.n_layers || kv.shape(1) != planes || kv.shape(3) != c.max_kv_dim() ||
            kv.shape(2) > c.n_ctx)
            throw InputError("kv state must be [" + std::to_string(c.n_layers) + ", " + std::to_string(planes) +
                             ", n <= " + std::to_string(c.n_ctx) +
                             ", " + std::to_string(c.max_kv_dim()) + "] for this model and context");
        const int n = (int)kv.shape(2);
        const uint16_t* src = kv.data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->kv_load(n, src);
    }

    // A recurrent model's states of a slot (f32 [state_floats]), saved beside kv_save's rows or
    // alone as a checkpoint.
    py::array_t<float> state_save(int slot) {
        py::array_t<float> out(std::vector<py::ssize_t>{(py::ssize_t)model_->state_floats()});
        float* dst = out.mutable_data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->state_save(dst, slot);
        return out;
    }

    void state_load(py::array_t<float, py::array::c_style | py::array::forcecast> state, int pos, int slot) {
        if (state.ndim() != 1 || (size_t)state.shape(0) != model_->state_floats())
            throw InputError("recurrent state must be f32 [" + std::to_string(model_->state_floats()) + "] for this model");
        const float* src = state.data();
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->state_load(src, pos, slot);
    }

    int state_position(int slot) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        return model_->state_position(slot);
    }

    void kv_copy(int src, int dst, int n) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->kv_copy(src, dst, n);
    }

    // Also the CPU backend's per-op profile (regions, busyness), cleared here.
    void set_profiling(bool on) {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        model_->set_profiling(on);
        if (auto* cpu = cpu_backend()) {
            cpu->set_profiling(on);
            cpu->reset_profile();
        }
    }

    // The CPU backend's profile since set_profiling / the last reset, or None on another backend:
    // per op kind its calls, seconds, and the regions it forked with their busy and capacity seconds.
    py::object cpu_profile(bool reset) {
        auto* cpu = cpu_backend();
        if (!cpu) return py::none();
        std::lock_guard<std::mutex> lock(mu_);
        const cpu::CpuOpProfile& ops = cpu->op_profile();
        py::dict op_d;
        for (int i = 0; i < (int)cpu::CpuOp::kCount; i++) {
            if (!ops.calls[i]) continue;
            py::dict o;
            o["calls"] = ops.calls[i];
            o["seconds"] = ops.seconds[i];
            o["regions"] = ops.regions[i].regions;
            o["busy_s"] = ops.regions[i].busy_s;
            o["capacity_s"] = ops.regions[i].capacity_s;
            op_d[cpu::cpu_op_name((cpu::CpuOp)i)] = o;
        }
        const cpu::PoolStats s = cpu->pool_stats();
        py::dict d;
        d["threads"] = cpu->n_threads();
        d["split"] = cpu::work_split_name(cpu->work_split());
        d["units_per_thread"] = cpu->units_per_thread();
        d["ops"] = op_d;
        d["regions"] = s.regions;
        d["region_wall_s"] = s.wall_s;
        d["busy_s"] = s.busy_s;
        d["capacity_s"] = s.capacity_s;
        if (reset) cpu->reset_profile();
        return d;
    }

    LlamaModel::Profile last_profile() {
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(mu_);
        return model_->last_profile();
    }

    LlamaModel& model() { return *model_; }
    cpu::CpuBackend* cpu_backend() { return dynamic_cast<cpu::CpuBackend*>(&model_->backend()); }
    const std::vector<std::pair<uintptr_t, size_t>>& weight_buffers() const { return weight_buffers_; }
    size_t prepared_bytes() const { return prepared_bytes_; }

private:
    static constexpr int kMaxBatch = 1 << 16;
    static constexpr int kMaxSlots = 1 << 10;

    // A batch's entries with their token arrays kept alive (the model checks slots and positions).
    struct BatchInput {
        std::vector<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> tokens;
        std::vector<RowScores> scores;  // one per entry (those without: unused)
        std::vector<BatchEntry> entries;
    };
    void check_scores(const PyRowScores& s, int n, const std::string& what) const {
        if (s.targets.size() != n)
            throw InputError(what + ": RowScores of " + std::to_string(s.targets.size()) + " targets for " +
                             std::to_string(n) + " tokens (one target per token: the token after it)");
    }
    BatchInput batch_input(const py::list& entries) const {
        BatchInput in;
        in.tokens.reserve(entries.size());
        in.scores.resize(entries.size());
        for (size_t e = 0; e < entries.size(); e++) {
            auto t = py::reinterpret_borrow<py::object>(entries[e]);
            if (!py::isinstance<py::tuple>(t) && !py::isinstance<py::list>(t))
                throw InputError("batch entry " + std::to_string(e) + " must be (slot, tokens, pos)");
            auto tup = t.cast<py::sequence>();
            if (tup.size() < 3 || tup.size() > 6)
                throw InputError("batch entry " + std::to_string(e) + " must be (slot, tokens, pos) or "
                                 "(slot, tokens, pos, RowScores or None[, prefix[, run]])");
            in.tokens.push_back(
                py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(tup[1]));
            if (!in.tokens.back()) throw InputError("batch entry " + std::to_string(e) + ": tokens must be integers");
            BatchEntry b;
            b.slot = tup[0].cast<int>();
            b.tokens = in.tokens.back().data();
            b.n = checked_count(in.tokens.back());
            b.pos = tup[2].cast<int>();
            if (tup.size() >= 4 && !tup[3].is_none()) {
                if (!py::isinstance<PyRowScores>(tup[3]))
                    throw InputError("batch entry " + std::to_string(e) + ": the fourth item must be a RowScores");
                PyRowScores& s = tup[3].cast<PyRowScores&>();
                check_scores(s, b.n, "batch entry " + std::to_string(e));
                in.scores[e] = s.view();
                b.scores = &in.scores[e];
            }
            if (tup.size() >= 5) {
                if (!py::isinstance<py::bool_>(tup[4]))
                    throw InputError("batch entry " + std::to_string(e) + ": the fifth item (prefix) must be a bool");
                b.prompt_prefix = tup[4].cast<bool>();
            }
            if (tup.size() == 6) {
                if (!py::isinstance<py::bool_>(tup[5]))
                    throw InputError("batch entry " + std::to_string(e) + ": the sixth item (run) must be a bool");
                b.decode_run = tup[5].cast<bool>();
            }
            in.entries.push_back(b);
        }
        return in;
    }

    static py::ssize_t output_rows(const BatchInput& in) {
        py::ssize_t n = 0;
        for (const BatchEntry& b : in.entries) n += b.output_rows();
        return n;
    }

    // forward / forward_hidden: [1 or n, vocab] logits, or [1 or n, dim] hidden states.
    py::array_t<float> output_rows(const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens,
                                   int pos, bool all_rows, bool hidden) {
        const int n = checked_count(tokens);
        const int width = hidden ? model_->config().dim : model_->config().vocab;
        py::array_t<float> out(std::vector<py::ssize_t>{all_rows ? n : 1, width});
        float* dst = out.mutable_data();
        const int32_t* src = tokens.data();
        {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lock(mu_);
            if (hidden)
                model_->forward_hidden(src, n, pos, all_rows, dst);
            else
                model_->forward(src, n, pos, all_rows, dst);
        }
        return out;
    }

    // More tokens than the context holds are refused before the count is narrowed to int or
    // sizes an output array (positions are checked by the model).
    int checked_count(const py::array& tokens) const {
        const int n_ctx = model_->config().n_ctx;
        if (tokens.size() > (py::ssize_t)n_ctx)
            throw InputError("context overflow: " + std::to_string(tokens.size()) +
                             " new tokens exceed the context length " + std::to_string(n_ctx));
        return (int)tokens.size();
    }

    std::vector<std::unique_ptr<HeldBuffer>> keep_alive_;
    std::vector<std::pair<uintptr_t, size_t>> weight_buffers_;  // (address, bytes) of each zero-copy wrap
    size_t prepared_bytes_ = 0;  // bytes of the backend's copies of weights (repacked panels)
    std::unique_ptr<LlamaModel> model_;
    std::mutex mu_;  // one caller at a time in model_ (see the class comment)
    std::vector<float> logits_row_;  // [vocab]: forward_sample's logits (sample_row's copy), guarded by mu_
    std::vector<float> batch_logits_;  // [output rows, vocab]: forward_batch_sample's logits, guarded by mu_

    // The backend's host threads for a sampler's passes over the row (the CPU backend's pool, idle
    // between two steps); called with mu_ held.
    ParallelFor host_threads() {
        return [this](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
            model_->backend().host_parallel_for(n, fn);
        };
    }
};

}  // namespace

// Runs f(par) with the sampler's row passes spread as a test asks: on a pool of `threads` (> 1), or
// on this thread with the chunks taken forward, in reverse or shuffled (a fixed permutation).
template <class F>
auto with_row_threads(int threads, const std::string& order, F&& f) {
    if (threads < 1) throw InputError("threads must be >= 1");
    if (order != "forward" && order != "reverse" && order != "shuffle")
        throw InputError("order must be 'forward', 'reverse' or 'shuffle', not '" + order + "'");
    py::gil_scoped_release nogil;
    if (threads > 1) {
        cpu::ThreadPool pool(threads);
        return f([&pool](int64_t n, const std::function<void(int64_t, int64_t)>& fn) { pool.parallel_for(n, 1, fn); });
    }
    if (order == "forward") return f(ParallelFor());
    return f([&order](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
        std::vector<int64_t> idx(n);
        for (int64_t i = 0; i < n; ++i) idx[i] = order == "reverse" ? n - 1 - i : i;
        if (order == "shuffle") std::shuffle(idx.begin(), idx.end(), std::mt19937_64(12345));
        for (int64_t i : idx) fn(i, i + 1);
    });
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "forgert native runtime";
    py::class_<Engine>(m, "Engine")
        .def(py::init<const py::dict&, const py::dict&, const std::string&, int, int, int, const std::string&>(),
             py::arg("config"), py::arg("tensors"), py::arg("backend") = "cpu", py::arg("n_threads") = 0,
             py::arg("max_batch") = 512, py::arg("n_slots") = 1, py::arg("activations") = "int16")
        .def("forward", &Engine::forward, py::arg("tokens"), py::arg("pos"), py::arg("all_logits") = false)
        .def("forward_argmax", &Engine::forward_argmax, py::arg("tokens"), py::arg("pos"))
        .def("forward_hidden", &Engine::forward_hidden, py::arg("tokens"), py::arg("pos"), py::arg("all_rows") = false,
             "the final hidden states (output norm applied): [1, dim] of the last token, or [n, dim]")
        .def("forward_rows_argmax", &Engine::forward_rows_argmax, py::arg("tokens"), py::arg("pos"),
             "evaluate tokens (at most 16) as decode rows of slot 0; i32 [n]: each row's argmax, as "
             "greedy decoding would pick it after that row (a draft verified in one pass)")
        .def("forward_sample", &Engine::forward_sample, py::arg("tokens"), py::arg("pos"), py::arg("sampler"),
             "evaluate tokens and sample the next one from the last logits row with a _core.Sampler")
        .def("sample_row", &Engine::sample_row, py::arg("sampler"), py::arg("logits"),
             "a token drawn by a _core.Sampler from a logits row [vocab] (not changed), on the engine's threads")
        .def("decode_begin", &Engine::decode_begin, py::arg("token"), py::arg("pos"), py::arg("greedy"),
             "commit the step that evaluates token at pos (pipelined decoding of slot 0); no wait")
        .def("decode_next", &Engine::decode_next, py::arg("launch"), py::arg("sampler") = nullptr,
             "the next token (argmax on the device, or drawn by sampler); first commits its own step when launch")
        .def("decode_end", &Engine::decode_end, "wait for the pipelined step in flight and end the pipeline")
        .def("prefill", &Engine::prefill, py::arg("tokens"), py::arg("pos"), py::arg("scores") = nullptr,
             "evaluate tokens into the KV cache without computing logits; with a RowScores (at most "
             "max_batch tokens), each row's logits also score its target")
        .def("forward_batch", &Engine::forward_batch, py::arg("entries"),
             "one pass over [(slot, tokens, pos[, scores[, prefix[, run]]]), ...]: the logits of every "
             "output row [rows, vocab] in the entries' order (an entry's last row; each row of a decode run)")
        .def("forward_batch_argmax", &Engine::forward_batch_argmax, py::arg("entries"),
             "as forward_batch, each output row's argmax next token [rows]")
        .def("forward_batch_sample", &Engine::forward_batch_sample, py::arg("entries"), py::arg("samplers"),
             "as forward_batch, each output row's next token drawn by its entry's sampler [rows] (negative: "
             "the argmax's sentinel, for a row the sampler refused for having no token to draw)")
        .def_property_readonly("n_slots", [](Engine& e) { return e.model().n_slots(); })
        .def_property_readonly("max_batch", [](Engine& e) { return e.model().max_batch(); })
        .def("kv_save", &Engine::kv_save, py::arg("n"),
             "f16 bits [n_layers, 2, n, kv_dim] of the K/V cache rows of positions 0..n")
        .def("kv_load", &Engine::kv_load, py::arg("kv"), "restore rows 0..n saved by kv_save")
        .def("kv_copy", &Engine::kv_copy, py::arg("src"), py::arg("dst"), py::arg("n"),
            "copy K/V cache rows 0..n (every layer) of slot src into slot dst")
        .def_property_readonly("recurrent", [](Engine& e) { return e.model().config().has_recurrent(); })
        .def("state_position", &Engine::state_position, py::arg("slot"),
             "tokens slot's recurrent state holds (-1: none; a sequence continues only there, or from 0)")
        .def("state_save", &Engine::state_save, py::arg("slot") = 0,
             "f32 [n] of a slot's recurrent states (empty without recurrent layers)")
        .def("state_load", &Engine::state_load, py::arg("state"), py::arg("pos"), py::arg("slot") = 0,
             "restore a slot's recurrent states saved by state_save, as holding pos tokens")
        .def_property_readonly("n_ctx", [](Engine& e) { return e.model().config().n_ctx; })
        .def_property_readonly("vocab", [](Engine& e) { return e.model().config().vocab; })
        .def_property_readonly("backend_name", [](Engine& e) { return e.model().backend().name(); })
        .def_property_readonly("cpu_activation_parts", [](Engine& e) -> py::object {
            auto* cpu = e.cpu_backend();
            if (!cpu) return py::none();
            py::dict d;
            d["decode"] = cpu->activation_parts();
            d["prefill"] = cpu->prefill_parts();  // 0: the f32 GEMM (FORGERT_CPU_PREFILL=f32)
            return d;
        }, "int8 activation parts of the CPU's decode and prefill kernels ({'decode': 2 or 1, "
           "'prefill': 2, 1 or 0}), or None on another backend")
        .def_property_readonly("repack_s", [](Engine& e) {
            auto* cpu = e.cpu_backend();
            return cpu ? cpu->repack_seconds() : 0.0;
        }, "seconds the load spent repacking weights for the CPU kernels (FORGERT_CPU_REPACK)")
        .def_property_readonly("_prepared_bytes", &Engine::prepared_bytes,
                               "test-facing: bytes of the backend's copies of weights (the CPU's repacked panels)")
        .def("_weight_buffers", &Engine::weight_buffers,
             "test-facing: (address, bytes) of each zero-copy buffer the weights were wrapped in")
        .def("set_profiling", &Engine::set_profiling, py::arg("on"))
        .def("cpu_profile", &Engine::cpu_profile, py::arg("reset") = false,
             "the CPU backend's per-op seconds and calls, parallel regions and thread busyness since "
             "set_profiling (or the last reset); None on another backend")
        .def("last_profile", [](Engine& e) {
            const LlamaModel::Profile p = e.last_profile();
            py::dict d;
            d["embed"] = p.embed;
            d["layers"] = p.layers;
            d["logits"] = p.logits;
            return d;
        });

    py::class_<PyRowScores>(m, "RowScores",
                            "scoring of a batch entry's rows: row i's logits judge targets[i] (the token "
                            "after it); the pass fills logprob [n], top_ids [n, top_k] and top_logprob "
                            "[n, top_k] (most likely first, ties to the lower id), NaN / -1 until then")
        .def(py::init<py::array_t<int32_t, py::array::c_style | py::array::forcecast>, int>(), py::arg("targets"),
             py::arg("top_k") = 0)
        .def_readonly("targets", &PyRowScores::targets)
        .def_readonly("top_k", &PyRowScores::top_k)
        .def_readonly("logprob", &PyRowScores::logprob)
        .def_readonly("top_ids", &PyRowScores::top_ids)
        .def_readonly("top_logprob", &PyRowScores::top_logprob)
        .def_property_readonly_static("max_top_k", [](py::object) { return LlamaModel::kMaxScoreTop; });

    m.def(
        "score_logits",
        [](py::array_t<float, py::array::c_style | py::array::forcecast> logits, PyRowScores& scores) {
            if (logits.ndim() != 2 || logits.shape(0) != scores.targets.size() || logits.shape(1) < 1)
                throw InputError("score_logits: logits must be [n targets, vocab]");
            const int n = (int)logits.shape(0), vocab = (int)logits.shape(1);
            if (scores.top_k > vocab) throw InputError("score_logits: top_k exceeds the vocabulary");
            for (int i = 0; i < n; i++)
                if (scores.targets.data()[i] < 0 || scores.targets.data()[i] >= vocab)
                    throw InputError("score_logits: target out of range");
            score_rows(logits.data(), n, vocab, scores.view(), 0);
        },
        py::arg("logits"), py::arg("scores"),
        "test-facing: the host reduction a scored pass applies to its rows' logits [n, vocab], into scores");

    py::class_<Sampler>(m, "Sampler",
                        "penalties -> temperature -> top-k -> top-p -> min-p -> draw, on float32 logits "
                        "(the C++ twin of forgert.sampling.Sampler); seed None: unseeded, else 0..2**64-1")
        .def(py::init([](double temperature, int top_k, double top_p, double min_p, double repetition_penalty,
                         double presence_penalty, double frequency_penalty, std::optional<uint64_t> seed) {
                 SamplerParams p;
                 p.temperature = temperature;
                 p.top_k = top_k;
                 p.top_p = top_p;
                 p.min_p = min_p;
                 p.repetition_penalty = repetition_penalty;
                 p.presence_penalty = presence_penalty;
                 p.frequency_penalty = frequency_penalty;
                 return Sampler(p, seed);
             }),
             py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
             py::arg("repetition_penalty") = 1.0, py::arg("presence_penalty") = 0.0,
             py::arg("frequency_penalty") = 0.0, py::arg("seed") = py::none())
        .def(
            "reset_history",
            [](Sampler& s, py::array_t<int32_t, py::array::c_style | py::array::forcecast> ids) {
                s.reset_history(ids.data(), (int)ids.size());
            },
            py::arg("ids"), "the tokens the penalties look at (prompt + generated so far)")
        .def("add_history", &Sampler::add_history, py::arg("id"))
        .def(
            "sample",
            [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits, double u,
               int threads, const std::string& order) {
                std::vector<float> row(logits.data(), logits.data() + logits.size());  // not the caller's array
                return with_row_threads(threads, order, [&](const ParallelFor& par) {
                    return s.sample(row.data(), (int)row.size(), u, par);
                });
            },
            py::arg("logits"), py::arg("u") = -1.0, py::arg("threads") = 1, py::arg("order") = "forward",
            "a token from logits [vocab]; u in [0, 1) is the uniform draw (default: the seeded RNG's next). "
            "threads > 1: the row's chunks on a pool of that many; order 'reverse' / 'shuffle': one thread "
            "takes the chunks in that order (tests: the token does not depend on either)")
        .def(
            "filter",
            [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits, int threads,
               const std::string& order) {
                std::vector<float> row(logits.data(), logits.data() + logits.size());
                std::vector<int32_t> ids;
                std::vector<double> probs;
                with_row_threads(threads, order, [&](const ParallelFor& par) {
                    s.filter(row.data(), (int)row.size(), &ids, &probs, par);
                    return 0;
                });
                return py::make_tuple(py::array_t<int32_t>(ids.size(), ids.data()),
                                      py::array_t<double>(probs.size(), probs.data()));
            },
            py::arg("logits"), py::arg("threads") = 1, py::arg("order") = "forward",
            "(ids in increasing order, their renormalized probabilities) that survive the filters");

    m.def(
        "tensor_layout",
        [](const py::dict& cfg) {
            const ModelConfig c = config_from_dict(cfg);
            c.validate();  // bounds n_layers before a list is built from it
            py::list out;
            for (auto& s : tensor_layout(c)) {
                py::tuple shape = s.n_expert ? py::tuple(py::make_tuple(s.n_expert, s.rows, s.cols))
                                             : py::tuple(py::make_tuple(s.rows, s.cols));
                out.append(py::make_tuple(s.name, shape, s.required, s.f32_only));
            }
            return out;
        },
        py::arg("config"), "[(name, shape, required, f32_only)]: every tensor the config's architecture knows; shape is "
        "(rows, cols), or (n_expert, rows, cols) for an expert stack");
    m.def("cpu_info", [] {
        py::dict d;
        d["kernels"] = cpu::select_kernels().name;
        d["available"] = py::list();
        for (const cpu::KernelSet* k : cpu::runnable_kernel_sets()) d["available"].cast<py::list>().append(k->name);
        // Weight types whose prefill (16+ tokens) runs the int8 GEMM, with FORGERT_CPU_PREFILL's
        // activation parts (2 or 1; 0: f32 panels for every type).
        const int parts = cpu::prefill_int8_parts();
        d["prefill_int8_parts"] = parts;
        d["prefill_int8_types"] = py::list();
        for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K,
                        DType::Q6_K, DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S, DType::IQ1_S,
                        DType::IQ1_M})
            if (parts && cpu::gemm_i8_takes(cpu::select_kernels(), t))
                d["prefill_int8_types"].cast<py::list>().append(dtype_name(t));
        // Weight types a model's load repacks into the kernel set's panels (none with
        // FORGERT_CPU_REPACK=0, or where the set reads the file's layout).
        d["repacked_types"] = py::list();
        for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K,
                        DType::Q6_K})
            if (cpu::repack_from_env() && cpu::load_layout(cpu::select_kernels(), t) != t)
                d["repacked_types"].cast<py::list>().append(dtype_name(t));
        // How the panel and float GEMVs prefetch their weight stream, for one token ("far" on
        // Intel, "off" elsewhere) and for a batch's few ("far"); FORGERT_CPU_PANEL_PREFETCH
        // overrides both.
        d["panel_prefetch"] = cpu::panel_prefetch_name(cpu::panel_prefetch(1));
        d["panel_prefetch_batch"] = cpu::panel_prefetch_name(cpu::panel_prefetch(2));  // 2+ tokens
        d["panel_tokens"] = cpu::panel_tokens();
        d["kquant_panel_tokens"] = cpu::kquant_panel_tokens();  // the K-quant panels' widest tile
        return d;
    });
    // Memory read bandwidth, GB/s, with n_threads threads (0: all) over mib MiB (0: many times
    // the L3): the benches' reference for decode. Bad arguments raise ValueError.
    m.def("cpu_read_bandwidth_gbs", [](int n_threads, int mib) {
        py::gil_scoped_release nogil;
        return cpu::measure_read_bandwidth_gbs(n_threads, mib);
    }, py::arg("n_threads") = 0, py::arg("mib") = 0);
    bind_ops(m);
    bind_pool(m);
#if FORGERT_HAVE_METAL_EMULATOR
    // Thread order of the emulated Metal device: "forward", "reverse" or "random" (races show
    // up as schedule-dependent results).
    m.def("set_emulator_schedule",
          [](const std::string& s, uint64_t seed) { forgert::metal::set_emulator_schedule(s, seed); },
          py::arg("schedule"), py::arg("seed") = 0);
    m.def("emulator_schedule", &forgert::metal::emulator_schedule);
    m.def("set_emulator_threads", &forgert::metal::set_emulator_threads);
    // maxBufferLength for weights wrapped afterwards by emulated devices (0: none), to test weights split
    // into overlapping buffer views as on a Mac.
    m.def("set_emulator_max_buffer_length", &forgert::metal::set_emulator_max_buffer_length, py::arg("bytes"));
    // Memory-traffic counting for emulated devices created afterwards (src/emulator/runtime/traffic.h).
    m.def("set_emulator_traffic", &forgert::metal::set_emulator_traffic, py::arg("on"));
    m.def("emulator_traffic", [] {
        py::list out;
        for (const auto& d : forgert::metal::take_emulator_traffic()) {
            const fg_emu_traffic& t = d.totals;
            py::dict r;
            r["kernel"] = d.kernel;
#define FG_FIELD(f) r[#f] = t.f;
            FG_FIELD(read_requested) FG_FIELD(read_needed) FG_FIELD(write_requested) FG_FIELD(write_needed)
            FG_FIELD(loads) FG_FIELD(stores) FG_FIELD(load_lines64) FG_FIELD(load_lines64_min)
            FG_FIELD(load_lines128) FG_FIELD(load_lines128_min) FG_FIELD(store_lines64) FG_FIELD(store_lines64_min)
            FG_FIELD(store_lines128) FG_FIELD(store_lines128_min) FG_FIELD(tg_accesses) FG_FIELD(tg_wavefronts)
            FG_FIELD(tg_wavefronts_min) FG_FIELD(lane_accesses) FG_FIELD(threadgroup_memory)
            FG_FIELD(threads_per_threadgroup) FG_FIELD(threadgroups)
#undef FG_FIELD
            py::list req, need;
            for (int i = 0; i < FG_EMU_MAX_SLOTS; ++i) {
                req.append(t.slot_read_requested[i]);
                need.append(t.slot_read_needed[i]);
            }
            r["slot_read_requested"] = req;
            r["slot_read_needed"] = need;
            out.append(r);
        }
        return out;
    }, "[{kernel, read_requested, read_needed, ...}]: the dispatches counted since the last call (emu_api.h fg_emu_traffic)");
#endif
}
