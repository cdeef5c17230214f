#include "cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels_scalar.h"
#include "weight_panels.h"

namespace forgert::cpu {

namespace {

struct HostBuffer final : Buffer {
    bool owned = false;
    ~HostBuffer() override {
        if (owned) std::free(host);
    }
};

// Elementwise ops are memory-bound; below this many elements threading costs more than it saves.
constexpr int64_t kParallelElems = 1 << 15;

// Row r of a row-major tensor.
float* row_f32(const Tensor& t, int64_t r) { return reinterpret_cast<float*>(t.data<uint8_t>() + t.stride * r); }
uint16_t* row_f16(const Tensor& t, int64_t r) { return reinterpret_cast<uint16_t*>(t.data<uint8_t>() + t.stride * r); }

// x[i, j] = f(x[i, j]) in place, split as the other elementwise ops split: one row (decode) by
// columns across threads, several rows shared out whole (one fork, not one per row).
template <class F>
void map_in_place(ThreadPool& pool, const Tensor& x, F f) {
    if (x.rows == 1) {
        float* xr = row_f32(x, 0);
        pool.parallel_for(x.cols, kParallelElems / 4, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; c++) xr[c] = f(xr[c]);
        });
        return;
    }
    pool.parallel_for(x.rows, std::max<int64_t>(1, kParallelElems / x.cols), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            float* xr = row_f32(x, r);
            for (int64_t c = 0; c < x.cols; c++) xr[c] = f(xr[c]);
        }
    });
}

// FORGERT_CPU_PROFILE: "1" on, unset / "" / "0" off.
bool profile_from_env() {
    const char* v = std::getenv("FORGERT_CPU_PROFILE");
    const std::string s = v ? v : "";
    if (s.empty() || s == "0") return false;
    if (s == "1") return true;
    throw InputError("FORGERT_CPU_PROFILE must be '0' or '1', got '" + s + "'");
}

}  // namespace

CpuBackend::CpuBackend(int n_threads)
    : pool_(n_threads, work_split_from_env(), spin_us_from_env(), units_per_thread_from_env()),
      k_(select_kernels()), repack_(repack_from_env()), prefill_parts_(prefill_int8_parts()) {
    scratch_.resize(pool_.size());
    set_profiling(profile_from_env());
    panel_prefetch();  // a bad FORGERT_CPU_PANEL_PREFETCH fails here, not inside a kernel
    panel_tokens();    // likewise FORGERT_CPU_PANEL_TOKENS
    kquant_panels_256();  // and FORGERT_CPU_KQUANT_PANELS
}

void CpuBackend::set_activation_parts(int parts) {
    if (parts != 1 && parts != 2) throw InputError("activation parts must be 1 or 2, got " + std::to_string(parts));
    decode_parts_ = parts;
    prefill_parts_ = prefill_int8_parts(parts);
}

void set_activations(Backend& be, const std::string& activations) {
    if (activations != "int16" && activations != "int8")
        throw InputError("activations must be 'int16' or 'int8', got '" + activations + "'");
    if (auto* cpu = dynamic_cast<CpuBackend*>(&be)) return cpu->set_activation_parts(activations == "int8" ? 1 : 2);
    if (activations != "int16")
        throw InputError("activations='" + activations + "' is a CPU backend option; the " + be.name() +
                         " backend has its own numerics (leave activations at 'int16')");
}

void CpuBackend::quantize_decode_row(const float* x, BlockQ8Act* y, int64_t n) const {
    k_.quantize_row_q8(x, y, n);
    if (decode_parts_ == 1) drop_lo_parts(y, n / FG_QK);
}

void CpuBackend::set_profiling(bool on) {
    profiling_ = on;
    pool_.set_profiling(on);
}

void CpuBackend::reset_profile() {
    ops_ = CpuOpProfile{};
    pool_.reset_stats();
}

std::string CpuBackend::name() const { return std::string("cpu (") + k_.name + ")"; }

std::unique_ptr<Buffer> CpuBackend::alloc(size_t bytes) {
    auto b = std::make_unique<HostBuffer>();
    // 64-byte alignment for vector loads; round the size up as aligned_alloc requires.
    b->host = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) & ~size_t(63)));
    if (!b->host) throw std::bad_alloc();
    std::memset(b->host, 0, bytes);
    b->owned = true;
    b->size = bytes;
    return b;
}

std::unique_ptr<Buffer> CpuBackend::wrap_host(void* ptr, size_t bytes, size_t /*largest*/) {
    auto b = std::make_unique<HostBuffer>();
    b->host = ptr;
    b->size = bytes;
    return b;
}

void CpuBackend::write(const Tensor& dst, const void* src, size_t bytes) { std::memcpy(dst.data(), src, bytes); }
void CpuBackend::read(void* dst, const Tensor& src, size_t bytes) { std::memcpy(dst, src.data(), bytes); }

void CpuBackend::get_rows(const Tensor& out, const Tensor& table, const Tensor& ids) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::GetRows);
    const int32_t* id = ids.data<int32_t>();
    for (int64_t i = 0; i < out.rows; i++) {
        if (id[i] < 0 || id[i] >= table.rows) {  // zeros, as Metal's get_rows (core/backend.h)
            std::fill(row_f32(out, i), row_f32(out, i) + table.cols, 0.0f);
            continue;
        }
        if (is_panel16(table.type)) {  // a repacked tied embedding (the output matrix too)
            dequantize_panel16_row(table.type, table.data<uint8_t>(), table.stride, id[i], row_f32(out, i), table.cols);
            continue;
        }
        const uint8_t* row = table.data<uint8_t>() + table.stride * id[i];
        dequantize_row(table.type, row, row_f32(out, i), table.cols);
    }
}

void CpuBackend::rms_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) {
    rms_norm_rows(out, x, w, eps, false);
}

void CpuBackend::layer_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) {
    rms_norm_rows(out, x, w, eps, false, true);
}

void CpuBackend::add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, float eps) {
    rms_norm_rows(x, y, w, eps, true);
}

void CpuBackend::rms_norm_rows(const Tensor& out, const Tensor& x, const Tensor& w, float eps, bool accumulate,
                               bool center) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::RmsNorm);
    const int64_t dim = x.cols;
    const float* wv = w.data<float>();
    pool_.parallel_for(x.rows, std::max<int64_t>(1, kParallelElems / dim), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            const float* xr = row_f32(x, r);
            float* yr = row_f32(out, r);
            // double: rows of thousands of squares stay exact enough for 1e-6 agreement. Eight
            // partial sums (element c into lane c % 8), added pairwise at the end: one chain of
            // dependent double adds cost ~4 cycles an element (2.5 us a 2048-wide row, 1% of a 1B
            // decode token and 3% of an 8-sequence batch step on the 16-core host); eight vectorise.
            double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            float mean = 0.0f;  // LayerNorm (center): the row's mean, summed the same way
            if (center) {
                int64_t c = 0;
                for (; c + 8 <= dim; c += 8)
                    for (int l = 0; l < 8; l++) part[l] += xr[c + l];
                for (; c < dim; c++) part[c % 8] += xr[c];
                mean = (float)((((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]))) / dim);
                for (double& p : part) p = 0;
            }
            int64_t c = 0;
            for (; c + 8 <= dim; c += 8)
                for (int l = 0; l < 8; l++) part[l] += (double)(xr[c + l] - mean) * (xr[c + l] - mean);
            for (; c < dim; c++) part[c % 8] += (double)(xr[c] - mean) * (xr[c] - mean);
            const double ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
            const float scale = (float)(1.0 / std::sqrt(ss / dim + eps));
            if (accumulate)
                for (int64_t c = 0; c < dim; c++) yr[c] += (xr[c] - mean) * scale * wv[c];
            else
                for (int64_t c = 0; c < dim; c++) yr[c] = (xr[c] - mean) * scale * wv[c];
        }
    });
}

void CpuBackend::matmul_panel(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x) {
    const int64_t n = x.rows, cols = x.cols;
    const int64_t tt = k_.panel_tokens, n_pad = (n + tt - 1) / tt * tt;
    // x packed once per token tile: xp[tile][c][t % tt], zero-padded (see gemm_panel).
    if ((int64_t)xt_.size() < cols * n_pad) xt_.resize(cols * n_pad);
    float* xp = xt_.data();
    pool_.parallel_for(n_pad / tt, 1, [&](int64_t b0, int64_t b1) {
        const float* rows[kMaxPanelTokens];
        for (int64_t b = b0; b < b1; b++) {
            float* tile = xp + b * cols * tt;
            const int64_t nt = std::min(tt, n - b * tt);
            for (int64_t j = 0; j < nt; j++)
                rows[j] = row_f32(x, b * tt + j);
            // contiguous writes; the tile's rows are read as parallel sequential streams
            for (int64_t c = 0; c < cols; c++) {
                float* dst = tile + c * tt;
                for (int64_t j = 0; j < nt; j++) dst[j] = rows[j][c];
                for (int64_t j = nt; j < tt; j++) dst[j] = 0.0f;
            }
        }
    });
    for (auto& s : scratch_) {
        if ((int64_t)s.size() < gemm_panel_work_floats(cols)) s.resize(gemm_panel_work_floats(cols));
    }
    int64_t start[9] = {0};
    for (int i = 0; i < n_mm; i++) start[i + 1] = start[i] + (ws[i].rows + kPanelRows - 1) / kPanelRows;
    pool_.parallel_for_ith(start[n_mm], 1, [&](int ith, int64_t p0, int64_t p1) {
        for (int i = 0; i < n_mm; i++) {
            const int64_t b = std::max(p0, start[i]), e = std::min(p1, start[i + 1]);
            if (b >= e) continue;
            const Tensor& w = ws[i];
            const int64_t r0 = (b - start[i]) * kPanelRows, r1 = std::min(w.rows, (e - start[i]) * kPanelRows);
            k_.gemm_panel(w.type, w.data<uint8_t>(), w.stride, r0, r1, xp, cols, n, outs[i].data<float>(),
                          (int64_t)(outs[i].stride / sizeof(float)), scratch_[ith].data());
        }
    });
}

void CpuBackend::matmul_i8(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x) {
    const int64_t n = x.rows, cols = x.cols, nb = cols / FG_QK;
    if ((int64_t)xq_.size() < n * nb) xq_.resize(n * nb);
    if ((int64_t)xs_.size() < i8_act_sums_ints(n * nb)) xs_.resize(i8_act_sums_ints(n * nb));
    BlockQ8Act* xq = xq_.data();
    int32_t* xs = xs_.data();
    pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; t++) {
            k_.quantize_row_q8(row_f32(x, t), xq + t * nb, cols);
            i8_act_sums(xq, t * nb, (t + 1) * nb, n * nb, xs);
        }
    });
    const int64_t work_floats = (gemm_i8_work_bytes(cols) + 3) / 4;
    for (auto& s : scratch_) {
        if ((int64_t)s.size() < work_floats) s.resize(work_floats);
    }
    // Contiguous runs of kI8Rows-row panels over all the weights, in units of whole panel pairs:
    // the AMX GEMM runs two panels per activation tile load (amx_tile_pair), and a unit of an odd
    // number of panels would leave one to the slower single-panel tiles (with the 1B shape's QKV
    // at 16 threads, three panels a unit: a third of its panels alone).
    int64_t start[9] = {0};
    if (n_mm > 8) throw std::logic_error("matmul_many takes at most 8 weights");
    for (int i = 0; i < n_mm; i++) start[i + 1] = start[i] + (ws[i].rows + kI8Rows - 1) / kI8Rows;
    // Finer units than the pool's other regions (kI8UnitsPerThread): on the lent 16-core Xeon,
    // 1B Q4_K_M / Q8_0 prefill, 3 rounds, 16 a thread against 4 read 1.14x / 1.11x at 16 threads
    // and 1.32x / 1.13x at 4 (medians; 8 a thread in between). Cutting the tokens into chunks as
    // well (each (pairs, chunk) a unit) added nothing beyond the host's noise.
    for_i8_panels(start[n_mm], [&](int ith, int64_t p0, int64_t p1) {
        for (int i = 0; i < n_mm; i++) {
            const int64_t b = std::max(p0, start[i]), e = std::min(p1, start[i + 1]);
            if (b >= e) continue;
            const Tensor& w = ws[i];
            const int64_t r0 = (b - start[i]) * kI8Rows, r1 = std::min(w.rows, (e - start[i]) * kI8Rows);
            k_.gemm_i8(w.type, w.data<uint8_t>(), w.stride, r0, r1, xq, xs, nb, n, prefill_parts_,
                       outs[i].data<float>(), (int64_t)(outs[i].stride / sizeof(float)),
                       reinterpret_cast<uint8_t*>(scratch_[ith].data()));
        }
    });
}

void CpuBackend::for_i8_panels(int64_t n_panels, const std::function<void(int, int64_t, int64_t)>& fn) {
    pool_.parallel_for_ith(n_panels, 2, kI8UnitsPerThread, fn);
}

const void* CpuBackend::prepare_input(const Tensor& x, bool quantized, std::vector<float>& dense) {
    const int64_t n = x.rows, cols = x.cols;
    if (quantized) {
        const int64_t nb = cols / FG_QK;
        if ((int64_t)xq_.size() < n * nb) xq_.resize(n * nb);
        BlockQ8Act* xq = xq_.data();
        auto quantize = [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; t++)
                quantize_decode_row(row_f32(x, t), xq + t * nb, cols);
        };
        if (n >= 4) pool_.parallel_for(n, 1, quantize); else quantize(0, n);
        return xq;
    }
    if (x.stride == (size_t)cols * sizeof(float)) return x.data<float>();
    dense.resize(n * cols);  // the kernels read x densely
    for (int64_t t = 0; t < n; t++) std::memcpy(&dense[t * cols], x.data<uint8_t>() + x.stride * t, cols * sizeof(float));
    return dense.data();
}

void CpuBackend::matmul(const Tensor& out, const Tensor& w, const Tensor& x, RowClasses rc) {
    matmul_many(&out, &w, 1, x, rc);
}

static_assert(kMaxDecodeRun < kPanelMinTokens, "a decode run must fit the few-token kernels");

int64_t CpuBackend::decode_rows(const Tensor& x, RowClasses rc) const {
    if (rc.by_row_count()) return x.rows < kPanelMinTokens ? x.rows : 0;
    return std::min<int64_t>(rc.n_decode, x.rows);
}

// Calls run(r0, m) for the decode rows of x in runs of at most kMaxDecodeRun (the few-token
// kernels give each row the bits it gets alone, whatever run it is in), then prefix(r0, m) once
// for the prefix rows, if any.
template <class Run, class Prefix>
static void by_row_class(int64_t n, int64_t n_decode, Run&& run, Prefix&& prefix) {
    for (int64_t r0 = 0; r0 < n_decode; r0 += kMaxDecodeRun) run(r0, std::min(kMaxDecodeRun, n_decode - r0));
    if (n_decode < n) prefix(n_decode, n - n_decode);
}

void CpuBackend::gemv_rows(const Tensor& out, const Tensor& w, const void* xin, bool quantized, const Tensor& x,
                           int64_t r0, int64_t r1) {
    const int64_t out_stride = (int64_t)(out.stride / sizeof(float));
    if (quantized)
        k_.gemm_q(w.type, w.data<uint8_t>(), w.stride, r0, r1, static_cast<const BlockQ8Act*>(xin), x.cols / FG_QK,
                  x.rows, out.data<float>(), out_stride, decode_parts_);
    else
        k_.gemm_f(w.type, w.data<uint8_t>(), w.stride, r0, r1, static_cast<const float*>(xin), x.cols, x.rows,
                  out.data<float>(), out_stride);
}

// GEMV regions cut the rows into chunks of this many: multiples of the kernels' register
// tiles and of the elementwise kernels' vectors, so a fused region's row functions see the
// same vector/tail boundaries as they would over whole rows (identical results).
constexpr int64_t kGemvChunk = 16;

void CpuBackend::matmul_add(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& scratch,
                            RowClasses rc) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::MatmulAdd);
    const bool quantized = is_quantized(w.type);
    by_row_class(
        x.rows, decode_rows(x, rc),
        [&](int64_t t0, int64_t m) {
            // One region: each chunk of weight rows is computed into scratch and added to out at once.
            const Tensor xr = x.slice_rows(t0, m), outr = out.slice_rows(t0, m), sr = scratch.slice_rows(t0, m);
            std::vector<float> dense;
            const void* xin = prepare_input(xr, quantized, dense);
            pool_.parallel_for(w.rows, kGemvChunk, [&](int64_t r0, int64_t r1) {
                gemv_rows(sr, w, xin, quantized, xr, r0, r1);
                for (int64_t t = 0; t < m; t++) {
                    float* o = row_f32(outr, t);
                    const float* p = row_f32(sr, t);
                    for (int64_t r = r0; r < r1; r++) o[r] += p[r];
                }
            });
        },
        [&](int64_t t0, int64_t m) {
            const Tensor outr = out.slice_rows(t0, m), sr = scratch.slice_rows(t0, m);
            gemm_many(&sr, &w, 1, x.slice_rows(t0, m));
            add(outr, outr, sr);
        });
}

void CpuBackend::matmul_swiglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                               const Tensor& scratch, RowClasses rc) {
    matmul_glu(out, w_gate, w_up, x, scratch, false, rc);
}

void CpuBackend::matmul_geglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                              const Tensor& scratch, RowClasses rc) {
    matmul_glu(out, w_gate, w_up, x, scratch, true, rc);
}

void CpuBackend::matmul_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                            const Tensor& scratch, bool gelu, RowClasses rc) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::MatmulGlu);
    const bool same_kind = is_quantized(w_up.type) == is_quantized(w_gate.type);
    by_row_class(
        x.rows, decode_rows(x, rc),
        [&](int64_t t0, int64_t m) {
            const Tensor o = out.slice_rows(t0, m), xr = x.slice_rows(t0, m), sr = scratch.slice_rows(t0, m);
            if (same_kind) return gemv_glu(o, w_gate, w_up, xr, sr, gelu);
            const Tensor outs[2] = {o, sr}, ws[2] = {w_gate, w_up};
            for (int i = 0; i < 2; i++) gemv_many(&outs[i], &ws[i], 1, xr);  // mixed types (rare): one by one
            gelu ? gelu_mul(o, o, sr) : silu_mul(o, o, sr);
        },
        [&](int64_t t0, int64_t m) {
            const Tensor o = out.slice_rows(t0, m), xr = x.slice_rows(t0, m), sr = scratch.slice_rows(t0, m);
            const Tensor outs[2] = {o, sr}, ws[2] = {w_gate, w_up};
            if (same_kind) gemm_many(outs, ws, 2, xr);
            else for (int i = 0; i < 2; i++) gemm_many(&outs[i], &ws[i], 1, xr);
            gelu ? gelu_mul(o, o, sr) : silu_mul(o, o, sr);
        });
}

void CpuBackend::gemv_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                          const Tensor& scratch, bool gelu) {
    // One region: each chunk computes its gate rows (into out) and up rows (into scratch),
    // then their product, while both are in cache.
    const bool quantized = is_quantized(w_gate.type);
    std::vector<float> dense;
    const void* xin = prepare_input(x, quantized, dense);
    const auto act = gelu ? k_.gelu_mul_row : k_.silu_mul_row;
    pool_.parallel_for(w_gate.rows, kGemvChunk, [&](int64_t r0, int64_t r1) {
        gemv_rows(out, w_gate, xin, quantized, x, r0, r1);
        gemv_rows(scratch, w_up, xin, quantized, x, r0, r1);
        for (int64_t t = 0; t < x.rows; t++)
            act(row_f32(out, t) + r0, row_f32(scratch, t) + r0, row_f32(out, t) + r0, r1 - r0);
    });
}

void CpuBackend::matmul_many(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x, RowClasses rc) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Matmul);
    if (n_mm > 8) throw std::logic_error("matmul_many takes at most 8 weights");
    // Weights of one type share one prepared input; mixed types (rare) go one by one.
    for (int i = 1; i < n_mm; i++) {
        if (is_quantized(ws[i].type) != is_quantized(ws[0].type)) {
            for (int j = 0; j < n_mm; j++) matmul_many(&outs[j], &ws[j], 1, x, rc);
            return;
        }
    }
    Tensor part[8];
    auto rows_of = [&](int64_t t0, int64_t m) {
        for (int i = 0; i < n_mm; i++) part[i] = outs[i].slice_rows(t0, m);
        return x.slice_rows(t0, m);
    };
    by_row_class(
        x.rows, decode_rows(x, rc), [&](int64_t t0, int64_t m) { gemv_many(part, ws, n_mm, rows_of(t0, m)); },
        [&](int64_t t0, int64_t m) { gemm_many(part, ws, n_mm, rows_of(t0, m)); });
}

void CpuBackend::gemm_many(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x) {
    bool i8 = prefill_parts_ > 0;
    for (int i = 0; i < n_mm; i++) i8 = i8 && gemm_i8_takes(k_, ws[i].type);
    if (i8) return matmul_i8(outs, ws, n_mm, x);
    if (k_.gemm_panel) return matmul_panel(outs, ws, n_mm, x);
    gemv_many(outs, ws, n_mm, x);
}

void CpuBackend::gemv_many(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x) {
    const bool quantized = is_quantized(ws[0].type);
    std::vector<float> dense;
    const void* xin = prepare_input(x, quantized, dense);
    // One parallel region over the rows of all the weights, in chunks of kGemvChunk rows.
    int64_t chunk_start[8 + 1] = {0};
    for (int i = 0; i < n_mm; i++) chunk_start[i + 1] = chunk_start[i] + (ws[i].rows + kGemvChunk - 1) / kGemvChunk;
    pool_.parallel_for(chunk_start[n_mm], 1, [&](int64_t c0, int64_t c1) {
        for (int i = 0; i < n_mm; i++) {
            const int64_t b = std::max(c0, chunk_start[i]), e = std::min(c1, chunk_start[i + 1]);
            if (b >= e) continue;
            const int64_t r0 = (b - chunk_start[i]) * kGemvChunk;
            const int64_t r1 = std::min(ws[i].rows, (e - chunk_start[i]) * kGemvChunk);
            gemv_rows(outs[i], ws[i], xin, quantized, x, r0, r1);
        }
    });
}

void CpuBackend::add_bias(const Tensor& x, const Tensor& b) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    const float* bv = b.data<float>();
    pool_.parallel_for(x.rows, std::max<int64_t>(1, kParallelElems / x.cols), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            float* xr = row_f32(x, r);
            for (int64_t c = 0; c < x.cols; c++) xr[c] += bv[c];
        }
    });
}

namespace {

// cos/sin of the RoPE angles of one position, in double: positions in the 100k range
// keep full precision; both times `factor` (YaRN / LongRoPE attention scaling).  cs, sn [half]
void rope_angles(int64_t pos, const float* freqs, int half, float factor, float* cs, float* sn) {
    for (int j = 0; j < half; j++) {
        const double a = (double)pos * freqs[j];
        cs[j] = (float)(std::cos(a) * factor);
        sn[j] = (float)(std::sin(a) * factor);
    }
}

// Rotates the first rope_dim dims of every head of one token row in place.  x [n_heads * head_dim]
void rope_row(float* x, int n_heads, int head_dim, int rope_dim, bool neox, const float* cs, const float* sn) {
    const int half = rope_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float* v = x + h * head_dim;
        for (int j = 0; j < half; j++) {
            // neox pairs (j, j + half); otherwise adjacent pairs (2j, 2j + 1)
            const int i0 = neox ? j : 2 * j, i1 = neox ? j + half : 2 * j + 1;
            const float a = v[i0], b = v[i1];
            v[i0] = a * cs[j] - b * sn[j];
            v[i1] = a * sn[j] + b * cs[j];
        }
    }
}

}  // namespace

void RopeAngleCache::fill(int64_t p, const float* f, int h, float factor_) {
    // The same bits (a -0 frequency gives sin -0): the angles are then the ones rope_angles gives.
    if (p == pos && h == (int)freqs.size() && !std::memcmp(&factor_, &factor, sizeof factor) &&
        !std::memcmp(f, freqs.data(), h * sizeof(float)))
        return;
    pos = p, factor = factor_;
    freqs.assign(f, f + h);
    cs.resize(h), sn.resize(h);
    rope_angles(p, f, h, factor_, cs.data(), sn.data());
}

namespace {

// Row i's position and its sequence's first cache row, from a RowPositions read on the host
// (a CPU buffer is host memory). Checked once per call: every row's keys inside the cache.
struct HostRowPositions {
    const int32_t* table = nullptr;  // [n][2] (position, base), rows `stride` ints apart; null: pos0 + i, base 0
    int64_t stride = 2;
    int64_t pos0 = 0;

    HostRowPositions(const RowPositions& at, int64_t n, int64_t cache_rows, const char* op) : pos0(at.pos0) {
        if (!at.table) {
            if (at.pos0 < 0 || at.pos0 + n > cache_rows)
                throw InputError(std::string(op) + ": rows " + std::to_string(at.pos0) + ".." +
                                 std::to_string(at.pos0 + n) + " past a cache of " + std::to_string(cache_rows));
            return;
        }
        const Tensor& t = *at.table;
        if (t.type != DType::I32 || t.rows != n || t.cols != 2)
            throw InputError(std::string(op) + ": the row table must be i32 [" + std::to_string(n) + ", 2]");
        table = t.data<int32_t>();
        stride = (int64_t)(t.stride / sizeof(int32_t));
        for (int64_t i = 0; i < n; i++)
            if (pos(i) < 0 || base(i) < 0 || base(i) + pos(i) >= cache_rows)
                throw InputError(std::string(op) + ": row " + std::to_string(i) + " (position " +
                                 std::to_string(pos(i)) + ", cache base " + std::to_string(base(i)) +
                                 ") is past a cache of " + std::to_string(cache_rows) + " rows");
    }
    int64_t pos(int64_t i) const { return table ? table[i * stride] : pos0 + i; }
    int64_t base(int64_t i) const { return table ? table[i * stride + 1] : 0; }
    // Row i + 1 continues row i's sequence at the next position (they can share key reads).
    bool continues(int64_t i) const { return base(i + 1) == base(i) && pos(i + 1) == pos(i) + 1; }
};

}  // namespace

void CpuBackend::rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache,
                               const Tensor& v_cache, const Tensor& freqs, const RowPositions& at,
                               const RopeKvParams& p) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::RopeKvWrite);
    const bool q_only = p.n_kv_heads == 0;  // no key or value rows (a layer reading another's K/V)
    const HostRowPositions rows(at, q.rows,
                                q_only ? INT64_MAX : p.v_from_k ? k_cache.rows : std::min(k_cache.rows, v_cache.rows),
                                "rope_kv_write");
    const int rot = p.rotated_dims(), half = rot / 2;
    // One token's angles serve its query and key heads alike; a decode row's, every layer of the
    // token (rope_angles_ keeps the last: the same cos / sin, computed once instead of per layer).
    const bool one = q.rows == 1 && half > 0;
    if (one) rope_angles_.fill(rows.pos(0), freqs.data<float>(), half, p.attn_factor);
    pool_.parallel_for(q.rows, std::max<int64_t>(1, 64 / (p.n_heads + p.n_kv_heads)), [&](int64_t t0, int64_t t1) {
        std::vector<float> cs(one ? 0 : half), sn(one ? 0 : half);
        for (int64_t t = t0; t < t1; t++) {
            const int64_t pos = rows.pos(t), cache_row = rows.base(t) + pos;
            if (one) {
                rope_row(row_f32(q, t), p.n_heads, p.head_dim, rot, p.neox, rope_angles_.cs.data(), rope_angles_.sn.data());
                if (!q_only)
                    rope_row(row_f32(k, t), p.n_kv_heads, p.head_dim, rot, p.neox, rope_angles_.cs.data(), rope_angles_.sn.data());
            } else if (half > 0) {
                rope_angles(pos, freqs.data<float>(), half, p.attn_factor, cs.data(), sn.data());
                rope_row(row_f32(q, t), p.n_heads, p.head_dim, rot, p.neox, cs.data(), sn.data());
                if (!q_only) rope_row(row_f32(k, t), p.n_kv_heads, p.head_dim, rot, p.neox, cs.data(), sn.data());
            }
            if (const float qt = p.q_temperature(pos); qt != 1.0f) {  // the query temperature, after the turn
                float* qr = row_f32(q, t);
                for (int64_t i = 0; i < (int64_t)p.n_heads * p.head_dim; i++) qr[i] *= qt;
            }
            if (q_only) continue;
            k_.f32_to_f16_row(row_f32(k, t), row_f16(k_cache, cache_row), k.cols);
            if (!p.v_from_k) k_.f32_to_f16_row(row_f32(v, t), row_f16(v_cache, cache_row), v.cols);
        }
    });
}

namespace {

// attention_group picks its kernels by its number of queries (kAttnBlockMinQueries); each
// query's bits depend on nothing else in the call. A prefix block with fewer queries is padded to
// this many with copies of its first query, so that a prefix row's attention has the same bits
// whatever block it came in.
constexpr int kPrefixMinQueries = kAttnBlockMinQueries;

// Decode attention split into key ranges: how many for n_keys keys (1: none). Ranges of at least
// kMinSplitKeys keys, so that each thread has work with fewer KV heads than twice the threads, and
// so that no range is longer than kCacheSplitKeys: a lone decode step runs the ranges range-major,
// all KV heads of one range together, so the range's cache rows (every head of a position is one
// row) are read from memory once, in order, instead of once per head, a third or an eighth of each
// row at a time (1 thread, SmolLM2 at 4096 keys: 3.0-4.7 GB/s of K/V before, see cpu_ops_bench
// "attention 30 layers decode").
int decode_key_splits(int64_t n_keys, int n_kv_heads, int n_threads) {
    constexpr int64_t kMinSplitKeys = 128, kCacheSplitKeys = 512;
    const int64_t want = std::max<int64_t>((2 * n_threads + n_kv_heads - 1) / n_kv_heads,
                                           (n_keys + kCacheSplitKeys - 1) / kCacheSplitKeys);
    return (int)std::max<int64_t>(1, std::min<int64_t>(want, n_keys / kMinSplitKeys));
}

// KV heads a work item of decode attention takes: `units` things (key ranges, or decode rows) are
// each cut into blocks of consecutive heads, as large as still give `want_items` items in all, and
// as one attention_group call's query bound (kMaxGroupQueries) allows. Every head of a block is
// read in one call: its cache rows whole (a head's slice of a row is a third to an eighth of it).
int kv_heads_per_item(int n_kv_heads, int group, int64_t units, int64_t want_items) {
    const int64_t blocks = std::clamp<int64_t>((want_items + units - 1) / units, 1, n_kv_heads);
    const int heads = (int)((n_kv_heads + blocks - 1) / blocks);
    return std::max(1, std::min(heads, kMaxGroupQueries / group));
}

// One head's output from its key ranges' normalized outputs and log-sum-exps: out = sum_s w_s
// out_s / sum_s w_s with w_s = exp(lse_s - max lse), the softmax over all keys. A sink joins the
// denominator only (it weighs no value row).                 parts[s * part_stride + d], lse[s * lse_stride]
void merge_key_splits(float* oh, int hd, int n_splits, const float* parts, size_t part_stride, const float* lse,
                      size_t lse_stride, const float* sink) {
    float m = -INFINITY;
    for (int sp = 0; sp < n_splits; sp++) m = std::max(m, lse[sp * lse_stride]);
    float wsum = sink ? std::exp(*sink - m) : 0.0f;
    std::fill(oh, oh + hd, 0.0f);
    for (int sp = 0; sp < n_splits; sp++) {
        const float w = std::exp(lse[sp * lse_stride] - m);
        if (w == 0.0f) continue;
        wsum += w;
        const float* part = parts + sp * part_stride;
        for (int d = 0; d < hd; d++) oh[d] += w * part[d];
    }
    const float inv = 1.0f / wsum;
    for (int d = 0; d < hd; d++) oh[d] *= inv;
}

}  // namespace

void CpuBackend::attention(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                           const RowPositions& at, const AttentionParams& p) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Attention);
    const int64_t n = q.rows;
    const int group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
    if (hd > kMaxHeadDim) throw InputError("head_dim " + std::to_string(hd) + " exceeds " + std::to_string(kMaxHeadDim));
    if (p.sinks && (p.sinks->type != DType::F32 || p.sinks->rows * p.sinks->cols != p.n_heads))
        throw InputError("attention sinks must be f32 with one value per head (" + std::to_string(p.n_heads) + ")");
    const HostRowPositions rows(at, n, std::min(k_cache.rows, v_cache.rows), "attention");
    if (n == 0) return;
    // A work item is one KV head with a block of rows of one sequence: all the item's queries
    // (the group's heads x the block's rows) share each K/V row converted to f32.
    const int heads_per_call = std::min(group, kMaxGroupQueries);
    // Rows a block: as many as fill kMaxGroupQueries queries, each K / V chunk then converted to
    // f32 once for more of them (8 rows -> 21: SmolLM2's 512-token prefill attention 1.74 -> 1.57
    // ns a query-key pair on one Zen 5 thread), but halved (down to 8) while the pass would have
    // fewer than two items a thread. A query's bits do not depend on its block.
    int64_t max_block = std::max(1, kMaxGroupQueries / heads_per_call);
    while (max_block > 8 && (n + max_block - 1) / max_block * p.n_kv_heads < 2 * (int64_t)pool_.size())
        max_block = std::max<int64_t>(8, max_block / 2);
    // Blocks: runs of rows that continue one sequence, cut into max_block rows. With a sliding
    // window that has moved past key 0, each row starts at another key: one row per block.
    // Row classes: decode rows, and every row at a position below kMaxDecodeRun, are blocks of
    // their own (as alone; a decode row takes the key splits it takes alone); a prefix block is
    // padded to kPrefixMinQueries queries. A row's attention then depends only on its class and
    // position, not on the rows beside it.
    const bool classed = !at.classes.by_row_count();
    auto is_prefix = [&](int64_t t) { return classed && t >= at.classes.n_decode; };
    blocks_.clear();
    for (int64_t r0 = 0; r0 < n;) {
        int64_t r1 = r0 + 1;
        while (r1 < n && rows.continues(r1 - 1)) r1++;
        const bool windowed = p.window > 0 && rows.pos(r1 - 1) + 1 > p.window;
        const int64_t blk = windowed ? 1 : max_block;
        int64_t t = r0;
        if (classed)
            for (; t < r1 && (!is_prefix(t) || rows.pos(t) < kMaxDecodeRun); t++) blocks_.push_back({t, t + 1});
        for (; t < r1; t += blk) blocks_.push_back({t, std::min(r1, t + blk)});
        r0 = r1;
    }
    for (auto& s : scratch_) {
        if ((int64_t)s.size() < attention_work_floats(hd)) s.resize(attention_work_floats(hd));
    }
    auto key_range = [&](int64_t t, int64_t* first) {  // keys first .. pos(t) of row t
        *first = p.window > 0 ? std::max<int64_t>(0, rows.pos(t) + 1 - p.window) : 0;
        return rows.pos(t) + 1 - *first;
    };
    auto splits_of = [&](int64_t t0, int64_t t1) {  // a decode row's key ranges (1: none)
        if (t1 - t0 != 1 || is_prefix(t0) || group > kMaxGroupQueries || (!classed && n != 1)) return 1;
        int64_t first;
        return decode_key_splits(key_range(t0, &first), p.n_kv_heads, pool_.size());
    };
    if (n == 1 && splits_of(0, 1) > 1) {  // decode alone: the ranges spread over the threads
        int64_t first;
        const int64_t n_keys = key_range(0, &first), pos = rows.pos(0);
        return attention_split_keys(out, q, k_cache.slice_rows(rows.base(0), pos + 1),
                                    v_cache.slice_rows(rows.base(0), pos + 1), first, n_keys, splits_of(0, 1), p);
    }
    // Work items: a block of rows and one KV head; a decode row with key ranges (a batch's, at
    // depth) takes a block of consecutive KV heads instead, as many as leave two items a thread,
    // so that one call reads its ranges' cache rows whole (as attention_split_keys does alone).
    int64_t max_splits = 1, split_rows = 0;
    for (const auto& [t0, t1] : blocks_) {
        const int sp = splits_of(t0, t1);
        if (sp > 1) max_splits = std::max<int64_t>(max_splits, sp), split_rows++;
    }
    // KV heads an item of a decode row with key ranges takes: two items a thread with the others'
    const int64_t others = ((int64_t)blocks_.size() - split_rows) * p.n_kv_heads;
    const int row_heads = split_rows > 0 ? kv_heads_per_item(p.n_kv_heads, group, split_rows,
                                                             2 * pool_.size() - others)
                                         : 1;
    attn_items_.clear();
    for (int64_t b = 0; b < (int64_t)blocks_.size(); b++) {
        const int heads_each = splits_of(blocks_[b].first, blocks_[b].second) > 1 ? row_heads : 1;
        for (int kvh = 0; kvh < p.n_kv_heads; kvh += heads_each)
            attn_items_.push_back({b, kvh, std::min(heads_each, p.n_kv_heads - kvh)});
    }
    const int64_t items = (int64_t)attn_items_.size();
    if (split_rows > 0) {  // room for the most key ranges of the pass's decode rows, outputs and lse
        const size_t split_floats = (size_t)max_splits * row_heads * group * (hd + 1);
        for (auto& s : split_work_)
            if (s.size() < split_floats) s.resize(split_floats);
        if (split_work_.size() < (size_t)pool_.size()) split_work_.resize(pool_.size(), std::vector<float>(split_floats));
    }
    const int64_t kv_stride = (int64_t)(k_cache.stride / 2);
    const float* sinks = p.sinks ? p.sinks->data<float>() : nullptr;
    auto run_item = [&](int ith, int64_t it) {
        const float* qs[kMaxGroupQueries];
        float* os[kMaxGroupQueries];
        int64_t len[kMaxGroupQueries];
        int heads[kMaxGroupQueries];
        float lse[kMaxGroupQueries];
        alignas(64) float pad_out[kPrefixMinQueries][kMaxHeadDim];  // padding queries' outputs, unused
        {
            const AttnItem item = attn_items_[it];
            const auto [t0, t1] = blocks_[item.block];
            const int kvh = item.kvh0;
            const int n_splits = splits_of(t0, t1);
            if (n_splits > 1) {  // a decode row in a batch: its ranges one after the other, merged as alone
                int64_t first;
                const int64_t n_keys = key_range(t0, &first), split_len = (n_keys + n_splits - 1) / n_splits;
                const int nq = item.n_kv * group;                          // the item's heads, kvh on
                float* parts = split_work_[ith].data();                     // [split][head in item][hd]
                float* lses = parts + (size_t)n_splits * nq * hd;           // [split][head in item]
                for (int sp = 0; sp < n_splits; sp++) {
                    const int64_t k0 = first + sp * split_len, nk = std::min(split_len, first + n_keys - k0);
                    float* ls = lses + sp * nq;
                    if (nk <= 0) {
                        for (int h = 0; h < nq; h++) ls[h] = -INFINITY;
                        continue;
                    }
                    for (int h = 0; h < nq; h++) {
                        qs[h] = row_f32(q, t0) + (kvh * group + h) * hd;
                        os[h] = parts + ((size_t)sp * nq + h) * hd;
                        len[h] = nk;
                    }
                    k_.attention_group(qs, os, len, nq, item.n_kv, row_f16(k_cache, rows.base(t0) + k0) + kvh * hd,
                                       row_f16(v_cache, rows.base(t0) + k0) + kvh * hd, kv_stride, hd, p.scale,
                                       p.softcap, scratch_[ith].data(), ls);
                }
                for (int h = 0; h < nq; h++) {
                    const int head = kvh * group + h;
                    merge_key_splits(row_f32(out, t0) + head * hd, hd, n_splits, parts + (size_t)h * hd,
                                     (size_t)nq * hd, lses + h, nq, sinks ? &sinks[head] : nullptr);
                }
                return;
            }
            // Keys first .. pos(t) of every query here (first = 0 without a window), from the
            // sequence's cache rows.
            const int64_t first = p.window > 0 ? std::max<int64_t>(0, rows.pos(t0) + 1 - p.window) : 0;
            const uint16_t* kp = row_f16(k_cache, rows.base(t0) + first) + kvh * hd;
            const uint16_t* vp = row_f16(v_cache, rows.base(t0) + first) + kvh * hd;
            for (int h0 = 0; h0 < group; h0 += heads_per_call) {
                int nq = 0;
                for (int64_t t = t0; t < t1; t++) {
                    for (int h = h0; h < std::min(group, h0 + heads_per_call); h++) {
                        const int head = kvh * group + h;
                        qs[nq] = row_f32(q, t) + head * hd;
                        os[nq] = row_f32(out, t) + head * hd;
                        len[nq] = rows.pos(t) + 1 - first;  // causal: positions first..pos(t)
                        heads[nq] = head;
                        nq++;
                    }
                }
                const int n_real = nq;
                if (is_prefix(t0))
                    for (; nq < kPrefixMinQueries; nq++)
                        qs[nq] = qs[0], os[nq] = pad_out[nq], len[nq] = len[0], heads[nq] = heads[0];
                k_.attention_group(qs, os, len, nq, 1, kp, vp, kv_stride, hd, p.scale, p.softcap, scratch_[ith].data(),
                                   sinks ? lse : nullptr);
                // A sink adds exp(sink) to the denominator exp(lse): out *= exp(lse) / (exp(lse) + exp(sink)).
                if (sinks)
                    for (int i = 0; i < n_real; i++) {
                        const float keep = 1.0f / (1.0f + std::exp(sinks[heads[i]] - lse[i]));
                        for (int d = 0; d < hd; d++) os[i][d] *= keep;
                    }
            }
        }
    };
    // Later blocks of a sequence have longer rows: items go out from the end, interleaved over
    // the threads (static) or claimed in that order (dynamic).
    if (pool_.split() == WorkSplit::Static) {
        pool_.run([&](int ith, int nth) {
            for (int64_t it = items - 1 - ith; it >= 0; it -= nth) run_item(ith, it);
        });
    } else {
        pool_.parallel_for_ith(items, 1, [&](int ith, int64_t b, int64_t e) {
            for (int64_t i = b; i < e; i++) run_item(ith, items - 1 - i);
        });
    }
}

void CpuBackend::attention_split_keys(const Tensor& out, const Tensor& q, const Tensor& k_cache,
                                      const Tensor& v_cache, int64_t first, int64_t n_keys, int n_splits,
                                      const AttentionParams& p) {
    const int group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
    const int64_t split_len = (n_keys + n_splits - 1) / n_splits;
    split_out_.resize((size_t)n_splits * p.n_heads * hd);   // [split][head][hd]
    split_lse_.resize((size_t)n_splits * p.n_heads);         // [split][head]
    const int64_t kv_stride = (int64_t)(k_cache.stride / 2);
    const float* qrow = q.data<float>();
    // Items: a key range and a block of consecutive KV heads (two items a thread), range-major.
    const int block_heads = kv_heads_per_item(p.n_kv_heads, group, n_splits, 2 * pool_.size());
    const int n_blocks = (p.n_kv_heads + block_heads - 1) / block_heads;
    const int64_t items = (int64_t)n_blocks * n_splits;
    pool_.parallel_for_ith(items, 1, [&](int ith, int64_t i0, int64_t i1) {
        const float* qs[kMaxGroupQueries];
        float* os[kMaxGroupQueries];
        int64_t len[kMaxGroupQueries];
        for (int64_t it = i0; it < i1; it++) {
            const int sp = (int)(it / n_blocks), kvh0 = (int)(it % n_blocks) * block_heads;  // range-major
            const int n_kv = std::min(block_heads, p.n_kv_heads - kvh0), nq = n_kv * group;
            const int64_t k0 = first + sp * split_len;
            const int64_t nk = std::min(split_len, first + n_keys - k0);
            float* lse = &split_lse_[(size_t)sp * p.n_heads + kvh0 * group];
            if (nk <= 0) {  // an empty range weighs nothing in the merge
                for (int h = 0; h < nq; h++) lse[h] = -INFINITY;
                continue;
            }
            for (int h = 0; h < nq; h++) {
                const int head = kvh0 * group + h;
                qs[h] = qrow + head * hd;
                os[h] = &split_out_[((size_t)sp * p.n_heads + head) * hd];
                len[h] = nk;
            }
            const uint16_t* kp = row_f16(k_cache, k0) + kvh0 * hd;
            const uint16_t* vp = row_f16(v_cache, k0) + kvh0 * hd;
            k_.attention_group(qs, os, len, nq, n_kv, kp, vp, kv_stride, hd, p.scale, p.softcap, scratch_[ith].data(),
                               lse);
        }
    });
    float* o = out.data<float>();
    for (int head = 0; head < p.n_heads; head++)
        merge_key_splits(o + head * hd, hd, n_splits, &split_out_[(size_t)head * hd], (size_t)p.n_heads * hd,
                         &split_lse_[head], p.n_heads, p.sinks ? &p.sinks->data<float>()[head] : nullptr);
}

void CpuBackend::silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    const int64_t cols = out.cols;
    if (out.rows == 1) {  // decode: split the one row, if it is long enough to pay for the fork
        pool_.parallel_for(cols, kParallelElems / 2, [&](int64_t c0, int64_t c1) {
            k_.silu_mul_row(row_f32(gate, 0) + c0, row_f32(up, 0) + c0, row_f32(out, 0) + c0, c1 - c0);
        });
        return;
    }
    pool_.parallel_for(out.rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) k_.silu_mul_row(row_f32(gate, r), row_f32(up, r), row_f32(out, r), cols);
    });
}

void CpuBackend::add(const Tensor& out, const Tensor& a, const Tensor& b) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    // Rows in parallel once there are enough elements (prefill's residual adds).
    pool_.parallel_for(out.rows, std::max<int64_t>(1, kParallelElems / out.cols), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            const float* ar = row_f32(a, r);
            const float* br = row_f32(b, r);
            float* o = row_f32(out, r);
            for (int64_t c = 0; c < out.cols; c++) o[c] = ar[c] + br[c];
        }
    });
}

void CpuBackend::mul(const Tensor& out, const Tensor& a, const Tensor& b) {
    if (a.type != DType::F32 || b.type != DType::F32 || out.type != DType::F32 || b.rows != a.rows ||
        b.cols != a.cols || out.rows != a.rows || out.cols != a.cols)
        throw InputError("mul: out, a and b must be f32 of one shape");
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    pool_.parallel_for(out.rows, std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, out.cols)),
                       [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; r++) {
                               const float* ar = row_f32(a, r);
                               const float* br = row_f32(b, r);
                               float* o = row_f32(out, r);
                               for (int64_t c = 0; c < out.cols; c++) o[c] = ar[c] * br[c];
                           }
                       });
}

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
    check_copy(dst, src);
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    const size_t bytes = (size_t)row_bytes(src.type, src.cols);
    // A long prompt's KV rows are megabytes per layer: rows in parallel past kParallelElems bytes.
    pool_.parallel_for(src.rows, std::max<int64_t>(1, kParallelElems / (int64_t)bytes), [&](int64_t r0, int64_t r1) {
        const bool contiguous = dst.stride == bytes && src.stride == bytes;
        if (contiguous) {
            std::memcpy(dst.data<uint8_t>() + r0 * bytes, src.data<uint8_t>() + r0 * bytes, (r1 - r0) * bytes);
            return;
        }
        for (int64_t r = r0; r < r1; r++)
            std::memcpy(dst.data<uint8_t>() + r * dst.stride, src.data<uint8_t>() + r * src.stride, bytes);
    });
}

void CpuBackend::gelu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    const int64_t cols = out.cols;
    if (out.rows == 1) {  // decode: split the one row, as silu_mul
        pool_.parallel_for(cols, kParallelElems / 2, [&](int64_t c0, int64_t c1) {
            k_.gelu_mul_row(row_f32(gate, 0) + c0, row_f32(up, 0) + c0, row_f32(out, 0) + c0, c1 - c0);
        });
        return;
    }
    pool_.parallel_for(out.rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) k_.gelu_mul_row(row_f32(gate, r), row_f32(up, r), row_f32(out, r), cols);
    });
}

void CpuBackend::scale(const Tensor& x, float s) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    map_in_place(pool_, x, [s](float v) { return v * s; });
}

void CpuBackend::gelu(const Tensor& x) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    map_in_place(pool_, x, [](float g) {
        return 0.5f * g * (1.0f + std::tanh(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    });
}

void CpuBackend::relu_sq(const Tensor& x) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    map_in_place(pool_, x, [](float v) {
        const float r = std::max(v, 0.0f);
        return r * r;
    });
}

void CpuBackend::softcap(const Tensor& x, float cap) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    const float inv = 1.0f / cap;
    map_in_place(pool_, x, [cap, inv](float v) { return cap * std::tanh(v * inv); });
}

void CpuBackend::argmax(const Tensor& out, const Tensor& x) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Argmax);
    // Fixed blocks of a row (as many whatever the threads or split), each scanned for its
    // first largest value, then merged in order: the serial scan's answer, first index on ties.
    // All rows' blocks in one region (an 8-sequence step's 8 rows of 128256 logits: one fork,
    // not eight). A row holding NaN or +inf gives core/backend.h's sentinel instead.
    constexpr int64_t kBlock = 1 << 13;
    constexpr int kNaN = 1, kInf = 2;  // a block's bad bits
    const int64_t n_blocks = (x.cols + kBlock - 1) / kBlock;
    std::vector<float> block_max(x.rows * n_blocks);   // [row][block]
    std::vector<int64_t> block_at(x.rows * n_blocks);  // [row][block]
    std::vector<int> block_bad(x.rows * n_blocks);     // [row][block]
    pool_.parallel_for(x.rows * n_blocks, 1, [&](int64_t rb0, int64_t rb1) {
        for (int64_t rb = rb0; rb < rb1; rb++) {
            const int64_t b = rb % n_blocks;
            const float* xr = row_f32(x, rb / n_blocks);
            // -inf / -1: NaNs never win (as x[c] > best is false for them); -1 if none is > -inf.
            // Two passes, the serial scan's answer: the largest value, in 4 x 4 lanes (vector
            // selects: maxps / fmax; which lane holds it changes only the sign of a zero), then
            // the first index that equals it (-0 == +0). One scan with the index in it stays
            // scalar: ~40 us of a SmolLM2 decode token (49152 logits), one thread. The first
            // pass also ANDs v == v into a lane mask (a NaN clears it: one compare and one and
            // per 4 values); +inf shows as the block's maximum.
            const int64_t c0 = b * kBlock, e = std::min(x.cols, c0 + kBlock);
            typedef float f32x4 __attribute__((vector_size(16)));
            typedef int32_t i32x4 __attribute__((vector_size(16)));
            const f32x4 ninf = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
            f32x4 lane[4] = {ninf, ninf, ninf, ninf};
            i32x4 ordered = {-1, -1, -1, -1};
            int64_t c = c0;
            for (; c + 16 <= e; c += 16)
                for (int a = 0; a < 4; a++) {
                    f32x4 v;
                    std::memcpy(&v, xr + c + 4 * a, sizeof v);
                    lane[a] = v > lane[a] ? v : lane[a];
                    ordered &= v == v;
                }
            float m = -INFINITY;
            bool nan = false;
            for (; c < e; c++) {
                m = xr[c] > m ? xr[c] : m;
                nan |= xr[c] != xr[c];
            }
            for (int a = 0; a < 4; a++)
                for (int l = 0; l < 4; l++) m = lane[a][l] > m ? lane[a][l] : m;
            for (int l = 0; l < 4; l++) nan |= ordered[l] == 0;
            int64_t at = -1;
            if (m > -INFINITY)
                for (int64_t i = c0; i < e && at < 0; i++)
                    if (xr[i] == m) at = i;
            block_max[rb] = m, block_at[rb] = at;
            block_bad[rb] = (nan ? kNaN : 0) | (m == INFINITY ? kInf : 0);
        }
    });
    // As the serial scan: a block's candidate wins only if strictly larger; then the sentinels
    // (core/backend.h): NaN anywhere, else +inf anywhere, else nothing above -inf.
    for (int64_t r = 0; r < x.rows; r++) {
        int64_t best = -1;
        float best_v = -INFINITY;
        int bad = 0;
        for (int64_t rb = r * n_blocks; rb < (r + 1) * n_blocks; rb++) {
            bad |= block_bad[rb];
            if (block_at[rb] >= 0 && block_max[rb] > best_v) best = block_at[rb], best_v = block_max[rb];
        }
        out.data<int32_t>()[r] = (bad & kNaN)  ? kArgmaxNaN
                                 : (bad & kInf) ? kArgmaxInf
                                 : best < 0     ? kArgmaxNone
                                                : (int32_t)best;
    }
}

}  // namespace forgert::cpu
