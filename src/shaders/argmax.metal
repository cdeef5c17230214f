// Greedy sampling on the GPU: out[t] = the first index of the largest x[t, j], so the
// logits never travel back to the host. NaNs never win. One threadgroup per row.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// The (value, index) pair that wins across the simdgroup: larger value, then lower index.
static inline void simd_argmax(thread float& v, thread int& i) {
    const float m = simd_max(v);
    i = simd_min(v == m ? i : INT_MAX);
    v = m;
}

kernel void argmax_f32(
        constant argmax_args & args [[buffer(0)]],
        device const char * x       [[buffer(1)]],
        device       int  * out     [[buffer(2)]],
        threadgroup float * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    device const float* xr = (device const float*)(x + tgpig.x * args.x_stride);
    // shmem: 32 best values, then their 32 indices
    threadgroup int* sidx = (threadgroup int*)(shmem + FG_SIMD_WIDTH);
    const int nsg = (ntg.x + FG_SIMD_WIDTH - 1) / FG_SIMD_WIDTH;

    // Strided scan: ascending j per thread, so strict > keeps the first index on ties.
    float best = -FLT_MAX;  // finite: safe under fast math
    int best_i = INT_MAX;
    for (int j = tiitg; j < args.cols; j += ntg.x) {
        const float v = xr[j];
        if (v > best || (best_i == INT_MAX && !isnan(v))) {
            best = v;
            best_i = j;
        }
    }
    simd_argmax(best, best_i);
    if (tiisg == 0) {
        shmem[sgitg] = best;
        sidx[sgitg] = best_i;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sgitg == 0) {
        best = tiisg < nsg ? shmem[tiisg] : -FLT_MAX;
        best_i = tiisg < nsg ? sidx[tiisg] : INT_MAX;
        simd_argmax(best, best_i);
        // A row of NaNs (or empty) reports index 0 rather than garbage.
        if (tiisg == 0) out[tgpig.x] = best_i == INT_MAX ? 0 : best_i;
    }
}
