// Elementwise ops over [n, dim] rows: SiLU(gate) * up, GELU(gate) * up, residual add, product, bias add,
// scaling and soft-capping in place.
// Grid: (ceil(dim / threads), n); one element per thread, coalesced.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

kernel void silu_mul_f32(
        constant elementwise_args & args [[buffer(0)]],
        device const char * gate [[buffer(1)]],
        device const char * up   [[buffer(2)]],
        device       char * out  [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (i >= args.dim) return;
    const float g = ((device const float*)(gate + t * args.a_stride))[i];
    const float u = ((device const float*)(up + t * args.b_stride))[i];
    ((device float*)(out + t * args.out_stride))[i] = g / (1.0f + exp(-g)) * u;
}

kernel void add_f32(
        constant elementwise_args & args [[buffer(0)]],
        device const char * a   [[buffer(1)]],
        device const char * b   [[buffer(2)]],
        device       char * out [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (i >= args.dim) return;
    const float va = ((device const float*)(a + t * args.a_stride))[i];
    const float vb = ((device const float*)(b + t * args.b_stride))[i];
    ((device float*)(out + t * args.out_stride))[i] = va + vb;
}

kernel void mul_f32(
        constant elementwise_args & args [[buffer(0)]],
        device const char * a   [[buffer(1)]],
        device const char * b   [[buffer(2)]],
        device       char * out [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (i >= args.dim) return;
    const float va = ((device const float*)(a + t * args.a_stride))[i];
    const float vb = ((device const float*)(b + t * args.b_stride))[i];
    ((device float*)(out + t * args.out_stride))[i] = va * vb;
}

// x[t, :] += bias (args.b_stride is 0: the bias row is shared by every token).
kernel void add_bias_f32(
        constant elementwise_args & args [[buffer(0)]],
        device       char * x    [[buffer(1)]],
        device const float * b   [[buffer(2)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (i >= args.dim) return;
    device float* xr = (device float*)(x + t * args.a_stride);
    xr[i] += b[i];
}

// GeGLU: tanh-approximated GELU of the gate times up (Gemma). Slots as silu_mul_f32.
kernel void gelu_mul_f32(
        constant elementwise_args & args [[buffer(0)]],
        device const char * gate [[buffer(1)]],
        device const char * up   [[buffer(2)]],
        device       char * out  [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (i >= args.dim) return;
    const float g = ((device const float*)(gate + t * args.a_stride))[i];
    const float u = ((device const float*)(up + t * args.b_stride))[i];
    const float gelu = 0.5f * g * (1.0f + precise::tanh(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    ((device float*)(out + t * args.out_stride))[i] = gelu * u;
}

kernel void copy_u32(
        constant copy_args & args [[buffer(0)]],
        device const char * src [[buffer(1)]],
        device       char * dst [[buffer(2)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    if (i >= args.words) return;
    ((device uint*)(dst + tgpig.y * args.dst_stride))[i] = ((device const uint*)(src + tgpig.y * args.src_stride))[i];
}

kernel void scale_f32(
        constant unary_args & args [[buffer(0)]],
        device char * x [[buffer(1)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    if (i >= args.dim) return;
    device float* xr = (device float*)(x + tgpig.y * args.x_stride);
    xr[i] *= args.value;
}

kernel void gelu_f32(
        constant unary_args & args [[buffer(0)]],
        device char * x [[buffer(1)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    if (i >= args.dim) return;
    device float* xr = (device float*)(x + tgpig.y * args.x_stride);
    const float g = xr[i];
    xr[i] = 0.5f * g * (1.0f + precise::tanh(0.7978845608028654f * (g + 0.044715f * g * g * g)));
}

kernel void relu_sq_f32(
        constant unary_args & args [[buffer(0)]],
        device char * x [[buffer(1)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    if (i >= args.dim) return;
    device float* xr = (device float*)(x + tgpig.y * args.x_stride);
    const float r = max(xr[i], 0.0f);
    xr[i] = r * r;
}

kernel void softcap_f32(
        constant unary_args & args [[buffer(0)]],
        device char * x [[buffer(1)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int i = tgpig.x * ntg.x + tptg.x;
    if (i >= args.dim) return;
    device float* xr = (device float*)(x + tgpig.y * args.x_stride);
    xr[i] = args.value * precise::tanh(xr[i] / args.value);
}
