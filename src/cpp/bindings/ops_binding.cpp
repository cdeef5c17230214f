// _core.Ops(backend): runs one backend op on copies of NumPy arrays. Tests use it to
// check every op of every backend against NumPy and against the CPU backend.
#include "ops_binding.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "core/backend.h"

namespace py = pybind11;
using namespace forgert;

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using U16 = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

void need(bool ok, const std::string& msg) {
    if (!ok) throw InputError(msg);
}

// decode_rows < 0: kernels by row count (RowClasses::by_count); else rows [0, decode_rows) of x's
// n are decode rows (the GEMV on Metal), the rest prompt-prefix rows.
RowClasses row_classes(int64_t decode_rows, int64_t n) {
    need(decode_rows <= n, "decode_rows " + std::to_string(decode_rows) + " exceeds x's " + std::to_string(n) + " rows");
    return decode_rows < 0 ? RowClasses::by_count() : RowClasses::decode(decode_rows);
}

// f16 tensors travel as numpy float16 arrays (raw uint16 bits are accepted too);
// any other dtype would be converted by value, silently wrong, so it is refused.
U16 f16_bits(const py::array& a, const char* what) {
    const std::string kind = py::str(a.dtype()).cast<std::string>();
    if (kind != "float16" && kind != "uint16")
        throw InputError(std::string(what) + " must be a float16 array, got " + kind);
    return U16::ensure(a.attr("view")("uint16"));
}

py::array as_float16(const U16& bits) { return bits.attr("view")("float16"); }

int64_t rows_of(const py::array& a) { return a.ndim() == 1 ? 1 : a.shape(0); }
int64_t cols_of(const py::array& a) { return a.shape(a.ndim() - 1); }

// A batch's row table (i32 [n, 2]: each query row's position and its sequence's first cache
// row), checked against the cache here so that a bad one is an error, not a stray write.
void check_row_table(const I32& rows, int64_t n, int64_t n_ctx) {
    need(rows.ndim() == 2 && rows.shape(0) == n && rows.shape(1) == 2, "rows must be i32 [n, 2] (position, cache base)");
    for (int64_t i = 0; i < n; i++) {
        const int64_t pos = rows.at(i, 0), base = rows.at(i, 1);
        need(pos >= 0 && base >= 0 && base + pos < n_ctx,
             "row " + std::to_string(i) + " (position " + std::to_string(pos) + ", cache base " + std::to_string(base) +
                 ") is past the cache");
    }
}

class Ops {
public:
    Ops(const std::string& backend, int threads, const std::string& activations)
        : be_(make_backend(backend, threads)) {
        cpu::set_activations(*be_, activations);
    }

    std::string name() const { return be_->name(); }

    // Copies a host array into a fresh device tensor of the given type and shape.
    Tensor upload(const void* data, DType t, int64_t rows, int64_t cols) {
        const size_t bytes = (size_t)row_bytes(t, cols) * rows;
        bufs_.push_back(be_->alloc(bytes));
        Tensor x = make_tensor(bufs_.back().get(), 0, t, rows, cols);
        be_->write(x, data, bytes);
        return x;
    }
    Tensor empty(DType t, int64_t rows, int64_t cols) {
        bufs_.push_back(be_->alloc((size_t)row_bytes(t, cols) * rows));
        return make_tensor(bufs_.back().get(), 0, t, rows, cols);
    }
    // The RowPositions of a call: pos0 alone, or the uploaded table (kept in `table`).
    RowPositions positions(int pos0, const std::optional<I32>& rows, Tensor& table) {
        if (!rows) return RowPositions(pos0);
        int max_len = 0, max_run = 0;
        for (int64_t i = 0, run = 0; i < rows->shape(0); i++) {
            max_len = std::max(max_len, rows->at(i, 0) + 1);
            const bool continues = i > 0 && rows->at(i, 1) == rows->at(i - 1, 1) && rows->at(i, 0) == rows->at(i - 1, 0) + 1;
            run = continues ? run + 1 : 1;
            max_run = std::max(max_run, (int)run);
        }
        table = upload(rows->data(), DType::I32, rows->shape(0), 2);
        return RowPositions(table, max_len, max_run);
    }
    Tensor f32(const F32& a) {
        need(a.ndim() == 1 || a.ndim() == 2, "expected a 1-D or 2-D float32 array");
        return upload(a.data(), DType::F32, rows_of(a), cols_of(a));
    }
    template <class Fn>
    void run(Fn&& fn) {
        be_->begin();
        fn();
        be_->commit();
        be_->wait();
    }
    F32 download(const Tensor& t) {
        F32 out(std::vector<py::ssize_t>{t.rows, t.cols});
        be_->read(out.mutable_data(), t, t.nbytes());
        bufs_.clear();
        return out;
    }

    Tensor weight(const U8& bytes, int dtype, int64_t rows, int64_t cols) {
        need(dtype_is_known(dtype) && dtype != FG_I32, "unsupported weight dtype " + std::to_string(dtype));
        need(rows > 0 && cols > 0, "rows and cols must be positive");
        const int64_t expect = row_bytes((DType)dtype, cols) * rows;
        need(bytes.size() == expect, "weight has " + std::to_string(bytes.size()) + " bytes, expected " +
                                         std::to_string(expect));
        // As a model's load leaves it: the CPU backend's repacked panels (FORGERT_CPU_REPACK).
        return be_->prepare_weight(upload(bytes.data(), (DType)dtype, rows, cols), bufs_);
    }

    F32 matmul(const U8& w, int dtype, int64_t rows, int64_t cols, const F32& x, int64_t decode_rows) {
        need(x.ndim() == 2 && x.shape(1) == cols, "x must be [n, cols]");
        const RowClasses rc = row_classes(decode_rows, x.shape(0));
        Tensor W = weight(w, dtype, rows, cols), X = f32(x), Y = empty(DType::F32, X.rows, rows);
        run([&] { be_->matmul(Y, W, X, rc); });
        return download(Y);
    }
    // out + w x (the fused residual projection); out [n, rows] is a copy, not changed in place.
    F32 matmul_add(const U8& w, int dtype, int64_t rows, int64_t cols, const F32& x, const F32& out) {
        need(x.ndim() == 2 && x.shape(1) == cols, "x must be [n, cols]");
        need(out.ndim() == 2 && out.shape(0) == x.shape(0) && out.shape(1) == rows, "out must be [n, rows]");
        Tensor W = weight(w, dtype, rows, cols), X = f32(x), Y = f32(out), S = empty(DType::F32, X.rows, rows);
        run([&] { be_->matmul_add(Y, W, X, S); });
        return download(Y);
    }
    // silu(w_gate x) * (w_up x); both weights of one dtype and shape.
    F32 matmul_swiglu(const U8& w_gate, const U8& w_up, int dtype, int64_t rows, int64_t cols, const F32& x,
                      int64_t decode_rows) {
        need(x.ndim() == 2 && x.shape(1) == cols, "x must be [n, cols]");
        const RowClasses rc = row_classes(decode_rows, x.shape(0));
        Tensor G = weight(w_gate, dtype, rows, cols), U = weight(w_up, dtype, rows, cols), X = f32(x);
        Tensor Y = empty(DType::F32, X.rows, rows), S = empty(DType::F32, X.rows, rows);
        run([&] { be_->matmul_swiglu(Y, G, U, X, S, rc); });
        return download(Y);
    }
    F32 matmul_geglu(const U8& w_gate, const U8& w_up, int dtype, int64_t rows, int64_t cols, const F32& x) {
        need(x.ndim() == 2 && x.shape(1) == cols, "x must be [n, cols]");
        Tensor G = weight(w_gate, dtype, rows, cols), U = weight(w_up, dtype, rows, cols), X = f32(x);
        Tensor Y = empty(DType::F32, X.rows, rows), S = empty(DType::F32, X.rows, rows);
        run([&] { be_->matmul_geglu(Y, G, U, X, S); });
        return download(Y);
    }
    F32 get_rows(const U8& table, int dtype, int64_t rows, int64_t cols, const I32& ids) {
        for (py::ssize_t i = 0; i < ids.size(); i++)
            need(ids.data()[i] >= 0 && ids.data()[i] < rows, "id out of range");
        Tensor T = weight(table, dtype, rows, cols);
        Tensor I = upload(ids.data(), DType::I32, ids.size(), 1), Y = empty(DType::F32, ids.size(), cols);
        run([&] { be_->get_rows(Y, T, I); });
        return download(Y);
    }
    F32 rms_norm(const F32& x, const F32& w, float eps) {
        need(w.size() == cols_of(x), "w must have x's column count");
        Tensor X = f32(x), W = f32(w), Y = empty(DType::F32, X.rows, X.cols);
        run([&] { be_->rms_norm(Y, X, W, eps); });
        return download(Y);
    }
    F32 layer_norm(const F32& x, const F32& w, float eps) {
        need(w.size() == cols_of(x), "w must have x's column count");
        Tensor X = f32(x), W = f32(w), Y = empty(DType::F32, X.rows, X.cols);
        run([&] { be_->layer_norm(Y, X, W, eps); });
        return download(Y);
    }
    // x [n, heads * head_dim] with each head RMS-normalised by w [head_dim] (in place on the device).
    F32 head_rms_norm(const F32& x, const F32& w, float eps) {
        need(x.ndim() == 2 && w.ndim() == 1 && w.size() > 0 && cols_of(x) % w.size() == 0,
             "x must be [n, heads * head_dim] and w [head_dim]");
        Tensor X = f32(x), W = f32(w);
        run([&] { be_->head_rms_norm(X, W, eps); });
        return download(X);
    }
    F32 add_bias(const F32& x, const F32& b) {
        need(b.size() == cols_of(x), "b must have x's column count");
        Tensor X = f32(x), B = f32(b);
        run([&] { be_->add_bias(X, B); });
        return download(X);
    }
    // Returns (q, k) rotated and the two caches after the write.
    // Copies within one f16 cache [rows, cols] (KV slots of one buffer), in order in one command
    // buffer: each (src, dst, n) puts rows [src, src + n) onto rows [dst, dst + n). Returns the
    // whole cache after them.
    py::array copy_rows(const py::array& cache_in, const std::vector<std::tuple<int64_t, int64_t, int64_t>>& copies) {
        const U16 c = f16_bits(cache_in, "cache");
        need(c.ndim() == 2, "cache must be [rows, cols]");
        for (const auto& [src, dst, n] : copies)
            need(n >= 0 && src >= 0 && dst >= 0 && src + n <= c.shape(0) && dst + n <= c.shape(0),
                 "rows past the cache");
        Tensor C = upload(c.data(), DType::F16, c.shape(0), c.shape(1));
        run([&] {
            for (const auto& [src, dst, n] : copies) be_->copy(C.slice_rows(dst, n), C.slice_rows(src, n));
        });
        U16 out(std::vector<py::ssize_t>{C.rows, C.cols});
        be_->read(out.mutable_data(), C, C.nbytes());
        bufs_.clear();
        return as_float16(out);
    }

    py::tuple rope_kv_write(const F32& q, const F32& k, const F32& v, const py::array& k_cache_in,
                            const py::array& v_cache_in, const F32& freqs, int pos0, int n_heads, int n_kv_heads,
                            int head_dim, bool neox, int rope_dim, float attn_factor, const std::optional<I32>& rows,
                            float q_temp_beta, int q_temp_floor, bool v_from_k) {
        // v_from_k: k alone is cached (latent attention); v and v_cache go to the op as empty
        // tensors and come back unchanged.
        // n_kv_heads 0: q alone rotates (a Gemma 4 layer reading another layer's K/V); k, v and
        // the caches are not read, and come back unchanged
        const bool q_only = n_kv_heads == 0;
        const U16 kc = f16_bits(k_cache_in, "k_cache"), vc = f16_bits(v_cache_in, "v_cache");
        need(n_heads > 0 && n_kv_heads >= 0 && head_dim > 0 && head_dim % 2 == 0,
             "need n_heads > 0, n_kv_heads >= 0 and an even head_dim");
        const int64_t kv_dim = (int64_t)n_kv_heads * head_dim;
        need(cols_of(q) == (int64_t)n_heads * head_dim, "q must be [n, n_heads * head_dim]");
        if (!q_only) {
            need(cols_of(k) == kv_dim && cols_of(v) == kv_dim, "k and v must be [n, n_kv_heads * head_dim]");
            need(rows_of(k) == rows_of(q) && rows_of(v) == rows_of(q), "q, k and v must have one row count");
            need(kc.ndim() == 2 && kc.shape(1) == kv_dim, "k_cache must be [n_ctx, kv_dim]");
            need(vc.ndim() == 2 && vc.shape(0) == kc.shape(0) && vc.shape(1) == kv_dim, "v_cache must match k_cache");
        }
        if (rope_dim < 0) rope_dim = head_dim;
        need(rope_dim <= head_dim && rope_dim % 2 == 0, "rope_dim must be even and <= head_dim (0: no rotation)");
        need(attn_factor > 0.0f && std::isfinite(attn_factor), "attn_factor must be a positive number");
        need(std::isfinite(q_temp_beta) && (q_temp_beta == 0.0f || q_temp_floor > 0),
             "q_temp_beta must be finite, with q_temp_floor > 0 when it is not 0");
        need(freqs.size() == std::max(rope_dim / 2, 1), "freqs must have rope_dim / 2 entries");
        const int64_t n_ctx = q_only ? INT32_MAX : kc.shape(0);
        if (rows)
            check_row_table(*rows, rows_of(q), n_ctx);
        else
            need(pos0 >= 0 && pos0 + rows_of(q) <= n_ctx, "rows past the cache");
        Tensor Q = f32(q), Fr = f32(freqs), T, K, V, KC, VC;
        if (!q_only) {
            K = f32(k);
            V = f32(v);
            KC = upload(kc.data(), DType::F16, kc.shape(0), kv_dim);
            VC = upload(vc.data(), DType::F16, vc.shape(0), kv_dim);
        }
        const RowPositions at = positions(pos0, rows, T);
        RopeKvParams p{n_heads, n_kv_heads, head_dim, neox, rope_dim, rope_dim == 0, attn_factor, q_temp_beta, q_temp_floor};
        p.v_from_k = v_from_k;
        run([&] { be_->rope_kv_write(Q, K, v_from_k ? Tensor{} : V, KC, v_from_k ? Tensor{} : VC, Fr, at, p); });
        F32 q_out(std::vector<py::ssize_t>{Q.rows, Q.cols});
        be_->read(q_out.mutable_data(), Q, Q.nbytes());
        if (q_only) {
            bufs_.clear();
            return py::make_tuple(q_out, k, k_cache_in, v_cache_in);
        }
        F32 k_out(std::vector<py::ssize_t>{K.rows, K.cols});
        U16 kc_out(std::vector<py::ssize_t>{KC.rows, KC.cols}), vc_out(std::vector<py::ssize_t>{VC.rows, VC.cols});
        be_->read(k_out.mutable_data(), K, K.nbytes());
        be_->read(kc_out.mutable_data(), KC, KC.nbytes());
        be_->read(vc_out.mutable_data(), VC, VC.nbytes());
        bufs_.clear();
        return py::make_tuple(q_out, k_out, as_float16(kc_out), as_float16(vc_out));
    }
    F32 attention(const F32& q, const py::array& k_in, const py::array& v_in, int pos0, int n_heads, int n_kv_heads,
                  int head_dim, float scale, int window, float softcap, const std::optional<F32>& sinks,
                  const std::optional<I32>& rows) {
        const U16 kc = f16_bits(k_in, "k_cache"), vc = f16_bits(v_in, "v_cache");
        need(window >= 0, "window must be >= 0 (0: no sliding window)");
        need(softcap >= 0.0f && std::isfinite(softcap), "softcap must be >= 0 and finite (0: none)");
        need(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
        need(cols_of(q) == (int64_t)n_heads * head_dim, "q must be [n, n_heads * head_dim]");
        need(kc.ndim() == 2 && kc.shape(1) == (int64_t)n_kv_heads * head_dim, "k_cache must be [n_ctx, kv_dim]");
        need(vc.ndim() == 2 && vc.shape(0) == kc.shape(0) && vc.shape(1) == kc.shape(1), "v_cache must match k_cache");
        if (rows)
            check_row_table(*rows, rows_of(q), kc.shape(0));
        else
            need(pos0 >= 0 && pos0 + rows_of(q) <= kc.shape(0), "queries past the cache");
        need(!sinks || sinks->size() == n_heads, "sinks must hold one value per head");
        Tensor S = sinks ? f32(*sinks) : Tensor{};
        // The same array for both caches: one tensor, as latent attention's V rows are its K rows.
        Tensor Q = f32(q), K = upload(kc.data(), DType::F16, kc.shape(0), kc.shape(1)),
               V = k_in.is(v_in) ? K : upload(vc.data(), DType::F16, vc.shape(0), vc.shape(1)),
               Y = empty(DType::F32, Q.rows, Q.cols);
        AttentionParams ap{n_heads, n_kv_heads, head_dim, scale, window, softcap};
        if (sinks) ap.sinks = &S;
        Tensor T;
        const RowPositions at = positions(pos0, rows, T);
        run([&] { be_->attention(Y, Q, K, V, at, ap); });
        return download(Y);
    }
    F32 silu_mul(const F32& g, const F32& u) {
        need(g.size() == u.size(), "gate and up must have the same shape");
        Tensor G = f32(g), U = f32(u), Y = empty(DType::F32, G.rows, G.cols);
        run([&] { be_->silu_mul(Y, G, U); });
        return download(Y);
    }
    F32 add_rms_norm(const F32& x, const F32& y, const F32& w, float eps) {  // x + rms_norm(y) * w
        need(x.size() == y.size() && w.size() == cols_of(y), "x and y must have one shape, w y's column count");
        Tensor X = f32(x), Y = f32(y), W = f32(w);
        run([&] { be_->add_rms_norm(X, Y, W, eps); });
        return download(X);
    }
    F32 gelu_mul(const F32& g, const F32& u) {
        need(g.size() == u.size(), "gate and up must have the same shape");
        Tensor G = f32(g), U = f32(u), Y = empty(DType::F32, G.rows, G.cols);
        run([&] { be_->gelu_mul(Y, G, U); });
        return download(Y);
    }
    F32 gelu(const F32& x) {  // gelu_tanh(x) (in place on the device)
        Tensor X = f32(x);
        run([&] { be_->gelu(X); });
        return download(X);
    }
    F32 relu_sq(const F32& x) {  // max(x, 0)^2 (in place on the device)
        Tensor X = f32(x);
        run([&] { be_->relu_sq(X); });
        return download(X);
    }
    F32 scale(const F32& x, float s) {  // x * s (in place on the device)
        Tensor X = f32(x);
        run([&] { be_->scale(X, s); });
        return download(X);
    }
    F32 softcap(const F32& x, float cap) {  // cap * tanh(x / cap) (in place on the device)
        need(cap > 0.0f && std::isfinite(cap), "cap must be positive and finite");
        Tensor X = f32(x);
        run([&] { be_->softcap(X, cap); });
        return download(X);
    }
    F32 gaussian_topk(const F32& x, float std_mult) {  // Gemma 3n's sparsity (in place on the device)
        need(std::isfinite(std_mult), "std_mult must be finite");
        Tensor X = f32(x);
        run([&] { be_->gaussian_topk(X, std_mult); });
        return download(X);
    }
    F32 rms_match(const F32& x, const F32& target) {
        need(x.size() == target.size() && rows_of(x) == rows_of(target), "x and target must have the same shape");
        Tensor X = f32(x), T = f32(target), Y = empty(DType::F32, X.rows, X.cols);
        run([&] { be_->rms_match(Y, X, T); });
        return download(Y);
    }
    F32 altup_mix(const F32& xs, const F32& coefs, const F32& base) {
        const int64_t n = rows_of(base), dim = cols_of(base), k = cols_of(coefs);
        need(rows_of(coefs) == n && rows_of(xs) == n && cols_of(xs) == k * dim,
             "xs must be [n, k * dim], coefs [n, k], base [n, dim]");
        Tensor X = f32(xs), C = f32(coefs), B = f32(base), Y = empty(DType::F32, n, dim);
        run([&] { be_->altup_mix(Y, X, C, B); });
        return download(Y);
    }
    I32 clamp_ids(const I32& ids, int32_t limit) {
        need(limit > 0, "limit must be positive");
        const int64_t n = (int64_t)ids.size();
        Tensor X = upload(ids.data(), DType::I32, 1, n), Y = empty(DType::I32, 1, n);
        run([&] { be_->clamp_ids(Y, X, limit); });
        I32 out(n);
        be_->read(out.mutable_data(), Y, (size_t)n * sizeof(int32_t));
        bufs_.clear();
        return out;
    }
    F32 add(const F32& a, const F32& b) {
        need(a.size() == b.size(), "a and b must have the same shape");
        Tensor A = f32(a), B = f32(b), Y = empty(DType::F32, A.rows, A.cols);
        run([&] { be_->add(Y, A, B); });
        return download(Y);
    }
    I32 argmax(const F32& x) {
        Tensor X = f32(x), Y = empty(DType::I32, X.rows, 1);
        run([&] { be_->argmax(Y, X); });
        I32 out(X.rows);
        be_->read(out.mutable_data(), Y, (size_t)X.rows * 4);
        bufs_.clear();
        return out;
    }

    // argmax(w x^T) row by row, i32 [n] (Backend::matmul_argmax: rows by count, as matmul).
    I32 matmul_argmax(const U8& w, int dtype, int64_t rows, int64_t cols, const F32& x) {
        need(x.ndim() == 2 && x.shape(1) == cols, "x must be [n, cols]");
        Tensor W = weight(w, dtype, rows, cols), X = f32(x), L = empty(DType::F32, X.rows, rows),
               Y = empty(DType::I32, X.rows, 1);
        run([&] { be_->matmul_argmax(Y, W, X, L); });
        I32 out(X.rows);
        be_->read(out.mutable_data(), Y, (size_t)X.rows * 4);
        bufs_.clear();
        return out;
    }

    // (weights [n, k], ids i32 [n, k]) of the router over logits [n, n_expert] (Backend::moe_route;
    // select_bias: None or f32 [n_expert]).
    py::tuple moe_route(const F32& logits, int k, bool renormalize, bool sigmoid, const py::object& select_bias,
                        float scale, int n_group, int topk_group) {
        need(logits.ndim() == 2 && logits.shape(1) > 0, "logits must be [n, n_expert]");
        need(k >= 1 && k <= logits.shape(1), "k must be in 1..n_expert");
        Tensor L = f32(logits), W = empty(DType::F32, L.rows, k), I = empty(DType::I32, L.rows, k), B;
        if (!select_bias.is_none()) {
            const F32 b = select_bias.cast<F32>();
            need(b.ndim() == 1 && b.shape(0) == logits.shape(1), "select_bias must be [n_expert]");
            B = f32(b);  // [1, n_expert]
        }
        const Backend::MoeRouting r{sigmoid, renormalize, scale, n_group, topk_group};
        run([&] { be_->moe_route(W, I, L, r, B); });
        F32 w(std::vector<py::ssize_t>{L.rows, k});
        I32 ids(std::vector<py::ssize_t>{L.rows, k});
        be_->read(w.mutable_data(), W, W.nbytes());
        be_->read(ids.mutable_data(), I, I.nbytes());
        bufs_.clear();
        return py::make_tuple(w, ids);
    }
    // out [n*k, rows]: row i*k + j = expert ids[i, j] times x's row i (x [n, cols]) or row i*k + j
    // (x [n*k, cols]). w: the n_expert [rows, cols] matrices' bytes one after the other (GGUF's
    // 3-D layout), the j-th of them expert stored[j] (default: expert j; HF's per-expert tensors lie
    // in name order: experts 0, 1, 10, 11, 2, ...); each expert becomes its own tensor, as HF's do.
    F32 matmul_id(const U8& w, int dtype, int n_expert, int64_t rows, int64_t cols, const F32& x, const I32& ids,
                  int64_t decode_rows, const std::vector<int>& stored) {
        need(dtype_is_known(dtype) && dtype != FG_I32, "unsupported weight dtype " + std::to_string(dtype));
        need(n_expert > 0 && rows > 0 && cols > 0, "n_expert, rows and cols must be positive");
        need(ids.ndim() == 2 && ids.shape(1) >= 1, "ids must be [n, k]");
        const int64_t n = ids.shape(0), k = ids.shape(1);
        need(x.ndim() == 2 && x.shape(1) == cols && (x.shape(0) == n || x.shape(0) == n * k),
             "x must be [n, cols] or [n*k, cols]");
        for (py::ssize_t i = 0; i < ids.size(); i++)
            need(ids.data()[i] >= 0 && ids.data()[i] < n_expert, "expert id out of range");
        const int64_t one = row_bytes((DType)dtype, cols) * rows;
        need((int64_t)w.size() == one * n_expert, "w has " + std::to_string(w.size()) + " bytes, expected " +
                                                      std::to_string(one * n_expert));
        const Tensor all = upload(w.data(), (DType)dtype, rows * n_expert, cols);
        std::vector<int> order = stored;
        if (order.empty())
            for (int e = 0; e < n_expert; e++) order.push_back(e);
        std::vector<int> sorted = order;
        std::sort(sorted.begin(), sorted.end());
        bool each_once = sorted.size() == (size_t)n_expert;
        for (int e = 0; each_once && e < n_expert; e++) each_once = sorted[e] == e;
        need(each_once, "stored must list each expert once");
        std::vector<Tensor> experts(n_expert);
        for (int j = 0; j < n_expert; j++) experts[order[j]] = all.slice_rows(j * rows, rows);
        Tensor X = f32(x), I = upload(ids.data(), DType::I32, n, k), Y = empty(DType::F32, n * k, rows);
        const RowClasses rc = row_classes(decode_rows, n);
        run([&] { be_->matmul_id(Y, experts.data(), n_expert, X, I, rc); });
        return download(Y);
    }
    // out + sum_j weights[:, j] y[i*k + j] (a copy of out, not changed in place).
    F32 moe_sum_add(const F32& out, const F32& y, const F32& weights) {
        need(out.ndim() == 2 && weights.ndim() == 2 && y.ndim() == 2 && weights.shape(0) == out.shape(0),
             "out [n, dim], y [n*k, dim], weights [n, k]");
        need(y.shape(0) == weights.shape(0) * weights.shape(1) && y.shape(1) == out.shape(1), "y must be [n*k, dim]");
        Tensor O = f32(out), Y = f32(y), W = f32(weights);
        run([&] { be_->moe_sum_add(O, Y, W); });
        return download(O);
    }

    F32 swiglu_oai(const F32& g, const F32& u, float alpha, float limit) {
        need(g.ndim() == 2 && u.ndim() == 2 && g.shape(0) == u.shape(0) && g.shape(1) == u.shape(1),
             "gate and up must have the same 2-D shape");
        Tensor G = f32(g), U = f32(u), Y = empty(DType::F32, G.rows, G.cols);
        run([&] { be_->swiglu_oai(Y, G, U, alpha, limit); });
        return download(Y);
    }
    // x + b[ids] per slot (a copy of x): x [n*k, dim], b [n_expert, dim], ids [n, k].
    F32 add_bias_id(const F32& x, const F32& b, const I32& ids) {
        need(ids.ndim() == 2 && x.ndim() == 2 && b.ndim() == 2, "x [n*k, dim], b [n_expert, dim], ids [n, k]");
        need(x.shape(0) == ids.shape(0) * ids.shape(1) && b.shape(1) == x.shape(1), "x [n*k, dim], b [n_expert, dim], ids [n, k]");
        for (py::ssize_t i = 0; i < ids.size(); i++)
            need(ids.data()[i] >= 0 && ids.data()[i] < b.shape(0), "expert id out of range");
        Tensor X = f32(x), B = f32(b), I = upload(ids.data(), DType::I32, ids.shape(0), ids.shape(1));
        run([&] { be_->add_bias_id(X, B, I); });
        return download(X);
    }

    // --- recurrent layers (Gated DeltaNet) ---
    // The run table i32 [n_runs, 4] (state row, first row, rows, fresh), checked with its host copy
    // by the ops' shared checks before the op runs (Metal's ops see only the device copy).
    Tensor run_table(const I32& runs) {
        need(runs.ndim() == 2 && runs.shape(0) >= 1 && runs.shape(1) == 4,
             "runs must be i32 [n_runs, 4] (state row, first row, rows, fresh)");
        return upload(runs.data(), DType::I32, runs.shape(0), 4);
    }
    // 2-D host arrays of one row count side by side in one device tensor; the column view of each
    // (as a projection's output is sliced: each view's offset and row stride are not its own).
    std::vector<Tensor> side_by_side(const std::vector<const F32*>& parts) {
        const int64_t n = parts[0]->ndim() == 2 ? parts[0]->shape(0) : -1;
        int64_t width = 0;
        for (const F32* a : parts) {
            need(a->ndim() == 2 && a->shape(0) == n && a->shape(1) >= 1, "the arrays must be 2-D with one row count");
            width += a->shape(1);
        }
        need(n >= 1, "no rows");
        std::vector<float> host((size_t)(n * width));
        int64_t c0 = 0;
        for (const F32* a : parts) {
            for (int64_t r = 0; r < n; r++)
                std::copy(a->data(r, 0), a->data(r, 0) + a->shape(1), host.begin() + r * width + c0);
            c0 += a->shape(1);
        }
        const Tensor all = upload(host.data(), DType::F32, n, width);
        std::vector<Tensor> views;
        c0 = 0;
        for (const F32* a : parts) {
            views.push_back(all.slice_cols(c0, a->shape(1)));
            c0 += a->shape(1);
        }
        return views;
    }
    F32 read_f32(const Tensor& t) {
        F32 out(std::vector<py::ssize_t>{t.rows, t.cols});
        be_->read(out.mutable_data(), t, t.nbytes());
        return out;
    }

    // (out [n, C], the state after) of the causal convolution over x [n, C] with w [C, K] (and
    // bias [C] where given) from state [n_slots, (K - 1) * C] (a copy: the array passed in is not
    // changed), SiLU'd where silu.
    py::tuple conv1d_state(const F32& x, const F32& w, const F32& state, const I32& runs, bool silu,
                           const std::optional<F32>& bias) {
        need(x.ndim() == 2 && w.ndim() == 2 && state.ndim() == 2,
             "x must be [n, C], w [C, K], state [n_slots, (K - 1) * C]");
        need(!bias || bias->ndim() == 1, "bias must be [C]");
        Tensor X = f32(x), W = f32(w), S = f32(state), R = run_table(runs), Y = empty(DType::F32, X.rows, X.cols);
        const Tensor Bi = bias ? f32(*bias) : Tensor{};
        check_conv1d_state(Y, X, W, Bi, S, R, runs.data());
        run([&] { be_->conv1d_state(Y, X, W, Bi, S, R, silu); });
        F32 out = read_f32(Y), st = read_f32(S);
        bufs_.clear();
        return py::make_tuple(out, st);
    }
    // (out [n, n_v_heads * v_dim], the state after) of the gated delta rule (Backend::gated_delta_rule;
    // a copy of state). views: q, k and v side by side in one device tensor, as the convolution's
    // output holds them (and alpha, beta in another), else each its own contiguous tensor.
    py::tuple gated_delta_rule(const F32& q, const F32& k, const F32& v, const F32& alpha, const F32& beta,
                               const F32& A, const F32& dt_bias, const F32& state, const I32& runs, int n_k_heads,
                               int n_v_heads, int k_dim, int v_dim, bool v_tiled, float eps, bool views) {
        need(q.ndim() == 2 && k.ndim() == 2 && v.ndim() == 2 && alpha.ndim() == 2 && beta.ndim() == 2 &&
                 state.ndim() == 2,
             "q, k, v, alpha, beta must be [n, ...] and state [n_slots, n_v_heads * k_dim * v_dim]");
        need(A.ndim() == 1 && dt_bias.ndim() == 1, "A and dt_bias must be [n_v_heads]");
        Tensor Q, K, V, Al, Be;
        if (views) {
            const std::vector<Tensor> qkv = side_by_side({&q, &k, &v}), ab = side_by_side({&alpha, &beta});
            Q = qkv[0];
            K = qkv[1];
            V = qkv[2];
            Al = ab[0];
            Be = ab[1];
        } else {
            Q = f32(q);
            K = f32(k);
            V = f32(v);
            Al = f32(alpha);
            Be = f32(beta);
        }
        Tensor Av = f32(A), Dt = f32(dt_bias), S = f32(state), R = run_table(runs);
        const Backend::DeltaNetParams p{n_k_heads, n_v_heads, k_dim, v_dim, v_tiled, eps};
        need(n_v_heads >= 1 && v_dim >= 1, "n_v_heads and v_dim must be positive");
        Tensor Y = empty(DType::F32, Q.rows, (int64_t)n_v_heads * v_dim);
        check_delta_rule(Y, Q, K, V, Al, Be, Av, Dt, S, R, p, runs.data());
        run([&] { be_->gated_delta_rule(Y, Q, K, V, Al, Be, Av, Dt, S, R, p); });
        F32 out = read_f32(Y), st = read_f32(S);
        bufs_.clear();
        return py::make_tuple(out, st);
    }
    // (out [n, n_heads * head_dim], the state after) of Mamba2's scan (Backend::mamba2_scan; a copy
    // of state). views: x, B and C side by side in one device tensor, as the convolution's output
    // holds them, else each its own contiguous tensor.
    py::tuple mamba2_scan(const F32& x, const F32& B, const F32& C, const F32& dt, const F32& A, const F32& D,
                          const F32& dt_bias, const F32& state, const I32& runs, int n_heads, int head_dim,
                          int n_groups, int d_state, bool views) {
        need(x.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2 && dt.ndim() == 2 && state.ndim() == 2,
             "x, B, C, dt must be [n, ...] and state [n_slots, n_heads * head_dim * d_state]");
        need(A.ndim() == 1 && D.ndim() == 1 && dt_bias.ndim() == 1, "A, D and dt_bias must be [n_heads]");
        need(n_heads >= 1 && head_dim >= 1, "n_heads and head_dim must be positive");
        Tensor X, Bt, Ct;
        if (views) {
            const std::vector<Tensor> xbc = side_by_side({&x, &B, &C});
            X = xbc[0];
            Bt = xbc[1];
            Ct = xbc[2];
        } else {
            X = f32(x);
            Bt = f32(B);
            Ct = f32(C);
        }
        Tensor Dtv = f32(dt), Av = f32(A), Dv = f32(D), Db = f32(dt_bias), S = f32(state), R = run_table(runs);
        const Backend::Mamba2Params p{n_heads, head_dim, n_groups, d_state};
        Tensor Y = empty(DType::F32, X.rows, (int64_t)n_heads * head_dim);
        check_mamba2_scan(Y, X, Bt, Ct, Dtv, Av, Dv, Db, S, R, p, runs.data());
        run([&] { be_->mamba2_scan(Y, X, Bt, Ct, Dtv, Av, Dv, Db, S, R, p); });
        F32 out = read_f32(Y), st = read_f32(S);
        bufs_.clear();
        return py::make_tuple(out, st);
    }
    // x * sigmoid(gate) elementwise (a copy of x); on the device x and gate lie side by side in one
    // tensor [n, 2 d] (as gated attention's projection holds them), so both rows are strided.
    F32 mul_sigmoid(const F32& x, const F32& gate) {
        need(x.ndim() == 2 && gate.ndim() == 2 && x.shape(0) == gate.shape(0) && x.shape(1) == gate.shape(1),
             "x and gate must have one 2-D shape");
        const std::vector<Tensor> xg = side_by_side({&x, &gate});
        run([&] { be_->mul_sigmoid(xg[0], xg[1]); });
        Tensor all = xg[0];
        all.cols = 2 * x.shape(1);
        const F32 both = read_f32(all);
        bufs_.clear();
        F32 out(std::vector<py::ssize_t>{x.shape(0), x.shape(1)});
        for (py::ssize_t r = 0; r < x.shape(0); r++)
            std::copy(both.data(r, 0), both.data(r, 0) + x.shape(1), out.mutable_data(r, 0));
        return out;
    }

    // a * b elementwise; on the device a and b lie side by side in one tensor [n, 2 d] (as LFM2's
    // in_proj holds them), so both rows are strided; the product goes to a tensor of its own.
    F32 mul(const F32& a, const F32& b) {
        need(a.ndim() == 2 && b.ndim() == 2 && a.shape(0) == b.shape(0) && a.shape(1) == b.shape(1),
             "a and b must have one 2-D shape");
        const std::vector<Tensor> ab = side_by_side({&a, &b});
        Tensor Y = empty(DType::F32, ab[0].rows, ab[0].cols);
        run([&] { be_->mul(Y, ab[0], ab[1]); });
        F32 out = read_f32(Y);
        bufs_.clear();
        return out;
    }

private:
    std::unique_ptr<Backend> be_;
    std::vector<std::unique_ptr<Buffer>> bufs_;
};

}  // namespace

void bind_ops(py::module_& m) {
    py::class_<Ops>(m, "Ops")
        .def(py::init<const std::string&, int, const std::string&>(), py::arg("backend") = "cpu",
             py::arg("threads") = 0, py::arg("activations") = "int16")
        .def_property_readonly("name", &Ops::name)
        .def("matmul", &Ops::matmul, py::arg("w"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("x"),
             py::arg("decode_rows") = -1)
        .def("matmul_add", &Ops::matmul_add, py::arg("w"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
             py::arg("x"), py::arg("out"))
        .def("matmul_swiglu", &Ops::matmul_swiglu, py::arg("w_gate"), py::arg("w_up"), py::arg("dtype"), py::arg("rows"),
             py::arg("cols"), py::arg("x"), py::arg("decode_rows") = -1)
        .def("matmul_geglu", &Ops::matmul_geglu, py::arg("w_gate"), py::arg("w_up"), py::arg("dtype"), py::arg("rows"),
             py::arg("cols"), py::arg("x"))
        .def("get_rows", &Ops::get_rows, py::arg("table"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
             py::arg("ids"))
        .def("rms_norm", &Ops::rms_norm, py::arg("x"), py::arg("w"), py::arg("eps"))
        .def("head_rms_norm", &Ops::head_rms_norm, py::arg("x"), py::arg("w"), py::arg("eps"))
        .def("layer_norm", &Ops::layer_norm, py::arg("x"), py::arg("w"), py::arg("eps"))
        .def("add_bias", &Ops::add_bias, py::arg("x"), py::arg("b"))
        .def("rope_kv_write", &Ops::rope_kv_write, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("k_cache"),
             py::arg("v_cache"), py::arg("freqs"), py::arg("pos0"), py::arg("n_heads"), py::arg("n_kv_heads"),
             py::arg("head_dim"), py::arg("neox"), py::arg("rope_dim") = -1, py::arg("attn_factor") = 1.0f,
             py::arg("rows") = py::none(), py::arg("q_temp_beta") = 0.0f, py::arg("q_temp_floor") = 0,
             py::arg("v_from_k") = false)
        .def("attention", &Ops::attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"),
             py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("scale"), py::arg("window") = 0,
             py::arg("softcap") = 0.0f, py::arg("sinks") = py::none(), py::arg("rows") = py::none())
        .def("silu_mul", &Ops::silu_mul, py::arg("gate"), py::arg("up"))
        .def("gelu_mul", &Ops::gelu_mul, py::arg("gate"), py::arg("up"))
        .def("gelu", &Ops::gelu, py::arg("x"))
        .def("relu_sq", &Ops::relu_sq, py::arg("x"))
        .def("add_rms_norm", &Ops::add_rms_norm, py::arg("x"), py::arg("y"), py::arg("w"), py::arg("eps"))
        .def("scale", &Ops::scale, py::arg("x"), py::arg("s"))
        .def("softcap", &Ops::softcap, py::arg("x"), py::arg("cap"))
        .def("gaussian_topk", &Ops::gaussian_topk, py::arg("x"), py::arg("std_mult"))
        .def("rms_match", &Ops::rms_match, py::arg("x"), py::arg("target"))
        .def("altup_mix", &Ops::altup_mix, py::arg("xs"), py::arg("coefs"), py::arg("base"))
        .def("clamp_ids", &Ops::clamp_ids, py::arg("ids"), py::arg("limit"))
        .def("add", &Ops::add, py::arg("a"), py::arg("b"))
        .def("copy_rows", &Ops::copy_rows, py::arg("cache"), py::arg("copies"))
        .def("argmax", &Ops::argmax, py::arg("x"))
        .def("matmul_argmax", &Ops::matmul_argmax, py::arg("w"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
             py::arg("x"))
        .def("moe_route", &Ops::moe_route, py::arg("logits"), py::arg("k"), py::arg("renormalize"),
             py::arg("sigmoid") = false, py::arg("select_bias") = py::none(), py::arg("scale") = 1.0f,
             py::arg("n_group") = 1, py::arg("topk_group") = 1)
        .def("matmul_id", &Ops::matmul_id, py::arg("w"), py::arg("dtype"), py::arg("n_expert"), py::arg("rows"),
             py::arg("cols"), py::arg("x"), py::arg("ids"), py::arg("decode_rows") = -1,
             py::arg("stored") = std::vector<int>{})
        .def("moe_sum_add", &Ops::moe_sum_add, py::arg("out"), py::arg("y"), py::arg("weights"))
        .def("swiglu_oai", &Ops::swiglu_oai, py::arg("gate"), py::arg("up"), py::arg("alpha"), py::arg("limit"))
        .def("add_bias_id", &Ops::add_bias_id, py::arg("x"), py::arg("b"), py::arg("ids"))
        .def("conv1d_state", &Ops::conv1d_state, py::arg("x"), py::arg("w"), py::arg("state"), py::arg("runs"),
             py::arg("silu"), py::arg("bias") = py::none())
        .def("mamba2_scan", &Ops::mamba2_scan, py::arg("x"), py::arg("B"), py::arg("C"), py::arg("dt"), py::arg("A"),
             py::arg("D"), py::arg("dt_bias"), py::arg("state"), py::arg("runs"), py::arg("n_heads"),
             py::arg("head_dim"), py::arg("n_groups"), py::arg("d_state"), py::arg("views") = true)
        .def("gated_delta_rule", &Ops::gated_delta_rule, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("alpha"),
             py::arg("beta"), py::arg("A"), py::arg("dt_bias"), py::arg("state"), py::arg("runs"),
             py::arg("n_k_heads"), py::arg("n_v_heads"), py::arg("k_dim"), py::arg("v_dim"), py::arg("v_tiled"),
             py::arg("eps") = 1e-6f, py::arg("views") = true)
        .def("mul_sigmoid", &Ops::mul_sigmoid, py::arg("x"), py::arg("gate"))
        .def("mul", &Ops::mul, py::arg("a"), py::arg("b"));
}
