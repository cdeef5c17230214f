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

constexpr bool i8_is_kquant(DType wt) { return wt == DType::Q4_K || wt == DType::Q5_K; }
// Types whose weights are scale * q + min with a min of their own (Q4_1: the block's m; Q4_K /
// Q5_K: the sub-block's -dmin * m): the kernels add min * dx * isum per block.
constexpr bool i8_has_min(DType wt) { return i8_is_kquant(wt) || wt == DType::Q4_1; }
// The "halves" types: a 32-weight block is signed quants (|q| <= 62) whose two 16-weight halves
// have a factor each (no mins); the integer dot is taken per half, and each half scaled by its
// own factor. Q6_K: d * its sub-block scale; the lattice types (kernels_iq_grid.h):
// base * (2 ls + 1), exact in f32, so the weights are the file's bit for bit.
constexpr bool i8_is_halves(DType wt) { return wt == DType::Q6_K || is_iq_lattice(wt); }
// Q3_K: w = d s_h q per 16-weight half h (q -4..3, s_h = the 6-bit scale less 32, -32..31). Each
// half's scale rides in the quants as Q2_K's do, negated so that they fit a signed byte:
// -(s_h q) lies in -128..124 (s_h q alone reaches 128 = -32 x -4). A block is then a Q8_0 block
// of quants -(s_h q) and scale -d (exact: an f16 negated), one integer dot a block instead of
// one a half, and every set runs it through its Q8_0 tiles (i8_panel_type): stored + 128.
constexpr bool i8_is_folded(DType wt) { return wt == DType::Q3_K; }
// Q2_K: w = d sc_h q - dmin m_h per 16-weight half h (q 0..3, sc_h and m_h 4-bit). The halves'
// scales ride in the quants (sc_h q, 0..45: an exact integer), so a block is one integer dot
// scaled by d; each half's min then takes its own activation sum S_h:
//   acc = fma((float)idot, d * dx, acc); acc = fma(-(dmin m_h), dx * (float)S_h, acc), h = 0, 1.
// (-(dmin m_h) is exact in f32: an f16 times a 4-bit integer; |S_h| <= 16 * 32639 < 2^24.)
constexpr bool i8_has_half_mins(DType wt) { return wt == DType::Q2_K; }
// The float terms min * dx * sum per (token, block) a type adds after its dot: one (i8_has_min),
// Q2_K's two (one a half), or none.
constexpr int i8_min_terms_per_block(DType wt) { return i8_has_half_mins(wt) ? 2 : i8_has_min(wt) ? 1 : 0; }
// The panel the tiles read for file type ft: every halves type's panel is Q6_K's (signed quants,
// the two halves' factors, the half terms), so they share Q6_K's tiles and differ in the repack;
// Q3_K's is Q8_0's (i8_is_folded).
constexpr DType i8_panel_type(DType ft) {
    return i8_is_halves(ft) ? DType::Q6_K : i8_is_folded(ft) ? DType::Q8_0 : ft;
}
// gemm_i8_types' bits of the lattice types: every set whose gemm_i8 takes Q6_K's halves takes them.
constexpr uint64_t kI8LatticeTypes = i8_type_bit(DType::IQ2_XXS) | i8_type_bit(DType::IQ2_XS) |
                                     i8_type_bit(DType::IQ2_S) | i8_type_bit(DType::IQ3_XXS) | i8_type_bit(DType::IQ3_S) |
                                     i8_type_bit(DType::IQ1_S) | i8_type_bit(DType::IQ1_M);

// f(DTypeTag<t>{}) for the file types whose panel is i8_repack_panel's from the file's blocks
// (Q8_0, Q4_0, Q4_1, Q5_0, Q2_K ... Q6_K; Q3_K on Q8_0's steps, i8_is_folded): true, or false
// for any other type (f not called). The NEON sets' gemm_i8 dispatch.
template <class F>
inline bool i8_file_type_visit(DType wt, F&& f) {
    switch (wt) {
        case DType::Q8_0: f(DTypeTag<DType::Q8_0>{}); return true;
        case DType::Q4_0: f(DTypeTag<DType::Q4_0>{}); return true;
        case DType::Q4_1: f(DTypeTag<DType::Q4_1>{}); return true;
        case DType::Q5_0: f(DTypeTag<DType::Q5_0>{}); return true;
        case DType::Q2_K: f(DTypeTag<DType::Q2_K>{}); return true;
        case DType::Q3_K: f(DTypeTag<DType::Q3_K>{}); return true;
        case DType::Q4_K: f(DTypeTag<DType::Q4_K>{}); return true;
        case DType::Q5_K: f(DTypeTag<DType::Q5_K>{}); return true;
        case DType::Q6_K: f(DTypeTag<DType::Q6_K>{}); return true;
        default: return false;
    }
}

// Q5_0's quant i as stored: the nibble plus bit i of qh as bit 4 (0..31).
inline int i8_q5_0_u(const uint8_t* blk, int i) {
    const auto* q = reinterpret_cast<const block_q5_0*>(blk);
    uint32_t qh;
    std::memcpy(&qh, q->qh, 4);
    return (i < 16 ? q->qs[i] & 15 : q->qs[i - 16] >> 4) | (int)((qh >> i) & 1) << 4;
}

// Quant i of one Q8_0 / Q4_0 / Q5_0 block as a signed integer (Q4_0: nibble - 8; Q5_0: its
// 5-bit quant - 16).
inline int i8_quant(DType wt, const uint8_t* blk, int i) {
    if (wt == DType::Q8_0) return reinterpret_cast<const block_q8_0*>(blk)->qs[i];
    if (wt == DType::Q5_0) return i8_q5_0_u(blk, i) - 16;
    const uint8_t b = reinterpret_cast<const block_q4_0*>(blk)->qs[i % 16];
    return (i < 16 ? b & 15 : b >> 4) - 8;
}

inline float i8_block_scale(const uint8_t* blk) {  // d leads both block layouts
    uint16_t h;
    std::memcpy(&h, blk, 2);
    return f16_to_f32(h);
}

// Sub-block j's two factors from its K-quant super-block's d, dmin and packed scales (Q4_K / Q5_K:
// d sc and -(dmin m); Q6_K: its halves' d sc, dmin unused): gemm_i8's definition, shared by
// I8RowBlocks and the SIMD repacks.
inline void i8_kquant_factors(DType wt, float d, float dmin, const uint8_t* scales, int j, float& f0, float& f1) {
    if (wt == DType::Q6_K) {
        const int8_t* sc = reinterpret_cast<const int8_t*>(scales) + 2 * j;
        f0 = d * (float)sc[0], f1 = d * (float)sc[1];
        return;
    }
    int sc, m;
    q4_K_scale_min(scales, j, sc, m);
    f0 = d * (float)sc, f1 = -(dmin * (float)m);
}

// One row's 32-weight blocks as gemm_i8 sees them: quants q[32] (signed; K-quants 0..15 or
// 0..31; Q4_1 0..15), scale and min (w = scale * q + min; min 0 for Q8_0 / Q4_0 / Q5_0; the halves
// types: the two halves' factors; Q2_K: sc_h q, scale d, min and min1 the halves' mins; Q3_K:
// -(s_h q), scale -d, min 0). K-quant and lattice blocks are the sub-blocks of a 256-weight
// super-block: the caller passes b, this decodes super-block b / 8.
struct I8RowBlocks {
    DType wt;
    const uint8_t* row;
    int64_t sb = -1;  // super-block held in q256
    uint8_t q256[FG_QK_K];
    const uint8_t* scales = nullptr;
    float d = 0, dmin = 0;
    int m[8][2];  // lattice types: each sub-block's multipliers 2 ls + 1 (d: the super-block's base)
    int8_t sc3[16];  // Q3_K: the 16 sub-block scales, -32..31
    float min1 = 0;  // Q2_K: the second half's min, -(dmin m_1) (min: the first's)

    // The same quants + i8_offset(wt) as bytes (the panel's form), without per-quant arithmetic
    // where the file's bytes already are that: Q4_0's nibbles, K-quants' unpacked quants (Q5_0:
    // its 5-bit quants).
    void block_u8(int64_t b, uint8_t* qo, float& scale, float& min) {
        if (i8_is_kquant(wt) || i8_is_halves(wt)) {  // the halves types: signed quants as their bytes
            scale_min(b, scale, min);
            std::memcpy(qo, q256 + (b % 8) * FG_QK, FG_QK);
            return;
        }
        if (i8_has_half_mins(wt)) {  // Q2_K: sc_h q
            scale_min(b, scale, min);
            for (int i = 0; i < FG_QK; i++) qo[i] = (uint8_t)(q2_scale(b, i / 16) * q256[(b % 8) * FG_QK + i]);
            return;
        }
        if (i8_is_folded(wt)) {  // Q3_K: -(s_h q) + 128, as Q8_0's panel holds its quants
            int q[FG_QK];
            block(b, q, scale, min);
            for (int i = 0; i < FG_QK; i++) qo[i] = (uint8_t)(q[i] + 128);
            return;
        }
        const uint8_t* blk = row + b * dtype_block_bytes(wt);
        scale = i8_block_scale(blk), min = wt == DType::Q4_1 ? i8_block_scale(blk + 2) : 0.0f;
        if (wt == DType::Q8_0) {
            for (int i = 0; i < FG_QK; i++) qo[i] = (uint8_t)(blk[2 + i] ^ 0x80);  // q + 128
        } else if (wt == DType::Q5_0) {
            for (int i = 0; i < FG_QK; i++) qo[i] = (uint8_t)i8_q5_0_u(blk, i);  // q + 16
        } else {
            const uint8_t* qs = blk + (wt == DType::Q4_1 ? 4 : 2);  // Q4_1: d, m, then the nibbles
            for (int i = 0; i < 16; i++) qo[i] = qs[i] & 15, qo[i + 16] = qs[i] >> 4;
        }
    }

    // K-quants: decodes super-block b / 8 (once per 8 blocks) and sub-block b % 8's factors
    // (Q6_K: the two halves' scales, as scale and min).
    void scale_min(int64_t b, float& scale, float& min) {
        if (b / 8 != sb) {
            sb = b / 8;
            const uint8_t* blk = row + sb * dtype_block_bytes(wt);
            if (is_iq_lattice(wt)) {
                d = iq_grid_base(wt, blk);
                for (int j = 0; j < FG_QK_K / FG_QK; j++) {
                    IqSub s;
                    iq_grid_sub(wt, blk, j, s);
                    std::memcpy(q256 + j * FG_QK, s.q, FG_QK);
                    m[j][0] = s.m[0], m[j][1] = s.m[1];
                }
            } else if (wt == DType::Q2_K) {
                const auto* q2 = reinterpret_cast<const block_q2_K*>(blk);
                q2_K_unpack(q2, q256);
                scales = q2->scales, d = f16_to_f32(q2->d), dmin = f16_to_f32(q2->dmin);
            } else if (wt == DType::Q3_K) {
                int sc[16];
                q3_K_unpack(reinterpret_cast<const block_q3_K*>(blk), reinterpret_cast<int8_t*>(q256), sc);
                for (int i = 0; i < 16; i++) sc3[i] = (int8_t)sc[i];
                scales = reinterpret_cast<const uint8_t*>(sc3), d = f16_to_f32(reinterpret_cast<const block_q3_K*>(blk)->d);
            } else if (i8_is_halves(wt)) {
                const auto* q6 = reinterpret_cast<const block_q6_K*>(blk);
                q6_K_unpack(q6, reinterpret_cast<int8_t*>(q256));
                scales = reinterpret_cast<const uint8_t*>(q6->scales), d = f16_to_f32(q6->d);
            } else {
                unpack_q45_K(wt, blk, q256, scales, d, dmin);
            }
        }
        if (is_iq_lattice(wt)) {
            scale = d * (float)m[b % 8][0], min = d * (float)m[b % 8][1];
            return;
        }
        if (wt == DType::Q2_K) {  // d; the halves' mins -(dmin m_h)
            scale = d, min = -(dmin * (float)(scales[2 * (b % 8)] >> 4));
            min1 = -(dmin * (float)(scales[2 * (b % 8) + 1] >> 4));
            return;
        }
        if (wt == DType::Q3_K) {  // -d: the quants carry -s_h
            scale = -d, min = 0.0f;
            return;
        }
        i8_kquant_factors(wt, d, dmin, scales, (int)(b % 8), scale, min);  // Q6_K (the halves), Q4_K, Q5_K
    }

    // Q2_K: sub-block 2 (b % 8) + h's scale (4 bits); scale_min(b) decoded its super-block.
    int q2_scale(int64_t b, int h) const { return scales[2 * (b % 8) + h] & 15; }

    void block(int64_t b, int* q, float& scale, float& min) {
        if (i8_has_half_mins(wt)) {
            scale_min(b, scale, min);
            for (int i = 0; i < FG_QK; i++) q[i] = q2_scale(b, i / 16) * q256[(b % 8) * FG_QK + i];
        } else if (i8_is_folded(wt)) {
            scale_min(b, scale, min);
            for (int i = 0; i < FG_QK; i++)
                q[i] = -sc3[2 * (b % 8) + i / 16] * reinterpret_cast<const int8_t*>(q256)[(b % 8) * FG_QK + i];
        } else if (i8_is_halves(wt)) {
            scale_min(b, scale, min);
            for (int i = 0; i < FG_QK; i++) q[i] = reinterpret_cast<const int8_t*>(q256)[(b % 8) * FG_QK + i];
        } else if (i8_is_kquant(wt)) {
            scale_min(b, scale, min);
            for (int i = 0; i < FG_QK; i++) q[i] = q256[(b % 8) * FG_QK + i];
        } else if (wt == DType::Q4_1) {
            uint8_t qo[FG_QK];
            block_u8(b, qo, scale, min);
            for (int i = 0; i < FG_QK; i++) q[i] = qo[i];
        } else {
            const uint8_t* blk = row + b * dtype_block_bytes(wt);
            for (int i = 0; i < FG_QK; i++) q[i] = i8_quant(wt, blk, i);
            scale = i8_block_scale(blk), min = 0.0f;
        }
    }
};

// The activation scale of one block for `parts`: hi alone stands for x / (256 d).
inline float i8_act_scale(const BlockQ8Act& a, int parts) { return parts == 2 ? a.d : a.d * 256.0f; }

// The integer two part sums stand for: 256 hi + lo, or hi alone with one part.
inline int32_t i8_join_parts(int32_t hi, int32_t lo, int parts) { return parts == 2 ? 256 * hi + lo : hi; }

// Block i's min terms (i8_min_terms_per_block(wt) floats at m), as gemm_i8_scalar makes them:
// dx * (float)isum, or Q2_K's dx * (float)S_h per half. xs: the i8_act_sums of n blocks, i among them.
inline void i8_block_min_terms(DType wt, const BlockQ8Act& a, const int32_t* xs, int64_t n, int64_t i, int parts,
                               float* m) {
    const float dx = i8_act_scale(a, parts);
    if (i8_has_half_mins(wt)) {
        const int32_t* s2 = xs + 2 * n + 4 * i;  // [part][half]
        for (int h = 0; h < 2; h++) m[h] = dx * (float)i8_join_parts(s2[h], s2[2 + h], parts);
    } else if (i8_has_min(wt)) {
        m[0] = dx * (float)i8_join_parts(xs[2 * i], xs[2 * i + 1], parts);
    }
}

// Per block: acc = fma((float)idot, scale * dx, acc), then for K-quants and Q4_1
// acc = fma(min, dx * (float)isum, acc) with isum the integer sum of the block's activations.
// The halves types (Q6_K, the lattice types): acc = fma((float)idot0, scale0 * dx, acc), then the
// same for the second half. Q2_K: the block's dot, then each half's min (i8_has_half_mins).
// Q3_K: Q8_0's steps on its folded block (i8_is_folded).
void gemm_i8_scalar(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                    const int32_t* /*xs*/, int64_t nb, int64_t n_tok, int parts, float* out, int64_t out_stride,
                    uint8_t* /*work*/) {
    if (wt != DType::Q8_0 && wt != DType::Q4_0 && wt != DType::Q5_0 && !i8_has_min(wt) && !i8_is_halves(wt) &&
        !i8_has_half_mins(wt) && !i8_is_folded(wt))
        throw std::logic_error("gemm_i8: unsupported weight type");
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t t = 0; t < n_tok; t++) {
            I8RowBlocks rb{wt, w + r * w_stride};
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int q[FG_QK];
                float scale, min;
                rb.block(b, q, scale, min);
                const BlockQ8Act& a = x[t * nb + b];
                const float dx = i8_act_scale(a, parts);
                if (i8_is_halves(wt)) {  // scale: first half's factor, min: the second's
                    for (int h = 0; h < 2; h++) {
                        int32_t hi = 0, lo = 0;
                        for (int i = 16 * h; i < 16 * h + 16; i++) hi += q[i] * a.hi[i], lo += q[i] * a.lo[i];
                        acc = std::fma((float)i8_join_parts(hi, lo, parts), (h ? min : scale) * dx, acc);
                    }
                    continue;
                }
                int32_t hi = 0, lo = 0, shi[2] = {0, 0}, slo[2] = {0, 0};
                for (int i = 0; i < FG_QK; i++) {
                    hi += q[i] * a.hi[i], lo += q[i] * a.lo[i];
                    shi[i / 16] += a.hi[i], slo[i / 16] += a.lo[i];
                }
                acc = std::fma((float)i8_join_parts(hi, lo, parts), scale * dx, acc);
                if (i8_has_half_mins(wt)) {  // Q2_K: each half's min by its own sum
                    for (int h = 0; h < 2; h++)
                        acc = std::fma(h ? rb.min1 : min, dx * (float)i8_join_parts(shi[h], slo[h], parts), acc);
                } else if (i8_has_min(wt)) {
                    acc = std::fma(min, dx * (float)i8_join_parts(shi[0] + shi[1], slo[0] + slo[1], parts), acc);
                }
            }
            out[t * out_stride + r] = acc;
        }
    }
}

// Rows [r, r + nr) of w (nr <= kI8Rows; missing rows repeat row r) into one panel
// (layout: kI8PanelBlockBytes per block, see cpu_kernels.h). Quants are stored unsigned,
// q + o with o = i8_offset(wt); the kernels subtract o * sum(x) through xs.
constexpr int i8_offset(DType wt) {
    return wt == DType::Q8_0 || i8_is_folded(wt) ? 128 : wt == DType::Q4_0 ? 8 : wt == DType::Q5_0 ? 16 : 0;
}

void i8_repack_panel(DType wt, const uint8_t* w, size_t w_stride, int64_t r, int nr, int64_t nb, uint8_t* wp) {
    for (int i = 0; i < kI8Rows; i++) {
        I8RowBlocks rb{wt, w + (r + (i < nr ? i : 0)) * w_stride};
        for (int64_t b = 0; b < nb; b++) {
            uint8_t* pb = wp + b * kI8PanelBlockBytes;
            uint8_t qo[FG_QK];
            rb.block_u8(b, qo, reinterpret_cast<float*>(pb + kI8PanelScales)[i], reinterpret_cast<float*>(pb + kI8PanelMins)[i]);
            for (int g = 0; g < FG_QK / 4; g++) std::memcpy(pb + g * kI8Rows * 4 + i * 4, qo + 4 * g, 4);
            if (i8_has_half_mins(wt)) reinterpret_cast<float*>(pb + kI8PanelHalfTerms)[i] = rb.min1;  // Q2_K
            if (i8_is_halves(wt))
                for (int h = 0; h < 2; h++) {
                    int32_t s = 0;
                    for (int c = 16 * h; c < 16 * h + 16; c++) s += (int8_t)qo[c];
                    reinterpret_cast<int32_t*>(pb + kI8PanelHalfTerms)[h * kI8Rows + i] = -128 * s;
                }
        }
    }
}

}  // namespace
}  // namespace forgert::cpu
