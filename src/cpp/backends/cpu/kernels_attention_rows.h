// Decode attention on any vector set: a GQA group's few queries (nq < kAttnBlockMinQueries)
// against K and V rows read straight from the f16 cache. The x86 sets (AttnRowVec: 8 or 16
// lanes, kernels_x86_attention_vec.inc) and NEON (NeonVec4: 4 lanes, kernels_neon_math.inc)
// instantiate it; the online softmax's step is kernels_attention_softmax.h's.
//
// Why its own loop: the query-block kernels (prefill) transpose a key chunk into f32 to share it
// among 8+ queries, and the older row ops converted every K and V chunk into f32 buffers and then
// scored one query at a time with a horizontal sum per key. Decode at depth is bound by those
// conversions and by the cache misses they stall on (SmolLM2 at 2048 keys, one thread of the
// Zen 5 VM: 94.5 us a layer with the caches warm, 16 GB/s of K/V; 8.3 GB/s streaming from memory
// at 4096 keys, cpu_ops_bench "attention"). Here each K or V vector is converted once, in
// registers, for all of a pass's queries; scores take one horizontal sum per 4 keys per query; a
// call takes several KV heads chunk by chunk; and the slice read next is prefetched while this
// one's keys are scored.
//
// A supplies, beside what attn_softmax_rows takes: kPassQueries (queries per pass: as many as
// keep the score and weighted-sum accumulators in registers), f16 (W cache values as floats),
// fma(a, b, c) = a b + c, mul, and sums4(s, a0..a3, scale): s[0..4) = scale * (the lanes' sum
// of a0 .. a3).
//
// Bits: a query's scores, softmax and weighted sums use only its own values, in an order fixed by
// the head size and its causal length: the same whatever other queries share the call.
//                                                   q[i]: [hd], k / v rows kv_stride apart: [hd]
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu_kernels.h"
#include "kernels_attention_softmax.h"
#include "kernels_scalar.h"

// Register arrays indexed by these small loops stay registers only once the loops are unrolled
// (GCC at -O2 left them in memory: 2.7x slower).
#ifndef FG_UNROLL
#define FG_UNROLL _Pragma("GCC unroll 16")
#endif

namespace forgert::cpu {
namespace {  // internal: each ISA file compiles its own copy

// s[i * kAttnChunk + j] = scale * q_i . k_j for NQ queries and keys j < nk, 4 keys at a time (a
// short last group repeats its last key; s rows have room for the whole group). K rows lie
// kv_stride apart; while scoring, rows pf .. pf + nk of K and V are prefetched (pf null: none).
template <class A, int NQ>
void attn_row_scores(const float* const* q, const uint16_t* k, int64_t kv_stride, int64_t nk, int hd, float scale,
                     float* s, const uint16_t* pf_k, const uint16_t* pf_v, int64_t n_pf) {
    for (int64_t j0 = 0; j0 < nk; j0 += 4) {
        const uint16_t* kr[4];
        FG_UNROLL for (int jj = 0; jj < 4; jj++) kr[jj] = k + std::min(j0 + jj, nk - 1) * kv_stride;
        for (int64_t j = j0; j < std::min(j0 + 4, n_pf); j++) prefetch_row(pf_k + j * kv_stride, pf_v + j * kv_stride, hd);
        typename A::V acc[NQ][4];
        FG_UNROLL for (int i = 0; i < NQ; i++)
            FG_UNROLL for (int jj = 0; jj < 4; jj++) acc[i][jj] = A::zero();
        for (int c = 0; c < hd; c += A::W) {
            typename A::V qv[NQ];
            FG_UNROLL for (int i = 0; i < NQ; i++) qv[i] = A::load(q[i] + c);
            FG_UNROLL for (int jj = 0; jj < 4; jj++) {
                const typename A::V kz = A::f16(kr[jj] + c);
                FG_UNROLL for (int i = 0; i < NQ; i++) acc[i][jj] = A::fma(qv[i], kz, acc[i][jj]);
            }
        }
        FG_UNROLL for (int i = 0; i < NQ; i++)
            A::sums4(s + i * kAttnChunk + j0, acc[i][0], acc[i][1], acc[i][2], acc[i][3], scale);
    }
}

// out_i = out_i * correction_i + sum_{j < nk} p_ij v_j for NQ queries (p rows kAttnChunk apart),
// U vectors of dims at a time from dim c0 (c0 + U W <= hd): each V vector converted once for the
// pass's queries; per query and dim, the correction, then one fma per key in order.
template <class A, int NQ, int U>
void attn_row_weighted(const float* p, const uint16_t* v, int64_t kv_stride, int64_t nk, int c0,
                       const float* corrections, float* const* out) {
    typename A::V o[NQ][U];
    FG_UNROLL for (int i = 0; i < NQ; i++) {
        const typename A::V cv = A::set1(corrections[i]);
        FG_UNROLL for (int u = 0; u < U; u++) o[i][u] = A::mul(A::load(out[i] + c0 + u * A::W), cv);
    }
    for (int64_t j = 0; j < nk; j++) {
        typename A::V vz[U];
        FG_UNROLL for (int u = 0; u < U; u++) vz[u] = A::f16(v + j * kv_stride + c0 + u * A::W);
        FG_UNROLL for (int i = 0; i < NQ; i++) {
            const typename A::V pj = A::set1(p[i * kAttnChunk + j]);
            FG_UNROLL for (int u = 0; u < U; u++) o[i][u] = A::fma(pj, vz[u], o[i][u]);
        }
    }
    FG_UNROLL for (int i = 0; i < NQ; i++)
        FG_UNROLL for (int u = 0; u < U; u++) A::store(out[i] + c0 + u * A::W, o[i][u]);
}

// One pass of NQ (<= kPassQueries) queries over a chunk of keys j0 .. j0 + nj: scores, the online
// softmax's update of m_run / l_run, the weighted sums. Returns nothing; out rows accumulate.
template <class A, int NQ>
void attn_row_chunk(const float* const* q, float* const* out, const int64_t* len, const uint16_t* k, const uint16_t* v,
                    int64_t kv_stride, int64_t j0, int64_t nj, int hd, float scale, float softcap, float* s,
                    float* m_run, float* l_run, const uint16_t* pf_k, const uint16_t* pf_v, int64_t n_pf) {
    int64_t n_keys[NQ], block_keys = 0;  // each query's causal limit in this chunk; the most of them
    FG_UNROLL for (int i = 0; i < NQ; i++) {
        n_keys[i] = std::min<int64_t>(nj, len[i] - j0);
        block_keys = std::max(block_keys, n_keys[i]);
    }
    if (block_keys <= 0) return;
    const uint16_t* kc = k + j0 * kv_stride;
    attn_row_scores<A, NQ>(q, kc, kv_stride, block_keys, hd, scale, s, pf_k, pf_v, n_pf);
    if (softcap > 0.0f) soft_cap_scores(s, NQ, block_keys, softcap);
    alignas(64) float corrections[NQ];
    attn_softmax_rows<A>(s, NQ, n_keys, block_keys, m_run, l_run, corrections);
    const uint16_t* vc = v + j0 * kv_stride;
    int c = 0;
    for (; c + 4 * A::W <= hd; c += 4 * A::W)
        attn_row_weighted<A, NQ, 4>(s, vc, kv_stride, block_keys, c, corrections, out);
    for (; c < hd; c += A::W) attn_row_weighted<A, NQ, 1>(s, vc, kv_stride, block_keys, c, corrections, out);
}

// The online softmax over chunks of kAttnChunk keys for n_kv KV heads' groups of g = nq / n_kv
// queries, chunk by chunk: every head's passes over a chunk before the next chunk, so that the
// chunk's cache rows are read whole (a head's slice of a row is a third to an eighth of it; the
// heads one after the other, as separate calls, read the rows of SmolLM2's 30 layers at 4096 keys
// at 17-18 GB/s on one Zen 5 thread, the heads together 19-20). Each head's first pass prefetches
// the slice the next pass reads: the next head's of this chunk, or the first head's of the next
// chunk (prefetching the next chunk's whole rows at once was slower: 14 GB/s). A head's queries
// go in passes of at most kPassQueries (a constant count per pass keeps the accumulators in
// registers). hd a multiple of A::W; g < kAttnBlockMinQueries; nq <= kMaxGroupQueries.
// work: at least kPassQueries x kAttnChunk floats.
template <class A>
void attention_rows(const float* const* q, float* const* out, const int64_t* len, int nq, int n_kv,
                    const uint16_t* k, const uint16_t* v, int64_t kv_stride, int hd, float scale, float softcap,
                    float* work, float* lse) {
    constexpr int P = A::kPassQueries;
    static_assert(P >= 1 && P <= 4, "passes of 1 to 4 queries");
    const int g = nq / n_kv;
    float* s = work;  // [P, kAttnChunk]
    int64_t max_len = 0;
    for (int i = 0; i < nq; i++) max_len = std::max(max_len, len[i]);
    OnlineSoftmax sm(out, nq, hd);
    for (int64_t j0 = 0; j0 < max_len; j0 += kAttnChunk) {
        const int64_t nj = std::min<int64_t>(kAttnChunk, max_len - j0);
        for (int h = 0; h < n_kv; h++) {
            const uint16_t* kh = k + (int64_t)h * hd;
            const uint16_t* vh = v + (int64_t)h * hd;
            // the slice read next: the next head's rows of this chunk, else the next chunk's first head's
            const bool last = h + 1 == n_kv;
            const int64_t pf_j0 = last ? j0 + nj : j0;
            int64_t n_pf = last ? std::min<int64_t>(kAttnChunk, max_len - pf_j0) : nj;
            const uint16_t* pf_k = (last ? k : kh + hd) + pf_j0 * kv_stride;
            const uint16_t* pf_v = (last ? v : vh + hd) + pf_j0 * kv_stride;
            for (int i0 = h * g; i0 < (h + 1) * g; i0 += P) {
                const int np = std::min(P, (h + 1) * g - i0);
                auto pass = [&](auto tag) {
                    constexpr int NQ = decltype(tag)::value;
                    attn_row_chunk<A, NQ>(q + i0, out + i0, len + i0, kh, vh, kv_stride, j0, nj, hd, scale, softcap,
                                          s, sm.m + i0, sm.l + i0, pf_k, pf_v, n_pf);
                };
                switch (np) {
                    case 1: pass(std::integral_constant<int, 1>()); break;
                    case 2: if constexpr (P >= 2) pass(std::integral_constant<int, 2>()); break;
                    case 3: if constexpr (P >= 3) pass(std::integral_constant<int, 3>()); break;
                    case 4: if constexpr (P >= 4) pass(std::integral_constant<int, 4>()); break;
                    default: break;
                }
                n_pf = 0;
            }
        }
    }
    sm.finish(out, nq, hd, lse);
}

}  // namespace
}  // namespace forgert::cpu
