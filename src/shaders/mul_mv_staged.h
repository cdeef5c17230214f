// What the staged GEMVs share (mul_mv_staged.metal: one token per threadgroup; mul_mv_tokens.metal:
// up to FG_MV_TOKENS): x's window in threadgroup memory, and the rows a simdgroup owns.
#ifndef FORGERT_MUL_MV_STAGED_H
#define FORGERT_MUL_MV_STAGED_H

#include "mul_mv_parts.h"

// x's window in threadgroup memory: 32-float blocks MV_X_PITCH floats apart (kernel_args.h), so the
// parts' x loads (mul_mv_parts.h) and the stores spread over all 32 banks.
#define MV_X_PITCH FG_MV_X_PITCH
// Rows per simdgroup the kernels hold sums for (args.sg_rows of them are used).
#define MV_SG_ROWS FG_MV_STAGED_MAX_SG_ROWS

struct mv_x4_to_stage {
    threadgroup float* xs;
    void operator()(int i, float4 v) const { *((threadgroup float4*)(xs + (i / 8) * MV_X_PITCH + 4 * (i % 8))) = v; }
};
struct mv_x_to_stage {
    threadgroup float* xs;
    void operator()(int i, float v) const { xs[(i / 32) * MV_X_PITCH + i % 32] = v; }
};

// Columns [c0, c0 + n) of the token's x row into xs (MV_X_PITCH layout), by the whole threadgroup.
static inline void mv_stage_x(constant mul_mv_args& args, device const float* xr, int c0, int n,
                              threadgroup float* xs, ushort tid, ushort nthreads) {
    if (args.x_vec4 != 0) {
        mv_copy((device const float4*)(xr + c0), mv_x4_to_stage{xs}, n / 4, tid, nthreads);
    } else {
        mv_copy(xr + c0, mv_x_to_stage{xs}, n, tid, nthreads);
    }
}

// Address % 128 of each row mv_row_pointers gives, from the address % 128 of w (w2).
template <int NW>
static inline void mv_row_aligns(constant mul_mv_args& args, int w_align, int w2_align, int r0, thread int* walign) {
    for (int r = 0; r < MV_SG_ROWS; ++r) {
        const ulong row = ulong(min(r0 + r, args.rows - 1)) * args.w_stride;
        walign[r] = int((ulong(w_align) + row) % 128);
        if (NW == 2) walign[MV_SG_ROWS + r] = int((ulong(w2_align) + row) % 128);
    }
}

// Where a simdgroup's rows start and how many of them exist.
static inline int mv_first_row(constant mul_mv_args& args, uint tg, ushort sgitg, ushort nsg) {
    return (int(tg) * nsg + sgitg) * args.sg_rows;
}
static inline int mv_own_rows(constant mul_mv_args& args, int r0) { return min(args.sg_rows, args.rows - r0); }

#endif  // FORGERT_MUL_MV_STAGED_H
