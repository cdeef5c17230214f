// arm64 NEON kernel set with the dot-product extension (Apple M-series, Graviton 2+,
// Cortex-A76+): sdot does the int8 dots of quantized GEMMs. Built with
// -march=armv8.2-a+dotprod+fp16 on Linux; chosen only when the CPU reports dotprod.
#include "kernels_panel.h"
#include "kernels_scalar.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <type_traits>

namespace forgert::cpu {
namespace {

inline float f16(fg_half h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

// IQ4_NL / IQ4_XS: 16 bytes of nibble indices -> the 32 int8 table values they name (a
// table lookup per byte, vqtbl1q_s8), weights 0..15 in lo and 16..31 in hi.
inline void iq4_values(const uint8_t* qs, int8x16_t& lo, int8x16_t& hi) {
    static const int8_t table[16] = FG_IQ4_NL_VALUES;
    const int8x16_t t = vld1q_s8(table);
    const uint8x16_t v = vld1q_u8(qs);
    lo = vqtbl1q_s8(t, vandq_u8(v, vdupq_n_u8(0x0f)));
    hi = vqtbl1q_s8(t, vshrq_n_u8(v, 4));
}

// 32 bytes of one block as two 16-byte vectors: Q8_0 and IQ4_NL signed values; Q4 nibbles
// 0..15 (low nibbles are elements 0..15, high ones 16..31).
template <DType WT>
inline void load_block(const uint8_t* blk, int8x16_t& lo, int8x16_t& hi, float& d, float& m) {
    if constexpr (WT == DType::IQ4_NL) {
        const auto* q = reinterpret_cast<const block_iq4_nl*>(blk);
        iq4_values(q->qs, lo, hi);
        d = f16(q->d);
        m = 0.0f;
    } else if constexpr (WT == DType::Q8_0) {
        const auto* q = reinterpret_cast<const block_q8_0*>(blk);
        lo = vld1q_s8(q->qs);
        hi = vld1q_s8(q->qs + 16);
        d = f16(q->d);
        m = 0.0f;
    } else if constexpr (WT == DType::Q5_0 || WT == DType::Q5_1) {
        uint8_t u[FG_QK];  // quants 0..31 (portable unpack: the fifth bits are scattered)
        if constexpr (WT == DType::Q5_0) {
            const auto* q = reinterpret_cast<const block_q5_0*>(blk);
            q5_unpack(q->qh, q->qs, u);
            d = f16(q->d), m = -16.0f * d;
        } else {
            const auto* q = reinterpret_cast<const block_q5_1*>(blk);
            q5_unpack(q->qh, q->qs, u);
            d = f16(q->d), m = f16(q->m);
        }
        lo = vreinterpretq_s8_u8(vld1q_u8(u));
        hi = vreinterpretq_s8_u8(vld1q_u8(u + 16));
    } else {
        const uint8_t* qs;
        if constexpr (WT == DType::Q4_0) {
            const auto* q = reinterpret_cast<const block_q4_0*>(blk);
            qs = q->qs, d = f16(q->d), m = -8.0f * d;
        } else {
            const auto* q = reinterpret_cast<const block_q4_1*>(blk);
            qs = q->qs, d = f16(q->d), m = f16(q->m);
        }
        const uint8x16_t v = vld1q_u8(qs);
        lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
        hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    }
}

template <DType WT, int R, int T>
void gemm_q_tile(const uint8_t* w, size_t w_stride, const BlockQ8Act* x, int64_t nb, float* out, int64_t out_stride) {
    constexpr int64_t BB = block_bytes<WT>();
    float32x4_t acc[R][T];
    float corr[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) { acc[r][t] = vdupq_n_f32(0.0f); corr[r][t] = 0.0f; }
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t wl[R], wh[R];
        float dw[R], mw[R];
        for (int r = 0; r < R; r++) load_block<WT>(w + r * w_stride + b * BB, wl[r], wh[r], dw[r], mw[r]);
        for (int t = 0; t < T; t++) {
            const BlockQ8Act& a = x[t * nb + b];
            const int8x16_t h0 = vld1q_s8(a.hi), h1 = vld1q_s8(a.hi + 16);
            const int8x16_t l0 = vld1q_s8(a.lo), l1 = vld1q_s8(a.lo + 16);
            for (int r = 0; r < R; r++) {
                const int32x4_t dh = vdotq_s32(vdotq_s32(vdupq_n_s32(0), wl[r], h0), wh[r], h1);
                const int32x4_t dl = vdotq_s32(vdotq_s32(vdupq_n_s32(0), wl[r], l0), wh[r], l1);
                const int32x4_t dot = vaddq_s32(vshlq_n_s32(dh, 8), dl);  // 256 hi + lo
                acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(dot), dw[r] * a.d);
                if constexpr (WT != DType::Q8_0 && WT != DType::IQ4_NL) corr[r][t] = std::fma(mw[r], a.sum, corr[r][t]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) out[t * out_stride + r] = vaddvq_f32(acc[r][t]) + corr[r][t];
}

template <DType WT>
void gemm_q_typed(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x, int64_t nb,
                  int64_t n_tok, float* out, int64_t out_stride) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        int64_t t = 0;
        for (; t + 4 <= n_tok; t += 4)
            gemm_q_tile<WT, 4, 4>(w + r * w_stride, w_stride, x + t * nb, nb, out + t * out_stride + r, out_stride);
        for (; t < n_tok; t++)
            gemm_q_tile<WT, 4, 1>(w + r * w_stride, w_stride, x + t * nb, nb, out + t * out_stride + r, out_stride);
    }
    for (; r < r1; r++)
        for (int64_t t = 0; t < n_tok; t++)
            gemm_q_tile<WT, 1, 1>(w + r * w_stride, w_stride, x + t * nb, nb, out + t * out_stride + r, out_stride);
}

// K-quants: one super-block against its eight activation blocks; each sub-block's quants (Q2_K
// 0..3, Q3_K -4..3, Q4_K 0..15, Q5_K 0..31, Q6_K q - 32) as signed bytes into sdot with the two
// int8 parts, scaled per sub-block (a Q2_K / Q3_K / Q6_K sub-block is half an activation block).
// Q4_K's and Q5_K's mins go to corr.
inline int32x4_t sdot_act(int8x16_t w0, int8x16_t w1, const int8_t* p) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, vld1q_s8(p)), w1, vld1q_s8(p + 16));
}

template <DType WT>
inline void kquant_super_block_dot(const uint8_t* blk, const BlockQ8Act* a, float32x4_t& acc, float& corr) {
    const uint8x16_t nib = vdupq_n_u8(0x0f);
    if constexpr (WT == DType::Q4_K || WT == DType::Q5_K) {
        using Block = std::conditional_t<WT == DType::Q4_K, block_q4_K, block_q5_K>;
        const auto* b = reinterpret_cast<const Block*>(blk);
        const float d = f16(b->d), dmin = f16(b->dmin);
        uint8x16_t qh[2] = {vdupq_n_u8(0), vdupq_n_u8(0)};
        if constexpr (WT == DType::Q5_K) qh[0] = vld1q_u8(b->qh), qh[1] = vld1q_u8(b->qh + 16);
        for (int k = 0; k < 4; k++) {  // sub-blocks 2k (low nibbles of qs[32k..]), 2k + 1 (high)
            const uint8x16_t v0 = vld1q_u8(b->qs + 32 * k), v1 = vld1q_u8(b->qs + 32 * k + 16);
            uint8x16_t u[2][2] = {{vandq_u8(v0, nib), vandq_u8(v1, nib)}, {vshrq_n_u8(v0, 4), vshrq_n_u8(v1, 4)}};
            if constexpr (WT == DType::Q5_K)  // Q5_K: bit j of qh[l] is bit 4 of sub-block j's quant l
                for (int h = 0; h < 2; h++)
                    for (int i = 0; i < 2; i++) {
                        const uint8x16_t bit = vandq_u8(vshlq_u8(qh[i], vdupq_n_s8((int8_t)-(2 * k + h))), vdupq_n_u8(1));
                        u[h][i] = vorrq_u8(u[h][i], vshlq_n_u8(bit, 4));
                    }
            const int8x16_t q[2][2] = {{vreinterpretq_s8_u8(u[0][0]), vreinterpretq_s8_u8(u[0][1])},
                                       {vreinterpretq_s8_u8(u[1][0]), vreinterpretq_s8_u8(u[1][1])}};
            for (int h = 0; h < 2; h++) {
                const int j = 2 * k + h;
                const BlockQ8Act& aj = a[j];
                const int32x4_t dot = vaddq_s32(vshlq_n_s32(sdot_act(q[h][0], q[h][1], aj.hi), 8),
                                                sdot_act(q[h][0], q[h][1], aj.lo));  // 256 hi + lo
                int sc, m;
                q4_K_scale_min(b->scales, j, sc, m);
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot), d * (float)sc * aj.d);
                corr -= dmin * (float)m * aj.sum;
            }
        }
    } else if constexpr (WT == DType::Q2_K || WT == DType::Q3_K) {
        // Sub-blocks of 16: activation block j holds 2j and 2j + 1, its quants bits 2 (j % 4) of
        // qs[32 (j / 4) + l] (Q3_K: minus 4 where bit j of hmask[l] is clear). Q2_K's mins dot
        // x's rounded parts with ones, as the portable kernel's min terms do.
        using Block = std::conditional_t<WT == DType::Q2_K, block_q2_K, block_q3_K>;
        const auto* b = reinterpret_cast<const Block*>(blk);
        const float d = f16(b->d);
        int sc[16], mn[16] = {0};
        float dmin = 0.0f;
        if constexpr (WT == DType::Q2_K) {
            for (int i = 0; i < 16; i++) sc[i] = b->scales[i] & 15, mn[i] = b->scales[i] >> 4;
            dmin = f16(b->dmin);
        } else {
            q3_K_scales(b, sc);
        }
        const int32x4_t z = vdupq_n_s32(0);
        for (int j = 0; j < 8; j++) {
            const BlockQ8Act& aj = a[j];
            const int8x16_t down = vdupq_n_s8((int8_t)(-2 * (j % 4)));  // vshl by a negative count: right
            for (int i = 0; i < 2; i++) {
                uint8x16_t q = vandq_u8(vshlq_u8(vld1q_u8(b->qs + 32 * (j / 4) + 16 * i), down), vdupq_n_u8(3));
                if constexpr (WT == DType::Q3_K) {
                    const uint8x16_t hb = vandq_u8(vshlq_u8(vld1q_u8(b->hmask + 16 * i), vdupq_n_s8((int8_t)-j)), vdupq_n_u8(1));
                    q = vorrq_u8(q, vshlq_n_u8(hb, 2));
                }
                int8x16_t w = vreinterpretq_s8_u8(q);
                if constexpr (WT == DType::Q3_K) w = vsubq_s8(w, vdupq_n_s8(4));
                const int8x16_t xh = vld1q_s8(aj.hi + 16 * i), xl = vld1q_s8(aj.lo + 16 * i);
                const int32x4_t dot = vaddq_s32(vshlq_n_s32(vdotq_s32(z, w, xh), 8), vdotq_s32(z, w, xl));
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot), d * aj.d * (float)sc[2 * j + i]);
                if constexpr (WT == DType::Q2_K) {
                    const int8x16_t ones = vdupq_n_s8(1);
                    const int32x4_t sx = vaddq_s32(vshlq_n_s32(vdotq_s32(z, ones, xh), 8), vdotq_s32(z, ones, xl));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(sx), -(dmin * aj.d * (float)mn[2 * j + i]));
                }
            }
        }
    } else {
        const auto* b = reinterpret_cast<const block_q6_K*>(blk);
        const float d = f16(b->d);
        for (int j = 0; j < 8; j++) {  // activation block j: sub-blocks 2j (first 16), 2j + 1
            const int h = j / 4, quarter = j % 4;
            const uint8_t* ql = b->ql + 64 * h + 32 * (quarter & 1);
            const int8x16_t down = vdupq_n_s8((int8_t)(-2 * quarter));  // vshl by a negative count: right
            int8x16_t w[2];
            for (int i = 0; i < 2; i++) {
                const uint8x16_t l = vld1q_u8(ql + 16 * i), qh = vld1q_u8(b->qh + 32 * h + 16 * i);
                const uint8x16_t low = quarter < 2 ? vandq_u8(l, nib) : vshrq_n_u8(l, 4);
                const uint8x16_t high = vandq_u8(vshlq_u8(qh, down), vdupq_n_u8(3));
                w[i] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8(high, 4))), vdupq_n_s8(32));
            }
            const BlockQ8Act& aj = a[j];
            const int32x4_t z = vdupq_n_s32(0);
            for (int i = 0; i < 2; i++) {
                const int32x4_t dot = vaddq_s32(vshlq_n_s32(vdotq_s32(z, w[i], vld1q_s8(aj.hi + 16 * i)), 8),
                                                vdotq_s32(z, w[i], vld1q_s8(aj.lo + 16 * i)));
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot), d * aj.d * (float)b->scales[2 * j + i]);
            }
        }
    }
}

// IQ4_XS: one super-block against its eight activation blocks, a sub-block's table values
// per activation block, scaled by d * (ls - 32).
inline void iq4_xs_super_block_dot(const uint8_t* blk, const BlockQ8Act* a, float32x4_t& acc) {
    const auto* b = reinterpret_cast<const block_iq4_xs*>(blk);
    const float d = f16(b->d);
    for (int j = 0; j < 8; j++) {
        int8x16_t w0, w1;
        iq4_values(b->qs + 16 * j, w0, w1);
        const BlockQ8Act& aj = a[j];
        const int32x4_t dot = vaddq_s32(vshlq_n_s32(sdot_act(w0, w1, aj.hi), 8), sdot_act(w0, w1, aj.lo));  // 256 hi + lo
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(dot), d * (float)iq4_xs_scale(b, j) * aj.d);
    }
}

template <DType WT>
void gemm_q_kquant(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x, int64_t nb,
                   int64_t n_tok, float* out, int64_t out_stride) {
    constexpr int64_t BB = WT == DType::Q2_K   ? sizeof(block_q2_K)
                           : WT == DType::Q3_K ? sizeof(block_q3_K)
                           : WT == DType::Q4_K ? sizeof(block_q4_K)
                           : WT == DType::Q5_K ? sizeof(block_q5_K)
                           : WT == DType::Q6_K ? sizeof(block_q6_K)
                                               : sizeof(block_iq4_xs);
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            float32x4_t acc = vdupq_n_f32(0.0f);
            float corr = 0.0f;
            for (int64_t s = 0; s < nb / kActBlocksPerSuper; s++) {
                const uint8_t* blk = w + r * w_stride + s * BB;
                const BlockQ8Act* xs = x + t * nb + s * kActBlocksPerSuper;
                if constexpr (WT == DType::IQ4_XS) iq4_xs_super_block_dot(blk, xs, acc);
                else kquant_super_block_dot<WT>(blk, xs, acc, corr);
            }
            out[t * out_stride + r] = vaddvq_f32(acc) + corr;
        }
}

#include "kernels_neon_mxfp4.inc"

void gemm_q(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x, int64_t nb,
            int64_t n_tok, float* out, int64_t out_stride) {
    switch (wt) {
        case DType::Q4_K: return gemm_q_kquant<DType::Q4_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q2_K: return gemm_q_kquant<DType::Q2_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q3_K: return gemm_q_kquant<DType::Q3_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q5_K: return gemm_q_kquant<DType::Q5_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q6_K: return gemm_q_kquant<DType::Q6_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q8_0: return gemm_q_typed<DType::Q8_0>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q4_0: return gemm_q_typed<DType::Q4_0>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q4_1: return gemm_q_typed<DType::Q4_1>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q5_0: return gemm_q_typed<DType::Q5_0>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q5_1: return gemm_q_typed<DType::Q5_1>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::IQ4_NL: return gemm_q_typed<DType::IQ4_NL>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::IQ4_XS: return gemm_q_kquant<DType::IQ4_XS>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::MXFP4: return gemm_q_mxfp4(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        default: return gemm_q_scalar(wt, w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
    }
}

template <DType WT>
inline float32x4_t load4(const uint8_t* row, int64_t c) {
    if constexpr (WT == DType::F32) {
        return vld1q_f32(reinterpret_cast<const float*>(row) + c);
    } else if constexpr (WT == DType::F16) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(row) + c)));
    } else {
        return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(row) + c), 16));
    }
}

template <DType WT>
void gemm_f_typed(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const float* x, int64_t cols,
                  int64_t n_tok, float* out, int64_t out_stride) {
    const int64_t c4 = cols & ~int64_t(3);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t* row = w + r * w_stride;
        int64_t t = 0;
        for (; t + 4 <= n_tok; t += 4) {  // each weight load serves four tokens
            float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t c = 0; c < c4; c += 4) {
                const float32x4_t wv = load4<WT>(row, c);
                a0 = vfmaq_f32(a0, wv, vld1q_f32(x + t * cols + c));
                a1 = vfmaq_f32(a1, wv, vld1q_f32(x + (t + 1) * cols + c));
                a2 = vfmaq_f32(a2, wv, vld1q_f32(x + (t + 2) * cols + c));
                a3 = vfmaq_f32(a3, wv, vld1q_f32(x + (t + 3) * cols + c));
            }
            const float32x4_t* a[4] = {&a0, &a1, &a2, &a3};
            for (int k = 0; k < 4; k++) {
                float s = vaddvq_f32(*a[k]);
                for (int64_t c = c4; c < cols; c++) s += weight_to_f32(WT, row, c) * x[(t + k) * cols + c];
                out[(t + k) * out_stride + r] = s;
            }
        }
        for (; t < n_tok; t++) {
            float32x4_t a = vdupq_n_f32(0);
            for (int64_t c = 0; c < c4; c += 4) a = vfmaq_f32(a, load4<WT>(row, c), vld1q_f32(x + t * cols + c));
            float s = vaddvq_f32(a);
            for (int64_t c = c4; c < cols; c++) s += weight_to_f32(WT, row, c) * x[t * cols + c];
            out[t * out_stride + r] = s;
        }
    }
}

void gemm_f(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const float* x, int64_t cols,
            int64_t n_tok, float* out, int64_t out_stride) {
    switch (wt) {
        case DType::F32: return gemm_f_typed<DType::F32>(w, w_stride, r0, r1, x, cols, n_tok, out, out_stride);
        case DType::F16: return gemm_f_typed<DType::F16>(w, w_stride, r0, r1, x, cols, n_tok, out, out_stride);
        case DType::BF16: return gemm_f_typed<DType::BF16>(w, w_stride, r0, r1, x, cols, n_tok, out, out_stride);
        default: return gemm_f_scalar(wt, w, w_stride, r0, r1, x, cols, n_tok, out, out_stride);
    }
}

void f16_to_f32_row(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
    f16_to_f32_row_scalar(x + i, y + i, n - i);
}

void f32_to_f16_row(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    f32_to_f16_row_scalar(x + i, y + i, n - i);
}

// Prefill GEMM (kernels_panel.h) on 4-float vectors: 12 rows x 2 vectors = 24 of the
// 32 registers accumulate, 8 tokens per tile.
struct NeonPanel {
    using V = float32x4_t;
    static constexpr int W = 4;
    static constexpr int kTileRows = kPanelRows;
    static V zero() { return vdupq_n_f32(0.0f); }
    static V load(const float* p) { return vld1q_f32(p); }
    static V bcast(const float* p) { return vld1q_dup_f32(p); }
    static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
    static void store(float* p, V v) { vst1q_f32(p, v); }
    template <DType WT>
    static void dequantize_row(const uint8_t* row, float* y, int64_t cols) {
        if constexpr (WT == DType::F16) f16_to_f32_row(reinterpret_cast<const uint16_t*>(row), y, cols);
        else forgert::cpu::dequantize_row(WT, row, y, cols);
    }
};

void gemm_panel(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const float* xp, int64_t cols,
                int64_t n_tok, float* out, int64_t out_stride, float* work) {
    gemm_panel_any<NeonPanel>(wt, w, w_stride, r0, r1, xp, cols, n_tok, out, out_stride, work);
}

struct NeonAttentionOps : ScalarAttentionOps {
    static void to_f32(const uint16_t* x, float* y, int64_t n) { f16_to_f32_row(x, y, n); }
    static void load_keys(const uint16_t* k, int64_t kv_stride, int64_t nj, int hd, float* kf) {
        for (int64_t j = 0; j < nj; j++) f16_to_f32_row(k + j * kv_stride, kf + j * hd, hd);
    }
};

void attention_group(const float* const* q, float* const* out, const int64_t* len, int nq, const uint16_t* k,
                     const uint16_t* v, int64_t kv_stride, int hd, float scale, float softcap, float* work,
                     float* lse) {
    attention_group_impl<NeonAttentionOps>(q, out, len, nq, k, v, kv_stride, hd, scale, softcap, work, lse);
}

}  // namespace
}  // namespace forgert::cpu

#include "kernels_neon_int8.inc"

namespace forgert::cpu {

const KernelSet* kernels_neon() {
    static const KernelSet set = {"neon-dotprod",     quantize_row_q8_scalar, gemm_q, gemm_f, gemm_panel, 2 * NeonPanel::W,
                                  f16_to_f32_row,     f32_to_f16_row,         dot_f32_f16_scalar, axpy_f16_scalar,
                                  attention_group,    silu_mul_row_scalar, gelu_mul_row_scalar,
                                  gemm_i8_neon,       i8_type_bit(DType::Q8_0) | i8_type_bit(DType::Q4_0)};
    return &set;
}

}  // namespace forgert::cpu

#else
namespace forgert::cpu {
const KernelSet* kernels_neon() { return nullptr; }
}  // namespace forgert::cpu
#endif
