// Rotary position embedding. Token t sits at position pos0 + t; pair j of every head
// turns by angle pos * freqs[j] (freqs already hold any llama3 / YaRN / LongRoPE scaling).
// Layouts: adjacent pairs (x[2j], x[2j + 1]) as in GGUF llama weights, or NeoX halves
// (x[j], x[j + rope_dim / 2]) as in HF checkpoints and Qwen2; only the first rope_dim dims
// of a head rotate (partial rotary; none on NoPE layers).
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// Rotates pairs j = first, first + step, ... of the first rope_dim dims of one head in
// place by the angles whose (cos, sin) cs[j] holds, optionally storing the head as half too
// (the key's f16 cache row, its unrotated tail included). Adjacent pairs move as one float2
// (half2 in the cache), so a simdgroup's loads and stores cover whole lines.
static inline void rope_head(device float* xh, device half* cache_h, threadgroup const float2* cs,
                             int head_dim, int rope_dim, int neox, int first, int step, float scale) {
    const int half_rot = rope_dim / 2;
    for (int j = first; j < half_rot; j += step) {
        const float c = cs[j].x;
        const float s = cs[j].y;
        if (neox != 0) {
            const float a = xh[j];
            const float b = xh[j + half_rot];
            const float ra = (a * c - b * s) * scale;
            const float rb = (a * s + b * c) * scale;
            xh[j] = ra;
            xh[j + half_rot] = rb;
            if (cache_h) {
                cache_h[j] = half(ra);
                cache_h[j + half_rot] = half(rb);
            }
        } else {
            const float2 ab = ((device const float2*)xh)[j];
            const float2 r = float2(ab.x * c - ab.y * s, ab.x * s + ab.y * c) * scale;
            ((device float2*)xh)[j] = r;
            if (cache_h) ((device half2*)cache_h)[j] = half2(r);
        }
    }
    if (cache_h) {
        for (int i = rope_dim + first; i < head_dim; i += step) cache_h[i] = half(xh[i]);
    } else if (scale != 1.0f) {  // a query's unrotated tail takes its temperature too
        for (int i = rope_dim + first; i < head_dim; i += step) xh[i] *= scale;
    }
}

// The step between the QKV projection and attention in one dispatch; threadgroup t takes
// token t: it computes the (cos, sin) of each pair once into threadgroup memory, then its
// head slots (lanes-per-head threads each) walk the heads: query heads rotated, key heads
// rotated and cached, value heads cached. The caches are bound at row pos0, or with a row
// table (a batch of sequences) at row 0, row t going to its sequence's base + its position.
kernel void rope_kv_write_f32(
        constant rope_kv_write_args & args [[buffer(0)]],
        device       char * q        [[buffer(1)]],
        device       char * k        [[buffer(2)]],
        device const char * v        [[buffer(3)]],
        device       char * k_cache  [[buffer(4)]],
        device       char * v_cache  [[buffer(5)]],
        device const float * freqs   [[buffer(6)]],
        device const int   * rows    [[buffer(7)]],
        threadgroup float2 * cs      [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    const int t = tgpig.y;
    const int p = args.has_rows != 0 ? rows[2 * t] : args.pos0 + t;
    const int cache_row = args.has_rows != 0 ? rows[2 * t + 1] + p : t;
    const float pos = float(p);
    const int half_rot = args.rope_dim / 2;
    for (int j = tiitg; j < half_rot; j += ntg.x) {
        // Positions reach 1e5+: the f32 product pos * freq is then off by up to ~4e-3 rad.
        // fma recovers its exact rounding error, which a first-order turn adds back, so the
        // angle is as good as an f64 product; precise:: keeps sin/cos's range reduction exact.
        const float angle = pos * freqs[j];
        const float angle_err = fma(pos, freqs[j], -angle);
        const float c0 = precise::cos(angle);
        const float s0 = precise::sin(angle);
        cs[j] = float2((c0 - angle_err * s0) * args.attn_factor, (s0 + angle_err * c0) * args.attn_factor);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // The query temperature (RopeKvParams::q_temperature): 1 below the floor, times x exactly 1.
    const float q_scale = args.q_temp_beta != 0.0f && p >= args.q_temp_floor
        ? 1.0f + args.q_temp_beta * precise::log(float(p / args.q_temp_floor) + 1.0f) : 1.0f;

    const int lanes = min(int(ntg.x), FG_ROPE_LANES(args.head_dim));  // threads per head
    const int slot = tiitg / lanes;
    const int lane = tiitg % lanes;
    const int n_slots = ntg.x / lanes;
    for (int h = slot; h < args.n_heads + args.n_kv_heads + args.n_v_heads; h += n_slots) {
        if (h < args.n_heads) {
            device float* qh = (device float*)(q + t * args.q_stride) + h * args.head_dim;
            rope_head(qh, nullptr, cs, args.head_dim, args.rope_dim, args.neox, lane, lanes, q_scale);
        } else if (h < args.n_heads + args.n_kv_heads) {
            const int kh = h - args.n_heads;
            device float* kr = (device float*)(k + t * args.k_stride) + kh * args.head_dim;
            device half* cr = (device half*)(k_cache + cache_row * args.cache_stride) + kh * args.head_dim;
            rope_head(kr, cr, cs, args.head_dim, args.rope_dim, args.neox, lane, lanes, 1.0f);
        } else {
            const int vh = h - args.n_heads - args.n_kv_heads;
            device const float* vr = (device const float*)(v + t * args.v_stride) + vh * args.head_dim;
            device half* cr = (device half*)(v_cache + cache_row * args.cache_stride) + vh * args.head_dim;
            for (int i = lane; i < args.head_dim; i += lanes) cr[i] = half(vr[i]);
        }
    }
}
