// Vector types, constructors, casts and half/bfloat conversions.
#include <metal_stdlib>
using namespace metal;

template <typename T4>
T4 widen(float4 v) { return T4(v); }

kernel void vector_ops(
        device const float4 * x  [[buffer(0)]],
        device       float  * out [[buffer(1)]],
        device       half   * outh [[buffer(2)]],
        device       int    * outi [[buffer(3)]],
        uint i [[thread_position_in_grid]]) {
    const float4 v = x[i];
    const float4 c = float4(v.xy, 1.0f, v.w);     // concatenating constructor
    const int4 iv = (int4) v;                      // C-style vector cast: converts, not bitcasts
    const half4 h = half4(v);
    const float2 s = v.zw + c.xy;                  // swizzles
    device float* o = out + i * 8;
    o[0] = dot(v, c);
    o[1] = s.x * s.y;
    o[2] = float(iv.x + iv.y + iv.z + iv.w);
    o[3] = length(float2(3.0f, 4.0f));
    o[4] = clamp(v.x, -1.0f, 1.0f) + max(v.y, 0.0f) + select(0.0f, 1.0f, v.z > v.w);
    o[5] = as_type<float>(as_type<uint>(v.x));
    o[6] = float(widen<float4>(v).w);
    o[7] = float(bfloat(v.x));
    for (int k = 0; k < 4; ++k) outh[i * 4 + k] = h[k] * 2.0h;
    outi[i * 2] = all(iv == int4(iv.x, iv.y, iv.z, iv.w)) ? 1 : 0;
    outi[i * 2 + 1] = as_type<int>(half2(1.0h, -2.0h));
}
