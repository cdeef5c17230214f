// The online softmax's step over one key chunk's rows of scores, on any set's vectors: A supplies
// V, W (lanes), zero, load, store, set1, sub, add, max, exp, hmax, hsum, and load_first /
// keep_first (a vector's first n lanes, the others 0). The x86 sets (AttnRowVec, 8 or 16 lanes)
// run it for the decode row kernel and the prefill query blocks, NEON (NeonVec4) for its query
// blocks. Bits: a row's max, weights and sum depend only on that row and its own key count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu_kernels.h"

namespace forgert::cpu {
namespace {  // internal: each ISA file compiles its own copy

// max over s[0..n)
template <class A>
float attn_row_max(const float* s, int64_t n) {
    typename A::V mv = A::set1(-INFINITY);
    int64_t j = 0;
    for (; j + A::W <= n; j += A::W) mv = A::max(mv, A::load(s + j));
    float r = A::hmax(mv);
    for (; j < n; j++) r = std::max(r, s[j]);
    return r;
}
// s[j] = e^(s[j] - m) for j < n, their sum; s[j] = 0 for n <= j < upto (rows hold upto rounded up
// to whole vectors). A partial last vector takes the same exp with its lanes past n zeroed: the
// sum, lane by lane, adds exact zeros past n, so it does not depend on upto.
template <class A>
float attn_row_exp_sub(float* s, int64_t n, float m, int64_t upto) {
    const typename A::V mv = A::set1(m);
    typename A::V sum = A::zero();
    int64_t j = 0;
    for (; j + A::W <= n; j += A::W) {
        const typename A::V e = A::exp(A::sub(A::load(s + j), mv));
        A::store(s + j, e);
        sum = A::add(sum, e);
    }
    if (j < n) {
        const int r = (int)(n - j);
        const typename A::V e = A::keep_first(A::exp(A::sub(A::load_first(s + j, r), mv)), r);
        A::store(s + j, e);
        sum = A::add(sum, e);
        j += A::W;
    }
    for (; j < upto; j += A::W) A::store(s + j, A::zero());
    return A::hsum(sum);
}

// The online softmax's step for nq (<= W) rows of scores s (rows kAttnChunk apart), row i's keys
// j < n_keys[i] in this chunk (<= 0: none), block_keys the most of them: m_run / l_run updated,
// s rows turned into weights e^(s - m) (0 past each row's limit, up to block_keys), and each
// row's correction e^(m_old - m_new) for its output (1 for a row without keys here), all the
// rows' in one vector exp (a scalar exp per query and chunk took 5-8% of the kernels).
template <class A>
void attn_softmax_rows(float* s, int nq, const int64_t* n_keys, int64_t block_keys, float* m_run, float* l_run,
                       float* corrections) {
    alignas(64) float c[A::W] = {};
    float m_new[A::W];
    for (int i = 0; i < nq; i++) {
        m_new[i] = n_keys[i] > 0 ? std::max(m_run[i], attn_row_max<A>(s + i * kAttnChunk, n_keys[i])) : m_run[i];
        // the first chunk: m_old = -inf, e^-inf = 0 (exp clamps to e^-87 ~ 1e-38, times 0 sums: 0)
        c[i] = m_run[i] == -INFINITY ? -INFINITY : m_run[i] - m_new[i];
    }
    A::store(c, A::exp(A::load(c)));
    for (int i = 0; i < nq; i++) {
        float* si = s + i * kAttnChunk;
        corrections[i] = c[i];
        if (n_keys[i] <= 0) {  // nothing for this query in this chunk: weights 0, its output kept
            corrections[i] = 1.0f;
            attn_row_exp_sub<A>(si, 0, 0.0f, block_keys);
            continue;
        }
        l_run[i] = l_run[i] * c[i] + attn_row_exp_sub<A>(si, n_keys[i], m_new[i], block_keys);
        m_run[i] = m_new[i];
    }
}

}  // namespace
}  // namespace forgert::cpu
