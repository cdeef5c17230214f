// The staged decode GEMV for several decode rows (tokens) of a batch (issue 13): up to FG_MV_TOKENS
// tokens per threadgroup share each weight window a simdgroup copies into threadgroup memory, so
// the weights are requested once per FG_MV_TOKENS tokens; mul_mv_staged.metal's kernels serve one
// token per threadgroup and request the weights again for every token.
//
// Batch invariance (docs/design.md): a token's sums are those mul_mv_staged computes for it alone.
// Lane tiisg takes the same part of the same chunks (g, g + chunks, ... of the row: the window's
// size does not change which chunks a lane takes or their order), loads the same x values from the
// same layout, forms xsum and the per-chunk dot with the same float operations in the same order
// (mul_mv_parts.h's Q::dot), adds them into its own per-token sum in the same order, and reduces
// with the same simd_sum and store (mul_mv.h, mv_store): only the loop over tokens is new, and it
// never mixes two tokens' values. So a token's output is bit-identical whether it is alone or the
// k-th of 8 in the dispatch, and whatever the dispatch's token count.
//
// Threadgroup memory (FG_MV_TOKENS_TG_BYTES): x's window of every token (FG_MV_TOKENS_WINDOW_BLOCKS
// 32-float blocks, MV_X_PITCH apart, per token), then each simdgroup's copy of one row's window.
// Registers: a lane holds every token's x values of the window (8 a token, the one-token kernel's
// 16 over a 16-block window) and sums for 8 tokens x 8 rows (x 2 for gate and up), so that x is read
// from threadgroup memory once per window as in the one-token kernel; whether that many registers
// cost an Apple GPU occupancy is for a Mac to show.
#include <metal_stdlib>
using namespace metal;

#include "mul_mv_staged.h"

#define MV_T_WINDOW FG_MV_TOKENS_WINDOW_BLOCKS
// One token's x window in threadgroup memory, in floats.
#define MV_T_X_STAGE (MV_T_WINDOW * MV_X_PITCH)

// A row window's bytes: MV_T_WINDOW 32-weight chunks (K-quants: MV_T_WINDOW / 8 super-blocks).
template <typename Q>
struct mv_t_window {
    enum { bytes = Q::window_bytes / (FG_MV_WINDOW_BLOCKS / MV_T_WINDOW), pieces = bytes / 16 + 2 };
};

// x windows of tokens [0, nt) (x rows xr[t]) into xs, one MV_T_X_STAGE after the other, once the
// threadgroup is done with the last ones.
static inline void mv_t_window_x(constant mul_mv_args& args, device const float* thread* xr, int nt, int c0, int n,
                                 threadgroup float* xs, ushort tid, ushort nthreads) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int t = 0; t < nt; ++t) mv_stage_x(args, xr[t], c0, n, xs + t * MV_T_X_STAGE, tid, nthreads);
    threadgroup_barrier(mem_flags::mem_threadgroup);
}

// The lane sums of NW * MV_SG_ROWS rows (as mul_mv_staged's mv_staged_sums) with each of nt tokens'
// x rows xr[t]: sum[t * NW * MV_SG_ROWS + r] is token t's sum of row r. Per window, each lane
// loads its x values and their sums for every token once (the one-token kernel's xv and xsum, per
// token: MV_T_WINDOW values and up to 4 sums), then each row's window is copied into `stage` once
// and dotted with every token's.
template <typename Q, int NW>
static inline void mv_tokens_sums(mv_block_layout, constant mul_mv_args& args, device const char* thread* wrow,
                                  thread const int* walign, device const float* thread* xr, int nt, threadgroup float* xs,
                                  threadgroup uint4* stage, int nrows, ushort tid, ushort nthreads, ushort tiisg,
                                  thread float* sum) {
    const int chunks = FG_SIMD_WIDTH / Q::lanes;  // per read instruction: 4 (Q8_0: 2)
    const int steps = MV_T_WINDOW / chunks;       // per window: 2 (4)
    const int nx = FG_QK / Q::lanes;              // x values of a lane's part: 4 (2)
    const int nb = args.cols / FG_QK;
    const int g = tiisg / Q::lanes;
    const int part = tiisg % Q::lanes;
    float xv[FG_MV_TOKENS * MV_T_WINDOW];  // [token][steps][nx]: steps * nx == MV_T_WINDOW for every type
    float xsum[FG_MV_TOKENS * 4];          // [token][steps]
    for (int c0 = 0; c0 < nb; c0 += MV_T_WINDOW) {
        const int nbw = min(MV_T_WINDOW, nb - c0);
        mv_t_window_x(args, xr, nt, c0 * FG_QK, nbw * FG_QK, xs, tid, nthreads);
        for (int t = 0; t < nt; ++t) {
            for (int s = 0; s < steps; ++s) {
                const int c = s * chunks + g;
                xsum[4 * t + s] = 0.0f;
                if (c >= nbw) break;
                thread float* v = xv + MV_T_WINDOW * t + s * nx;
                Q::load_x(xs + t * MV_T_X_STAGE + c * MV_X_PITCH, part, v);
                for (int i = 0; i < nx; ++i) xsum[4 * t + s] += v[i];
            }
        }
        const int off = c0 / MV_T_WINDOW * mv_t_window<Q>::bytes;
        const int n = nbw * mv_t_window<Q>::bytes / MV_T_WINDOW;
        for (int r = 0; r < NW * MV_SG_ROWS; ++r) {
            if (r % MV_SG_ROWS >= nrows) continue;  // not this simdgroup's row (uniform in it)
            simdgroup_barrier(mem_flags::mem_threadgroup);  // the lanes are done with the last copy
            threadgroup const char* row = mv_stage_bytes(wrow[r] + off, n, (walign[r] + off) % 128, stage, tiisg);
            simdgroup_barrier(mem_flags::mem_threadgroup);
            const bool a4 = (walign[r] + off) % 4 == 0;  // the copy keeps the row's address % 16
            for (int t = 0; t < nt; ++t) {
                for (int s = 0; s < steps; ++s) {
                    const int c = s * chunks + g;
                    if (c >= nbw) break;
                    sum[t * NW * MV_SG_ROWS + r] +=
                        Q::dot(row, c, part, xv + MV_T_WINDOW * t + s * nx, xsum[4 * t + s], a4);
                }
            }
        }
    }
}

// Float weights: each lane loads its 4 (or 1) columns of every row once (whole lines, as
// mul_mv_staged's), then each token's x values once, and dots them with every row.
template <typename R, int NW>
static inline void mv_tokens_sums(mv_float_layout, constant mul_mv_args& args, device const char* thread* wrow,
                                  thread const int*, device const float* thread* xr, int nt, threadgroup float* xs,
                                  threadgroup uint4*, int nrows, ushort tid, ushort nthreads, ushort tiisg,
                                  thread float* sum) {
    const bool vec4 = args.w_vec4 != 0 && args.x_vec4 != 0;
    for (int c0 = 0; c0 < args.cols; c0 += MV_T_WINDOW * FG_QK) {
        const int n = min(MV_T_WINDOW * FG_QK, args.cols - c0);
        mv_t_window_x(args, xr, nt, c0, n, xs, tid, nthreads);
        if (vec4) {
            for (int c = 4 * tiisg; c < n; c += 4 * FG_SIMD_WIDTH) {
                float4 w4[NW * MV_SG_ROWS];
                for (int r = 0; r < NW * MV_SG_ROWS; ++r)
                    if (r % MV_SG_ROWS < nrows) w4[r] = R::load4(wrow[r], c0 + c);
                for (int t = 0; t < nt; ++t) {
                    const float4 xv =
                        *((threadgroup const float4*)(xs + t * MV_T_X_STAGE + (c / 32) * MV_X_PITCH + c % 32));
                    for (int r = 0; r < NW * MV_SG_ROWS; ++r)
                        if (r % MV_SG_ROWS < nrows) sum[t * NW * MV_SG_ROWS + r] += dot(w4[r], xv);
                }
            }
        } else {
            for (int c = tiisg; c < n; c += FG_SIMD_WIDTH) {
                float w1[NW * MV_SG_ROWS];
                for (int r = 0; r < NW * MV_SG_ROWS; ++r)
                    if (r % MV_SG_ROWS < nrows) w1[r] = R::load1(wrow[r], c0 + c);
                for (int t = 0; t < nt; ++t) {
                    const float xv = xs[t * MV_T_X_STAGE + (c / 32) * MV_X_PITCH + c % 32];
                    for (int r = 0; r < NW * MV_SG_ROWS; ++r)
                        if (r % MV_SG_ROWS < nrows) sum[t * NW * MV_SG_ROWS + r] += w1[r] * xv;
                }
            }
        }
    }
}

// The threadgroup memory: tg_tokens x windows, then each simdgroup's copy buffer (float weights: none).
template <typename Q>
static inline threadgroup uint4* mv_t_row_stage(threadgroup uint4* shmem, int tg_tokens, ushort sgitg) {
    return shmem + tg_tokens * MV_T_X_STAGE / 4 + sgitg * mv_t_window<Q>::pieces;
}

// The threadgroup's tokens: [t0, t0 + nt) of the dispatch's; memory for tg_tokens x windows.
struct mv_t_tokens {
    int t0, nt, tg_tokens;
};
static inline mv_t_tokens mv_t_group(constant mul_mv_tokens_args& args, uint tg) {
    mv_t_tokens t;
    t.t0 = int(tg) * FG_MV_TOKENS;
    t.nt = min(FG_MV_TOKENS, args.n_tokens - t.t0);
    t.tg_tokens = min(FG_MV_TOKENS, args.n_tokens);
    return t;
}
// The x rows of the threadgroup's tokens.
static inline void mv_t_x_rows(constant mul_mv_tokens_args& args, device const char* x, mv_t_tokens tk,
                               device const float* thread* xr) {
    for (int t = 0; t < tk.nt; ++t) xr[t] = (device const float*)(x + (tk.t0 + t) * args.mv.x_stride);
}

template <typename Q>
kernel void mul_mv_tokens(
        constant mul_mv_tokens_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        threadgroup uint4 * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int r0 = mv_first_row(args.mv, tgpig.x, sgitg, nsg);
    const mv_t_tokens tk = mv_t_group(args, tgpig.y);
    device const char* wrow[MV_SG_ROWS];
    int walign[MV_SG_ROWS];
    mv_row_pointers<1, MV_SG_ROWS>(args.mv, w, w, r0, wrow);
    mv_row_aligns<1>(args.mv, args.mv.w_align, args.mv.w_align, r0, walign);
    device const float* xr[FG_MV_TOKENS];
    mv_t_x_rows(args, x, tk, xr);
    float sum[FG_MV_TOKENS * MV_SG_ROWS] = {0.0f};  // [token][row]
    mv_tokens_sums<Q, 1>(typename Q::layout(), args.mv, wrow, walign, xr, tk.nt,
                         (threadgroup float*)shmem, mv_t_row_stage<Q>(shmem, tk.tg_tokens, sgitg),
                         mv_own_rows(args.mv, r0), tid, nsg * FG_SIMD_WIDTH, tiisg, sum);
    for (int t = 0; t < tk.nt; ++t)
        mv_store<1, MV_SG_ROWS>(args.mv, sum + t * MV_SG_ROWS, (device float*)(out + (tk.t0 + t) * args.mv.out_stride),
                                r0, tiisg, args.mv.sg_rows);
}

template <typename Q>
kernel void mul_mv_swiglu_tokens(
        constant mul_mv_tokens_args & args [[buffer(0)]],
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
    const int r0 = mv_first_row(args.mv, tgpig.x, sgitg, nsg);
    const mv_t_tokens tk = mv_t_group(args, tgpig.y);
    device const char* wrow[2 * MV_SG_ROWS];
    int walign[2 * MV_SG_ROWS];
    mv_row_pointers<2, MV_SG_ROWS>(args.mv, w, w_up, r0, wrow);
    mv_row_aligns<2>(args.mv, args.mv.w_align, args.mv.w_up_align, r0, walign);
    device const float* xr[FG_MV_TOKENS];
    mv_t_x_rows(args, x, tk, xr);
    float sum[FG_MV_TOKENS * 2 * MV_SG_ROWS] = {0.0f};  // [token][gate rows, up rows]
    mv_tokens_sums<Q, 2>(typename Q::layout(), args.mv, wrow, walign, xr, tk.nt,
                         (threadgroup float*)shmem, mv_t_row_stage<Q>(shmem, tk.tg_tokens, sgitg),
                         mv_own_rows(args.mv, r0), tid, nsg * FG_SIMD_WIDTH, tiisg, sum);
    for (int t = 0; t < tk.nt; ++t)
        mv_store<2, MV_SG_ROWS>(args.mv, sum + t * 2 * MV_SG_ROWS,
                                (device float*)(out + (tk.t0 + t) * args.mv.out_stride), r0, tiisg, args.mv.sg_rows);
}

// Mixture of experts: threadgroup (x, y, e) serves token groups y, y + grid.y, ... of the slots
// moe_group_i32 listed for expert e (groups: [n_expert] counts, then [n_expert][n_slots] slots), each slot's sums those
// of mul_mv_id_staged for the slot alone; grid z = n_expert writes the zero rows of the slots whose
// id is out of range (mul_mv_id_staged's answer for them), token group 0 only.
template <typename Q>
kernel void mul_mv_id_tokens(
        constant mul_mv_id_tokens_args & args [[buffer(0)]],
        device const char * w       [[buffer(1)]],
        device const char * x       [[buffer(2)]],
        device       char * out     [[buffer(3)]],
        device const char * ids     [[buffer(4)]],
        device const int  * groups  [[buffer(5)]],
        threadgroup uint4 * shmem   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        uint3  tgpg  [[threadgroups_per_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    constant mul_mv_id_args& id = args.id;
    const int r0 = mv_first_row(id.mv, tgpig.x, sgitg, nsg);
    const int e = int(tgpig.z);
    if (e == id.n_expert) {  // the slots of no expert: zeros
        float zero[MV_SG_ROWS] = {0.0f};
        for (int slot = 0; tgpig.y == 0 && slot < args.n_slots; ++slot) {
            const mv_id_rows s = mv_id_slot(id, w, x, out, ids, slot);
            if (!s.valid) mv_store<1, MV_SG_ROWS>(id.mv, zero, s.o, r0, tiisg, id.mv.sg_rows);
        }
        return;
    }
    const ulong w_offset = ulong(e) * id.expert_stride;
    const int a = int((ulong(id.mv.w_align) + w_offset) % 128);
    device const char* wrow[MV_SG_ROWS];
    int walign[MV_SG_ROWS];
    mv_row_pointers<1, MV_SG_ROWS>(id.mv, w + w_offset, w + w_offset, r0, wrow);
    mv_row_aligns<1>(id.mv, a, a, r0, walign);
    // Token groups tgpig.y, tgpig.y + tgpg.y, ... of the expert's slots (the host sizes the grid for
    // one slot per token; a token naming an expert twice makes more): uniform across the threadgroup.
    const int count = groups[e];
    for (int t0 = int(tgpig.y) * FG_MV_TOKENS; t0 < count; t0 += int(tgpg.y) * FG_MV_TOKENS) {
        const int nt = min(FG_MV_TOKENS, count - t0);
        device const int* slots = groups + id.n_expert + e * args.n_slots + t0;
        device const float* xr[FG_MV_TOKENS];
        for (int t = 0; t < nt; ++t)
            xr[t] = (device const float*)(x + (id.x_per_slot != 0 ? slots[t] : slots[t] / id.k) * id.mv.x_stride);
        float sum[FG_MV_TOKENS * MV_SG_ROWS] = {0.0f};  // [token][row]
        mv_tokens_sums<Q, 1>(typename Q::layout(), id.mv, wrow, walign, xr, nt, (threadgroup float*)shmem,
                             mv_t_row_stage<Q>(shmem, min(FG_MV_TOKENS, args.n_slots), sgitg), mv_own_rows(id.mv, r0),
                             tid, nsg * FG_SIMD_WIDTH, tiisg, sum);
        for (int t = 0; t < nt; ++t)
            mv_store<1, MV_SG_ROWS>(id.mv, sum + t * MV_SG_ROWS, (device float*)(out + slots[t] * id.mv.out_stride), r0,
                                    tiisg, id.mv.sg_rows);
    }
}

typedef decltype(mul_mv_tokens<q8_0_part>) mul_mv_tokens_t;
template [[host_name("mul_mv_tokens_q8_0")]] kernel mul_mv_tokens_t mul_mv_tokens<q8_0_part>;
template [[host_name("mul_mv_tokens_q4_0")]] kernel mul_mv_tokens_t mul_mv_tokens<q4_0_part>;
template [[host_name("mul_mv_tokens_q4_1")]] kernel mul_mv_tokens_t mul_mv_tokens<q4_1_part>;
template [[host_name("mul_mv_tokens_q5_0")]] kernel mul_mv_tokens_t mul_mv_tokens<q5_0_part>;
template [[host_name("mul_mv_tokens_q5_1")]] kernel mul_mv_tokens_t mul_mv_tokens<q5_1_part>;
template [[host_name("mul_mv_tokens_q2_K")]] kernel mul_mv_tokens_t mul_mv_tokens<q2_K_part>;
template [[host_name("mul_mv_tokens_q3_K")]] kernel mul_mv_tokens_t mul_mv_tokens<q3_K_part>;
template [[host_name("mul_mv_tokens_q4_K")]] kernel mul_mv_tokens_t mul_mv_tokens<q4_K_part>;
template [[host_name("mul_mv_tokens_q5_K")]] kernel mul_mv_tokens_t mul_mv_tokens<q5_K_part>;
template [[host_name("mul_mv_tokens_q6_K")]] kernel mul_mv_tokens_t mul_mv_tokens<q6_K_part>;
template [[host_name("mul_mv_tokens_iq4_nl")]] kernel mul_mv_tokens_t mul_mv_tokens<iq4_nl_part>;
template [[host_name("mul_mv_tokens_iq4_xs")]] kernel mul_mv_tokens_t mul_mv_tokens<iq4_xs_part>;
template [[host_name("mul_mv_tokens_iq2_xxs")]] kernel mul_mv_tokens_t mul_mv_tokens<iq2_xxs_part>;
template [[host_name("mul_mv_tokens_iq2_xs")]] kernel mul_mv_tokens_t mul_mv_tokens<iq2_xs_part>;
template [[host_name("mul_mv_tokens_iq2_s")]] kernel mul_mv_tokens_t mul_mv_tokens<iq2_s_part>;
template [[host_name("mul_mv_tokens_iq3_xxs")]] kernel mul_mv_tokens_t mul_mv_tokens<iq3_xxs_part>;
template [[host_name("mul_mv_tokens_iq3_s")]] kernel mul_mv_tokens_t mul_mv_tokens<iq3_s_part>;
template [[host_name("mul_mv_tokens_iq1_s")]] kernel mul_mv_tokens_t mul_mv_tokens<iq1_s_part>;
template [[host_name("mul_mv_tokens_iq1_m")]] kernel mul_mv_tokens_t mul_mv_tokens<iq1_m_part>;
template [[host_name("mul_mv_tokens_mxfp4")]] kernel mul_mv_tokens_t mul_mv_tokens<mxfp4_part>;
template [[host_name("mul_mv_tokens_f32")]] kernel mul_mv_tokens_t mul_mv_tokens<f32_row>;
template [[host_name("mul_mv_tokens_f16")]] kernel mul_mv_tokens_t mul_mv_tokens<f16_row>;
template [[host_name("mul_mv_tokens_bf16")]] kernel mul_mv_tokens_t mul_mv_tokens<bf16_row>;
typedef decltype(mul_mv_swiglu_tokens<q8_0_part>) mul_mv_swiglu_tokens_t;
template [[host_name("mul_mv_swiglu_tokens_q8_0")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q8_0_part>;
template [[host_name("mul_mv_swiglu_tokens_q4_0")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q4_0_part>;
template [[host_name("mul_mv_swiglu_tokens_q4_1")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q4_1_part>;
template [[host_name("mul_mv_swiglu_tokens_q5_0")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q5_0_part>;
template [[host_name("mul_mv_swiglu_tokens_q5_1")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q5_1_part>;
template [[host_name("mul_mv_swiglu_tokens_q2_K")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q2_K_part>;
template [[host_name("mul_mv_swiglu_tokens_q3_K")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q3_K_part>;
template [[host_name("mul_mv_swiglu_tokens_q4_K")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q4_K_part>;
template [[host_name("mul_mv_swiglu_tokens_q5_K")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q5_K_part>;
template [[host_name("mul_mv_swiglu_tokens_q6_K")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<q6_K_part>;
template [[host_name("mul_mv_swiglu_tokens_iq4_nl")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq4_nl_part>;
template [[host_name("mul_mv_swiglu_tokens_iq4_xs")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq4_xs_part>;
template [[host_name("mul_mv_swiglu_tokens_iq2_xxs")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq2_xxs_part>;
template [[host_name("mul_mv_swiglu_tokens_iq2_xs")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq2_xs_part>;
template [[host_name("mul_mv_swiglu_tokens_iq2_s")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq2_s_part>;
template [[host_name("mul_mv_swiglu_tokens_iq3_xxs")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq3_xxs_part>;
template [[host_name("mul_mv_swiglu_tokens_iq3_s")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq3_s_part>;
template [[host_name("mul_mv_swiglu_tokens_iq1_s")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq1_s_part>;
template [[host_name("mul_mv_swiglu_tokens_iq1_m")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<iq1_m_part>;
template [[host_name("mul_mv_swiglu_tokens_mxfp4")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<mxfp4_part>;
template [[host_name("mul_mv_swiglu_tokens_f32")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<f32_row>;
template [[host_name("mul_mv_swiglu_tokens_f16")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<f16_row>;
template [[host_name("mul_mv_swiglu_tokens_bf16")]] kernel mul_mv_swiglu_tokens_t mul_mv_swiglu_tokens<bf16_row>;
typedef decltype(mul_mv_id_tokens<q8_0_part>) mul_mv_id_tokens_t;
template [[host_name("mul_mv_id_tokens_q8_0")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q8_0_part>;
template [[host_name("mul_mv_id_tokens_q4_0")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q4_0_part>;
template [[host_name("mul_mv_id_tokens_q4_1")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q4_1_part>;
template [[host_name("mul_mv_id_tokens_q5_0")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q5_0_part>;
template [[host_name("mul_mv_id_tokens_q5_1")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q5_1_part>;
template [[host_name("mul_mv_id_tokens_q2_K")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q2_K_part>;
template [[host_name("mul_mv_id_tokens_q3_K")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q3_K_part>;
template [[host_name("mul_mv_id_tokens_q4_K")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q4_K_part>;
template [[host_name("mul_mv_id_tokens_q5_K")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q5_K_part>;
template [[host_name("mul_mv_id_tokens_q6_K")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<q6_K_part>;
template [[host_name("mul_mv_id_tokens_iq4_nl")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq4_nl_part>;
template [[host_name("mul_mv_id_tokens_iq4_xs")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq4_xs_part>;
template [[host_name("mul_mv_id_tokens_iq2_xxs")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq2_xxs_part>;
template [[host_name("mul_mv_id_tokens_iq2_xs")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq2_xs_part>;
template [[host_name("mul_mv_id_tokens_iq2_s")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq2_s_part>;
template [[host_name("mul_mv_id_tokens_iq3_xxs")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq3_xxs_part>;
template [[host_name("mul_mv_id_tokens_iq3_s")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq3_s_part>;
template [[host_name("mul_mv_id_tokens_iq1_s")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq1_s_part>;
template [[host_name("mul_mv_id_tokens_iq1_m")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<iq1_m_part>;
template [[host_name("mul_mv_id_tokens_mxfp4")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<mxfp4_part>;
template [[host_name("mul_mv_id_tokens_f32")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<f32_row>;
template [[host_name("mul_mv_id_tokens_f16")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<f16_row>;
template [[host_name("mul_mv_id_tokens_bf16")]] kernel mul_mv_id_tokens_t mul_mv_id_tokens<bf16_row>;
