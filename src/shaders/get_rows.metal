// Embedding lookup: out[t, :] = f32(table[ids[t], :]) for any weight type. An id
// outside the table writes zeros instead of reading out of bounds (the engine
// rejects such ids before encoding; this keeps a bad id from faulting the GPU).
//
// A simdgroup per window of FG_GET_ROWS_WINDOW columns of a row (so the id is read once per
// window). Float tables: a lane per column, a simdgroup's load whole lines. Quantized
// tables (issue 14): their blocks are only 2-byte aligned inside a row, so lanes reading
// fields of their block straddle lines and re-read scales; instead a simdgroup copies a
// window of the row into threadgroup memory in whole 16-byte pieces from its first 128-byte
// boundary (stage_bytes.h, as the staged GEMVs do) and decodes the copy.
#include <metal_stdlib>
using namespace metal;

#include "dequant.h"
#include "stage_bytes.h"

// One simdgroup: columns [c0, c0 + FG_GET_ROWS_WINDOW) of token t's row, read directly.
template <int TYPE>
kernel void get_rows(
        constant get_rows_args & args [[buffer(0)]],
        device const char * table     [[buffer(1)]],
        device const int  * ids       [[buffer(2)]],
        device       char * out       [[buffer(3)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int c0 = tgpig.x * FG_GET_ROWS_WINDOW;
    const int t = tgpig.y;
    const int n = min(FG_GET_ROWS_WINDOW, args.cols - c0);
    const int id = ids[t];
    const bool valid = id >= 0 && id < args.table_rows;
    device const char* row = table + ulong(valid ? id : 0) * args.table_stride;
    device float* o = (device float*)(out + t * args.out_stride) + c0;  // [n]
    for (int c = tiisg; c < n; c += FG_SIMD_WIDTH) o[c] = valid ? fg_weight_at(row, TYPE, c0 + c) : 0.0f;
}

// A window's copy: its bytes (at most Q8_0's 34 per 32 weights), plus the alignment offset and
// a partial piece.
#define GET_ROWS_STAGE_PIECES (FG_GET_ROWS_WINDOW / FG_QK * 34 / 16 + 2)

// One simdgroup: columns [c0, c0 + FG_GET_ROWS_WINDOW) of token t's row.
template <int TYPE>
kernel void get_rows_staged(
        constant get_rows_args & args [[buffer(0)]],
        device const char * table     [[buffer(1)]],
        device const int  * ids       [[buffer(2)]],
        device       char * out       [[buffer(3)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup uint4 stage[GET_ROWS_STAGE_PIECES];
    const int c0 = tgpig.x * FG_GET_ROWS_WINDOW;
    const int t = tgpig.y;
    const int n = min(FG_GET_ROWS_WINDOW, args.cols - c0);
    const int id = ids[t];
    device float* o = (device float*)(out + t * args.out_stride) + c0;  // [n]
    if (id < 0 || id >= args.table_rows) {  // uniform in the simdgroup
        for (int c = tiisg; c < n; c += FG_SIMD_WIDTH) o[c] = 0.0f;
        return;
    }
    const ulong off = ulong(id) * args.table_stride + ulong(c0 / args.block_cols) * ulong(args.block_bytes);
    threadgroup const char* row = mv_stage_bytes(table + off, n / args.block_cols * args.block_bytes,
                                                 int((ulong(args.table_align) + off) % 128), stage, tiisg);
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (int c = tiisg; c < n; c += FG_SIMD_WIDTH) o[c] = fg_weight_at<fg_threadgroup_space>(row, TYPE, c);
}

typedef decltype(get_rows<FG_F32>) get_rows_t;
template [[host_name("get_rows_f32")]] kernel get_rows_t get_rows<FG_F32>;
template [[host_name("get_rows_f16")]] kernel get_rows_t get_rows<FG_F16>;
template [[host_name("get_rows_bf16")]] kernel get_rows_t get_rows<FG_BF16>;
typedef decltype(get_rows_staged<FG_Q8_0>) get_rows_staged_t;
template [[host_name("get_rows_q8_0")]] kernel get_rows_staged_t get_rows_staged<FG_Q8_0>;
template [[host_name("get_rows_q4_0")]] kernel get_rows_staged_t get_rows_staged<FG_Q4_0>;
template [[host_name("get_rows_q4_1")]] kernel get_rows_staged_t get_rows_staged<FG_Q4_1>;
template [[host_name("get_rows_q5_0")]] kernel get_rows_staged_t get_rows_staged<FG_Q5_0>;
template [[host_name("get_rows_q5_1")]] kernel get_rows_staged_t get_rows_staged<FG_Q5_1>;
template [[host_name("get_rows_q2_K")]] kernel get_rows_staged_t get_rows_staged<FG_Q2_K>;
template [[host_name("get_rows_q3_K")]] kernel get_rows_staged_t get_rows_staged<FG_Q3_K>;
template [[host_name("get_rows_q4_K")]] kernel get_rows_staged_t get_rows_staged<FG_Q4_K>;
template [[host_name("get_rows_q5_K")]] kernel get_rows_staged_t get_rows_staged<FG_Q5_K>;
template [[host_name("get_rows_q6_K")]] kernel get_rows_staged_t get_rows_staged<FG_Q6_K>;
template [[host_name("get_rows_iq4_nl")]] kernel get_rows_staged_t get_rows_staged<FG_IQ4_NL>;
template [[host_name("get_rows_iq4_xs")]] kernel get_rows_staged_t get_rows_staged<FG_IQ4_XS>;
template [[host_name("get_rows_iq2_xxs")]] kernel get_rows_staged_t get_rows_staged<FG_IQ2_XXS>;
template [[host_name("get_rows_iq2_xs")]] kernel get_rows_staged_t get_rows_staged<FG_IQ2_XS>;
template [[host_name("get_rows_iq2_s")]] kernel get_rows_staged_t get_rows_staged<FG_IQ2_S>;
template [[host_name("get_rows_iq3_xxs")]] kernel get_rows_staged_t get_rows_staged<FG_IQ3_XXS>;
template [[host_name("get_rows_iq3_s")]] kernel get_rows_staged_t get_rows_staged<FG_IQ3_S>;
template [[host_name("get_rows_iq1_s")]] kernel get_rows_staged_t get_rows_staged<FG_IQ1_S>;
template [[host_name("get_rows_iq1_m")]] kernel get_rows_staged_t get_rows_staged<FG_IQ1_M>;
template [[host_name("get_rows_mxfp4")]] kernel get_rows_staged_t get_rows_staged<FG_MXFP4>;
