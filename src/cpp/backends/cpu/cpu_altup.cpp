// Gemma 3n's row ops on the CPU: the activation sparsity of its first layers' gates (gaussian
// top-k) and AltUp's stream magnitude matching and stream mixing. Reductions in double: a row of
// Gemma 3n's 16384-wide gate sums without drift.
#include <algorithm>
#include <cmath>

#include "cpu_backend.h"

namespace forgert::cpu {

namespace {
float* row_f32(const Tensor& t, int64_t r) { return reinterpret_cast<float*>(t.data<uint8_t>() + t.stride * r); }

void need_f32(const Tensor& t, const char* op, const char* name, int64_t rows, int64_t cols) {
    if (t.type != DType::F32 || t.rows != rows || t.cols != cols || t.data<uint8_t>() == nullptr)
        throw InputError(std::string(op) + ": " + name + " must be f32 [" + std::to_string(rows) + ", " +
                         std::to_string(cols) + "], got [" + std::to_string(t.rows) + ", " + std::to_string(t.cols) + "]");
}

double mean_square(const float* x, int64_t n) {
    double s = 0.0;
    for (int64_t c = 0; c < n; c++) s += (double)x[c] * x[c];
    return s / (double)n;
}
}  // namespace

void CpuBackend::gaussian_topk(const Tensor& x, float std_mult) {
    need_f32(x, "gaussian_topk", "x", x.rows, x.cols);
    if (x.cols < 1 || !std::isfinite(std_mult)) throw InputError("gaussian_topk: empty rows or a non-finite std_mult");
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    pool_.parallel_for(x.rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            float* xr = row_f32(x, r);
            double sum = 0.0;
            for (int64_t c = 0; c < x.cols; c++) sum += xr[c];
            const double mean = sum / (double)x.cols;
            double var = 0.0;
            for (int64_t c = 0; c < x.cols; c++) var += (xr[c] - mean) * (xr[c] - mean);
            const float cutoff = (float)(mean + std::sqrt(var / (double)x.cols) * std_mult);
            for (int64_t c = 0; c < x.cols; c++) xr[c] = std::max(xr[c] - cutoff, 0.0f);
        }
    });
}

void CpuBackend::rms_match(const Tensor& out, const Tensor& x, const Tensor& target) {
    need_f32(x, "rms_match", "x", x.rows, x.cols);
    need_f32(target, "rms_match", "target", x.rows, x.cols);
    need_f32(out, "rms_match", "out", x.rows, x.cols);
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::RmsNorm);
    pool_.parallel_for(x.rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            const float* xr = row_f32(x, r);
            const double have = std::sqrt(std::max(mean_square(xr, x.cols), 1e-5));
            const float s = (float)(std::sqrt(mean_square(row_f32(target, r), x.cols)) / have);
            float* o = row_f32(out, r);
            for (int64_t c = 0; c < x.cols; c++) o[c] = xr[c] * s;
        }
    });
}

void CpuBackend::altup_mix(const Tensor& out, const Tensor& xs, const Tensor& coefs, const Tensor& base) {
    const int64_t n = out.rows, dim = out.cols, k = coefs.cols;
    need_f32(out, "altup_mix", "out", n, dim);
    need_f32(base, "altup_mix", "base", n, dim);
    need_f32(coefs, "altup_mix", "coefs", n, k);
    need_f32(xs, "altup_mix", "xs", n, k * dim);
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    pool_.parallel_for(n, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            const float *b = row_f32(base, r), *cf = row_f32(coefs, r), *x = row_f32(xs, r);
            float* o = row_f32(out, r);
            for (int64_t c = 0; c < dim; c++) {
                float acc = b[c];
                for (int64_t j = 0; j < k; j++) acc += cf[j] * x[j * dim + c];
                o[c] = acc;
            }
        }
    });
}

void CpuBackend::clamp_ids(const Tensor& out, const Tensor& ids, int32_t limit) {
    const int64_t n = ids.rows * ids.cols;
    if (ids.type != DType::I32 || out.type != DType::I32 || out.rows * out.cols != n || limit < 1 ||
        (ids.rows > 1 && ids.stride != (size_t)ids.cols * 4) || (out.rows > 1 && out.stride != (size_t)out.cols * 4))
        throw InputError("clamp_ids: ids and out must be contiguous i32 of one size, limit positive");
    const int32_t* in = ids.data<int32_t>();
    int32_t* o = out.data<int32_t>();
    for (int64_t i = 0; i < n; i++) o[i] = in[i] >= 0 && in[i] < limit ? in[i] : 0;
}

}  // namespace forgert::cpu
