// forgert._core: argument conversion only; the logic lives in model/ and backends/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>

#include "backends/cpu/cpu_kernels.h"
#include "core/backend.h"
#include "model/llama_model.h"
#include "ops_binding.h"
#if FORGERT_HAVE_METAL_EMULATOR
#include "backends/metal/device_emulated.h"
#endif

namespace py = pybind11;
using namespace forgert;

namespace {

template <class T>
T get(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw InputError(std::string("model config lacks '") + key + "'");
    return d[key].cast<T>();
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
    if (d.contains("sliding_window")) c.sliding_window = get<int>(d, "sliding_window");
    if (d.contains("sliding_window_from")) c.sliding_window_from = get<int>(d, "sliding_window_from");
    auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(d["rope_freqs"]);
    if (!f) throw InputError("rope_freqs must be a float array");
    c.rope_freqs.assign(f.data(), f.data() + f.size());
    return c;
}

// The allocation a tensor's buffer object views: for a NumPy view, the object at the end of
// its .base chain (the mmap of the file, or the array that owns the memory). Ranges of
// different allocations are never wrapped together (weights.cpp).
void find_allocation(const py::buffer& buf, HostTensor* t) {
    py::object root = buf;
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

// A loaded model on one backend. Holds references to the Python buffers (views
// of the mmap'd file) so the memory outlives the zero-copy tensors.
class Engine {
public:
    Engine(const py::dict& cfg_dict, const py::dict& tensors, const std::string& backend, int n_threads, int max_batch) {
        if (max_batch <= 0) throw InputError("max_batch must be positive");
        ModelConfig cfg = config_from_dict(cfg_dict);
        std::map<std::string, HostTensor> host;
        for (auto item : tensors) {
            const std::string name = item.first.cast<std::string>();
            auto tup = item.second.cast<py::tuple>();
            if (tup.size() != 3) throw InputError("tensor '" + name + "': expected (buffer, dtype, shape)");
            py::buffer buf = tup[0].cast<py::buffer>();
            py::buffer_info info = buf.request();
            const int type = tup[1].cast<int>();
            if (!dtype_is_known(type) || type == FG_I32)
                throw InputError("tensor '" + name + "' has unsupported type id " + std::to_string(type));
            auto shape = tup[2].cast<std::vector<int64_t>>();
            if (shape.size() != 2) throw InputError("tensor '" + name + "': shape must be (rows, cols)");
            HostTensor t;
            t.data = info.ptr;
            t.nbytes = (size_t)(info.size * info.itemsize);
            t.type = (DType)type;
            t.rows = shape[0];
            t.cols = shape[1];
            find_allocation(buf, &t);
            host[name] = t;
            keep_alive_.push_back(buf);
        }
        auto be = make_backend(backend, n_threads);
        ModelWeights w = load_weights(cfg, host, *be);
        for (const auto& b : w.buffers) weight_buffers_.emplace_back((uintptr_t)b->host, b->size);
        model_ = std::make_unique<LlamaModel>(cfg, std::move(w), std::move(be), max_batch);
    }

    py::array_t<float> forward(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, int pos,
                               bool all_logits) {
        const int n = (int)tokens.size();
        const int vocab = model_->config().vocab;
        py::array_t<float> out(std::vector<py::ssize_t>{all_logits ? n : 1, vocab});
        float* dst = out.mutable_data();
        const int32_t* src = tokens.data();
        {
            py::gil_scoped_release nogil;
            model_->forward(src, n, pos, all_logits, dst);
        }
        return out;
    }

    void prefill(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, int pos) {
        const int n = (int)tokens.size();
        const int32_t* src = tokens.data();
        py::gil_scoped_release nogil;
        model_->forward(src, n, pos, false, nullptr);
    }

    int forward_argmax(py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens, int pos) {
        const int n = (int)tokens.size();
        const int32_t* src = tokens.data();
        py::gil_scoped_release nogil;
        return model_->forward_argmax(src, n, pos);
    }

    // uint16 (f16 bits) [n_layers, 2, n, kv_dim]: K and V rows of positions 0..n.
    py::array_t<uint16_t> kv_save(int n) {
        const ModelConfig& c = model_->config();
        if (n < 0 || n > c.n_ctx) throw InputError("n must be in 0.." + std::to_string(c.n_ctx) + ", got " + std::to_string(n));
        py::array_t<uint16_t> out(std::vector<py::ssize_t>{c.n_layers, 2, n, c.kv_dim()});
        uint16_t* dst = out.mutable_data();
        py::gil_scoped_release nogil;
        model_->kv_save(n, dst);
        return out;
    }

    void kv_load(py::array_t<uint16_t, py::array::c_style | py::array::forcecast> kv) {
        const ModelConfig& c = model_->config();
        if (kv.ndim() != 4 || kv.shape(0) != c.n_layers || kv.shape(1) != 2 || kv.shape(3) != c.kv_dim() ||
            kv.shape(2) > c.n_ctx)
            throw InputError("kv state must be [" + std::to_string(c.n_layers) + ", 2, n <= " + std::to_string(c.n_ctx) +
                             ", " + std::to_string(c.kv_dim()) + "] for this model and context");
        const int n = (int)kv.shape(2);
        const uint16_t* src = kv.data();
        py::gil_scoped_release nogil;
        model_->kv_load(n, src);
    }

    LlamaModel& model() { return *model_; }
    const std::vector<std::pair<uintptr_t, size_t>>& weight_buffers() const { return weight_buffers_; }

private:
    std::vector<py::buffer> keep_alive_;
    std::vector<std::pair<uintptr_t, size_t>> weight_buffers_;  // (address, bytes) of each zero-copy wrap
    std::unique_ptr<LlamaModel> model_;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "forgert native runtime";
    py::class_<Engine>(m, "Engine")
        .def(py::init<const py::dict&, const py::dict&, const std::string&, int, int>(), py::arg("config"),
             py::arg("tensors"), py::arg("backend") = "cpu", py::arg("n_threads") = 0, py::arg("max_batch") = 512)
        .def("forward", &Engine::forward, py::arg("tokens"), py::arg("pos"), py::arg("all_logits") = false)
        .def("forward_argmax", &Engine::forward_argmax, py::arg("tokens"), py::arg("pos"))
        .def("prefill", &Engine::prefill, py::arg("tokens"), py::arg("pos"),
             "evaluate tokens into the KV cache without computing logits")
        .def("kv_save", &Engine::kv_save, py::arg("n"),
             "f16 bits [n_layers, 2, n, kv_dim] of the K/V cache rows of positions 0..n")
        .def("kv_load", &Engine::kv_load, py::arg("kv"), "restore rows 0..n saved by kv_save")
        .def_property_readonly("n_ctx", [](Engine& e) { return e.model().config().n_ctx; })
        .def_property_readonly("vocab", [](Engine& e) { return e.model().config().vocab; })
        .def_property_readonly("backend_name", [](Engine& e) { return e.model().backend().name(); })
        .def("_weight_buffers", &Engine::weight_buffers,
             "test-facing: (address, bytes) of each zero-copy buffer the weights were wrapped in")
        .def("set_profiling", [](Engine& e, bool on) { e.model().set_profiling(on); })
        .def("last_profile", [](Engine& e) {
            const auto& p = e.model().last_profile();
            py::dict d;
            d["embed"] = p.embed;
            d["layers"] = p.layers;
            d["logits"] = p.logits;
            return d;
        });

    m.def("cpu_info", [] {
        py::dict d;
        d["kernels"] = cpu::select_kernels().name;
        d["available"] = py::list();
        for (auto* k : {cpu::kernels_generic(), cpu::kernels_avx2(), cpu::kernels_avx512(), cpu::kernels_neon()})
            if (k) d["available"].cast<py::list>().append(k->name);
        return d;
    });
    bind_ops(m);
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
#endif
}
