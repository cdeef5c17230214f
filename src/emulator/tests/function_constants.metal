// Function constants: one library, specialised per pipeline.
#include <metal_stdlib>
using namespace metal;

constant bool FC_NEGATE [[function_constant(0)]];
constant int FC_REPEAT [[function_constant(1)]];
constant float FC_SCALE [[function_constant(2)]];
constant bool FC_HAS_BIAS [[function_constant(3)]];
constant bool has_bias = is_function_constant_defined(FC_HAS_BIAS) && FC_HAS_BIAS;
constant int repeat_plus_one = FC_REPEAT + 1;

// out[i] = (negate ? -1 : 1) * scale * x[i] * (repeat + 1) + (has_bias ? 100 : 0)
kernel void fc_apply(
        device const float * x [[buffer(0)]],
        device       float * out [[buffer(1)]],
        uint i [[thread_position_in_grid]]) {
    float v = x[i] * FC_SCALE;
    for (int r = 0; r < repeat_plus_one - 1; ++r) v += x[i] * FC_SCALE;
    if (FC_NEGATE) v = -v;
    out[i] = v + (has_bias ? 100.0f : 0.0f);
}
