// The prefill GEMM over dequantized weight panels (KernelSet::gemm_panel), written
// once over a vector-traits type P that each ISA file supplies:
//   P::V, P::W (floats per vector), zero/load/bcast/fma/store,
//   P::kTileRows (rows per register tile: 2 x kTileRows accumulators must fit),
//   P::dequantize_row<WT>(row, y, cols).
// Included into each kernels_*.cpp (internal linkage).
#pragma once

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "cpu_kernels.h"
#include "weight_panels.h"

namespace forgert::cpu {
namespace {

// One token tile of R panel rows (wp: R x cols, row-major) against xp, the tile's
// activations packed [cols, 2W] (contiguous: the loop streams it).
// acc[i][j] holds tokens jW .. jW + W - 1 of row i. The loops over i are unrolled outright: left
// as loops, GCC kept acc in memory as well as in registers and stored every accumulator after
// each FMA, the stores taking the loop's time (256-bit sets, Zen 3: the F16 GEMM 29-32 -> 57-92
// GFLOP/s on one thread, bench/results/cpu_vs_llama_bench_vm2core.md).
template <class P, int R>
void gemm_panel_tile(const float* wp, int64_t cols, const float* xp, float* tmp) {
    typename P::V acc[R][2];
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = P::zero();
    for (int64_t c = 0; c < cols; c++) {
        const typename P::V x0 = P::load(xp + c * 2 * P::W), x1 = P::load(xp + c * 2 * P::W + P::W);
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) {
            const typename P::V wv = P::bcast(wp + i * cols + c);
            acc[i][0] = P::fma(wv, x0, acc[i][0]);
            acc[i][1] = P::fma(wv, x1, acc[i][1]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; i++) {
        P::store(tmp + i * 2 * P::W, acc[i][0]);
        P::store(tmp + i * 2 * P::W + P::W, acc[i][1]);
    }
}

template <class P, DType WT>
void gemm_panel_typed(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const float* xp, int64_t cols,
                      int64_t n_tok, float* out, int64_t out_stride, float* work) {
    constexpr int R = kPanelRows, TT = 2 * P::W;
    static_assert(TT <= kMaxPanelTokens && R % P::kTileRows == 0, "panel geometry");
    float* wp = work;                 // [R, cols] dequantized rows
    float* tmp = work + R * cols;     // [R, TT] one output tile, transposed on the way out
    for (int64_t r = r0; r < r1; r += R) {
        const int nr = (int)std::min<int64_t>(R, r1 - r);
        for (int i = 0; i < nr; i++) {
            if constexpr (is_panel16(WT)) dequantize_panel16_row(WT, w, w_stride, r + i, wp + i * cols, cols);
            else P::template dequantize_row<WT>(w + (r + i) * w_stride, wp + i * cols, cols);
        }
        for (int i = nr; i < R; i++) std::memset(wp + i * cols, 0, sizeof(float) * cols);
        for (int64_t t0 = 0; t0 < n_tok; t0 += TT) {
            for (int i0 = 0; i0 < R; i0 += P::kTileRows)
                gemm_panel_tile<P, P::kTileRows>(wp + i0 * cols, cols, xp + t0 * cols, tmp + i0 * TT);
            const int nt = (int)std::min<int64_t>(TT, n_tok - t0);
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < nr; i++) out[(t0 + t) * out_stride + r + i] = tmp[i * TT + t];
        }
    }
}

template <class P>
void gemm_panel_any(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const float* xp,
                    int64_t cols, int64_t n_tok, float* out, int64_t out_stride, float* work) {
    switch (wt) {
#define FG_PANEL_CASE(T)                                                                                   \
        case DType::T:                                                                                     \
            return gemm_panel_typed<P, DType::T>(w, w_stride, r0, r1, xp, cols, n_tok, out, out_stride, work);
        FG_PANEL_CASE(F32) FG_PANEL_CASE(F16) FG_PANEL_CASE(BF16) FG_PANEL_CASE(Q8_0) FG_PANEL_CASE(Q4_0)
        FG_PANEL_CASE(Q4_1) FG_PANEL_CASE(Q5_0) FG_PANEL_CASE(Q5_1) FG_PANEL_CASE(Q2_K) FG_PANEL_CASE(Q3_K) FG_PANEL_CASE(Q4_K) FG_PANEL_CASE(Q5_K) FG_PANEL_CASE(Q6_K)
        FG_PANEL_CASE(IQ4_NL) FG_PANEL_CASE(IQ4_XS) FG_PANEL_CASE(MXFP4) FG_PANEL_CASE(Q4_0x16) FG_PANEL_CASE(Q4_1x16)
        FG_PANEL_CASE(Q5_0x16) FG_PANEL_CASE(Q8_0x16) FG_PANEL_CASE(Q2_Kx16) FG_PANEL_CASE(Q3_Kx16) FG_PANEL_CASE(Q4_Kx16) FG_PANEL_CASE(Q5_Kx16)
        FG_PANEL_CASE(Q6_Kx16) FG_PANEL_CASE(IQ2_XXS) FG_PANEL_CASE(IQ2_XS) FG_PANEL_CASE(IQ2_S)
        FG_PANEL_CASE(IQ3_XXS) FG_PANEL_CASE(IQ3_S) FG_PANEL_CASE(IQ1_S) FG_PANEL_CASE(IQ1_M)
#undef FG_PANEL_CASE
        default: throw std::logic_error("gemm_panel: unsupported weight type");
    }
}

}  // namespace
}  // namespace forgert::cpu
