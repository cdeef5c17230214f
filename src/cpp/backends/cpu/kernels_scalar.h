// Portable scalar building blocks, shared by the generic kernel set and by the
// SIMD sets for their tails. Included into each kernels_*.cpp (internal linkage).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "cpu_kernels.h"
#include "kernels_iq4.h"
#include "kernels_kquant.h"

namespace forgert::cpu {
namespace {

// Bytes of one block (the lattice types: one super-block) of a quantized weight type, at compile
// time (dtype_block_bytes at run time).
template <DType WT>
constexpr int64_t block_bytes() {
    return WT == DType::Q8_0      ? sizeof(block_q8_0)
           : WT == DType::Q4_0    ? sizeof(block_q4_0)
           : WT == DType::Q5_0    ? sizeof(block_q5_0)
           : WT == DType::Q5_1    ? sizeof(block_q5_1)
           : WT == DType::IQ4_NL  ? sizeof(block_iq4_nl)
           : WT == DType::IQ2_XXS ? sizeof(block_iq2_xxs)
           : WT == DType::IQ2_XS  ? sizeof(block_iq2_xs)
           : WT == DType::IQ2_S   ? sizeof(block_iq2_s)
           : WT == DType::IQ3_XXS ? sizeof(block_iq3_xxs)
           : WT == DType::IQ3_S   ? sizeof(block_iq3_s)
           : WT == DType::IQ1_S   ? sizeof(block_iq1_s)
           : WT == DType::IQ1_M   ? sizeof(block_iq1_m)
                                  : sizeof(block_q4_1);
}

// Q5_0 / Q5_1's 32 quants (0..31, weight order): the nibbles of qs as Q4_0 plus bit i of
// qh (4 bytes, little-endian) as bit 4.
inline void q5_unpack(const uint8_t* qh4, const uint8_t* qs, uint8_t* q) {
    const uint32_t qh = (uint32_t)qh4[0] | (uint32_t)qh4[1] << 8 | (uint32_t)qh4[2] << 16 | (uint32_t)qh4[3] << 24;
    for (int i = 0; i < FG_QK / 2; i++) {
        q[i] = (uint8_t)((qs[i] & 0x0f) | ((qh >> i) & 1) << 4);
        q[i + FG_QK / 2] = (uint8_t)((qs[i] >> 4) | ((qh >> (i + FG_QK / 2)) & 1) << 4);
    }
}

inline void quantize_row_q8_scalar(const float* x, BlockQ8Act* y, int64_t n) {
    for (int64_t b = 0; b < n / FG_QK; b++) {
        const float* xb = x + b * FG_QK;
        float amax = 0.0f, sum = 0.0f;
        for (int i = 0; i < FG_QK; i++) amax = std::fmax(amax, std::fabs(xb[i]));
        for (int i = 0; i < FG_QK; i++) sum += xb[i];
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int i = 0; i < FG_QK; i++) {
            const float v = xb[i] * id;
            const float h = std::nearbyint(v);
            const float l = std::fmin(std::fmax(std::nearbyint((v - h) * 256.0f), -127.0f), 127.0f);
            y[b].hi[i] = (int8_t)h;
            y[b].lo[i] = (int8_t)l;
        }
        y[b].d = d * (1.0f / 256.0f);
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
    if (wt == DType::IQ4_NL) return iq4_nl_block_dot(wb, a);
    if (wt == DType::MXFP4) return mxfp4_block_dot(wb, a);
    int32_t s = 0;  // sum of q[i] * (256 hi[i] + lo[i]); |s| < 2^28
    float d, m = 0.0f;
    if (wt == DType::Q8_0) {
        const auto* b = reinterpret_cast<const block_q8_0*>(wb);
        for (int i = 0; i < FG_QK; i++) s += (int32_t)b->qs[i] * (256 * a.hi[i] + a.lo[i]);
        d = f16_to_f32(b->d);
    } else if (wt == DType::Q5_0 || wt == DType::Q5_1) {
        uint8_t q[FG_QK];
        if (wt == DType::Q5_0) {
            const auto* b = reinterpret_cast<const block_q5_0*>(wb);
            q5_unpack(b->qh, b->qs, q);
            d = f16_to_f32(b->d), m = -16.0f * d;
        } else {
            const auto* b = reinterpret_cast<const block_q5_1*>(wb);
            q5_unpack(b->qh, b->qs, q);
            d = f16_to_f32(b->d), m = f16_to_f32(b->m);
        }
        for (int i = 0; i < FG_QK; i++) s += (int32_t)q[i] * (256 * a.hi[i] + a.lo[i]);
    } else {
        const uint8_t* qs;
        if (wt == DType::Q4_0) {
            const auto* b = reinterpret_cast<const block_q4_0*>(wb);
            qs = b->qs, d = f16_to_f32(b->d), m = -8.0f * d;
        } else {
            const auto* b = reinterpret_cast<const block_q4_1*>(wb);
            qs = b->qs, d = f16_to_f32(b->d), m = f16_to_f32(b->m);
        }
        for (int i = 0; i < FG_QK / 2; i++) {
            s += (qs[i] & 0x0f) * (256 * a.hi[i] + a.lo[i]);
            s += (qs[i] >> 4) * (256 * a.hi[i + FG_QK / 2] + a.lo[i + FG_QK / 2]);
        }
    }
    return d * a.d * (float)s + m * a.sum;
}

// parts: unused (lo = 0 where it is 1, KernelSet::gemm_q: the same integer dots).
inline void gemm_q_scalar(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1,
                          const BlockQ8Act* x, int64_t nb, int64_t n_tok, float* out, int64_t out_stride,
                          int /*parts*/ = 2) {
    const int64_t bb = dtype_block_bytes(wt);
    // Rows outer, tokens inner: a batch's decode rows (2-15 tokens) read each weight row once
    // from memory, the later tokens from L1.
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t* row = w + r * w_stride;
        for (int64_t t = 0; t < n_tok; t++) {
            float acc = 0.0f;
            if (is_iq_lattice(wt)) {  // its own float steps, fixed (kernels_iq_grid.h)
                out[t * out_stride + r] = iq_grid_row_dot(wt, row, x + t * nb, nb / kActBlocksPerSuper);
                continue;
            }
            if (has_super_blocks(wt)) {  // one super-block per kActBlocksPerSuper activation blocks
                for (int64_t b = 0; b < nb / kActBlocksPerSuper; b++) {
                    const BlockQ8Act* xb = x + t * nb + b * kActBlocksPerSuper;
                    acc += wt == DType::IQ4_XS ? iq4_xs_super_block_dot(row + b * bb, xb)
                                               : super_block_dot_scalar(wt, row + b * bb, xb);
                }
                out[t * out_stride + r] = acc;
                continue;
            }
            for (int64_t b = 0; b < nb; b++) acc += block_dot_scalar(wt, row + b * bb, x[t * nb + b]);
            out[t * out_stride + r] = acc;
        }
    }
}

// Dequantize one 32-weight block to f32.
inline void dequantize_block(DType wt, const uint8_t* blk, float* y) {
    if (wt == DType::IQ4_NL) return iq4_nl_dequantize_block(blk, y);
    if (wt == DType::MXFP4) return mxfp4_dequantize_block(blk, y);
    if (wt == DType::Q8_0) {
        const auto* q = reinterpret_cast<const block_q8_0*>(blk);
        const float d = f16_to_f32(q->d);
        for (int i = 0; i < FG_QK; i++) y[i] = d * q->qs[i];
        return;
    }
    if (wt == DType::Q5_0) {
        const auto* b = reinterpret_cast<const block_q5_0*>(blk);
        uint8_t q[FG_QK];
        q5_unpack(b->qh, b->qs, q);
        const float d = f16_to_f32(b->d);
        for (int i = 0; i < FG_QK; i++) y[i] = d * (float)(q[i] - 16);  // as ggml: an exact product
        return;
    }
    if (wt == DType::Q5_1) {
        const auto* b = reinterpret_cast<const block_q5_1*>(blk);
        uint8_t q[FG_QK];
        q5_unpack(b->qh, b->qs, q);
        const float d = f16_to_f32(b->d), m = f16_to_f32(b->m);
        for (int i = 0; i < FG_QK; i++) y[i] = d * (float)q[i] + m;  // as ggml: one rounding, in the add
        return;
    }
    const uint8_t* qs;
    float d, m;
    if (wt == DType::Q4_0) {
        const auto* q = reinterpret_cast<const block_q4_0*>(blk);
        d = f16_to_f32(q->d), m = -8.0f * d, qs = q->qs;
    } else {
        const auto* q = reinterpret_cast<const block_q4_1*>(blk);
        d = f16_to_f32(q->d), m = f16_to_f32(q->m), qs = q->qs;
    }
    for (int i = 0; i < FG_QK / 2; i++) {
        y[i] = d * (qs[i] & 0x0f) + m;
        y[i + FG_QK / 2] = d * (qs[i] >> 4) + m;
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

inline void silu_mul_row_scalar(const float* g, const float* u, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

inline void gelu_mul_row_scalar(const float* g, const float* u, float* y, int64_t n) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    for (int64_t i = 0; i < n; i++)
        y[i] = 0.5f * g[i] * (1.0f + std::tanh(kSqrt2OverPi * (g[i] + 0.044715f * g[i] * g[i] * g[i]))) * u[i];
}

// s = cap * tanh(s / cap) over a block's scores (rows kAttnChunk apart), Gemma 2's soft-capping.
inline void soft_cap_scores(float* s, int nq, int64_t nk, float cap) {
    const float inv = 1.0f / cap;
    for (int i = 0; i < nq; i++)
        for (int64_t j = 0; j < nk; j++) s[i * kAttnChunk + j] = cap * std::tanh(s[i * kAttnChunk + j] * inv);
}

// Asks for one K row and one V row of hd f16 values (every 64-byte line of each) ahead of use.
inline void prefetch_row(const uint16_t* k, const uint16_t* v, int hd) {
    for (int c = 0; c < hd; c += 32) {
        __builtin_prefetch(k + c);
        __builtin_prefetch(v + c);
    }
}

// The online softmax's running state for nq queries (nq <= kMaxGroupQueries): each query's max
// score m and denominator l so far; its output rows start at 0 and accumulate unnormalized.
struct OnlineSoftmax {
    float m[kMaxGroupQueries], l[kMaxGroupQueries];
    OnlineSoftmax(float* const* out, int nq, int hd) {
        for (int i = 0; i < nq; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
            std::memset(out[i], 0, sizeof(float) * hd);
        }
    }
    // out_i /= l_i, and lse_i = m_i + log l_i (what the merge of key ranges reads) where lse is given
    void finish(float* const* out, int nq, int hd, float* lse) const {
        for (int i = 0; i < nq; i++) {
            const float inv = 1.0f / l[i];
            for (int d = 0; d < hd; d++) out[i][d] *= inv;
            if (lse) lse[i] = m[i] + std::log(l[i]);
        }
    }
};

// The online softmax's step for nq rows of scores s (rows kAttnChunk apart) of one key chunk, row
// i's keys j < n_keys[i] (<= 0: none), block_keys the most of them: m_run / l_run updated, each row
// turned into weights e^(s - m) (0 past its limit, up to block_keys) and its output's correction
// e^(m_old - m_new) (1 without keys here). A query's steps use only its own row. One query at a
// time with Ops' max and exp_sub (the portable set); the x86 and NEON sets run attn_softmax_rows
// (kernels_attention_softmax.h), every row's correction in one vector exp.
template <class Ops>
void softmax_rows_each(float* s, int nq, const int64_t* n_keys, int64_t block_keys, float* m_run, float* l_run,
                       float* corrections) {
    for (int i = 0; i < nq; i++) {
        float* si = s + i * kAttnChunk;
        corrections[i] = 1.0f;
        if (n_keys[i] <= 0) {  // nothing for this query in this chunk: weights 0
            std::memset(si, 0, sizeof(float) * block_keys);
            continue;
        }
        const float m = std::max(m_run[i], Ops::max(si, n_keys[i]));
        const float correction = std::exp(m_run[i] - m);  // 0 on the first chunk
        const float chunk_sum = Ops::exp_sub(si, n_keys[i], m);
        l_run[i] = l_run[i] * correction + chunk_sum;
        m_run[i] = m;
        corrections[i] = correction;
        // keys past this query's causal limit weigh 0 in the block's weighted sum
        std::memset(si + n_keys[i], 0, sizeof(float) * (block_keys - n_keys[i]));
    }
}

// Online-softmax attention shared by every kernel set: `Ops` supplies the
// inner loops (f16 -> f32 conversion, dot products, exp, axpy) per ISA.
// Ops supplies: kQueryBlock (queries scored together), load_keys (a chunk of K rows to
// f32 in whatever layout its scores() reads), scores (the block's queries x the chunk's
// keys, rows kAttnChunk apart), softmax_rows (softmax_rows_each's contract) and
// weighted_sum_block.
template <class Ops>
void attention_group_impl(const float* const* q, float* const* out, const int64_t* len, int nq, const uint16_t* k,
                          const uint16_t* v, int64_t kv_stride, int hd, float scale, float softcap, float* work,
                          float* lse) {
    constexpr int QB = Ops::kQueryBlock;
    static_assert(QB <= kMaxQueryBlock, "attention work buffer");
    float* kf = work;                       // [kAttnChunk, hd], layout of Ops::load_keys
    float* vf = kf + kAttnChunk * hd;       // [kAttnChunk, hd]
    float* s = vf + kAttnChunk * hd;        // [QB, kAttnChunk]
    float* acc = s + QB * kAttnChunk;       // [hd]
    int64_t max_len = 0;
    for (int i = 0; i < nq; i++) max_len = std::max(max_len, len[i]);
    OnlineSoftmax sm(out, nq, hd);  // callers pass nq <= kMaxGroupQueries
    float* m_run = sm.m;
    float* l_run = sm.l;
    for (int64_t j0 = 0; j0 < max_len; j0 += kAttnChunk) {
        const int64_t nj = std::min<int64_t>(kAttnChunk, max_len - j0);
        Ops::load_keys(k + j0 * kv_stride, kv_stride, nj, hd, kf);
        // The next chunk's K and V rows are fetched while this chunk's V rows are converted: a
        // head's rows lie kv_stride apart (every KV head of a position is one cache row), too
        // sparse for the hardware prefetchers, and decode attention streams them from DRAM once
        // the caches of all layers outgrow the CPU's caches (SmolLM2 at 2048 tokens: 47 MB).
        const int64_t next = std::min<int64_t>(kAttnChunk, max_len - j0 - nj);
        for (int64_t j = 0; j < nj; j++) {
            if (j < next) prefetch_row(k + (j0 + nj + j) * kv_stride, v + (j0 + nj + j) * kv_stride, hd);
            Ops::to_f32(v + (j0 + j) * kv_stride, vf + j * hd, hd);
        }
        for (int i0 = 0; i0 < nq; i0 += QB) {
            const int nb = std::min(QB, nq - i0);
            // each query's causal limit in this chunk (<= 0: none), and the most of them
            int64_t n_keys[kMaxQueryBlock], block_keys = 0;
            for (int i = 0; i < nb; i++) {
                n_keys[i] = std::min<int64_t>(nj, len[i0 + i] - j0);
                block_keys = std::max(block_keys, n_keys[i]);
            }
            if (block_keys <= 0) continue;
            Ops::scores(q + i0, nb, kf, block_keys, hd, scale, s);
            if (softcap > 0.0f) soft_cap_scores(s, nb, block_keys, softcap);
            float corrections[kMaxQueryBlock];
            Ops::softmax_rows(s, nb, n_keys, block_keys, m_run + i0, l_run + i0, corrections);
            // out_i = out_i * correction_i + sum_j p_ij v_j for the block's queries at once: each
            // V row is loaded once for all of them.
            Ops::weighted_sum_block(s, nb, vf, block_keys, hd, corrections, out + i0, acc);
        }
    }
    sm.finish(out, nq, hd, lse);
}

// weighted_sum for each query of a block (p rows kAttnChunk apart), one after the other.
template <class Ops>
void weighted_sum_each(const float* p, int nq, const float* vf, int64_t nk, int hd, const float* corrections,
                       float* const* out, float* acc) {
    for (int i = 0; i < nq; i++) Ops::weighted_sum(p + i * kAttnChunk, vf, nk, hd, corrections[i], out[i], acc);
}

struct ScalarAttentionOps {
    static constexpr int kQueryBlock = 1;
    static void softmax_rows(float* s, int nq, const int64_t* n_keys, int64_t block_keys, float* m_run, float* l_run,
                             float* corrections) {
        softmax_rows_each<ScalarAttentionOps>(s, nq, n_keys, block_keys, m_run, l_run, corrections);
    }
    static void weighted_sum_block(const float* p, int nq, const float* vf, int64_t nk, int hd,
                                   const float* corrections, float* const* out, float* acc) {
        weighted_sum_each<ScalarAttentionOps>(p, nq, vf, nk, hd, corrections, out, acc);
    }
    static void to_f32(const uint16_t* x, float* y, int64_t n) { f16_to_f32_row_scalar(x, y, n); }
    // kf[j * hd + c]: the chunk's keys as rows
    static void load_keys(const uint16_t* k, int64_t kv_stride, int64_t nj, int hd, float* kf) {
        for (int64_t j = 0; j < nj; j++) f16_to_f32_row_scalar(k + j * kv_stride, kf + j * hd, hd);
    }
    static void scores(const float* const* q, int nq, const float* kf, int64_t nk, int hd, float scale, float* s) {
        for (int i = 0; i < nq; i++)
            for (int64_t j = 0; j < nk; j++) {
                float d = 0.0f;
                for (int c = 0; c < hd; c++) d += q[i][c] * kf[j * hd + c];
                s[i * kAttnChunk + j] = d * scale;
            }
    }
    static float max(const float* s, int64_t n) {
        float m = -INFINITY;
        for (int64_t j = 0; j < n; j++) m = std::max(m, s[j]);
        return m;
    }
    static float exp_sub(float* s, int64_t n, float m) {
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) sum += (s[j] = std::exp(s[j] - m));
        return sum;
    }
    // out = out * correction + sum_j p[j] * vf[j]
    static void weighted_sum(const float* p, const float* vf, int64_t nk, int hd, float correction, float* out,
                             float*) {
        for (int c = 0; c < hd; c++) out[c] *= correction;
        for (int64_t j = 0; j < nk; j++)
            for (int c = 0; c < hd; c++) out[c] += p[j] * vf[j * hd + c];
    }
};

// attention_group's n_kv groups one after the other: one_head(q, out, len, g, k, v, lse) per KV
// head h, on its g = nq / n_kv queries and its columns h hd .. of the K and V rows.
template <class OneHead>
void attention_each_head(OneHead&& one_head, const float* const* q, float* const* out, const int64_t* len, int nq,
                         int n_kv, const uint16_t* k, const uint16_t* v, int hd, float* lse) {
    const int g = nq / n_kv;
    for (int h = 0; h < n_kv; h++)
        one_head(q + h * g, out + h * g, len + h * g, g, k + (int64_t)h * hd, v + (int64_t)h * hd,
                 lse ? lse + h * g : nullptr);
}

inline void attention_group_scalar(const float* const* q, float* const* out, const int64_t* len, int nq, int n_kv,
                                   const uint16_t* k, const uint16_t* v, int64_t kv_stride, int hd, float scale,
                                   float softcap, float* work, float* lse) {
    attention_each_head([&](const float* const* qh, float* const* oh, const int64_t* lh, int g, const uint16_t* kh,
                            const uint16_t* vh, float* lseh) {
        attention_group_impl<ScalarAttentionOps>(qh, oh, lh, g, kh, vh, kv_stride, hd, scale, softcap, work, lseh);
    }, q, out, len, nq, n_kv, k, v, hd, lse);
}

}  // namespace
}  // namespace forgert::cpu

namespace forgert::cpu {
namespace {  // internal: each ISA file compiles its own copy
// One row of any weight type to f32 (embedding lookups, and the panel GEMM's K-quant rows).
inline void dequantize_row(DType wt, const uint8_t* row, float* y, int64_t cols) {
    if (wt == DType::Q8_0 || wt == DType::Q4_0 || wt == DType::Q4_1 || wt == DType::Q5_0 || wt == DType::Q5_1 ||
        wt == DType::IQ4_NL || wt == DType::MXFP4) {
        for (int64_t b = 0; b < cols / FG_QK; b++) dequantize_block(wt, row + b * dtype_block_bytes(wt), y + b * FG_QK);
        return;
    }
    if (has_super_blocks(wt)) {
        for (int64_t b = 0; b < cols / FG_QK_K; b++) {
            const uint8_t* blk = row + b * dtype_block_bytes(wt);
            if (wt == DType::IQ4_XS) iq4_xs_dequantize_super_block(blk, y + b * FG_QK_K);
            else if (is_iq_lattice(wt)) iq_grid_dequantize_super_block(wt, blk, y + b * FG_QK_K);
            else dequantize_super_block(wt, blk, y + b * FG_QK_K);
        }
        return;
    }
    for (int64_t c = 0; c < cols; c++) y[c] = weight_to_f32(wt, row, c);
}
}  // namespace
}  // namespace forgert::cpu
