// Greedy sampling's rule, shared by argmax.metal and the GEMV that fuses it
// (mul_mv_staged.metal, mul_mv_argmax_staged_*), and the CPU backend's argmax (core/backend.h):
// the first index of the largest value; but a row holding a NaN gives FG_ARGMAX_NAN, one holding
// +inf (and no NaN) FG_ARGMAX_INF, and one with nothing above -inf FG_ARGMAX_NONE (kernel_args.h):
// such logits come from overflowed arithmetic or a broken weight, and have no token to pick (the
// host raises, naming the problem, as the samplers do on the same logits).
//
// A candidate is a (value, index) pair; index INT_MAX (value -FLT_MAX) is "none yet". Finite
// sentinels, -inf told apart by `v >= -FLT_MAX`, and NaN / +inf by their bits: the kernels stay
// correct under fast math. A thread's `bad` holds FG_ARGMAX_BAD_* bits of the values it saw; a
// candidate passed on with bad bits has index -bad.
#ifndef FORGERT_ARGMAX_H
#define FORGERT_ARGMAX_H

#include "kernel_args.h"

// FG_ARGMAX_BAD_NAN for a NaN, FG_ARGMAX_BAD_INF for +inf, else 0: a few integer ops a value.
static inline int fg_argmax_bad_bits(float v) {
    const uint u = as_type<uint>(v);
    return (u & 0x7fffffffu) > 0x7f800000u ? FG_ARGMAX_BAD_NAN : u == 0x7f800000u ? FG_ARGMAX_BAD_INF : 0;
}

// Offers value v at index j; a thread offers its indices in ascending order, so the strict >
// keeps the first index on ties. (A NaN never becomes the candidate; +inf may: `bad` says so.)
static inline void fg_argmax_offer(thread float& best, thread int& best_i, thread int& bad, float v, int j) {
    bad |= fg_argmax_bad_bits(v);
    if (v > best || (best_i == INT_MAX && v >= -FLT_MAX)) {
        best = v;
        best_i = j;
    }
}

// The simdgroup's winner, in every lane, from each lane's candidate for its own indices:
// the larger value, then the lower index.
static inline void fg_simd_argmax(thread float& v, thread int& i) {
    const float m = simd_max(v);
    i = simd_min(v == m ? i : INT_MAX);
    v = m;
}

// The threadgroup's winner and bad bits from every thread's, in the lanes of simdgroup 0 (the
// others keep their simdgroup's). Every thread of the threadgroup calls it (a barrier inside);
// shmem: 2 * FG_SIMD_WIDTH words, free for the reduction's use. A simdgroup's bad bits travel as
// its candidate's index, -bad.
static inline void fg_threadgroup_argmax(thread float& best, thread int& best_i, thread int& bad,
                                         threadgroup float* shmem, ushort sgitg, ushort tiisg, int nsg) {
    threadgroup int* sidx = (threadgroup int*)(shmem + FG_SIMD_WIDTH);
    fg_simd_argmax(best, best_i);
    bad = simd_or(bad);
    if (tiisg == 0) {
        shmem[sgitg] = best;
        sidx[sgitg] = bad != 0 ? -bad : best_i;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sgitg == 0) {
        const int i = tiisg < nsg ? sidx[tiisg] : INT_MAX;
        bad = i < 0 ? -i : 0;
        best = i < 0 || tiisg >= nsg ? -FLT_MAX : shmem[tiisg];
        best_i = i < 0 ? INT_MAX : i;
        fg_simd_argmax(best, best_i);
        bad = simd_or(bad);
    }
}

// The token a row's reduction gives: its winner, or the sentinel its bad bits (or the lack of
// any value above -inf) call for.
static inline int fg_argmax_result(int best_i, int bad) {
    return (bad & FG_ARGMAX_BAD_NAN) ? FG_ARGMAX_NAN
         : (bad & FG_ARGMAX_BAD_INF) ? FG_ARGMAX_INF
         : best_i == INT_MAX         ? FG_ARGMAX_NONE
                                     : best_i;
}

#endif  // FORGERT_ARGMAX_H
