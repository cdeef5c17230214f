// Rotary position embedding, in place. Token t sits at position pos0 + t; pair j of
// every head turns by angle pos * freqs[j] (freqs already hold any llama3/YaRN scaling).
// Layouts: adjacent pairs (x[2j], x[2j + 1]) as in GGUF llama weights, or NeoX halves
// (x[j], x[j + head_dim / 2]) as in HF checkpoints and Qwen2.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

kernel void rope_f32(
        constant rope_args & args [[buffer(0)]],
        device       char * x     [[buffer(1)]],
        device const float * freqs [[buffer(2)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    const int head = tgpig.x;
    const int t = tgpig.y;
    const float pos = float(args.pos0 + t);
    const int half_dim = args.head_dim / 2;
    device float* xh = (device float*)(x + t * args.x_stride) + head * args.head_dim;

    for (int j = tiitg; j < half_dim; j += ntg.x) {
        // Positions reach 1e5+: the f32 product pos * freq is then off by up to ~4e-3 rad.
        // fma recovers its exact rounding error, which a first-order turn adds back, so the
        // angle is as good as an f64 product; precise:: keeps sin/cos's range reduction exact.
        const float angle = pos * freqs[j];
        const float angle_err = fma(pos, freqs[j], -angle);
        const float c0 = precise::cos(angle);
        const float s0 = precise::sin(angle);
        const float c = c0 - angle_err * s0;
        const float s = s0 + angle_err * c0;
        const int i0 = args.neox != 0 ? j : 2 * j;
        const int i1 = args.neox != 0 ? j + half_dim : 2 * j + 1;
        const float a = xh[i0];
        const float b = xh[i1];
        xh[i0] = a * c - b * s;
        xh[i1] = a * s + b * c;
    }
}
