// Greedy sampling on the GPU, so the logits never travel back to the host: argmax.h's rule
// (first index on ties; a row holding NaN or +inf, or nothing above -inf, gives a negative
// sentinel, FG_ARGMAX_*). One threadgroup per row.
//   argmax_f32: out[t] = argmax of x[t, :].
//   argmax_partials: out[t] = the winner of the candidates mul_mv_argmax_staged_* left for token
//     t (one per threadgroup of the fused GEMV, mul_mv_staged.metal), so that its logits are
//     never written at all.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"
#include "argmax.h"

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
    const int nsg = (ntg.x + FG_SIMD_WIDTH - 1) / FG_SIMD_WIDTH;
    float best = -FLT_MAX;
    int best_i = INT_MAX, bad = 0;
    for (int j = tiitg; j < args.cols; j += ntg.x) fg_argmax_offer(best, best_i, bad, xr[j], j);  // ascending j
    fg_threadgroup_argmax(best, best_i, bad, shmem, sgitg, tiisg, nsg);
    if (sgitg == 0 && tiisg == 0) out[tgpig.x] = fg_argmax_result(best_i, bad);
}

kernel void argmax_partials(
        constant argmax_args & args [[buffer(0)]],
        device const char * partials [[buffer(1)]],
        device       int  * out     [[buffer(2)]],
        threadgroup float * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    device const float* values = (device const float*)(partials + tgpig.x * args.x_stride);  // [cols]
    device const int* indices = (device const int*)(values + args.cols);                      // [cols]
    const int nsg = (ntg.x + FG_SIMD_WIDTH - 1) / FG_SIMD_WIDTH;
    float best = -FLT_MAX;
    int best_i = INT_MAX, bad = 0;
    // Candidate j's rows all precede candidate j + 1's, and each is its rows' first largest: in
    // ascending j, strict > keeps the lowest index. A threadgroup without one (none above -inf)
    // offers nothing; one that saw NaN or +inf left its bad bits as index -bad.
    for (int j = tiitg; j < args.cols; j += ntg.x) {
        const float v = values[j];
        const int i = indices[j];
        if (i < 0) {
            bad |= -i;
        } else if (i != INT_MAX && (v > best || best_i == INT_MAX)) {
            best = v;
            best_i = i;
        }
    }
    fg_threadgroup_argmax(best, best_i, bad, shmem, sgitg, tiisg, nsg);
    if (sgitg == 0 && tiisg == 0) out[tgpig.x] = fg_argmax_result(best_i, bad);
}
