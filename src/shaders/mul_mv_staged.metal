// The decode GEMV with every device load covering whole cache lines, and x read once per
// threadgroup (issue 14). Quantized weights: mul_mv.metal's lanes each read a field of their own
// block, so one simdgroup load touches many lines for a few bytes of each. Here each simdgroup
// first copies a window of FG_MV_WINDOW_BLOCKS blocks of one of its rows into threadgroup memory
// (stage_bytes.h: 16-byte pieces from the row's first 128-byte boundary, a load of 32 lanes x 16
// bytes covering 4 whole lines; the bytes before it and after the last whole piece within their
// lines); then 8 lanes (Q8_0: 16) share each 32-weight chunk of the copy, so that each read
// instruction stays within 128 bytes, one word per bank (mul_mv_parts.h). The threadgroup loads
// x's window once for all its simdgroups, so x is requested once per threadgroup (32 to 256
// rows: the host picks how many simdgroups and args.sg_rows rows each, by the matrix's rows,
// metal_ops.cpp) rather than per simdgroup of 4. Float weights load whole lines directly; only
// their x is staged. Threadgroup memory is sized by the host
// (FG_MV_STAGED_TG_BYTES), for the simdgroups it launches.
//
// The direct kernels stay (FORGERT_METAL_GEMV=direct): whether the extra threadgroup traffic
// and barriers cost more than the scattered loads on an Apple GPU (whose L1 absorbs re-reads
// of a line) is a question for a Mac; llama.cpp's GEMVs load directly.
#include <metal_stdlib>
using namespace metal;

#include "argmax.h"
#include "mul_mv_parts.h"
#include "mul_mv_staged.h"

// x's window: FG_MV_WINDOW_BLOCKS 32-float blocks (mul_mv_staged.h: MV_X_PITCH).
#define MV_X_STAGE (FG_MV_WINDOW_BLOCKS * MV_X_PITCH)

// x's window of columns [c0, c0 + n) into xs, once the threadgroup is done with the last one.
static inline void mv_window_x(constant mul_mv_args& args, device const float* xr, int c0, int n,
                               threadgroup float* xs, ushort tid, ushort nthreads) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
    mv_stage_x(args, xr, c0, n, xs, tid, nthreads);
    threadgroup_barrier(mem_flags::mem_threadgroup);
}

// The lane sums of NW * MV_SG_ROWS rows (wrow, each at address % 128 walign; the first nrows of
// each matrix are the simdgroup's: nrows <= args.sg_rows, past the matrix's last row excluded) with
// x row xr, a window of FG_MV_WINDOW_BLOCKS chunks at a time, each row's window copied to `stage`
// first. Q::lanes lanes share a chunk (mul_mv_parts.h): lane tiisg takes part tiisg % lanes of
// chunks g, g + chunks, ... (g = tiisg / lanes), so each read instruction covers `chunks`
// consecutive chunks. nthreads: the threadgroup's.
template <typename Q, int NW>
static inline void mv_staged_sums(mv_block_layout, constant mul_mv_args& args, device const char* thread* wrow,
                                  thread const int* walign, device const float* xr, threadgroup float* xs,
                                  threadgroup uint4* stage, int nrows, ushort tid, ushort nthreads, ushort tiisg,
                                  thread float* sum) {
    const int chunks = FG_SIMD_WIDTH / Q::lanes;       // per read instruction: 4 (Q8_0: 2)
    const int steps = FG_MV_WINDOW_BLOCKS / chunks;    // per window: 4 (8)
    const int nx = FG_QK / Q::lanes;                   // x values of a lane's part: 4 (2)
    const int nb = args.cols / FG_QK;
    const int g = tiisg / Q::lanes;
    const int part = tiisg % Q::lanes;
    float xv[16];   // [steps][nx]
    float xsum[8];  // [steps]
    for (int c0 = 0; c0 < nb; c0 += FG_MV_WINDOW_BLOCKS) {
        const int nbw = min(FG_MV_WINDOW_BLOCKS, nb - c0);
        mv_window_x(args, xr, c0 * FG_QK, nbw * FG_QK, xs, tid, nthreads);
        for (int s = 0; s < steps; ++s) {
            const int c = s * chunks + g;
            xsum[s] = 0.0f;
            if (c >= nbw) break;
            Q::load_x(xs + c * MV_X_PITCH, part, xv + s * nx);
            for (int i = 0; i < nx; ++i) xsum[s] += xv[s * nx + i];
        }
        // window bytes: whole blocks (K-quants: FG_MV_WINDOW_BLOCKS / 8 super-blocks)
        const int off = c0 / FG_MV_WINDOW_BLOCKS * Q::window_bytes;
        const int n = nbw * Q::window_bytes / FG_MV_WINDOW_BLOCKS;
        for (int r = 0; r < NW * MV_SG_ROWS; ++r) {
            if (r % MV_SG_ROWS >= nrows) continue;  // not this simdgroup's row (uniform in it)
            simdgroup_barrier(mem_flags::mem_threadgroup);  // the lanes are done with the last copy
            threadgroup const char* row = mv_stage_bytes(wrow[r] + off, n, (walign[r] + off) % 128, stage, tiisg);
            simdgroup_barrier(mem_flags::mem_threadgroup);
            const bool a4 = (walign[r] + off) % 4 == 0;  // the copy keeps the row's address % 16
            for (int s = 0; s < steps; ++s) {
                const int c = s * chunks + g;
                if (c >= nbw) break;
                sum[r] += Q::dot(row, c, part, xv + s * nx, xsum[s], a4);
            }
        }
    }
}

// Float weights: the rows load whole lines directly (a lane 4 consecutive columns: a simdgroup
// load 128 of them); only x goes through threadgroup memory.
template <typename R, int NW>
static inline void mv_staged_sums(mv_float_layout, constant mul_mv_args& args, device const char* thread* wrow,
                                  thread const int*, device const float* xr, threadgroup float* xs,
                                  threadgroup uint4*, int nrows, ushort tid, ushort nthreads, ushort tiisg,
                                  thread float* sum) {
    const bool vec4 = args.w_vec4 != 0 && args.x_vec4 != 0;
    for (int c0 = 0; c0 < args.cols; c0 += FG_MV_WINDOW_BLOCKS * FG_QK) {
        const int n = min(FG_MV_WINDOW_BLOCKS * FG_QK, args.cols - c0);
        mv_window_x(args, xr, c0, n, xs, tid, nthreads);
        if (vec4) {
            for (int c = 4 * tiisg; c < n; c += 4 * FG_SIMD_WIDTH) {
                const float4 xv = *((threadgroup const float4*)(xs + (c / 32) * MV_X_PITCH + c % 32));
                for (int r = 0; r < NW * MV_SG_ROWS; ++r)
                    if (r % MV_SG_ROWS < nrows) sum[r] += dot(R::load4(wrow[r], c0 + c), xv);
            }
        } else {
            for (int c = tiisg; c < n; c += FG_SIMD_WIDTH) {
                const float xv = xs[(c / 32) * MV_X_PITCH + c % 32];
                for (int r = 0; r < NW * MV_SG_ROWS; ++r)
                    if (r % MV_SG_ROWS < nrows) sum[r] += R::load1(wrow[r], c0 + c) * xv;
            }
        }
    }
}

// The threadgroup memory (FG_MV_STAGED_TG_BYTES): x's window, then each simdgroup's copy buffer (a
// window of one row, plus the alignment offset and a partial piece; float weights: none).
#define MV_STAGE_PIECES(Q) (Q::window_bytes / 16 + 2)
static inline threadgroup float* mv_x_stage(threadgroup uint4* shmem) { return (threadgroup float*)shmem; }
template <typename Q>
static inline threadgroup uint4* mv_row_stage(threadgroup uint4* shmem, ushort sgitg) {
    return shmem + MV_X_STAGE / 4 + sgitg * MV_STAGE_PIECES(Q);
}

template <typename Q>
kernel void mul_mv_staged(
        constant mul_mv_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        threadgroup uint4 * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = mv_first_row(args, tgpig.x, sgitg, nsg);
    const int t = tgpig.y;
    device const char* wrow[MV_SG_ROWS];
    int walign[MV_SG_ROWS];
    mv_row_pointers<1, MV_SG_ROWS>(args, w, w, r0, wrow);
    mv_row_aligns<1>(args, args.w_align, args.w_align, r0, walign);
    float sum[MV_SG_ROWS] = {0.0f};
    mv_staged_sums<Q, 1>(typename Q::layout(), args, wrow, walign, (device const float*)(x + t * args.x_stride),
                         mv_x_stage(shmem), mv_row_stage<Q>(shmem, sgitg), mv_own_rows(args, r0), tid,
                         nsg * FG_SIMD_WIDTH, tiisg, sum);
    mv_store<1, MV_SG_ROWS>(args, sum, (device float*)(out + t * args.out_stride), r0, tiisg, args.sg_rows);
}

template <typename Q>
kernel void mul_mv_swiglu_staged(
        constant mul_mv_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        device const char * w_up    [[buffer(4)]],
        threadgroup uint4 * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = mv_first_row(args, tgpig.x, sgitg, nsg);
    const int t = tgpig.y;
    device const char* wrow[2 * MV_SG_ROWS];
    int walign[2 * MV_SG_ROWS];
    mv_row_pointers<2, MV_SG_ROWS>(args, w, w_up, r0, wrow);
    mv_row_aligns<2>(args, args.w_align, args.w_up_align, r0, walign);
    float sum[2 * MV_SG_ROWS] = {0.0f};
    mv_staged_sums<Q, 2>(typename Q::layout(), args, wrow, walign, (device const float*)(x + t * args.x_stride),
                         mv_x_stage(shmem), mv_row_stage<Q>(shmem, sgitg), mv_own_rows(args, r0), tid,
                         nsg * FG_SIMD_WIDTH, tiisg, sum);
    mv_store<2, MV_SG_ROWS>(args, sum, (device float*)(out + t * args.out_stride), r0, tiisg, args.sg_rows);
}

template <typename Q>
kernel void mul_mv_id_staged(
        constant mul_mv_id_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        device const char * ids     [[buffer(4)]],
        threadgroup uint4 * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = mv_first_row(args.mv, tgpig.x, sgitg, nsg);
    const mv_id_rows s = mv_id_slot(args, w, x, out, ids, tgpig.y);
    float sum[MV_SG_ROWS] = {0.0f};
    if (s.valid) {  // uniform across the threadgroup: its barriers are all reached or none
        device const char* wrow[MV_SG_ROWS];
        int walign[MV_SG_ROWS];
        const int a = int((ulong(args.mv.w_align) + s.w_offset) % 128);
        mv_row_pointers<1, MV_SG_ROWS>(args.mv, s.w, s.w, r0, wrow);
        mv_row_aligns<1>(args.mv, a, a, r0, walign);
        mv_staged_sums<Q, 1>(typename Q::layout(), args.mv, wrow, walign, s.x, mv_x_stage(shmem),
                             mv_row_stage<Q>(shmem, sgitg), mv_own_rows(args.mv, r0), tid, nsg * FG_SIMD_WIDTH, tiisg,
                             sum);
    }
    mv_store<1, MV_SG_ROWS>(args.mv, sum, s.o, r0, tiisg, args.mv.sg_rows);
}

// mul_mv_staged with argmax_f32 fused on (greedy decode, kernel_args.h): the same row sums,
// reduced as mv_store reduces them (the bits the unfused logits have), never stored; the
// threadgroup's candidate over its rows goes to partials[t, tgpig.x] for argmax_partials.
template <typename Q>
kernel void mul_mv_argmax_staged(
        constant mul_mv_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * partials [[buffer(3)]],
        threadgroup uint4 * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        uint3  tgpg  [[threadgroups_per_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = mv_first_row(args, tgpig.x, sgitg, nsg);
    const int t = tgpig.y;
    device const char* wrow[MV_SG_ROWS];
    int walign[MV_SG_ROWS];
    mv_row_pointers<1, MV_SG_ROWS>(args, w, w, r0, wrow);
    mv_row_aligns<1>(args, args.w_align, args.w_align, r0, walign);
    float sum[MV_SG_ROWS] = {0.0f};
    const int nrows = mv_own_rows(args, r0);
    mv_staged_sums<Q, 1>(typename Q::layout(), args, wrow, walign, (device const float*)(x + t * args.x_stride),
                         mv_x_stage(shmem), mv_row_stage<Q>(shmem, sgitg), nrows, tid, nsg * FG_SIMD_WIDTH, tiisg,
                         sum);
    float best = -FLT_MAX;
    int best_i = INT_MAX, bad = 0;
    for (int r = 0; r < MV_SG_ROWS; ++r) {
        if (r >= nrows) break;  // uniform in the simdgroup
        fg_argmax_offer(best, best_i, bad, simd_sum(sum[r]), r0 + r);  // rows ascending
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);  // every simdgroup is done with its copies: shmem is free
    fg_threadgroup_argmax(best, best_i, bad, (threadgroup float*)shmem, sgitg, tiisg, nsg);
    if (sgitg == 0 && tiisg == 0) {  // candidate tgpig.x of tgpg.x (kernel_args.h: values, then indices)
        device float* values = (device float*)(partials + t * args.out_stride);
        values[tgpig.x] = best;
        ((device int*)(values + tgpg.x))[tgpig.x] = bad != 0 ? -bad : best_i;  // argmax.h: bad bits as -bad
    }
}

typedef decltype(mul_mv_staged<q8_0_part>) mul_mv_staged_t;
template [[host_name("mul_mv_staged_q8_0")]] kernel mul_mv_staged_t mul_mv_staged<q8_0_part>;
template [[host_name("mul_mv_staged_q4_0")]] kernel mul_mv_staged_t mul_mv_staged<q4_0_part>;
template [[host_name("mul_mv_staged_q4_1")]] kernel mul_mv_staged_t mul_mv_staged<q4_1_part>;
template [[host_name("mul_mv_staged_q5_0")]] kernel mul_mv_staged_t mul_mv_staged<q5_0_part>;
template [[host_name("mul_mv_staged_q5_1")]] kernel mul_mv_staged_t mul_mv_staged<q5_1_part>;
template [[host_name("mul_mv_staged_q2_K")]] kernel mul_mv_staged_t mul_mv_staged<q2_K_part>;
template [[host_name("mul_mv_staged_q3_K")]] kernel mul_mv_staged_t mul_mv_staged<q3_K_part>;
template [[host_name("mul_mv_staged_q4_K")]] kernel mul_mv_staged_t mul_mv_staged<q4_K_part>;
template [[host_name("mul_mv_staged_q5_K")]] kernel mul_mv_staged_t mul_mv_staged<q5_K_part>;
template [[host_name("mul_mv_staged_q6_K")]] kernel mul_mv_staged_t mul_mv_staged<q6_K_part>;
template [[host_name("mul_mv_staged_iq4_nl")]] kernel mul_mv_staged_t mul_mv_staged<iq4_nl_part>;
template [[host_name("mul_mv_staged_iq4_xs")]] kernel mul_mv_staged_t mul_mv_staged<iq4_xs_part>;
template [[host_name("mul_mv_staged_iq2_xxs")]] kernel mul_mv_staged_t mul_mv_staged<iq2_xxs_part>;
template [[host_name("mul_mv_staged_iq2_xs")]] kernel mul_mv_staged_t mul_mv_staged<iq2_xs_part>;
template [[host_name("mul_mv_staged_iq2_s")]] kernel mul_mv_staged_t mul_mv_staged<iq2_s_part>;
template [[host_name("mul_mv_staged_iq3_xxs")]] kernel mul_mv_staged_t mul_mv_staged<iq3_xxs_part>;
template [[host_name("mul_mv_staged_iq3_s")]] kernel mul_mv_staged_t mul_mv_staged<iq3_s_part>;
template [[host_name("mul_mv_staged_iq1_s")]] kernel mul_mv_staged_t mul_mv_staged<iq1_s_part>;
template [[host_name("mul_mv_staged_iq1_m")]] kernel mul_mv_staged_t mul_mv_staged<iq1_m_part>;
template [[host_name("mul_mv_staged_mxfp4")]] kernel mul_mv_staged_t mul_mv_staged<mxfp4_part>;
template [[host_name("mul_mv_staged_f32")]] kernel mul_mv_staged_t mul_mv_staged<f32_row>;
template [[host_name("mul_mv_staged_f16")]] kernel mul_mv_staged_t mul_mv_staged<f16_row>;
template [[host_name("mul_mv_staged_bf16")]] kernel mul_mv_staged_t mul_mv_staged<bf16_row>;
typedef decltype(mul_mv_swiglu_staged<q8_0_part>) mul_mv_swiglu_staged_t;
template [[host_name("mul_mv_swiglu_staged_q8_0")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q8_0_part>;
template [[host_name("mul_mv_swiglu_staged_q4_0")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q4_0_part>;
template [[host_name("mul_mv_swiglu_staged_q4_1")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q4_1_part>;
template [[host_name("mul_mv_swiglu_staged_q5_0")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q5_0_part>;
template [[host_name("mul_mv_swiglu_staged_q5_1")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q5_1_part>;
template [[host_name("mul_mv_swiglu_staged_q2_K")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q2_K_part>;
template [[host_name("mul_mv_swiglu_staged_q3_K")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q3_K_part>;
template [[host_name("mul_mv_swiglu_staged_q4_K")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q4_K_part>;
template [[host_name("mul_mv_swiglu_staged_q5_K")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q5_K_part>;
template [[host_name("mul_mv_swiglu_staged_q6_K")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<q6_K_part>;
template [[host_name("mul_mv_swiglu_staged_iq4_nl")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq4_nl_part>;
template [[host_name("mul_mv_swiglu_staged_iq4_xs")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq4_xs_part>;
template [[host_name("mul_mv_swiglu_staged_iq2_xxs")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq2_xxs_part>;
template [[host_name("mul_mv_swiglu_staged_iq2_xs")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq2_xs_part>;
template [[host_name("mul_mv_swiglu_staged_iq2_s")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq2_s_part>;
template [[host_name("mul_mv_swiglu_staged_iq3_xxs")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq3_xxs_part>;
template [[host_name("mul_mv_swiglu_staged_iq3_s")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq3_s_part>;
template [[host_name("mul_mv_swiglu_staged_iq1_s")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq1_s_part>;
template [[host_name("mul_mv_swiglu_staged_iq1_m")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<iq1_m_part>;
template [[host_name("mul_mv_swiglu_staged_mxfp4")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<mxfp4_part>;
template [[host_name("mul_mv_swiglu_staged_f32")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<f32_row>;
template [[host_name("mul_mv_swiglu_staged_f16")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<f16_row>;
template [[host_name("mul_mv_swiglu_staged_bf16")]] kernel mul_mv_swiglu_staged_t mul_mv_swiglu_staged<bf16_row>;
typedef decltype(mul_mv_id_staged<q8_0_part>) mul_mv_id_staged_t;
template [[host_name("mul_mv_id_staged_q8_0")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q8_0_part>;
template [[host_name("mul_mv_id_staged_q4_0")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q4_0_part>;
template [[host_name("mul_mv_id_staged_q4_1")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q4_1_part>;
template [[host_name("mul_mv_id_staged_q5_0")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q5_0_part>;
template [[host_name("mul_mv_id_staged_q5_1")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q5_1_part>;
template [[host_name("mul_mv_id_staged_q2_K")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q2_K_part>;
template [[host_name("mul_mv_id_staged_q3_K")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q3_K_part>;
template [[host_name("mul_mv_id_staged_q4_K")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q4_K_part>;
template [[host_name("mul_mv_id_staged_q5_K")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q5_K_part>;
template [[host_name("mul_mv_id_staged_q6_K")]] kernel mul_mv_id_staged_t mul_mv_id_staged<q6_K_part>;
template [[host_name("mul_mv_id_staged_iq4_nl")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq4_nl_part>;
template [[host_name("mul_mv_id_staged_iq4_xs")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq4_xs_part>;
template [[host_name("mul_mv_id_staged_iq2_xxs")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq2_xxs_part>;
template [[host_name("mul_mv_id_staged_iq2_xs")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq2_xs_part>;
template [[host_name("mul_mv_id_staged_iq2_s")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq2_s_part>;
template [[host_name("mul_mv_id_staged_iq3_xxs")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq3_xxs_part>;
template [[host_name("mul_mv_id_staged_iq3_s")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq3_s_part>;
template [[host_name("mul_mv_id_staged_iq1_s")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq1_s_part>;
template [[host_name("mul_mv_id_staged_iq1_m")]] kernel mul_mv_id_staged_t mul_mv_id_staged<iq1_m_part>;
template [[host_name("mul_mv_id_staged_mxfp4")]] kernel mul_mv_id_staged_t mul_mv_id_staged<mxfp4_part>;
template [[host_name("mul_mv_id_staged_f32")]] kernel mul_mv_id_staged_t mul_mv_id_staged<f32_row>;
template [[host_name("mul_mv_id_staged_f16")]] kernel mul_mv_id_staged_t mul_mv_id_staged<f16_row>;
template [[host_name("mul_mv_id_staged_bf16")]] kernel mul_mv_id_staged_t mul_mv_id_staged<bf16_row>;
typedef decltype(mul_mv_argmax_staged<q8_0_part>) mul_mv_argmax_staged_t;
template [[host_name("mul_mv_argmax_staged_q8_0")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q8_0_part>;
template [[host_name("mul_mv_argmax_staged_q4_0")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q4_0_part>;
template [[host_name("mul_mv_argmax_staged_q4_1")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q4_1_part>;
template [[host_name("mul_mv_argmax_staged_q5_0")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q5_0_part>;
template [[host_name("mul_mv_argmax_staged_q5_1")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q5_1_part>;
template [[host_name("mul_mv_argmax_staged_q2_K")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q2_K_part>;
template [[host_name("mul_mv_argmax_staged_q3_K")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q3_K_part>;
template [[host_name("mul_mv_argmax_staged_q4_K")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q4_K_part>;
template [[host_name("mul_mv_argmax_staged_q5_K")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q5_K_part>;
template [[host_name("mul_mv_argmax_staged_q6_K")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<q6_K_part>;
template [[host_name("mul_mv_argmax_staged_iq4_nl")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq4_nl_part>;
template [[host_name("mul_mv_argmax_staged_iq4_xs")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq4_xs_part>;
template [[host_name("mul_mv_argmax_staged_iq2_xxs")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq2_xxs_part>;
template [[host_name("mul_mv_argmax_staged_iq2_xs")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq2_xs_part>;
template [[host_name("mul_mv_argmax_staged_iq2_s")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq2_s_part>;
template [[host_name("mul_mv_argmax_staged_iq3_xxs")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq3_xxs_part>;
template [[host_name("mul_mv_argmax_staged_iq3_s")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq3_s_part>;
template [[host_name("mul_mv_argmax_staged_iq1_s")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq1_s_part>;
template [[host_name("mul_mv_argmax_staged_iq1_m")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<iq1_m_part>;
template [[host_name("mul_mv_argmax_staged_mxfp4")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<mxfp4_part>;
template [[host_name("mul_mv_argmax_staged_f32")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<f32_row>;
template [[host_name("mul_mv_argmax_staged_f16")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<f16_row>;
template [[host_name("mul_mv_argmax_staged_bf16")]] kernel mul_mv_argmax_staged_t mul_mv_argmax_staged<bf16_row>;
