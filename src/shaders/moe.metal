// Mixture of experts: the router's top-k on the device (no round trip to the host) and the
// weighted sum of the selected experts' outputs. The expert GEMV is mul_mv_id in mul_mv.metal.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// One token per thread: n_expert is small (8..256), so each choice is a pass over the logits:
// k passes pick the experts in decreasing choice score, each pass the largest after the previous
// pick in (score desc, id asc) order, and likewise topk_group passes over the groups' scores, so
// no per-thread array is needed (the groups chosen are a 64-bit mask).
static inline float route_score(constant moe_route_args & args, device const float* l, float mx, int e) {
    return args.sigmoid != 0 ? 1.0f / (1.0f + exp(-l[e])) : exp(l[e] - mx);
}

// The choice: the score, plus the bias where there is one (a softmax's probability then, so
// divided by the sum; without a bias the unnormalised exp orders the experts alike).
static inline float route_choice(constant moe_route_args & args, device const float* l, device const float* bias,
                                 float mx, float sum, int e) {
    const float s = route_score(args, l, mx, e);
    if (args.has_bias == 0) return s;
    return (args.sigmoid != 0 ? s : s / sum) + bias[e];
}

kernel void moe_route_f32(
        constant moe_route_args & args [[buffer(0)]],
        device const char * logits  [[buffer(1)]],
        device       char * weights [[buffer(2)]],
        device       char * ids     [[buffer(3)]],
        device const char * select_bias [[buffer(4)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int t = tgpig.x * ntg.x + tptg.x;
    if (t >= args.n) return;
    device const float* l = (device const float*)(logits + t * args.logits_stride);
    device const float* bias = (device const float*)select_bias;
    device float* w = (device float*)(weights + t * args.weights_stride);
    device int* id = (device int*)(ids + t * args.ids_stride);
    float mx = l[0], sum = 0.0f;
    if (args.sigmoid == 0) {
        for (int e = 1; e < args.n_expert; ++e) mx = max(mx, l[e]);
        for (int e = 0; e < args.n_expert; ++e) sum += exp(l[e] - mx);
    }
    // The groups chosen from: all, or the topk_group of largest top-2 choice sum.
    const int group = args.n_expert / args.n_group;
    ulong allowed = args.n_group == 64 ? ~0ul : ((1ul << args.n_group) - 1ul);
    if (args.n_group > 1) {
        allowed = 0ul;
        float prev_gs = 0.0f;
        int prev_g = -1;
        for (int j = 0; j < args.topk_group; ++j) {
            int best_g = -1;
            float best_gs = 0.0f;
            for (int g = 0; g < args.n_group; ++g) {
                float a = -FLT_MAX, b = -FLT_MAX;
                for (int e = g * group; e < (g + 1) * group; ++e) {
                    const float c = route_choice(args, l, bias, mx, sum, e);
                    if (c > a) {
                        b = a;
                        a = c;
                    } else if (c > b) {
                        b = c;
                    }
                }
                const float gs = a + b;
                const bool after_prev = j == 0 || gs < prev_gs || (gs == prev_gs && g > prev_g);
                if (after_prev && (best_g < 0 || gs > best_gs)) {
                    best_g = g;
                    best_gs = gs;
                }
            }
            allowed |= 1ul << best_g;
            prev_gs = best_gs;
            prev_g = best_g;
        }
    }
    float prev_c = 0.0f, picked = 0.0f;
    int prev_id = -1;
    for (int j = 0; j < args.k; ++j) {
        int best = -1;
        float best_c = 0.0f;
        for (int e = 0; e < args.n_expert; ++e) {
            if (((allowed >> (e / group)) & 1ul) == 0ul) continue;
            const float c = route_choice(args, l, bias, mx, sum, e);
            const bool after_prev = j == 0 || c < prev_c || (c == prev_c && e > prev_id);
            if (after_prev && (best < 0 || c > best_c)) {
                best = e;
                best_c = c;
            }
        }
        const float p = route_score(args, l, mx, best);
        id[j] = best;
        w[j] = p;
        picked += p;
        prev_c = best_c;
        prev_id = best;
    }
    const float denom = args.renormalize != 0 ? picked : args.sigmoid != 0 ? 1.0f : sum;
    for (int j = 0; j < args.k; ++j) w[j] = w[j] / denom * args.scale;
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

// An expert stack stored out of expert order: each slot's id becomes its expert's place.
kernel void map_ids_i32(
        constant moe_group_args & args [[buffer(0)]],
        device const char * ids   [[buffer(1)]],
        device const char * table [[buffer(2)]],
        device       char * out   [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int s = tgpig.x * ntg.x + tptg.x;
    if (s >= args.n * args.k) return;
    const int id = ((device const int*)(ids + (s / args.k) * args.ids_stride))[s % args.k];
    ((device int*)out)[s] = id >= 0 && id < args.n_expert ? ((device const int*)table)[id] : id;
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
