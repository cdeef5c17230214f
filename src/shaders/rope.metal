// Rotary position embedding. Token t sits at position pos0 + t; pair j of every head
// turns by angle pos * freqs[j] (freqs already hold any llama3 / YaRN / LongRoPE scaling).
// Layouts: adjacent pairs (x[2j], x[2j + 1]) as in GGUF llama weights, or NeoX halves
// (x[j], x[j + rope_dim / 2]) as in HF checkpoints and Qwen2; only the first rope_dim dims
// of a head rotate (partial rotary; none on NoPE layers).
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// Rotates pairs j = first, first + step, ... of the first rope_dim dims of one head in
// place, optionally storing the head as half too (the key's f16 cache row, its unrotated
// tail included).
static inline void rope_head(device float* xh, device half* cache_h, float pos, device const float* freqs,
                             int head_dim, int rope_dim, float attn_factor, int neox, int first, int step) {
    const int half_rot = rope_dim / 2;
    for (int j = first; j < half_rot; j += step) {
        // Positions reach 1e5+: the f32 product pos * freq is then off by up to ~4e-3 rad.
        // fma recovers its exact rounding error, which a first-order turn adds back, so the
        // angle is as good as an f64 product; precise:: keeps sin/cos's range reduction exact.
        const float angle = pos * freqs[j];
        const float angle_err = fma(pos, freqs[j], -angle);
        const float c0 = precise::cos(angle);
        const float s0 = precise::sin(angle);
        const float c = (c0 - angle_err * s0) * attn_factor;
        const float s = (s0 + angle_err * c0) * attn_factor;
        const int i0 = neox != 0 ? j : 2 * j;
        const int i1 = neox != 0 ? j + half_rot : 2 * j + 1;
        const float a = xh[i0];
        const float b = xh[i1];
        const float ra = a * c - b * s;
        const float rb = a * s + b * c;
        xh[i0] = ra;
        xh[i1] = rb;
        if (cache_h) {
            cache_h[i0] = half(ra);
            cache_h[i1] = half(rb);
        }
    }
    if (cache_h) {
        for (int i = rope_dim + first; i < head_dim; i += step) cache_h[i] = half(xh[i]);
    }
}

// The step between the QKV projection and attention in one dispatch: threadgroup
// (h, t) rotates query head h, or rotates key head h - n_heads and caches it, or caches
// value head h - n_heads - n_kv_heads. The caches are bound at row pos0, or with a row table
// (a batch of sequences) at row 0, row t going to its sequence's base + its position.
kernel void rope_kv_write_f32(
        constant rope_kv_write_args & args [[buffer(0)]],
        device       char * q        [[buffer(1)]],
        device       char * k        [[buffer(2)]],
        device const char * v        [[buffer(3)]],
        device       char * k_cache  [[buffer(4)]],
        device       char * v_cache  [[buffer(5)]],
        device const float * freqs   [[buffer(6)]],
        device const int   * rows    [[buffer(7)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    const int h = tgpig.x;
    const int t = tgpig.y;
    const int p = args.has_rows != 0 ? rows[2 * t] : args.pos0 + t;
    const int cache_row = args.has_rows != 0 ? rows[2 * t + 1] + p : t;
    const float pos = float(p);
    if (h < args.n_heads) {
        device float* qh = (device float*)(q + t * args.q_stride) + h * args.head_dim;
        rope_head(qh, nullptr, pos, freqs, args.head_dim, args.rope_dim, args.attn_factor, args.neox, tiitg, ntg.x);
    } else if (h < args.n_heads + args.n_kv_heads) {
        const int kh = h - args.n_heads;
        device float* kr = (device float*)(k + t * args.k_stride) + kh * args.head_dim;
        device half* cr = (device half*)(k_cache + cache_row * args.cache_stride) + kh * args.head_dim;
        rope_head(kr, cr, pos, freqs, args.head_dim, args.rope_dim, args.attn_factor, args.neox, tiitg, ntg.x);
    } else {
        const int vh = h - args.n_heads - args.n_kv_heads;
        device const float* vr = (device const float*)(v + t * args.v_stride) + vh * args.head_dim;
        device half* cr = (device half*)(v_cache + cache_row * args.cache_stride) + vh * args.head_dim;
        for (int i = tiitg; i < args.head_dim; i += ntg.x) cr[i] = half(vr[i]);
    }
}
