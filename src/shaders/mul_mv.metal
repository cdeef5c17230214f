// Matrix-vector products for decode: out[t, r] = sum_c w[r, c] * x[t, c].
//
// Memory bound: every weight byte is read once per token, so the kernels aim at
// streaming the weights at full bandwidth. Each simdgroup owns
// FG_MV_ROWS_PER_SIMDGROUP rows and reuses the x values it loads across them; the
// lanes split a row, accumulate privately and meet once at the end in simd_sum.
// One threadgroup row of the grid per token (grid.y); a few tokens only, larger
// batches go to mul_mm.
#include <metal_stdlib>
using namespace metal;

#include "mul_mv.h"

template <typename Q, int NW>
static inline void mv_quant_sums(constant mul_mv_args& args, device const char* thread* wrow,
                                 device const float* xr, ushort tiisg, thread float* sum) {
    const int nb = args.cols / FG_QK;
    const int ix = tiisg / 2;
    const int il = tiisg % 2;
    float xv[16];
    for (int blk = ix; blk < nb; blk += FG_SIMD_WIDTH / 2) {
        Q::template load_x<fg_device_space>(xr + blk * FG_QK, il, args.x_vec4 != 0, xv);
        float xsum = 0.0f;
        for (int i = 0; i < 16; ++i) xsum += xv[i];
        for (int r = 0; r < NW * MV_NR; ++r) sum[r] += Q::template dot<fg_device_space>(wrow[r], blk, il, xv, xsum);
    }
}

template <typename Q>
kernel void mul_mv_quant(
        constant mul_mv_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = (int(tgpig.x) * FG_MV_SIMDGROUPS + sgitg) * MV_NR;
    const int t = tgpig.y;
    device const char* wrow[MV_NR];
    mv_row_pointers<1>(args, w, w, r0, wrow);
    float sum[MV_NR] = {0.0f};
    mv_quant_sums<Q, 1>(args, wrow, (device const float*)(x + t * args.x_stride), tiisg, sum);
    mv_store<1>(args, sum, (device float*)(out + t * args.out_stride), r0, tiisg);
}

template <typename Q>
kernel void mul_mv_swiglu_quant(
        constant mul_mv_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        device const char * w_up    [[buffer(4)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = (int(tgpig.x) * FG_MV_SIMDGROUPS + sgitg) * MV_NR;
    const int t = tgpig.y;
    device const char* wrow[2 * MV_NR];
    mv_row_pointers<2>(args, w, w_up, r0, wrow);
    float sum[2 * MV_NR] = {0.0f};
    mv_quant_sums<Q, 2>(args, wrow, (device const float*)(x + t * args.x_stride), tiisg, sum);
    mv_store<2>(args, sum, (device float*)(out + t * args.out_stride), r0, tiisg);
}

typedef decltype(mul_mv_quant<q8_0_dot>) mul_mv_quant_t;
template [[host_name("mul_mv_q8_0")]] kernel mul_mv_quant_t mul_mv_quant<q8_0_dot>;
template [[host_name("mul_mv_q4_0")]] kernel mul_mv_quant_t mul_mv_quant<q4_0_dot>;
template [[host_name("mul_mv_q4_1")]] kernel mul_mv_quant_t mul_mv_quant<q4_1_dot>;
template [[host_name("mul_mv_q5_0")]] kernel mul_mv_quant_t mul_mv_quant<q5_0_dot>;
template [[host_name("mul_mv_q5_1")]] kernel mul_mv_quant_t mul_mv_quant<q5_1_dot>;
template [[host_name("mul_mv_q2_K")]] kernel mul_mv_quant_t mul_mv_quant<q2_K_dot>;
template [[host_name("mul_mv_q3_K")]] kernel mul_mv_quant_t mul_mv_quant<q3_K_dot>;
template [[host_name("mul_mv_q4_K")]] kernel mul_mv_quant_t mul_mv_quant<q4_K_dot>;
template [[host_name("mul_mv_q5_K")]] kernel mul_mv_quant_t mul_mv_quant<q5_K_dot>;
template [[host_name("mul_mv_q6_K")]] kernel mul_mv_quant_t mul_mv_quant<q6_K_dot>;
template [[host_name("mul_mv_iq4_nl")]] kernel mul_mv_quant_t mul_mv_quant<iq4_nl_dot>;
template [[host_name("mul_mv_iq4_xs")]] kernel mul_mv_quant_t mul_mv_quant<iq4_xs_dot>;
template [[host_name("mul_mv_iq2_xxs")]] kernel mul_mv_quant_t mul_mv_quant<iq2_xxs_dot>;
template [[host_name("mul_mv_iq2_xs")]] kernel mul_mv_quant_t mul_mv_quant<iq2_xs_dot>;
template [[host_name("mul_mv_iq2_s")]] kernel mul_mv_quant_t mul_mv_quant<iq2_s_dot>;
template [[host_name("mul_mv_iq3_xxs")]] kernel mul_mv_quant_t mul_mv_quant<iq3_xxs_dot>;
template [[host_name("mul_mv_iq3_s")]] kernel mul_mv_quant_t mul_mv_quant<iq3_s_dot>;
template [[host_name("mul_mv_iq1_s")]] kernel mul_mv_quant_t mul_mv_quant<iq1_s_dot>;
template [[host_name("mul_mv_iq1_m")]] kernel mul_mv_quant_t mul_mv_quant<iq1_m_dot>;
template [[host_name("mul_mv_mxfp4")]] kernel mul_mv_quant_t mul_mv_quant<mxfp4_dot>;
typedef decltype(mul_mv_swiglu_quant<q8_0_dot>) mul_mv_swiglu_quant_t;
template [[host_name("mul_mv_swiglu_q8_0")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q8_0_dot>;
template [[host_name("mul_mv_swiglu_q4_0")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q4_0_dot>;
template [[host_name("mul_mv_swiglu_q4_1")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q4_1_dot>;
template [[host_name("mul_mv_swiglu_q5_0")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q5_0_dot>;
template [[host_name("mul_mv_swiglu_q5_1")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q5_1_dot>;
template [[host_name("mul_mv_swiglu_q2_K")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q2_K_dot>;
template [[host_name("mul_mv_swiglu_q3_K")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q3_K_dot>;
template [[host_name("mul_mv_swiglu_q4_K")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q4_K_dot>;
template [[host_name("mul_mv_swiglu_q5_K")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q5_K_dot>;
template [[host_name("mul_mv_swiglu_q6_K")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<q6_K_dot>;
template [[host_name("mul_mv_swiglu_iq4_nl")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq4_nl_dot>;
template [[host_name("mul_mv_swiglu_iq4_xs")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq4_xs_dot>;
template [[host_name("mul_mv_swiglu_iq2_xxs")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq2_xxs_dot>;
template [[host_name("mul_mv_swiglu_iq2_xs")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq2_xs_dot>;
template [[host_name("mul_mv_swiglu_iq2_s")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq2_s_dot>;
template [[host_name("mul_mv_swiglu_iq3_xxs")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq3_xxs_dot>;
template [[host_name("mul_mv_swiglu_iq3_s")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq3_s_dot>;
template [[host_name("mul_mv_swiglu_iq1_s")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq1_s_dot>;
template [[host_name("mul_mv_swiglu_iq1_m")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<iq1_m_dot>;
template [[host_name("mul_mv_swiglu_mxfp4")]] kernel mul_mv_swiglu_quant_t mul_mv_swiglu_quant<mxfp4_dot>;

// ---------------------------------------------------------------------------------
// Float weights (F32, F16, BF16; mul_mv.h's readers): lanes take 4 consecutive columns
// per step when the rows allow 4-wide loads, single columns otherwise.
// ---------------------------------------------------------------------------------
template <typename R, int NW>
static inline void mv_float_sums(constant mul_mv_args& args, device const char* thread* wrow,
                                 device const float* xr, ushort tiisg, thread float* sum) {
    if (args.w_vec4 != 0 && args.x_vec4 != 0) {
        for (int c = 4 * tiisg; c < args.cols; c += 4 * FG_SIMD_WIDTH) {
            const float4 xv = *((device const float4*)(xr + c));
            for (int r = 0; r < NW * MV_NR; ++r) sum[r] += dot(R::load4(wrow[r], c), xv);
        }
    } else {
        for (int c = tiisg; c < args.cols; c += FG_SIMD_WIDTH) {
            const float xv = xr[c];
            for (int r = 0; r < NW * MV_NR; ++r) sum[r] += R::load1(wrow[r], c) * xv;
        }
    }
}

template <typename R>
kernel void mul_mv_float(
        constant mul_mv_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = (int(tgpig.x) * FG_MV_SIMDGROUPS + sgitg) * MV_NR;
    const int t = tgpig.y;
    device const char* wrow[MV_NR];
    mv_row_pointers<1>(args, w, w, r0, wrow);
    float sum[MV_NR] = {0.0f};
    mv_float_sums<R, 1>(args, wrow, (device const float*)(x + t * args.x_stride), tiisg, sum);
    mv_store<1>(args, sum, (device float*)(out + t * args.out_stride), r0, tiisg);
}

template <typename R>
kernel void mul_mv_swiglu_float(
        constant mul_mv_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        device const char * w_up    [[buffer(4)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = (int(tgpig.x) * FG_MV_SIMDGROUPS + sgitg) * MV_NR;
    const int t = tgpig.y;
    device const char* wrow[2 * MV_NR];
    mv_row_pointers<2>(args, w, w_up, r0, wrow);
    float sum[2 * MV_NR] = {0.0f};
    mv_float_sums<R, 2>(args, wrow, (device const float*)(x + t * args.x_stride), tiisg, sum);
    mv_store<2>(args, sum, (device float*)(out + t * args.out_stride), r0, tiisg);
}

typedef decltype(mul_mv_float<f32_row>) mul_mv_float_t;
template [[host_name("mul_mv_f32")]] kernel mul_mv_float_t mul_mv_float<f32_row>;
template [[host_name("mul_mv_f16")]] kernel mul_mv_float_t mul_mv_float<f16_row>;
template [[host_name("mul_mv_bf16")]] kernel mul_mv_float_t mul_mv_float<bf16_row>;
typedef decltype(mul_mv_swiglu_float<f32_row>) mul_mv_swiglu_float_t;
template [[host_name("mul_mv_swiglu_f32")]] kernel mul_mv_swiglu_float_t mul_mv_swiglu_float<f32_row>;
template [[host_name("mul_mv_swiglu_f16")]] kernel mul_mv_swiglu_float_t mul_mv_swiglu_float<f16_row>;
template [[host_name("mul_mv_swiglu_bf16")]] kernel mul_mv_swiglu_float_t mul_mv_swiglu_float<bf16_row>;

// ---------------------------------------------------------------------------------
// mul_mv_id: the GEMV over each token's selected experts (mixture of experts). Slot
// tgpig.y = i*k + j reads expert ids[i, j]'s rows only.
// ---------------------------------------------------------------------------------

template <typename Q>
kernel void mul_mv_id_quant(
        constant mul_mv_id_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        device const char * ids     [[buffer(4)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = (int(tgpig.x) * FG_MV_SIMDGROUPS + sgitg) * MV_NR;
    const mv_id_rows s = mv_id_slot(args, w, x, out, ids, tgpig.y);
    float sum[MV_NR] = {0.0f};
    if (s.valid) {
        device const char* wrow[MV_NR];
        mv_row_pointers<1>(args.mv, s.w, s.w, r0, wrow);
        mv_quant_sums<Q, 1>(args.mv, wrow, s.x, tiisg, sum);
    }
    mv_store<1>(args.mv, sum, s.o, r0, tiisg);
}

template <typename R>
kernel void mul_mv_id_float(
        constant mul_mv_id_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        device const char * ids     [[buffer(4)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = (int(tgpig.x) * FG_MV_SIMDGROUPS + sgitg) * MV_NR;
    const mv_id_rows s = mv_id_slot(args, w, x, out, ids, tgpig.y);
    float sum[MV_NR] = {0.0f};
    if (s.valid) {
        device const char* wrow[MV_NR];
        mv_row_pointers<1>(args.mv, s.w, s.w, r0, wrow);
        mv_float_sums<R, 1>(args.mv, wrow, s.x, tiisg, sum);
    }
    mv_store<1>(args.mv, sum, s.o, r0, tiisg);
}

typedef decltype(mul_mv_id_float<f32_row>) mul_mv_id_float_t;
template [[host_name("mul_mv_id_f32")]] kernel mul_mv_id_float_t mul_mv_id_float<f32_row>;
template [[host_name("mul_mv_id_f16")]] kernel mul_mv_id_float_t mul_mv_id_float<f16_row>;
template [[host_name("mul_mv_id_bf16")]] kernel mul_mv_id_float_t mul_mv_id_float<bf16_row>;
typedef decltype(mul_mv_id_quant<q8_0_dot>) mul_mv_id_quant_t;
template [[host_name("mul_mv_id_q8_0")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q8_0_dot>;
template [[host_name("mul_mv_id_q4_0")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q4_0_dot>;
template [[host_name("mul_mv_id_q4_1")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q4_1_dot>;
template [[host_name("mul_mv_id_q5_0")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q5_0_dot>;
template [[host_name("mul_mv_id_q5_1")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q5_1_dot>;
template [[host_name("mul_mv_id_q2_K")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q2_K_dot>;
template [[host_name("mul_mv_id_q3_K")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q3_K_dot>;
template [[host_name("mul_mv_id_q4_K")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q4_K_dot>;
template [[host_name("mul_mv_id_q5_K")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q5_K_dot>;
template [[host_name("mul_mv_id_q6_K")]] kernel mul_mv_id_quant_t mul_mv_id_quant<q6_K_dot>;
template [[host_name("mul_mv_id_iq4_nl")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq4_nl_dot>;
template [[host_name("mul_mv_id_iq4_xs")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq4_xs_dot>;
template [[host_name("mul_mv_id_iq2_xxs")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq2_xxs_dot>;
template [[host_name("mul_mv_id_iq2_xs")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq2_xs_dot>;
template [[host_name("mul_mv_id_iq2_s")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq2_s_dot>;
template [[host_name("mul_mv_id_iq3_xxs")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq3_xxs_dot>;
template [[host_name("mul_mv_id_iq3_s")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq3_s_dot>;
template [[host_name("mul_mv_id_iq1_s")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq1_s_dot>;
template [[host_name("mul_mv_id_iq1_m")]] kernel mul_mv_id_quant_t mul_mv_id_quant<iq1_m_dot>;
template [[host_name("mul_mv_id_mxfp4")]] kernel mul_mv_id_quant_t mul_mv_id_quant<mxfp4_dot>;
