// Gemma 3n's row ops: the activation sparsity of its first layers' gates (gaussian top-k), and
// AltUp's stream magnitude matching and stream mixing. The row reductions: one threadgroup per
// row, simd_sum and one exchange through threadgroup memory per sum (as norm.metal).
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// The sum of v over the threadgroup, in every thread. partial: 32 floats; the trailing barrier
// keeps every read of partial before the next sum writes it.
static float row_sum(float v, threadgroup float* partial, ushort sgitg, ushort tiisg, int nsg) {
    v = simd_sum(v);
    if (tiisg == 0) partial[sgitg] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const float total = simd_sum(tiisg < nsg ? partial[tiisg] : 0.0f);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return total;
}

kernel void gaussian_topk_f32(
        constant altup_row_args & args [[buffer(0)]],
        device       char * x         [[buffer(1)]],
        threadgroup float * partial   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    device float* xr = (device float*)(x + tgpig.x * args.x_stride);
    const int nsg = (ntg.x + FG_SIMD_WIDTH - 1) / FG_SIMD_WIDTH;
    float s = 0.0f;
    for (int i = tiitg; i < args.dim; i += ntg.x) s += xr[i];
    const float mean = row_sum(s, partial, sgitg, tiisg, nsg) / float(args.dim);
    float v = 0.0f;  // the variance about the mean (two passes: no cancellation)
    for (int i = tiitg; i < args.dim; i += ntg.x) v += (xr[i] - mean) * (xr[i] - mean);
    const float sd = sqrt(row_sum(v, partial, sgitg, tiisg, nsg) / float(args.dim));
    const float cutoff = mean + sd * args.std_mult;
    for (int i = tiitg; i < args.dim; i += ntg.x) xr[i] = max(xr[i] - cutoff, 0.0f);
}

kernel void rms_match_f32(
        constant altup_row_args & args [[buffer(0)]],
        device const char * x         [[buffer(1)]],
        device const char * target    [[buffer(2)]],
        device       char * out       [[buffer(3)]],
        threadgroup float * partial   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    device const float* xr = (device const float*)(x + tgpig.x * args.x_stride);
    device const float* tr = (device const float*)(target + tgpig.x * args.target_stride);
    device float* o = (device float*)(out + tgpig.x * args.out_stride);
    const int nsg = (ntg.x + FG_SIMD_WIDTH - 1) / FG_SIMD_WIDTH;
    float sx = 0.0f, st = 0.0f;
    for (int i = tiitg; i < args.dim; i += ntg.x) {
        sx += xr[i] * xr[i];
        st += tr[i] * tr[i];
    }
    const float have = row_sum(sx, partial, sgitg, tiisg, nsg) / float(args.dim);
    const float want = row_sum(st, partial, sgitg, tiisg, nsg) / float(args.dim);
    const float s = sqrt(want) / sqrt(max(have, 1e-5f));
    // every thread has read its x (and target) elements before any is written: out may alias x
    for (int i = tiitg; i < args.dim; i += ntg.x) o[i] = xr[i] * s;
}

kernel void altup_mix_f32(
        constant altup_mix_args & args [[buffer(0)]],
        device const char * xs    [[buffer(1)]],
        device const char * coefs [[buffer(2)]],
        device const char * base  [[buffer(3)]],
        device       char * out   [[buffer(4)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (c >= args.dim) return;
    device const float* x = (device const float*)(xs + t * args.xs_stride);
    device const float* cf = (device const float*)(coefs + t * args.coefs_stride);
    float acc = ((device const float*)(base + t * args.base_stride))[c];
    for (int j = 0; j < args.k; ++j) acc += cf[j] * x[j * args.dim + c];
    ((device float*)(out + t * args.out_stride))[c] = acc;
}

kernel void clamp_ids_i32(
        constant clamp_ids_args & args [[buffer(0)]],
        device const int32_t * ids [[buffer(1)]],
        device       int32_t * out [[buffer(2)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    if (i >= args.n) return;
    const int32_t id = ids[i];
    out[i] = id >= 0 && id < args.limit ? id : 0;
}
