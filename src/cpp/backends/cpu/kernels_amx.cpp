// AMX-INT8 kernel set (Sapphire Rapids and later): the AVX-512 VNNI set with the prefill int8
// GEMM and the few-token decode of the small-block types (kernels_amx_decode.inc) on tile
// instructions. Built with the AVX-512 flags plus -mamx-tile -mamx-int8; chosen
// only after cpu_kernels.cpp has asked Linux for the tile state and run a tile instruction in
// a child process (some VMs advertise AMX and fault on it).
//
// Per 32-weight block, one TDPBSSD multiplies 16 tokens' int8 activations (A: 16 x 32 bytes,
// read in place from BlockQ8Act rows) by a 16-row weight panel (B: 8 x 64 bytes, the panel
// layout of kernels_x86_int8.inc with signed quants) into 16 x 16 int32 dots; a second one
// does the activations' lo parts. The dots go through memory to AVX-512, which scales them by
// dw * dx per block and accumulates in f32 exactly as the other sets do (same bits).
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <vector>

#define FG_PANEL_512 1
#include "kernels_x86_int8.inc"

namespace forgert::cpu {
namespace {

constexpr int kAmxTokens = 16;  // tile rows: tokens per TDPBSSD

struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Tiles: 0, 1 dots (hi, lo), 2, 3 activations (hi, lo), 4 weights. halves (Q6_K): each
// block's two 16-weight halves apart: 0, 1 the halves' dots, 2, 3 their activations (16
// bytes), 4, 5 their weights (4 groups).
void load_tile_config(bool halves = false) {
    TileConfig c;
    const int k = halves ? FG_QK / 2 : FG_QK;
    c.rows[0] = c.rows[1] = kAmxTokens, c.colsb[0] = c.colsb[1] = 64;
    c.rows[2] = c.rows[3] = kAmxTokens, c.colsb[2] = c.colsb[3] = (uint16_t)k;
    c.rows[4] = c.rows[5] = (uint8_t)(k / 4), c.colsb[4] = c.colsb[5] = 64;
    _tile_loadconfig(&c);
}

// amx_tile for Q6_K (tiles as load_tile_config(true)): per block and part, one TDPBSSD per
// half, each half's int32 dots scaled by its own factor (scales, then mins in the panel).
template <int PARTS>
void amx_tile_halves(const uint8_t* wp, const BlockQ8Act* x, int64_t nb, float* out, int64_t out_stride, int nr) {
    alignas(64) int32_t dh[2][kAmxTokens][16], dl[2][kAmxTokens][16];
    __m512 acc[kAmxTokens];
    FG_UNROLL for (int t = 0; t < kAmxTokens; t++) acc[t] = _mm512_setzero_ps();
    const size_t x_stride = (size_t)nb * sizeof(BlockQ8Act);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = wp + b * kI8PanelBlockBytes;
        _tile_loadd(4, pb, 64);
        _tile_loadd(5, pb + 4 * 64, 64);
        _tile_zero(0);
        _tile_zero(1);
        _tile_loadd(2, x[b].hi, x_stride);
        _tile_loadd(3, x[b].hi + 16, x_stride);
        _tile_dpbssd(0, 2, 4);
        _tile_dpbssd(1, 3, 5);
        _tile_stored(0, dh[0], 64);
        _tile_stored(1, dh[1], 64);
        if constexpr (PARTS == 2) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_loadd(2, x[b].lo, x_stride);
            _tile_loadd(3, x[b].lo + 16, x_stride);
            _tile_dpbssd(0, 2, 4);
            _tile_dpbssd(1, 3, 5);
            _tile_stored(0, dl[0], 64);
            _tile_stored(1, dl[1], 64);
        }
        const __m512 dw0 = _mm512_loadu_ps(pb + kI8PanelScales), dw1 = _mm512_loadu_ps(pb + kI8PanelMins);
        FG_UNROLL for (int t = 0; t < kAmxTokens; t++) {
            __m512i d0 = _mm512_load_si512(dh[0][t]), d1 = _mm512_load_si512(dh[1][t]);
            if constexpr (PARTS == 2) {
                d0 = _mm512_add_epi32(_mm512_slli_epi32(d0, 8), _mm512_load_si512(dl[0][t]));
                d1 = _mm512_add_epi32(_mm512_slli_epi32(d1, 8), _mm512_load_si512(dl[1][t]));
            }
            const BlockQ8Act& a = x[t * nb + b];
            const __m512 vdx = _mm512_set1_ps(PARTS == 2 ? a.d : a.d * 256.0f);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_mul_ps(dw0, vdx), acc[t]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_mul_ps(dw1, vdx), acc[t]);
        }
    }
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    FG_UNROLL for (int t = 0; t < kAmxTokens; t++) _mm512_mask_storeu_ps(out + t * out_stride, m, acc[t]);
}

// Like i8_repack_panel_512, with signed quants (TDPBSSD is int8 x int8: no offsets).
template <DType WT>
void amx_repack_panel(const uint8_t* w, size_t w_stride, int64_t r, int nr, int64_t nb, uint8_t* wp) {
    i8_repack_any_512<WT>(w, w_stride, r, nr, nb, wp);
    if constexpr (i8_is_kquant(WT) || i8_is_halves(WT)) return;  // K-quants: q >= 0, Q6_K signed: no offset
    const __m512i bias = _mm512_set1_epi8((char)i8_offset(file_type(WT)));
    for (int64_t b = 0; b < nb; b++) {
        uint8_t* pb = wp + b * kI8PanelBlockBytes;
        for (int k = 0; k < 8; k++)
            _mm512_storeu_si512(pb + 64 * k, _mm512_sub_epi8(_mm512_loadu_si512(pb + 64 * k), bias));
    }
}

// 16 tokens (x: the first one's blocks; rows nb blocks apart) through one signed panel.
template <DType WT, int PARTS>
void amx_tile(const uint8_t* wp, const BlockQ8Act* x, const int32_t* xs, int64_t nb, float* out, int64_t out_stride,
              int nr) {
    alignas(64) int32_t dh[kAmxTokens][16], dl[kAmxTokens][16];
    __m512 acc[kAmxTokens];
    FG_UNROLL for (int t = 0; t < kAmxTokens; t++) acc[t] = _mm512_setzero_ps();
    const size_t x_stride = (size_t)nb * sizeof(BlockQ8Act);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = wp + b * kI8PanelBlockBytes;
        _tile_loadd(4, pb, 64);
        _tile_zero(0);
        _tile_loadd(2, x[b].hi, x_stride);
        _tile_dpbssd(0, 2, 4);
        _tile_stored(0, dh, 64);
        if constexpr (PARTS == 2) {
            _tile_zero(1);
            _tile_loadd(3, x[b].lo, x_stride);
            _tile_dpbssd(1, 3, 4);
            _tile_stored(1, dl, 64);
        }
        const __m512 dw = _mm512_loadu_ps(pb + kI8Rows * FG_QK);
        FG_UNROLL for (int t = 0; t < kAmxTokens; t++) {
            __m512i d = _mm512_load_si512(dh[t]);
            if constexpr (PARTS == 2) d = _mm512_add_epi32(_mm512_slli_epi32(d, 8), _mm512_load_si512(dl[t]));
            const BlockQ8Act& a = x[t * nb + b];
            const float dx = PARTS == 2 ? a.d : a.d * 256.0f;
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc[t]);
            if constexpr (i8_is_kquant(WT)) {  // + min * dx * sum(x) (the mins are stored negated)
                const int32_t* s = xs + (t * nb + b) * 2;
                const int32_t isum = PARTS == 2 ? 256 * s[0] + s[1] : s[0];
                acc[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pb + kI8PanelMins), _mm512_set1_ps(dx * (float)isum), acc[t]);
            }
        }
    }
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    FG_UNROLL for (int t = 0; t < kAmxTokens; t++) _mm512_mask_storeu_ps(out + t * out_stride, m, acc[t]);
}

template <DType WT, int PARTS>
void gemm_i8_amx_typed(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                       const int32_t* xs, int64_t nb, int64_t n_tok, float* out, int64_t out_stride, uint8_t* work) {
    constexpr DType FT = file_type(WT);  // the tiles see the file type's panel either way
    const int64_t chunk = i8_token_chunk(nb, kAmxTokens);
    // The last n_tok % 16 tokens take the VNNI tile on the offset panel (repacked once more).
    const int64_t n_amx = n_tok / kAmxTokens * kAmxTokens;
    for (int64_t c0 = 0; c0 < n_amx; c0 += chunk) {
        const int64_t c1 = std::min(n_amx, c0 + chunk);
        for (int64_t r = r0; r < r1; r += kI8Rows) {
            const int nr = (int)std::min<int64_t>(kI8Rows, r1 - r);
            amx_repack_panel<WT>(w, w_stride, r, nr, nb, work);
            for (int64_t t = c0; t < c1; t += kAmxTokens)
                if constexpr (i8_is_halves(WT))
                    amx_tile_halves<PARTS>(work, x + t * nb, nb, out + t * out_stride + r, out_stride, nr);
                else
                    amx_tile<FT, PARTS>(work, x + t * nb, xs + t * nb * 2, nb, out + t * out_stride + r, out_stride, nr);
        }
    }
    if (n_amx < n_tok) {
        const int64_t t = n_amx;
        for (int64_t r = r0; r < r1; r += kI8Rows) {
            const int nr = (int)std::min<int64_t>(kI8Rows, r1 - r);
            i8_repack_any_512<WT>(w, w_stride, r, nr, nb, work);
            int64_t u = t;
            for (; u + kI8TileTokens <= n_tok; u += kI8TileTokens)
                i8_tile_512<FT, PARTS, kI8TileTokens>(work, x + u * nb, xs + u * nb * 2, nb, out + u * out_stride + r,
                                                      out_stride, nr);
            if (u < n_tok)
                i8_tail_512<FT, PARTS, kI8TileTokens - 1>(work, x + u * nb, xs + u * nb * 2, nb, (int)(n_tok - u),
                                                          out + u * out_stride + r, out_stride, nr);
        }
    }
}

void gemm_i8_amx(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                 const int32_t* xs, int64_t nb, int64_t n_tok, int parts, float* out, int64_t out_stride,
                 uint8_t* work) {
    load_tile_config(wt == DType::Q6_K);  // tile state is per thread: configured on every call
    auto run = [&](auto tag) {  // gemm_i8_amx_typed of the tag's type, one or two activation parts
        constexpr DType WT = decltype(tag)::value;
        parts == 2 ? gemm_i8_amx_typed<WT, 2>(w, w_stride, r0, r1, x, xs, nb, n_tok, out, out_stride, work)
                   : gemm_i8_amx_typed<WT, 1>(w, w_stride, r0, r1, x, xs, nb, n_tok, out, out_stride, work);
    };
    if (wt == DType::Q6_K)
        run(DTypeTag<DType::Q6_K>{});
    else if (wt == DType::Q8_0)
        run(DTypeTag<DType::Q8_0>{});
    else if (wt == DType::Q4_K)
        run(DTypeTag<DType::Q4_K>{});
    else if (wt == DType::Q5_K)
        run(DTypeTag<DType::Q5_K>{});
    else if (wt == DType::Q4_0)
        run(DTypeTag<DType::Q4_0>{});
    else if (wt == DType::Q4_0x16)
        run(DTypeTag<DType::Q4_0x16>{});
    else if (wt == DType::Q8_0x16)
        run(DTypeTag<DType::Q8_0x16>{});
    else {
        _tile_release();
        throw std::logic_error("gemm_i8: unsupported weight type");
    }
    _tile_release();
}

#include "kernels_amx_decode.inc"

}  // namespace

// One tile instruction of each kind the kernels use; run by cpu_kernels.cpp's probe in a
// child process after the tile state was granted.
void amx_probe() {
    load_tile_config();
    alignas(64) int8_t a[kAmxTokens * FG_QK] = {1};
    alignas(64) int8_t b[FG_QK / 4 * 64] = {1};
    alignas(64) int32_t c[kAmxTokens * 16];
    _tile_zero(0);
    _tile_loadd(2, a, FG_QK);
    _tile_loadd(4, b, 64);
    _tile_dpbssd(0, 2, 4);
    _tile_stored(0, c, 64);
    _tile_release();
}

const KernelSet* kernels_amx() {
    static const KernelSet set = [] {
        KernelSet s = *kernels_avx512();
        s.name = "avx512-amx";
        s.gemm_i8 = gemm_i8_amx;
        s.gemm_i8_types = kGemmI8Types;
        s.gemm_q = amx_decode::gemm_q<amx_decode::AmxTiles>;
        return s;
    }();
    return &set;
}

const KernelSet* kernels_amx_emulated() {
    static const KernelSet set = [] {
        KernelSet s = *kernels_avx512();
        s.name = "avx512-amx-emulated";
        s.gemm_q = amx_decode::gemm_q<amx_decode::EmuTiles>;
        return s;
    }();
    return &set;
}

}  // namespace forgert::cpu
