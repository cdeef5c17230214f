// Greedy sampling's rule, shared by argmax.metal and the GEMV that fuses it
// (mul_mv_staged.metal, mul_mv_argmax_staged_*), and the CPU backend's argmax: the first index
// of the largest value, NaN counting as -inf. So NaN and -inf never win, and a row with nothing
// above -inf gives index 0.
//
// A candidate is a (value, index) pair; index INT_MAX (value -FLT_MAX) is "none yet". Finite
// sentinels, and -inf told apart by `v >= -FLT_MAX`: the kernels stay correct under fast math.
#ifndef FORGERT_ARGMAX_H
#define FORGERT_ARGMAX_H

#include "kernel_args.h"

// Offers value v at index j; a thread offers its indices in ascending order, so the strict >
// keeps the first index on ties.
static inline void fg_argmax_offer(thread float& best, thread int& best_i, float v, int j) {
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

// The threadgroup's winner from every thread's candidate, in the lanes of simdgroup 0 (the
// others keep their simdgroup's). Every thread of the threadgroup calls it (a barrier inside);
// shmem: 2 * FG_SIMD_WIDTH words, free for the reduction's use.
static inline void fg_threadgroup_argmax(thread float& best, thread int& best_i, threadgroup float* shmem,
                                         ushort sgitg, ushort tiisg, int nsg) {
    threadgroup int* sidx = (threadgroup int*)(shmem + FG_SIMD_WIDTH);
    fg_simd_argmax(best, best_i);
    if (tiisg == 0) {
        shmem[sgitg] = best;
        sidx[sgitg] = best_i;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sgitg == 0) {
        best = tiisg < nsg ? shmem[tiisg] : -FLT_MAX;
        best_i = tiisg < nsg ? sidx[tiisg] : INT_MAX;
        fg_simd_argmax(best, best_i);
    }
}

#endif  // FORGERT_ARGMAX_H
