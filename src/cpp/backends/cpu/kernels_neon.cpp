// arm64 NEON kernel set with the dot-product extension (Apple M-series, Graviton 2+,
// Cortex-A76+): sdot does the int8 dots of quantized GEMMs. Built with
// -march=armv8.2-a+dotprod+fp16 on Linux; chosen only when the CPU reports dotprod.
#include "kernels_panel.h"
#include "kernels_scalar.h"
#include "kernels_attention_rows.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <array>
#include <type_traits>
#include <utility>

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

#include "kernels_neon_q.inc"

inline int32x4_t sdot_act(int8x16_t w0, int8x16_t w1, const int8_t* p) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, vld1q_s8(p)), w1, vld1q_s8(p + 16));
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

void gemm_q_iq4_xs(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x, int64_t nb,
                   int64_t n_tok, float* out, int64_t out_stride) {
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            float32x4_t acc = vdupq_n_f32(0.0f);
            for (int64_t s = 0; s < nb / kActBlocksPerSuper; s++)
                iq4_xs_super_block_dot(w + r * w_stride + s * sizeof(block_iq4_xs), x + t * nb + s * kActBlocksPerSuper, acc);
            out[t * out_stride + r] = vaddvq_f32(acc);
        }
}

// ---- K-quant decode: R rows x T tokens per pass ----
// Each sub-block's quants are unpacked once for T tokens, each token's activation block loaded
// once for R rows; sdot takes the signed quants as they are,
// 16 weights (a 16-weight sub-block, or half of a 32-weight one) per instruction. Per row and
// super-block the sub-block factors d * sc * a.d go to f32 as whole vectors, and the min
// terms (Q4_K / Q5_K against the activation sums, Q2_K against its halves' exact sums) go
// straight into the accumulator.

// 8 bytes -> two f32 vectors (lanes 0-3, 4-7).
inline void u8x8_to_f32(uint8x8_t v, float32x4_t* f) {
    const uint16x8_t w = vmovl_u8(v);
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))), f[1] = vcvtq_f32_u32(vmovl_high_u16(w));
}
inline void s8x8_to_f32(int8x8_t v, float32x4_t* f) {
    const int16x8_t w = vmovl_s8(v);
    f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), f[1] = vcvtq_f32_s32(vmovl_high_s16(w));
}

// Signed quants of weights 32 j + 16 i .. 32 j + 16 i + 15 of a super-block.
template <DType WT>
inline int8x16_t kquant_quants16(const uint8_t* blk, int j, int i) {
    const uint8x16_t nib = vdupq_n_u8(0x0f);
    if constexpr (WT == DType::Q4_K || WT == DType::Q5_K) {
        using Block = std::conditional_t<WT == DType::Q4_K, block_q4_K, block_q5_K>;
        const auto* b = reinterpret_cast<const Block*>(blk);
        const uint8x16_t v = vld1q_u8(b->qs + 32 * (j / 2) + 16 * i);
        uint8x16_t u = j % 2 ? vshrq_n_u8(v, 4) : vandq_u8(v, nib);
        if constexpr (WT == DType::Q5_K) {  // bit j of qh[l] is bit 4 of sub-block j's quant l
            const uint8x16_t bit = vandq_u8(vshlq_u8(vld1q_u8(b->qh + 16 * i), vdupq_n_s8((int8_t)-j)), vdupq_n_u8(1));
            u = vorrq_u8(u, vshlq_n_u8(bit, 4));
        }
        return vreinterpretq_s8_u8(u);
    } else if constexpr (WT == DType::Q2_K || WT == DType::Q3_K) {
        using Block = std::conditional_t<WT == DType::Q2_K, block_q2_K, block_q3_K>;
        const auto* b = reinterpret_cast<const Block*>(blk);
        const int8x16_t down = vdupq_n_s8((int8_t)(-2 * (j % 4)));  // vshl by a negative count: right
        uint8x16_t q = vandq_u8(vshlq_u8(vld1q_u8(b->qs + 32 * (j / 4) + 16 * i), down), vdupq_n_u8(3));
        if constexpr (WT == DType::Q2_K) {
            return vreinterpretq_s8_u8(q);
        } else {  // Q3_K: minus 4 where bit j of hmask[l] is clear
            const uint8x16_t hb = vandq_u8(vshlq_u8(vld1q_u8(b->hmask + 16 * i), vdupq_n_s8((int8_t)-j)), vdupq_n_u8(1));
            return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(q, vshlq_n_u8(hb, 2))), vdupq_n_s8(4));
        }
    } else {
        const auto* b = reinterpret_cast<const block_q6_K*>(blk);
        const int h = j / 4, quarter = j % 4;
        const uint8x16_t l = vld1q_u8(b->ql + 64 * h + 32 * (quarter & 1) + 16 * i);
        const uint8x16_t qh = vld1q_u8(b->qh + 32 * h + 16 * i);
        const uint8x16_t low = quarter < 2 ? vandq_u8(l, nib) : vshrq_n_u8(l, 4);
        const uint8x16_t high = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * quarter))), vdupq_n_u8(3));
        return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8(high, 4))), vdupq_n_s8(32));
    }
}

template <DType WT>
constexpr int64_t kquant_block_bytes() {
    return WT == DType::Q2_K   ? sizeof(block_q2_K)
           : WT == DType::Q3_K ? sizeof(block_q3_K)
           : WT == DType::Q4_K ? sizeof(block_q4_K)
           : WT == DType::Q5_K ? sizeof(block_q5_K)
                               : sizeof(block_q6_K);
}

// out[t * out_stride + r] = row r . x_t for R rows and T tokens (x[t]: token t's blocks, xs[t]
// what its rows share). Each sub-block's quants are unpacked once for the T tokens; every (row,
// token) runs the one-token pass's operations in its order, so a token's result is bit-identical
// alone or in a batch.
template <DType WT, int R, int T>
void kquant_gemm_rows(const uint8_t* w, size_t w_stride, const BlockQ8Act* const* x, const KquantActs* const* xs,
                      int64_t ns, float* out, int64_t out_stride) {
    constexpr int64_t BB = kquant_block_bytes<WT>();
    constexpr bool kSub32 = WT == DType::Q4_K || WT == DType::Q5_K;  // 32-weight sub-blocks
    float32x4_t acc[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = vdupq_n_f32(0.0f);
    for (int64_t s = 0; s < ns; s++) {
        float scale[R][T][16];  // per row and token: the factor of each sub-block, d * sc * a.d
        for (int r = 0; r < R; r++) {
            const uint8_t* blk = w + r * w_stride + s * BB;
            float32x4_t sc[4], mn[4];
            if constexpr (kSub32) {
                const auto* b = reinterpret_cast<const block_q4_K*>(blk);  // Q5_K: same head (d, dmin, scales)
                uint8_t sm[16];
                q4_K_scales_mins(b->scales, sm);
                const uint8x16_t v = vld1q_u8(sm);
                u8x8_to_f32(vget_low_u8(v), sc), u8x8_to_f32(vget_high_u8(v), mn);
                const float d = f16(b->d), dmin = f16(b->dmin);
                for (int t = 0; t < T; t++)
                    for (int k = 0; k < 2; k++) {
                        vst1q_f32(scale[r][t] + 4 * k, vmulq_f32(sc[k], vmulq_n_f32(vld1q_f32(&xs[t]->d[8 * s + 4 * k]), d)));
                        acc[r][t] = vfmsq_f32(acc[r][t], vmulq_n_f32(mn[k], dmin), vld1q_f32(&xs[t]->sum[8 * s + 4 * k]));
                    }
            } else {
                float d;
                if constexpr (WT == DType::Q2_K) {
                    const auto* b = reinterpret_cast<const block_q2_K*>(blk);
                    const uint8x16_t v = vld1q_u8(b->scales);
                    const uint8x16_t scv = vandq_u8(v, vdupq_n_u8(0x0f)), mv = vshrq_n_u8(v, 4);
                    u8x8_to_f32(vget_low_u8(scv), sc), u8x8_to_f32(vget_high_u8(scv), sc + 2);
                    u8x8_to_f32(vget_low_u8(mv), mn), u8x8_to_f32(vget_high_u8(mv), mn + 2);
                    d = f16(b->d);
                    const float dmin = f16(b->dmin);
                    for (int t = 0; t < T; t++)
                        for (int k = 0; k < 4; k++)
                            acc[r][t] = vfmsq_f32(acc[r][t], vmulq_n_f32(mn[k], dmin), vld1q_f32(&xs[t]->dhalf[16 * s + 4 * k]));
                } else {
                    int8_t sc8[16];
                    if constexpr (WT == DType::Q3_K) {
                        const auto* b = reinterpret_cast<const block_q3_K*>(blk);
                        q3_K_scales_biased(b->scales, reinterpret_cast<uint8_t*>(sc8)), d = f16(b->d);
                        vst1q_s8(sc8, vsubq_s8(vld1q_s8(sc8), vdupq_n_s8(32)));
                    } else {
                        const auto* b = reinterpret_cast<const block_q6_K*>(blk);
                        std::memcpy(sc8, b->scales, 16), d = f16(b->d);
                    }
                    const int8x16_t v = vld1q_s8(sc8);
                    s8x8_to_f32(vget_low_s8(v), sc), s8x8_to_f32(vget_high_s8(v), sc + 2);
                }
                for (int t = 0; t < T; t++)
                    for (int k = 0; k < 4; k++)
                        vst1q_f32(scale[r][t] + 4 * k, vmulq_f32(sc[k], vmulq_n_f32(vld1q_f32(&xs[t]->d2[16 * s + 4 * k]), d)));
            }
        }
        // Unrolled: each sub-block's unpacking (which nibble, which bit) is then fixed code; a
        // runtime j made clang compute both nibble forms and select between them.
#pragma GCC unroll 4
        for (int j = 0; j < kActBlocksPerSuper; j++) {
            int8x16_t q[R][2];  // each row's quants of sub-block j, for every token
            for (int r = 0; r < R; r++) {
                const uint8_t* blk = w + r * w_stride + s * BB;
                q[r][0] = kquant_quants16<WT>(blk, j, 0), q[r][1] = kquant_quants16<WT>(blk, j, 1);
            }
            const int32x4_t z = vdupq_n_s32(0);
#pragma GCC unroll 4  // clang keeps acc[][] in memory behind a runtime token loop otherwise
            for (int t = 0; t < T; t++) {
                const BlockQ8Act& a = x[t][s * kActBlocksPerSuper + j];
                const int8x16_t xh[2] = {vld1q_s8(a.hi), vld1q_s8(a.hi + 16)};
                const int8x16_t xl[2] = {vld1q_s8(a.lo), vld1q_s8(a.lo + 16)};
                for (int r = 0; r < R; r++) {
                    if constexpr (kSub32) {  // 256 hi + lo over the whole block
                        const int32x4_t hi = vdotq_s32(vdotq_s32(z, q[r][0], xh[0]), q[r][1], xh[1]);
                        const int32x4_t dot = vdotq_s32(vdotq_s32(vshlq_n_s32(hi, 8), q[r][0], xl[0]), q[r][1], xl[1]);
                        acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(dot), scale[r][t][j]);
                    } else {  // per 16-weight sub-block
                        for (int i = 0; i < 2; i++) {
                            const int32x4_t dot = vdotq_s32(vshlq_n_s32(vdotq_s32(z, q[r][i], xh[i]), 8), q[r][i], xl[i]);
                            acc[r][t] = vfmaq_n_f32(acc[r][t], vcvtq_f32_s32(dot), scale[r][t][2 * j + i]);
                        }
                    }
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) out[t * out_stride + r] = vaddvq_f32(acc[r][t]);
}

using KquantRows = void (*)(const uint8_t*, size_t, const BlockQ8Act* const*, const KquantActs* const*, int64_t,
                            float*, int64_t);

template <DType WT, int R, int... T>
constexpr std::array<KquantRows, sizeof...(T)> kquant_tiles(std::integer_sequence<int, T...>) {
    return {kquant_gemm_rows<WT, R, T + 1>...};
}

// K-quant decode, one token or a few: every token's shared terms made once per call; then per
// 4 rows (the rest one at a time), the tokens in tiles of up to 4 (16 accumulators) while the
// rows' super-blocks stay in L1.
template <DType WT>
void gemm_q_kquant_rows(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x, int64_t nb,
                        int64_t n_tok, float* out, int64_t out_stride) {
    constexpr int R = 4, TT = 4;
    static constexpr auto tiles = kquant_tiles<WT, R>(std::make_integer_sequence<int, TT>());
    static constexpr auto tiles1 = kquant_tiles<WT, 1>(std::make_integer_sequence<int, TT>());
    thread_local std::vector<KquantActs> acts;
    if ((int64_t)acts.size() < n_tok) acts.resize(n_tok);
    for (int64_t t = 0; t < n_tok; t++) kquant_acts(x + t * nb, nb, acts[t]);
    const int64_t ns = nb / kActBlocksPerSuper;
    for (int64_t r = r0; r < r1;) {
        const int rn = r + R <= r1 ? R : 1;
        for (int64_t t = 0; t < n_tok; t += TT) {
            const int tn = (int)std::min<int64_t>(TT, n_tok - t);
            const BlockQ8Act* xt[TT];
            const KquantActs* st[TT];
            for (int k = 0; k < tn; k++) xt[k] = x + (t + k) * nb, st[k] = &acts[t + k];
            (rn == R ? tiles : tiles1)[tn - 1](w + r * w_stride, w_stride, xt, st, ns, out + t * out_stride + r, out_stride);
        }
        r += rn;
    }
}

#include "kernels_neon_mxfp4.inc"

#include "kernels_neon_iq_grid.inc"

// parts: unused here (one-part blocks have lo = 0: the same integer dots, the same bits).
void gemm_q(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x, int64_t nb,
            int64_t n_tok, float* out, int64_t out_stride, int /*parts*/) {
    switch (wt) {
        case DType::Q4_K: return gemm_q_kquant_rows<DType::Q4_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q2_K: return gemm_q_kquant_rows<DType::Q2_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q3_K: return gemm_q_kquant_rows<DType::Q3_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q5_K: return gemm_q_kquant_rows<DType::Q5_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q6_K: return gemm_q_kquant_rows<DType::Q6_K>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q8_0: return gemm_q_typed<DType::Q8_0>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q4_0: return gemm_q_typed<DType::Q4_0>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q4_1: return gemm_q_typed<DType::Q4_1>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q5_0: return gemm_q_typed<DType::Q5_0>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::Q5_1: return gemm_q_typed<DType::Q5_1>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::IQ4_NL: return gemm_q_typed<DType::IQ4_NL>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::IQ4_XS: return gemm_q_iq4_xs(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        case DType::MXFP4: return gemm_q_mxfp4(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
#define FG_IQ_GRID_CASE(T) \
        case DType::T: return gemm_q_iq_grid<DType::T>(w, w_stride, r0, r1, x, nb, n_tok, out, out_stride);
        FG_IQ_GRID_CASE(IQ2_XXS) FG_IQ_GRID_CASE(IQ2_XS) FG_IQ_GRID_CASE(IQ2_S) FG_IQ_GRID_CASE(IQ3_XXS)
        FG_IQ_GRID_CASE(IQ3_S) FG_IQ_GRID_CASE(IQ1_S) FG_IQ_GRID_CASE(IQ1_M)
#undef FG_IQ_GRID_CASE
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

// The int8 activation parts as quantize_row_q8_scalar defines them (the same hi, lo and d, every
// step the same rounding: ties to even, then the lo part clamped), on four lanes; only the float
// sum (the mins' term) adds in another order: per lane, then across the lanes.
void quantize_row_q8(const float* x, BlockQ8Act* y, int64_t n) {
    static_assert(FG_QK == 32, "8 vectors a block");
    const float32x4_t lo_min = vdupq_n_f32(-127.0f), lo_max = vdupq_n_f32(127.0f);
    for (int64_t b = 0; b < n / FG_QK; b++) {
        const float* xb = x + b * FG_QK;
        float32x4_t v[8], amax = vdupq_n_f32(0.0f), sum = vdupq_n_f32(0.0f);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(xb + 4 * j);
            amax = vmaxq_f32(amax, vabsq_f32(v[j]));
            sum = vaddq_f32(sum, v[j]);
        }
        const float d = vmaxvq_f32(amax) / 127.0f;
        const float32x4_t id = vdupq_n_f32(d != 0.0f ? 1.0f / d : 0.0f);
        int16x8_t h16[4], l16[4];
        for (int j = 0; j < 4; j++) {
            int32x4_t h[2], l[2];
            for (int u = 0; u < 2; u++) {
                const float32x4_t s = vmulq_f32(v[2 * j + u], id);
                const float32x4_t hf = vrndnq_f32(s);
                const float32x4_t lf = vminq_f32(vmaxq_f32(vrndnq_f32(vmulq_n_f32(vsubq_f32(s, hf), 256.0f)), lo_min), lo_max);
                h[u] = vcvtq_s32_f32(hf);
                l[u] = vcvtq_s32_f32(lf);
            }
            h16[j] = vcombine_s16(vmovn_s32(h[0]), vmovn_s32(h[1]));
            l16[j] = vcombine_s16(vmovn_s32(l[0]), vmovn_s32(l[1]));
        }
        vst1q_s8(y[b].hi, vcombine_s8(vmovn_s16(h16[0]), vmovn_s16(h16[1])));
        vst1q_s8(y[b].hi + 16, vcombine_s8(vmovn_s16(h16[2]), vmovn_s16(h16[3])));
        vst1q_s8(y[b].lo, vcombine_s8(vmovn_s16(l16[0]), vmovn_s16(l16[1])));
        vst1q_s8(y[b].lo + 16, vcombine_s8(vmovn_s16(l16[2]), vmovn_s16(l16[3])));
        y[b].d = d * (1.0f / 256.0f);
        y[b].sum = vaddvq_f32(sum);
    }
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
        else if constexpr (is_iq_lattice(WT)) iq_grid_dequantize_row<WT>(row, y, cols);
        else forgert::cpu::dequantize_row(WT, row, y, cols);
    }
};

void gemm_panel(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const float* xp, int64_t cols,
                int64_t n_tok, float* out, int64_t out_stride, float* work) {
    gemm_panel_any<NeonPanel>(wt, w, w_stride, r0, r1, xp, cols, n_tok, out, out_stride, work);
}

#include "kernels_neon_math.inc"       // exp4, NeonVec4, silu_mul_row, gelu_mul_row
#include "kernels_neon_attention.inc"  // attention_group

}  // namespace
}  // namespace forgert::cpu

#include "kernels_neon_int8.inc"

namespace forgert::cpu {

// The types gemm_i8_neon takes: every type with an int8 prefill definition (gemm_i8_scalar).
constexpr uint64_t kNeonGemmI8Types = i8_type_bit(DType::Q8_0) | i8_type_bit(DType::Q4_0) | i8_type_bit(DType::Q4_1) |
                                      i8_type_bit(DType::Q5_0) | i8_type_bit(DType::Q2_K) | i8_type_bit(DType::Q3_K) |
                                      i8_type_bit(DType::Q4_K) | i8_type_bit(DType::Q5_K) | i8_type_bit(DType::Q6_K) |
                                      kI8LatticeTypes;

const KernelSet* kernels_neon() {
    static const KernelSet set = {"neon-dotprod",     quantize_row_q8, gemm_q, gemm_f, gemm_panel, 2 * NeonPanel::W,
                                  f16_to_f32_row,     f32_to_f16_row,
                                  attention_group,    silu_mul_row,       gelu_mul_row,
                                  gemm_i8_neon,       kNeonGemmI8Types};
    return &set;
}

}  // namespace forgert::cpu

#else
namespace forgert::cpu {
// The types gemm_i8_neon takes: every type with an int8 prefill definition (gemm_i8_scalar).
constexpr uint64_t kNeonGemmI8Types = i8_type_bit(DType::Q8_0) | i8_type_bit(DType::Q4_0) | i8_type_bit(DType::Q4_1) |
                                      i8_type_bit(DType::Q5_0) | i8_type_bit(DType::Q2_K) | i8_type_bit(DType::Q3_K) |
                                      i8_type_bit(DType::Q4_K) | i8_type_bit(DType::Q5_K) | i8_type_bit(DType::Q6_K) |
                                      kI8LatticeTypes;

const KernelSet* kernels_neon() { return nullptr; }
}  // namespace forgert::cpu
#endif
