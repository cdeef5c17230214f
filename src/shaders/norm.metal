// RMSNorm: out[t, :] = x[t, :] * rsqrt(mean(x[t, :]^2) + eps) * w, or out[t, :] += that with
// args.accumulate (Gemma's post-norms and their residual adds); with args.center the LayerNorm
// (no bias) of the row, its mean subtracted first (Cohere). One threadgroup per row.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

#define RMS_REGS 8  // row elements per thread held in registers

kernel void rms_norm_f32(
        constant rms_norm_args & args [[buffer(0)]],
        device const char * x         [[buffer(1)]],
        device const float * w        [[buffer(2)]],
        device       char * out       [[buffer(3)]],
        threadgroup float * partial   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    device const float* xr = (device const float*)(x + tgpig.x * args.x_stride);
    device float* o = (device float*)(out + tgpig.x * args.out_stride);
    const int nsg = (ntg.x + FG_SIMD_WIDTH - 1) / FG_SIMD_WIDTH;

    // The row is read once: each thread keeps its elements (i = tiitg + r * ntg.x) in
    // registers for the scaling pass. Rows past RMS_REGS x threads (8192 at 1024 threads)
    // re-read their tail.
    float xv[RMS_REGS];
    for (int r = 0; r < RMS_REGS; ++r) {
        const int i = tiitg + r * ntg.x;
        xv[r] = i < args.dim ? xr[i] : 0.0f;
    }
    // LayerNorm (args.center): the row's mean first, reduced as the sum of squares is below; the
    // second barrier keeps every simdgroup's read of partial before partial is written again.
    float mean = 0.0f;
    if (args.center != 0) {
        float sum = 0.0f;
        for (int r = 0; r < RMS_REGS; ++r) sum += xv[r];
        for (int i = tiitg + RMS_REGS * ntg.x; i < args.dim; i += ntg.x) sum += xr[i];
        sum = simd_sum(sum);
        if (tiisg == 0) partial[sgitg] = sum;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        mean = simd_sum(tiisg < nsg ? partial[tiisg] : 0.0f) / float(args.dim);
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    float sumsq = 0.0f;
    for (int r = 0; r < RMS_REGS; ++r) {
        const int i = tiitg + r * ntg.x;
        const float d = i < args.dim ? xv[r] - mean : 0.0f;
        sumsq += d * d;
    }
    for (int i = tiitg + RMS_REGS * ntg.x; i < args.dim; i += ntg.x) sumsq += (xr[i] - mean) * (xr[i] - mean);
    sumsq = simd_sum(sumsq);
    if (tiisg == 0) partial[sgitg] = sumsq;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // Every simdgroup reduces the partials itself: no second barrier needed.
    sumsq = simd_sum(tiisg < nsg ? partial[tiisg] : 0.0f);

    const float scale = rsqrt(sumsq / float(args.dim) + args.eps);
    for (int r = 0; r < RMS_REGS; ++r) {
        const int i = tiitg + r * ntg.x;
        if (i < args.dim) o[i] = (args.accumulate != 0 ? o[i] : 0.0f) + (xv[r] - mean) * scale * w[i];
    }
    for (int i = tiitg + RMS_REGS * ntg.x; i < args.dim; i += ntg.x)
        o[i] = (args.accumulate != 0 ? o[i] : 0.0f) + (xr[i] - mean) * scale * w[i];
}
