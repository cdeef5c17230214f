// The prefill int8 GEMM (KernelSet::gemm_i8) in portable C++: the reference the SIMD sets
// match bit for bit, and the portable repacking of weight rows into kI8Rows-row panels.
// Included into each kernels_*.cpp (internal linkage).
#pragma once

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "cpu_kernels.h"
#include "kernels_scalar.h"

namespace forgert::cpu {
namespace {

// Quant i of one Q8_0 / Q4_0 block as a signed integer (Q4_0: nibble - 8).
inline int i8_quant(DType wt, const uint8_t* blk, int i) {
    if (wt == DType::Q8_0) return reinterpret_cast<const block_q8_0*>(blk)->qs[i];
    const uint8_t b = reinterpret_cast<const block_q4_0*>(blk)->qs[i % 16];
    return (i < 16 ? b & 15 : b >> 4) - 8;
}

inline float i8_block_scale(const uint8_t* blk) {  // d leads both block layouts
    uint16_t h;
    std::memcpy(&h, blk, 2);
    return f16_to_f32(h);
}

// The activation scale of one block for `parts`: hi alone stands for x / (256 d).
inline float i8_act_scale(const BlockQ8Act& a, int parts) { return parts == 2 ? a.d : a.d * 256.0f; }

void gemm_i8_scalar(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                    const int32_t* /*xs*/, int64_t nb, int64_t n_tok, int parts, float* out, int64_t out_stride,
                    uint8_t* /*work*/) {
    if (wt != DType::Q8_0 && wt != DType::Q4_0) throw std::logic_error("gemm_i8: unsupported weight type");
    const int64_t bb = dtype_block_bytes(wt);
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t t = 0; t < n_tok; t++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t* blk = w + r * w_stride + b * bb;
                const BlockQ8Act& a = x[t * nb + b];
                int32_t hi = 0, lo = 0;
                for (int i = 0; i < FG_QK; i++) {
                    const int q = i8_quant(wt, blk, i);
                    hi += q * a.hi[i];
                    lo += q * a.lo[i];
                }
                const int32_t idot = parts == 2 ? 256 * hi + lo : hi;
                acc = std::fma((float)idot, i8_block_scale(blk) * i8_act_scale(a, parts), acc);
            }
            out[t * out_stride + r] = acc;
        }
    }
}

// Rows [r, r + nr) of w (nr <= kI8Rows; missing rows repeat row r) into one panel
// (layout: kI8PanelBlockBytes per block, see cpu_kernels.h). Quants are stored unsigned,
// q + o with o = i8_offset(wt); the kernels subtract o * sum(x) through xs.
constexpr int i8_offset(DType wt) { return wt == DType::Q8_0 ? 128 : 8; }

void i8_repack_panel(DType wt, const uint8_t* w, size_t w_stride, int64_t r, int nr, int64_t nb, uint8_t* wp) {
    const int64_t bb = dtype_block_bytes(wt);
    const int o = i8_offset(wt);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t* pb = wp + b * kI8PanelBlockBytes;
        float* dw = reinterpret_cast<float*>(pb + kI8Rows * FG_QK);
        for (int i = 0; i < kI8Rows; i++) {
            const uint8_t* blk = w + (r + (i < nr ? i : 0)) * w_stride + b * bb;
            dw[i] = i8_block_scale(blk);
            for (int c = 0; c < FG_QK; c++) pb[(c / 4) * kI8Rows * 4 + i * 4 + c % 4] = (uint8_t)(i8_quant(wt, blk, c) + o);
        }
    }
}

}  // namespace
}  // namespace forgert::cpu
