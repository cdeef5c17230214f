// Portable K-quant (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) building blocks: unpacking a 256-weight super-block
// into integer quants and per-sub-block scales, its f32 dequantization, and its dot
// product with eight activation blocks (BlockQ8Act, 32 weights each). Sub-blocks are
// 32 (Q4_K, Q5_K) or 16 (Q2_K, Q3_K, Q6_K) weights, so each lies inside one activation block and its
// integer dot is exact. Included into each kernels_*.cpp (internal linkage).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/fp16.h"
#include "cpu_kernels.h"
#include "kernels_iq_grid.h"

namespace forgert::cpu {
namespace {

constexpr bool is_kquant(DType t) {
    return t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K;
}
// Types of 256-weight super-blocks: the K-quants, IQ4_XS (kernels_iq4.h) and the lattice types
// (kernels_iq_grid.h).
constexpr bool has_super_blocks(DType t) { return is_kquant(t) || t == DType::IQ4_XS || is_iq_lattice(t); }
constexpr int kActBlocksPerSuper = FG_QK_K / FG_QK;  // 8

// Q4_K's 6-bit scale sc[j] and min m[j] of sub-block j (quant_blocks.h).
inline void q4_K_scale_min(const uint8_t* s, int j, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K quants in weight order.                                       q [256], 0..15
inline void q4_K_unpack(const block_q4_K* b, uint8_t* q) {
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++) {
            q[64 * k + l] = b->qs[32 * k + l] & 0x0f;
            q[64 * k + 32 + l] = b->qs[32 * k + l] >> 4;
        }
}

// Q5_K quants in weight order: Q4_K's nibbles, bit j of qh[l] as bit 4.  q [256], 0..31
inline void q5_K_unpack(const block_q5_K* b, uint8_t* q) {
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++) {
            q[64 * k + l] = (uint8_t)((b->qs[32 * k + l] & 0x0f) | ((b->qh[l] >> (2 * k)) & 1) << 4);
            q[64 * k + 32 + l] = (uint8_t)((b->qs[32 * k + l] >> 4) | ((b->qh[l] >> (2 * k + 1)) & 1) << 4);
        }
}

// Q2_K quants in weight order, 0..3.                                q [256]
inline void q2_K_unpack(const block_q2_K* b, uint8_t* q) {
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) q[128 * h + 32 * j + l] = (b->qs[32 * h + l] >> (2 * j)) & 3;
}

// Q3_K's 16 signed sub-block scales (-32..31).
inline void q3_K_scales(const block_q3_K* b, int* sc) {
    for (int i = 0; i < 16; i++) {
        const int low = i < 8 ? b->scales[i] & 0x0f : b->scales[i - 8] >> 4;
        sc[i] = (low | ((b->scales[8 + i % 4] >> (2 * (i / 4))) & 3) << 4) - 32;
    }
}

// Q3_K quants in weight order, -4..3, and its 16 signed sub-block scales (-32..31).
inline void q3_K_unpack(const block_q3_K* b, int8_t* q, int* sc) {
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++)
                q[128 * h + 32 * j + l] = (int8_t)(((b->qs[32 * h + l] >> (2 * j)) & 3) -
                                                   ((b->hmask[l] >> (4 * h + j)) & 1 ? 0 : 4));
    q3_K_scales(b, sc);
}

// Q6_K quants in weight order, minus the offset 32.                  q [256], -32..31
inline void q6_K_unpack(const block_q6_K* b, int8_t* q) {
    for (int h = 0; h < 2; h++) {
        const uint8_t* ql = b->ql + 64 * h;
        const uint8_t* qh = b->qh + 32 * h;
        int8_t* y = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            y[l] = (int8_t)(((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32);
            y[l + 32] = (int8_t)(((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32);
            y[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            y[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

// Q4_K and Q5_K share their layout of scales and mins (Q5_K's quants have a fifth bit):
// the quants of one super-block (0..15 or 0..31), its packed scales and its two f16 factors.
inline void unpack_q45_K(DType wt, const uint8_t* blk, uint8_t* q, const uint8_t*& scales, float& d, float& dmin) {
    fg_half hd, hdmin;
    if (wt == DType::Q4_K) {
        const auto* b = reinterpret_cast<const block_q4_K*>(blk);
        q4_K_unpack(b, q), scales = b->scales, hd = b->d, hdmin = b->dmin;
    } else {
        const auto* b = reinterpret_cast<const block_q5_K*>(blk);
        q5_K_unpack(b, q), scales = b->scales, hd = b->d, hdmin = b->dmin;
    }
    d = f16_to_f32(hd), dmin = f16_to_f32(hdmin);
}

// ---- shared by the SIMD decode GEMVs (R rows per pass) ----
// What every row's pass shares, per activation block of one token.
struct KquantActs {
    std::vector<float> d, sum;    // [nb]: a[j].d, a[j].sum
    std::vector<float> d2;        // [2 nb]: a[i / 2].d, the factor of 16-weight sub-block i
    std::vector<float> dhalf;     // [2 nb]: a[i / 2].d * (exact sum of half i): Q2_K's min terms
    std::vector<int32_t> half;    // [8 nb]: {sum of half 0, 0, 0, 0, sum of half 1, 0, 0, 0} per block
};

inline void kquant_acts(const BlockQ8Act* a, int64_t nb, KquantActs& s) {
    s.d.resize(nb), s.sum.resize(nb), s.d2.resize(2 * nb), s.dhalf.resize(2 * nb), s.half.assign(8 * nb, 0);
    for (int64_t j = 0; j < nb; j++) {
        int32_t h[2];  // |256 hi + lo| < 2^15, 16 of them: < 2^19
        for (int k = 0; k < 2; k++) {  // 16 at a time: a loop the compiler vectorizes (h[i / 16] += it did not)
            int32_t s = 0;
            for (int i = 16 * k; i < 16 * k + 16; i++) s += 256 * a[j].hi[i] + a[j].lo[i];
            h[k] = s;
        }
        s.d[j] = a[j].d, s.sum[j] = a[j].sum;
        for (int k = 0; k < 2; k++) {
            s.d2[2 * j + k] = a[j].d;
            s.dhalf[2 * j + k] = a[j].d * (float)h[k];
            s.half[8 * j + 4 * k] = h[k];
        }
    }
}

// Q4_K / Q5_K's 8 scales and 8 mins (6 bits each, packed in 12 bytes) as bytes, four to a
// little-endian word: o[0..1] the scales, o[2..3] the mins (ggml's unpacking, q4_K_scale_min for
// all j at once). Words, so SIMD code can put them in a register without a store and reload.
inline void q4_K_scale_min_words(const uint8_t* packed, uint32_t* o) {
    constexpr uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
    uint32_t u[3];
    std::memcpy(u, packed, 12);
    o[0] = u[0] & k6;                                       // scales 0..3
    o[1] = (u[2] & k4) | (((u[0] >> 6) & k2) << 4);         // scales 4..7
    o[2] = u[1] & k6;                                       // mins 0..3
    o[3] = ((u[2] >> 4) & k4) | (((u[1] >> 6) & k2) << 4);  // mins 4..7
}
// The same as bytes: sm[0..7] the scales, sm[8..15] the mins.
inline void q4_K_scales_mins(const uint8_t* packed, uint8_t* sm) {
    uint32_t o[4];
    q4_K_scale_min_words(packed, o);
    std::memcpy(sm, o, 16);
}

// Q3_K's 16 scales (6 bits, packed in 12 bytes) plus 32, as bytes 0..63 four to a little-endian
// word (q3_K_scales for all at once; the caller takes the 32 off as a vector).
inline void q3_K_scale_words_biased(const uint8_t* packed, uint32_t* o) {
    constexpr uint32_t k4 = 0x0f0f0f0f, k2 = 0x03030303;
    uint32_t u[3];
    std::memcpy(u, packed, 12);
    o[0] = (u[0] & k4) | ((u[2] & k2) << 4);
    o[1] = (u[1] & k4) | (((u[2] >> 2) & k2) << 4);
    o[2] = ((u[0] >> 4) & k4) | (((u[2] >> 4) & k2) << 4);
    o[3] = ((u[1] >> 4) & k4) | (((u[2] >> 6) & k2) << 4);
}
// The same as bytes sc[0..15].
inline void q3_K_scales_biased(const uint8_t* packed, uint8_t* sc) {
    uint32_t o[4];
    q3_K_scale_words_biased(packed, o);
    std::memcpy(sc, o, 16);
}

// One super-block to f32.                                            y [256]
inline void dequantize_super_block(DType wt, const uint8_t* blk, float* y) {
    if (wt == DType::Q4_K || wt == DType::Q5_K) {  // same scales and mins; Q5_K's q has 5 bits
        uint8_t q[FG_QK_K];
        const uint8_t* scales;
        float d, dmin;
        unpack_q45_K(wt, blk, q, scales, d, dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            q4_K_scale_min(scales, j, sc, m);
            const float dj = d * (float)sc, mj = dmin * (float)m;
            for (int i = 0; i < 32; i++) y[32 * j + i] = dj * q[32 * j + i] - mj;
        }
    } else if (wt == DType::Q2_K) {
        const auto* b = reinterpret_cast<const block_q2_K*>(blk);
        uint8_t q[FG_QK_K];
        q2_K_unpack(b, q);
        const float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
        for (int j = 0; j < 16; j++) {  // as ggml: (d * sc) * q - dmin * m
            const float dj = d * (float)(b->scales[j] & 15), mj = dmin * (float)(b->scales[j] >> 4);
            for (int i = 0; i < 16; i++) y[16 * j + i] = dj * q[16 * j + i] - mj;
        }
    } else if (wt == DType::Q3_K) {
        const auto* b = reinterpret_cast<const block_q3_K*>(blk);
        int8_t q[FG_QK_K];
        int sc[16];
        q3_K_unpack(b, q, sc);
        const float d = f16_to_f32(b->d);
        for (int j = 0; j < 16; j++) {  // as ggml: (d * sc) * q
            const float dj = d * (float)sc[j];
            for (int i = 0; i < 16; i++) y[16 * j + i] = dj * q[16 * j + i];
        }
    } else {
        const auto* b = reinterpret_cast<const block_q6_K*>(blk);
        int8_t q[FG_QK_K];
        q6_K_unpack(b, q);
        const float d = f16_to_f32(b->d);
        for (int j = 0; j < 16; j++) {
            const float dj = d * (float)b->scales[j];
            for (int i = 0; i < 16; i++) y[16 * j + i] = dj * q[16 * j + i];
        }
    }
}

// Integer dot of n quants with one activation block's two parts, from element i0.
template <class Q>
inline int32_t act_dot(const Q* q, const BlockQ8Act& a, int i0, int n) {
    int32_t s = 0;  // |q| <= 32, |256 hi + lo| < 2^15, n <= 32: |s| < 2^26
    for (int i = 0; i < n; i++) s += (int32_t)q[i] * (256 * a.hi[i0 + i] + a.lo[i0 + i]);
    return s;
}

// dot of one super-block with its eight activation blocks a[0..7].
inline float super_block_dot_scalar(DType wt, const uint8_t* blk, const BlockQ8Act* a) {
    float acc = 0.0f;
    if (wt == DType::Q4_K || wt == DType::Q5_K) {
        uint8_t q[FG_QK_K];
        const uint8_t* scales;
        float d, dmin;
        unpack_q45_K(wt, blk, q, scales, d, dmin);
        for (int j = 0; j < 8; j++) {  // sub-block j is activation block j
            int sc, m;
            q4_K_scale_min(scales, j, sc, m);
            acc += d * (float)sc * a[j].d * (float)act_dot(q + 32 * j, a[j], 0, 32) - dmin * (float)m * a[j].sum;
        }
    } else if (wt == DType::Q2_K) {
        // A sub-block is half an activation block, whose exact sum covers both halves: each
        // half's min term uses its quantized activations' sum (the ones the dot also sees).
        const auto* b = reinterpret_cast<const block_q2_K*>(blk);
        uint8_t q[FG_QK_K];
        q2_K_unpack(b, q);
        const uint8_t ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        const float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
        for (int j = 0; j < 8; j++) {  // activation block j holds sub-blocks 2j, 2j + 1
            int64_t sj = 0, mj = 0;    // each act_dot < 2^22, scales < 16
            for (int k = 0; k < 2; k++) {
                const int sc = b->scales[2 * j + k];
                sj += (int64_t)(sc & 15) * act_dot(q + 32 * j + 16 * k, a[j], 16 * k, 16);
                mj += (int64_t)(sc >> 4) * act_dot(ones, a[j], 16 * k, 16);
            }
            acc += a[j].d * (d * (float)sj - dmin * (float)mj);
        }
    } else if (wt == DType::Q3_K) {
        const auto* b = reinterpret_cast<const block_q3_K*>(blk);
        int8_t q[FG_QK_K];
        int sc[16];
        q3_K_unpack(b, q, sc);
        for (int j = 0; j < 8; j++) {  // activation block j holds sub-blocks 2j, 2j + 1
            const int64_t s = (int64_t)sc[2 * j] * act_dot(q + 32 * j, a[j], 0, 16) +
                              (int64_t)sc[2 * j + 1] * act_dot(q + 32 * j + 16, a[j], 16, 16);
            acc += a[j].d * (float)s;
        }
        acc *= f16_to_f32(b->d);
    } else {
        const auto* b = reinterpret_cast<const block_q6_K*>(blk);
        int8_t q[FG_QK_K];
        q6_K_unpack(b, q);
        for (int j = 0; j < 8; j++) {  // activation block j holds sub-blocks 2j, 2j + 1
            // each act_dot < 2^24 in magnitude, times a scale up to 128: 64-bit sum
            const int64_t s = (int64_t)b->scales[2 * j] * act_dot(q + 32 * j, a[j], 0, 16) +
                              (int64_t)b->scales[2 * j + 1] * act_dot(q + 32 * j + 16, a[j], 16, 16);
            acc += a[j].d * (float)s;
        }
        acc *= f16_to_f32(b->d);
    }
    return acc;
}

}  // namespace
}  // namespace forgert::cpu
