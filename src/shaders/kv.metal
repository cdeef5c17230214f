// KV cache write: cache[pos0 + t, c] = half(src[t, c]), with the cache bound at row pos0.
// The cache is f16 to halve the bytes attention streams per generated token.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

kernel void kv_write_f16(
        constant kv_write_args & args [[buffer(0)]],
        device const char * src       [[buffer(1)]],
        device       char * cache     [[buffer(2)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (c >= args.kv_dim) return;
    device const float* s = (device const float*)(src + t * args.src_stride);
    device half* d = (device half*)(cache + t * args.cache_stride);
    d[c] = half(s[c]);
}
