// The prefill int8 GEMM on arm64 with the int8 matrix-multiply extension (FEAT_I8MM: Apple M2
// and later, Neoverse V1/V2/N2, Cortex-A710 and later). Everything else is the NEON dot-product
// set's; this set only replaces gemm_i8 for Q8_0 / Q4_0 and hands other types to it.
//
// SMMLA multiplies a 2x8 int8 block of weights (two rows, eight quants) by the transpose of a
// 2x8 block of activations (two tokens) into a 2x2 int32 tile: 32 multiply-adds an instruction,
// twice SDOT's 16. The panel is the portable one ([4-quant group][16 rows][4 bytes],
// kernels_int8_gemm.h): zipping the 32-bit lanes of two consecutive groups gives two rows' eight
// consecutive quants, SMMLA's operand, so no other repacking is needed. Per block the integer
// dot is exact and is scaled as the other sets scale it (fma(h, dw * dx, acc)): the results are
// bit-identical to the portable kernel's.
#if defined(__aarch64__) && defined(__ARM_FEATURE_MATMUL_INT8)
#include <arm_neon.h>

#include <algorithm>

#include "kernels_int8_gemm.h"

namespace forgert::cpu {
namespace {

constexpr int kPairs = 2;  // token pairs per tile: 4 tokens

// Rows [8 half, 8 half + 8) of one panel against token pairs tok[2u], tok[2u + 1] (u < TP).
// acc[p][u] holds [row 2p x tok a, row 2p x tok b, row 2p+1 x tok a, row 2p+1 x tok b].
template <DType WT, int PARTS, int TP>
void i8mm_tile(const uint8_t* wp, int half, const BlockQ8Act* const* tok, int64_t nb, float* const* out_row,
               int nr) {
    const int8x16_t bias = vdupq_n_s8((int8_t)i8_offset(WT));
    float32x4_t acc[4][TP];
    for (int p = 0; p < 4; p++)
        for (int u = 0; u < TP; u++) acc[p][u] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = wp + b * kI8PanelBlockBytes;
        int32x4_t hi[4][TP], lo[4][TP];
        for (int p = 0; p < 4; p++)
            for (int u = 0; u < TP; u++) hi[p][u] = lo[p][u] = vdupq_n_s32(0);
        for (int g = 0; g < 4; g++) {  // quants 8g .. 8g + 7: panel groups 2g and 2g + 1
            int8x16_t w[4];              // row pairs (0,1) (2,3) (4,5) (6,7) of this half
            for (int j = 0; j < 2; j++) {
                // (q + o) - o, wrapping: the signed quants of rows 4j .. 4j+3
                const int32x4_t q0 = vreinterpretq_s32_s8(
                    vsubq_s8(vreinterpretq_s8_u8(vld1q_u8(pb + 64 * (2 * g) + 32 * half + 16 * j)), bias));
                const int32x4_t q1 = vreinterpretq_s32_s8(
                    vsubq_s8(vreinterpretq_s8_u8(vld1q_u8(pb + 64 * (2 * g + 1) + 32 * half + 16 * j)), bias));
                w[2 * j] = vreinterpretq_s8_s32(vzip1q_s32(q0, q1));
                w[2 * j + 1] = vreinterpretq_s8_s32(vzip2q_s32(q0, q1));
            }
            for (int u = 0; u < TP; u++) {
                const BlockQ8Act &a = tok[2 * u][b], &c = tok[2 * u + 1][b];
                const int8x16_t xh = vcombine_s8(vld1_s8(a.hi + 8 * g), vld1_s8(c.hi + 8 * g));
                for (int p = 0; p < 4; p++) hi[p][u] = vmmlaq_s32(hi[p][u], w[p], xh);
                if constexpr (PARTS == 2) {
                    const int8x16_t xl = vcombine_s8(vld1_s8(a.lo + 8 * g), vld1_s8(c.lo + 8 * g));
                    for (int p = 0; p < 4; p++) lo[p][u] = vmmlaq_s32(lo[p][u], w[p], xl);
                }
            }
        }
        const float* dwp = reinterpret_cast<const float*>(pb + kI8PanelScales) + 8 * half;
        for (int u = 0; u < TP; u++) {
            const BlockQ8Act &a = tok[2 * u][b], &c = tok[2 * u + 1][b];
            const float da = PARTS == 2 ? a.d : a.d * 256.0f, dc = PARTS == 2 ? c.d : c.d * 256.0f;
            const float32x4_t dx = {da, dc, da, dc};
            for (int p = 0; p < 4; p++) {
                const float32x4_t dw = {dwp[2 * p], dwp[2 * p], dwp[2 * p + 1], dwp[2 * p + 1]};
                int32x4_t h = hi[p][u];
                if constexpr (PARTS == 2) h = vaddq_s32(vshlq_n_s32(h, 8), lo[p][u]);  // 256 hi + lo
                acc[p][u] = vfmaq_f32(acc[p][u], vcvtq_f32_s32(h), vmulq_f32(dw, dx));
            }
        }
    }
    const int rows = std::min(8, nr - 8 * half);
    for (int u = 0; u < TP; u++) {
        for (int p = 0; p < 4; p++) {
            float v[4];
            vst1q_f32(v, acc[p][u]);
            for (int i = 0; i < 2; i++) {  // row 2p + i
                if (2 * p + i >= rows) continue;
                const int64_t r = 8 * half + 2 * p + i;
                out_row[2 * u][r] = v[2 * i];
                if (out_row[2 * u + 1]) out_row[2 * u + 1][r] = v[2 * i + 1];
            }
        }
    }
}

template <DType WT, int PARTS>
void gemm_i8mm_typed(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x, int64_t nb,
                     int64_t n_tok, float* out, int64_t out_stride, uint8_t* work) {
    constexpr int TT = 2 * kPairs;
    // tokens in passes whose activations (~1 MB) stay in cache while every panel reads them
    const int64_t chunk = std::max<int64_t>(64, (1 << 20) / (nb * (int64_t)sizeof(BlockQ8Act)) / TT * TT);
    for (int64_t c0 = 0; c0 < n_tok; c0 += chunk) {
        const int64_t c1 = std::min(n_tok, c0 + chunk);
        for (int64_t r = r0; r < r1; r += kI8Rows) {
            const int nr = (int)std::min<int64_t>(kI8Rows, r1 - r);
            i8_repack_panel(WT, w, w_stride, r, nr, nb, work);
            for (int half = 0; half < (nr > 8 ? 2 : 1); half++) {
                for (int64_t t = c0; t < c1; t += TT) {
                    const int nt = (int)std::min<int64_t>(TT, c1 - t);
                    // A missing partner token reads token t again and is not stored.
                    const BlockQ8Act* tok[TT];
                    float* out_row[TT];
                    for (int i = 0; i < TT; i++) {
                        tok[i] = x + (i < nt ? t + i : t) * nb;
                        out_row[i] = i < nt ? out + (t + i) * out_stride + r : nullptr;
                    }
                    if (nt > 2) i8mm_tile<WT, PARTS, 2>(work, half, tok, nb, out_row, nr);
                    else i8mm_tile<WT, PARTS, 1>(work, half, tok, nb, out_row, nr);
                }
            }
        }
    }
}

void gemm_i8_i8mm(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                  const int32_t* xs, int64_t nb, int64_t n_tok, int parts, float* out, int64_t out_stride,
                  uint8_t* work) {
    if (wt == DType::Q8_0)
        return parts == 2 ? gemm_i8mm_typed<DType::Q8_0, 2>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride, work)
                          : gemm_i8mm_typed<DType::Q8_0, 1>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride, work);
    if (wt == DType::Q4_0)
        return parts == 2 ? gemm_i8mm_typed<DType::Q4_0, 2>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride, work)
                          : gemm_i8mm_typed<DType::Q4_0, 1>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride, work);
    // other types the dot-product set's int8 GEMM takes
    kernels_neon()->gemm_i8(wt, w, w_stride, r0, r1, x, xs, nb, n_tok, parts, out, out_stride, work);
}

}  // namespace

const KernelSet* kernels_neon_i8mm() {
    static const KernelSet set = [] {
        KernelSet s = *kernels_neon();
        s.name = "neon-i8mm";
        s.gemm_i8 = gemm_i8_i8mm;
        s.gemm_i8_types |= i8_type_bit(DType::Q8_0) | i8_type_bit(DType::Q4_0);
        return s;
    }();
    return &set;
}

}  // namespace forgert::cpu

#else
#include "cpu_kernels.h"
namespace forgert::cpu {
const KernelSet* kernels_neon_i8mm() { return nullptr; }
}  // namespace forgert::cpu
#endif
