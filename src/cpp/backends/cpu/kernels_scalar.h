// Portable scalar building blocks, shared by the generic kernel set and by the
// SIMD sets for their tails. Included into each kernels_*.cpp (internal linkage).
#pragma once

#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "cpu_kernels.h"

namespace forgert::cpu {
namespace {

inline void quantize_row_q8_scalar(const float* x, BlockQ8Act* y, int64_t n) {
    for (int64_t b = 0; b < n / FG_QK; b++) {
        const float* xb = x + b * FG_QK;
        float amax = 0.0f;
        for (int i = 0; i < FG_QK; i++) amax = std::fmax(amax, std::fabs(xb[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < FG_QK; i++) {
            const int q = (int)std::nearbyint(xb[i] * id);
            y[b].qs[i] = (int8_t)q;
            sum += q;
        }
        y[b].d = d;
        y[b].sum = sum;
    }
}

inline float weight_to_f32(DType wt, const uint8_t* row, int64_t c) {
    switch (wt) {
        case DType::F32: { float v; std::memcpy(&v, row + 4 * c, 4); return v; }
        case DType::F16: { uint16_t h; std::memcpy(&h, row + 2 * c, 2); return f16_to_f32(h); }
        case DType::BF16: { uint16_t h; std::memcpy(&h, row + 2 * c, 2); return bf16_to_f32(h); }
        default: return 0.0f;
    }
}

// dot of one quantized weight block with one activation block.
inline float block_dot_scalar(DType wt, const uint8_t* wb, const BlockQ8Act& a) {
    switch (wt) {
        case DType::Q8_0: {
            const auto* b = reinterpret_cast<const block_q8_0*>(wb);
            int32_t s = 0;
            for (int i = 0; i < FG_QK; i++) s += (int32_t)b->qs[i] * a.qs[i];
            return f16_to_f32(b->d) * a.d * (float)s;
        }
        case DType::Q4_0: {
            const auto* b = reinterpret_cast<const block_q4_0*>(wb);
            int32_t s = 0;
            for (int i = 0; i < FG_QK / 2; i++) {
                s += ((b->qs[i] & 0x0f) - 8) * a.qs[i];
                s += ((b->qs[i] >> 4) - 8) * a.qs[i + FG_QK / 2];
            }
            return f16_to_f32(b->d) * a.d * (float)s;
        }
        case DType::Q4_1: {
            const auto* b = reinterpret_cast<const block_q4_1*>(wb);
            int32_t s = 0;
            for (int i = 0; i < FG_QK / 2; i++) {
                s += (b->qs[i] & 0x0f) * a.qs[i];
                s += (b->qs[i] >> 4) * a.qs[i + FG_QK / 2];
            }
            return f16_to_f32(b->d) * a.d * (float)s + f16_to_f32(b->m) * a.d * (float)a.sum;
        }
        default: return 0.0f;
    }
}

inline void gemm_q_scalar(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1,
                          const BlockQ8Act* x, int64_t nb, int64_t n_tok, float* out, int64_t out_stride) {
    const int64_t bb = dtype_block_bytes(wt);
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t* row = w + r * w_stride;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) acc += block_dot_scalar(wt, row + b * bb, x[t * nb + b]);
            out[t * out_stride + r] = acc;
        }
    }
}

inline void gemm_f_scalar(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1,
                          const float* x, int64_t cols, int64_t n_tok, float* out, int64_t out_stride) {
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t* row = w + r * w_stride;
            float acc = 0.0f;
            for (int64_t c = 0; c < cols; c++) acc += weight_to_f32(wt, row, c) * x[t * cols + c];
            out[t * out_stride + r] = acc;
        }
    }
}

inline void f16_to_f32_row_scalar(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = f16_to_f32(x[i]);
}
inline void f32_to_f16_row_scalar(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = f32_to_f16(x[i]);
}
inline float dot_f32_f16_scalar(const float* x, const uint16_t* y, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += x[i] * f16_to_f32(y[i]);
    return s;
}
inline void axpy_f16_scalar(float a, const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * f16_to_f32(x[i]);
}

}  // namespace
}  // namespace forgert::cpu

namespace forgert::cpu {
// One row of any weight type to f32 (embedding lookups; not a hot path).
inline void dequantize_row(DType wt, const uint8_t* row, float* y, int64_t cols) {
    switch (wt) {
        case DType::Q8_0:
            for (int64_t b = 0; b < cols / FG_QK; b++) {
                const auto* q = reinterpret_cast<const block_q8_0*>(row) + b;
                const float d = f16_to_f32(q->d);
                for (int i = 0; i < FG_QK; i++) y[b * FG_QK + i] = d * q->qs[i];
            }
            return;
        case DType::Q4_0:
        case DType::Q4_1:
            for (int64_t b = 0; b < cols / FG_QK; b++) {
                const uint8_t* qs;
                float d, m;
                if (wt == DType::Q4_0) {
                    const auto* q = reinterpret_cast<const block_q4_0*>(row) + b;
                    d = f16_to_f32(q->d), m = -8.0f * d, qs = q->qs;
                } else {
                    const auto* q = reinterpret_cast<const block_q4_1*>(row) + b;
                    d = f16_to_f32(q->d), m = f16_to_f32(q->m), qs = q->qs;
                }
                for (int i = 0; i < FG_QK / 2; i++) {
                    y[b * FG_QK + i] = d * (qs[i] & 0x0f) + m;
                    y[b * FG_QK + i + FG_QK / 2] = d * (qs[i] >> 4) + m;
                }
            }
            return;
        default:
            for (int64_t c = 0; c < cols; c++) y[c] = weight_to_f32(wt, row, c);
    }
}
}  // namespace forgert::cpu
