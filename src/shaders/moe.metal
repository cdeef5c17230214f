// Mixture of experts: the router's top-k on the device (no round trip to the host) and the
// weighted sum of the selected experts' outputs. The expert GEMV is mul_mv_id in mul_mv.metal.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// One token per thread: n_expert is small (8..128), k passes over the logits pick the experts
// in decreasing probability, each pass the largest after the previous pick in (p desc, id asc)
// order, so no per-thread array is needed.
kernel void moe_route_f32(
        constant moe_route_args & args [[buffer(0)]],
        device const char * logits  [[buffer(1)]],
        device       char * weights [[buffer(2)]],
        device       char * ids     [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int t = tgpig.x * ntg.x + tptg.x;
    if (t >= args.n) return;
    device const float* l = (device const float*)(logits + t * args.logits_stride);
    device float* w = (device float*)(weights + t * args.weights_stride);
    device int* id = (device int*)(ids + t * args.ids_stride);
    float mx = l[0];
    for (int e = 1; e < args.n_expert; ++e) mx = max(mx, l[e]);
    float sum = 0.0f;
    for (int e = 0; e < args.n_expert; ++e) sum += exp(l[e] - mx);
    float prev_p = 0.0f, picked = 0.0f;
    int prev_id = -1;
    for (int j = 0; j < args.k; ++j) {
        int best = -1;
        float best_p = 0.0f;
        for (int e = 0; e < args.n_expert; ++e) {
            const float p = exp(l[e] - mx);
            const bool after_prev = j == 0 || p < prev_p || (p == prev_p && e > prev_id);
            if (after_prev && (best < 0 || p > best_p)) {
                best = e;
                best_p = p;
            }
        }
        id[j] = best;
        w[j] = best_p;
        picked += best_p;
        prev_p = best_p;
        prev_id = best;
    }
    const float denom = args.renormalize != 0 ? picked : sum;
    for (int j = 0; j < args.k; ++j) w[j] = w[j] / denom;
}

// One expert per thread scans the slots in order: each expert's list comes out sorted, the same
// on every schedule.
kernel void moe_group_i32(
        constant moe_group_args & args [[buffer(0)]],
        device const char * ids    [[buffer(1)]],
        device       char * groups [[buffer(2)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int e = tgpig.x * ntg.x + tptg.x;
    if (e >= args.n_expert) return;
    const int n_slots = args.n * args.k;
    device int* counts = (device int*)groups;
    device int* slots = counts + args.n_expert + e * n_slots;
    int c = 0;
    for (int s = 0; s < n_slots; ++s) {
        if (((device const int*)(ids + (s / args.k) * args.ids_stride))[s % args.k] == e) slots[c++] = s;
    }
    counts[e] = c;
}

kernel void moe_sum_add_f32(
        constant moe_sum_args & args [[buffer(0)]],
        device const char * y       [[buffer(1)]],
        device const char * weights [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int i = tgpig.y;
    if (c >= args.dim) return;
    device const float* w = (device const float*)(weights + i * args.weights_stride);
    float acc = 0.0f;
    for (int j = 0; j < args.k; ++j) acc += w[j] * ((device const float*)(y + (i * args.k + j) * args.y_stride))[c];
    device float* o = (device float*)(out + i * args.out_stride);
    o[c] = o[c] + acc;
}

kernel void scale_sigmoid_f32(
        constant moe_sum_args & args [[buffer(0)]],
        device const char * gate [[buffer(1)]],
        device       char * out  [[buffer(2)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int i = tgpig.y;
    if (c >= args.dim) return;
    const float g = ((device const float*)(gate + i * args.weights_stride))[0];
    device float* o = (device float*)(out + i * args.out_stride);
    o[c] = o[c] / (1.0f + exp(-g));
}

kernel void swiglu_oai_f32(
        constant swiglu_oai_args & args [[buffer(0)]],
        device const char * gate [[buffer(1)]],
        device const char * up   [[buffer(2)]],
        device       char * out  [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int i = tgpig.y;
    if (c >= args.dim) return;
    const float g = min(((device const float*)(gate + i * args.gate_stride))[c], args.limit);
    const float u = clamp(((device const float*)(up + i * args.up_stride))[c], -args.limit, args.limit);
    ((device float*)(out + i * args.out_stride))[c] = (u + 1.0f) * g / (1.0f + exp(-args.alpha * g));
}

kernel void add_bias_id_f32(
        constant add_bias_id_args & args [[buffer(0)]],
        device const char * b   [[buffer(1)]],
        device const char * ids [[buffer(2)]],
        device       char * x   [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int s = tgpig.y;
    if (c >= args.dim) return;
    const int e = ((device const int*)(ids + (s / args.k) * args.ids_stride))[s % args.k];
    device float* xr = (device float*)(x + s * args.x_stride);
    xr[c] = xr[c] + ((device const float*)(b + e * args.b_stride))[c];
}
