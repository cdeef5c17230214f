// Embedding lookup: out[t, :] = f32(table[ids[t], :]) for any weight type. An id
// outside the table writes zeros instead of reading out of bounds (the engine
// rejects such ids before encoding; this keeps a bad id from faulting the GPU).
#include <metal_stdlib>
using namespace metal;

#include "dequant.h"

template <int TYPE>
kernel void get_rows(
        constant get_rows_args & args [[buffer(0)]],
        device const char * table     [[buffer(1)]],
        device const int  * ids       [[buffer(2)]],
        device       char * out       [[buffer(3)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (c >= args.cols) return;
    const int id = ids[t];
    device float* o = (device float*)(out + t * args.out_stride);
    o[c] = (id >= 0 && id < args.table_rows) ? fg_weight_at(table + id * args.table_stride, TYPE, c) : 0.0f;
}

typedef decltype(get_rows<FG_F32>) get_rows_t;
template [[host_name("get_rows_f32")]] kernel get_rows_t get_rows<FG_F32>;
template [[host_name("get_rows_f16")]] kernel get_rows_t get_rows<FG_F16>;
template [[host_name("get_rows_bf16")]] kernel get_rows_t get_rows<FG_BF16>;
template [[host_name("get_rows_q8_0")]] kernel get_rows_t get_rows<FG_Q8_0>;
template [[host_name("get_rows_q4_0")]] kernel get_rows_t get_rows<FG_Q4_0>;
template [[host_name("get_rows_q4_1")]] kernel get_rows_t get_rows<FG_Q4_1>;
template [[host_name("get_rows_q5_0")]] kernel get_rows_t get_rows<FG_Q5_0>;
template [[host_name("get_rows_q5_1")]] kernel get_rows_t get_rows<FG_Q5_1>;
template [[host_name("get_rows_q2_K")]] kernel get_rows_t get_rows<FG_Q2_K>;
template [[host_name("get_rows_q3_K")]] kernel get_rows_t get_rows<FG_Q3_K>;
template [[host_name("get_rows_q4_K")]] kernel get_rows_t get_rows<FG_Q4_K>;
template [[host_name("get_rows_q5_K")]] kernel get_rows_t get_rows<FG_Q5_K>;
template [[host_name("get_rows_q6_K")]] kernel get_rows_t get_rows<FG_Q6_K>;
template [[host_name("get_rows_iq4_nl")]] kernel get_rows_t get_rows<FG_IQ4_NL>;
template [[host_name("get_rows_iq4_xs")]] kernel get_rows_t get_rows<FG_IQ4_XS>;
template [[host_name("get_rows_mxfp4")]] kernel get_rows_t get_rows<FG_MXFP4>;
