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
// (TDPBSUD on the VNNI set's unsigned panel would need no signed copy, but taking the offset
// out of every (token, block) dot costs more than converting each panel once per call.)
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
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

// Tiles: 0, 1 dots (hi, lo), 2, 3 activations (hi, lo), 4 weights; a panel pair's second
// panel: 5, 6 its dots, 7 its weights. halves (Q6_K): each block's two 16-weight halves
// apart: 0, 1 the halves' dots, 2, 3 their activations (16 bytes), 4, 5 their weights (4
// groups).
TileConfig gemm_tile_config(bool halves) {
    TileConfig c;
    const int k = halves ? FG_QK / 2 : FG_QK;
    c.rows[0] = c.rows[1] = kAmxTokens, c.colsb[0] = c.colsb[1] = 64;
    c.rows[2] = c.rows[3] = kAmxTokens, c.colsb[2] = c.colsb[3] = (uint16_t)k;
    c.rows[4] = c.rows[5] = (uint8_t)(k / 4), c.colsb[4] = c.colsb[5] = 64;
    if (!halves) {
        c.rows[5] = c.rows[6] = kAmxTokens, c.colsb[5] = c.colsb[6] = 64;
        c.rows[7] = (uint8_t)(k / 4), c.colsb[7] = 64;
    }
    return c;
}
void load_tile_config(bool halves = false) {
    const TileConfig c = gemm_tile_config(halves);
    _tile_loadconfig(&c);
}

#include "kernels_amx_decode.inc"

// C tiles of one block as the GEMM stores them: [token][row] int32.
using GemmDots = int32_t[kAmxTokens][16];

// Panels per tile pass: two (not Q6_K's halves, whose one panel already takes 6 tiles), so
// 16 tokens' activation tiles are loaded once per block for 32 rows and four independent
// TDPBSSD are in flight instead of two. Why: timed apart on the lent Xeon
// (bench/cpp/amx_gemm_structures.cpp: one thread, 1B ffn_up, two parts), the tile instructions alone took ~80% of the GEMM and the AVX-512 finish
// alone ~35%; the tiles with all their data in L1 still ~60%: a chain of tile load, TDPBSSD
// and store per block, the same 5 tiles reused by the next block. Sharing the activation
// tiles between two panels cuts a third of the tile loads and doubles the independent work
// per chain. Measured (docs/design.md, "AMX panel pairs"): `cpu_ops_bench 8 gemm_i8` against
// one panel, Q4_Kx16 1.15-1.66x, Q8_0x16 0.99-1.18x, Q4_0x16 0.81-1.13x (Q6_Kx16, unchanged,
// 0.93-1.37x: the host's noise); 1B Q4_K_M prefill 1.00x llama.cpp at 8 threads (0.78-0.80x
// before), Q8_0 0.90x (0.80-0.81x).
constexpr bool amx_pairs(DType wt) { return !i8_is_halves(wt); }

// The GEMM's tile work per 32-weight block, as a policy: AmxGemmTiles issues the
// instructions; EmuGemmTiles runs the same tile semantics as amx_decode::EmuTiles' loops
// (set avx512-amx-emulated), so kernel_sets_check covers this path's panels and finish
// without AMX hardware. block: ch / cl[0][token][row] = dot(x hi / lo of the token, row's
// signed quants); HALVES (Q6_K): the same per 16-weight half h, ch / cl[h].
struct AmxGemmTiles {
    static void begin(bool halves) { load_tile_config(halves); }
    static void end() { _tile_release(); }
    template <int PARTS, bool HALVES>
    static void block(const uint8_t* wb, const int8_t* xh, const int8_t* xl, size_t x_stride, GemmDots* ch,
                      GemmDots* cl) {
        if constexpr (!HALVES) {
            _tile_loadd(4, wb, 64);
            _tile_zero(0);
            _tile_loadd(2, xh, x_stride);
            _tile_dpbssd(0, 2, 4);
            _tile_stored(0, ch[0], 64);
            if constexpr (PARTS == 2) {
                _tile_zero(1);
                _tile_loadd(3, xl, x_stride);
                _tile_dpbssd(1, 3, 4);
                _tile_stored(1, cl[0], 64);
            }
        } else {
            _tile_loadd(4, wb, 64);
            _tile_loadd(5, wb + 4 * 64, 64);
            auto part = [&](const int8_t* x, GemmDots* c) {  // both halves' dots of one activation part
                _tile_zero(0);
                _tile_zero(1);
                _tile_loadd(2, x, x_stride);
                _tile_loadd(3, x + 16, x_stride);
                _tile_dpbssd(0, 2, 4);
                _tile_dpbssd(1, 3, 5);
                _tile_stored(0, c[0], 64);
                _tile_stored(1, c[1], 64);
            };
            part(xh, ch);
            if constexpr (PARTS == 2) part(xl, cl);
        }
    }
    // Two panels' dots of one block (not HALVES): c[0], c[1] panel 0's hi / lo, c[2], c[3]
    // panel 1's; each activation tile serves both panels.
    template <int PARTS>
    static void block_pair(const uint8_t* wb0, const uint8_t* wb1, const int8_t* xh, const int8_t* xl,
                           size_t x_stride, GemmDots* c) {
        _tile_loadd(4, wb0, 64);
        _tile_loadd(2, xh, x_stride);
        _tile_zero(0);
        _tile_dpbssd(0, 2, 4);
        _tile_loadd(7, wb1, 64);
        _tile_zero(5);
        _tile_dpbssd(5, 2, 7);
        if constexpr (PARTS == 2) {
            _tile_loadd(3, xl, x_stride);
            _tile_zero(1);
            _tile_dpbssd(1, 3, 4);
            _tile_zero(6);
            _tile_dpbssd(6, 3, 7);
        }
        _tile_stored(0, c[0], 64);
        _tile_stored(5, c[2], 64);
        if constexpr (PARTS == 2) {
            _tile_stored(1, c[1], 64);
            _tile_stored(6, c[3], 64);
        }
    }
};

struct EmuGemmTiles {
    using E = amx_decode::EmuTiles;
    static void begin(bool halves) { E::begin(gemm_tile_config(halves)); }
    static void end() {}
    template <int PARTS, bool HALVES>
    static void block(const uint8_t* wb, const int8_t* xh, const int8_t* xl, size_t x_stride, GemmDots* ch,
                      GemmDots* cl) {
        constexpr int H = HALVES ? 2 : 1;  // dot products per part: (tiles 0, 2, 4), halves also (1, 3, 5)
        E::load(4, wb, 64);
        if constexpr (HALVES) E::load(5, wb + 4 * 64, 64);
        for (int part = 0; part < PARTS; part++) {
            const int8_t* x = part ? xl : xh;
            GemmDots* c = part ? cl : ch;
            for (int h = 0; h < H; h++) {
                E::zero(h);
                E::load(2 + h, x + 16 * h, x_stride);
                E::dpbssd(h, 2 + h, 4 + h);
                E::store(h, c[h], 64);
            }
        }
    }
    template <int PARTS>
    static void block_pair(const uint8_t* wb0, const uint8_t* wb1, const int8_t* xh, const int8_t* xl,
                           size_t x_stride, GemmDots* c) {
        E::load(4, wb0, 64);
        E::load(7, wb1, 64);
        for (int part = 0; part < PARTS; part++) {
            E::load(2 + part, part ? xl : xh, x_stride);
            for (int p = 0; p < 2; p++) {  // dots in tiles 0 / 1 (panel 0), 5 / 6 (panel 1)
                const int ct = p ? 5 + part : part;
                E::zero(ct);
                E::dpbssd(ct, 2 + part, p ? 7 : 4);
                E::store(ct, c[2 * p + part], 64);
            }
        }
    }
};

// A block's dots of one token and 16 rows, finished as every set finishes them (the same bits):
// acc + (float)(256 hi + lo) * (dw * d); one part: hi alone. hi / lo: the stored C tiles' rows.
template <int PARTS>
inline __m512 amx_dots_fma(const int32_t* hi, const int32_t* lo, __m512 dw, float d, __m512 acc) {
    __m512i idot = _mm512_load_si512(hi);
    if constexpr (PARTS == 2) idot = _mm512_add_epi32(_mm512_slli_epi32(idot, 8), _mm512_load_si512(lo));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot), _mm512_mul_ps(dw, _mm512_set1_ps(d)), acc);
}

// 16 tokens (x: the first one's blocks; rows nb blocks apart; mt: their min terms) through one
// signed panel. Q6_K (HALVES; tiles as gemm_tile_config(true)): per block and part, one
// TDPBSSD per half, each half's int32 dots scaled by its own factor (scales, then mins in the
// panel). OVERLAP (the types with mins, Q6_K with two parts): block b + 1's tiles are issued
// before block b's AVX-512 finish, into the other of two C buffers (as llama.cpp's
// tinygemm_kernel_amx), so the tile unit can work while the finish runs, which reads dots
// stored an iteration earlier. Measured on the lent Xeon (16 threads, 1B shapes): Q4_K
// 1.10-1.28x with two parts, 1.00-1.27x with one (with the min terms), Q6_K 1.00-1.21x with
// two parts; but Q6_K with one 0.82-1.0x and Q8_0 / Q4_0 0.78-1.04x with two, so those keep
// block b's tiles, then its finish.
template <class Tiles, DType WT, int PARTS, bool MAKE>
void amx_tile(const uint8_t* wp, const BlockQ8Act* x, const int32_t* xs, int64_t nb, I8MinTerms mt, float* out,
              int64_t out_stride, int nr) {
    constexpr bool HALVES = i8_is_halves(WT), OVERLAP = i8_min_terms_per_block(WT) > 0 || (HALVES && PARTS == 2);
    alignas(64) GemmDots dh[OVERLAP ? 2 : 1][2], dl[OVERLAP ? 2 : 1][2];  // [buffer][half]
    __m512 acc[kAmxTokens];
    FG_UNROLL for (int t = 0; t < kAmxTokens; t++) acc[t] = _mm512_setzero_ps();
    const size_t x_stride = (size_t)nb * sizeof(BlockQ8Act);
    if constexpr (OVERLAP) Tiles::template block<PARTS, HALVES>(wp, x[0].hi, x[0].lo, x_stride, dh[0], dl[0]);
    for (int64_t b = 0; b < nb; b++) {
        const int cur = OVERLAP ? (int)(b & 1) : 0;
        const int64_t next = OVERLAP ? b + 1 : b;  // the block whose tiles go now
        if (next < nb)
            Tiles::template block<PARTS, HALVES>(wp + next * kI8PanelBlockBytes, x[next].hi, x[next].lo, x_stride,
                                                 dh[(next & 1) * OVERLAP], dl[(next & 1) * OVERLAP]);
        const uint8_t* pb = wp + b * kI8PanelBlockBytes;
        const __m512 dw = i8_scales_for_parts<PARTS>(_mm512_loadu_ps(pb + kI8PanelScales));
        const __m512 mw = _mm512_loadu_ps(pb + kI8PanelMins);  // Q6_K: half 1's scales
        const __m512 dw1 = i8_scales_for_parts<PARTS>(mw);
        FG_UNROLL for (int t = 0; t < kAmxTokens; t++) {
            const float d = x[t * nb + b].d;
            FG_UNROLL for (int h = 0; h < (HALVES ? 2 : 1); h++)
                acc[t] = amx_dots_fma<PARTS>(dh[cur][h][t], dl[cur][h][t], h ? dw1 : dw, d, acc[t]);
            if constexpr (i8_has_min(WT))  // + min * dx * sum(x) (K-quants' mins are stored negated)
                acc[t] = _mm512_fmadd_ps(
                    mw, _mm512_set1_ps(i8_min_term<PARTS, MAKE>(x[t * nb + b], xs + (t * nb + b) * 2, mt.m + t * nb + b)),
                    acc[t]);
            if constexpr (i8_has_half_mins(WT)) {  // Q2_K: each half's min, half 0 then 1
                const float* hm = i8_half_min_terms<PARTS, MAKE>(x[t * nb + b], mt, t, b);
                acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(hm[0]), acc[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pb + kI8PanelHalfTerms), _mm512_set1_ps(hm[1]), acc[t]);
            }
        }
    }
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    FG_UNROLL for (int t = 0; t < kAmxTokens; t++) _mm512_mask_storeu_ps(out + t * out_stride, m, acc[t]);
}

// amx_tile for two panels side by side (rows r.. and r + 16.., nr1 rows in the second):
// block b's four TDPBSSD, then its finish per token and panel in amx_tile's float steps
// (same bits), into 32 accumulators per token kept in memory (in registers they would
// spill). The first panel makes the min terms (MAKE) that the second reads. OVERLAP as in
// amx_tile, for the types with mins.
template <class Tiles, DType WT, int PARTS, bool MAKE>
void amx_tile_pair(const uint8_t* wp0, const uint8_t* wp1, const BlockQ8Act* x, const int32_t* xs, int64_t nb,
                   I8MinTerms mt, float* out, int64_t out_stride, int nr1) {
    static_assert(!i8_is_halves(WT), "Q6_K's halves take amx_tile");
    constexpr bool OVERLAP = i8_min_terms_per_block(WT) > 0;
    alignas(64) GemmDots dots[OVERLAP ? 2 : 1][4];  // [buffer][panel 0 hi, lo, panel 1 hi, lo]
    alignas(64) float acc[kAmxTokens][32];         // [token][panel 0's rows, panel 1's]
    std::memset(acc, 0, sizeof acc);
    const size_t x_stride = (size_t)nb * sizeof(BlockQ8Act);
    auto tiles = [&](int64_t b, int buf) {
        Tiles::template block_pair<PARTS>(wp0 + b * kI8PanelBlockBytes, wp1 + b * kI8PanelBlockBytes, x[b].hi,
                                          x[b].lo, x_stride, dots[buf]);
    };
    if constexpr (OVERLAP) tiles(0, 0);
    for (int64_t b = 0; b < nb; b++) {
        const int cur = OVERLAP ? (int)(b & 1) : 0;
        if constexpr (OVERLAP) {
            if (b + 1 < nb) tiles(b + 1, (int)((b + 1) & 1));
        } else {
            tiles(b, 0);
        }
        const uint8_t* pb[2] = {wp0 + b * kI8PanelBlockBytes, wp1 + b * kI8PanelBlockBytes};
        __m512 dw[2], mw[2];
        FG_UNROLL for (int p = 0; p < 2; p++) {
            dw[p] = i8_scales_for_parts<PARTS>(_mm512_loadu_ps(pb[p] + kI8PanelScales));
            mw[p] = _mm512_loadu_ps(pb[p] + kI8PanelMins);
        }
        FG_UNROLL for (int t = 0; t < kAmxTokens; t++) {
            const float d = x[t * nb + b].d;
            FG_UNROLL for (int p = 0; p < 2; p++) {
                __m512 a = amx_dots_fma<PARTS>(dots[cur][2 * p][t], dots[cur][2 * p + 1][t], dw[p], d,
                                               _mm512_load_ps(acc[t] + 16 * p));
                if constexpr (i8_has_min(WT)) {
                    const BlockQ8Act& xa = x[t * nb + b];
                    const int32_t* s = xs + (t * nb + b) * 2;
                    float* m = mt.m + t * nb + b;
                    const float term = p == 0 ? i8_min_term<PARTS, MAKE>(xa, s, m) : i8_min_term<PARTS, false>(xa, s, m);
                    a = _mm512_fmadd_ps(mw[p], _mm512_set1_ps(term), a);
                }
                if constexpr (i8_has_half_mins(WT)) {  // Q2_K: each half's min, half 0 then 1
                    const BlockQ8Act& xa = x[t * nb + b];
                    const float* hm = p == 0 ? i8_half_min_terms<PARTS, MAKE>(xa, mt, t, b)
                                             : i8_half_min_terms<PARTS, false>(xa, mt, t, b);
                    a = _mm512_fmadd_ps(mw[p], _mm512_set1_ps(hm[0]), a);
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(pb[p] + kI8PanelHalfTerms), _mm512_set1_ps(hm[1]), a);
                }
                _mm512_store_ps(acc[t] + 16 * p, a);
            }
        }
    }
    const __mmask16 m1 = (__mmask16)((1u << nr1) - 1);
    FG_UNROLL for (int t = 0; t < kAmxTokens; t++) {
        _mm512_storeu_ps(out + t * out_stride, _mm512_load_ps(acc[t]));
        _mm512_mask_storeu_ps(out + t * out_stride + 16, m1, _mm512_load_ps(acc[t] + 16));
    }
}

// A converted panel (i8_repack_any_512) with signed quants for TDPBSSD: Q8_0's, Q4_0's and Q5_0's
// offsets taken out (K-quants' 0..31 and Q6_K's signed quants serve as they are); sign = -1
// puts them back (the VNNI tiles' unsigned panel).
template <DType WT>
void amx_panel_sign(uint8_t* wp, int64_t nb, int sign) {
    constexpr int O = i8_offset(file_type(WT));
    if constexpr (O != 0) {
        const __m512i bias = _mm512_set1_epi8((char)(sign * O));
        for (int64_t b = 0; b < nb; b++) {
            uint8_t* pb = wp + b * kI8PanelBlockBytes;
            for (int k = 0; k < 8; k++)
                _mm512_storeu_si512(pb + 64 * k, _mm512_sub_epi8(_mm512_loadu_si512(pb + 64 * k), bias));
        }
    }
}

// The VNNI set's gemm_i8_typed with 16-token tiles on AMX: panels converted once per call in
// i8_for_groups' groups (Q8_0x16 too: its quants are copied to be made signed), and the last
// n_tok % 16 tokens, in the last token pass, through the VNNI tiles after each panel's
// offsets are put back.
template <class Tiles, DType WT, int PARTS>
void gemm_i8_amx_typed(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                       const int32_t* xs, int64_t nb, int64_t n_tok, float* out, int64_t out_stride, uint8_t* work) {
    constexpr DType FT = i8_panel_type(file_type(WT));  // the tiles see the file type's panel either way
    constexpr int kStep = amx_pairs(FT) ? 2 : 1;  // panels per run
    const int64_t panel_bytes = nb * kI8PanelBlockBytes;
    const I8MinTerms mt = i8_min_terms_area(work, nb, FT, xs, n_tok);
    i8_for_groups<kStep>(
        r0, r1, i8_group_panels(nb) * kI8Rows, panel_bytes, n_tok, i8_token_chunk(nb, kAmxTokens), work,
        [&](int64_t r, int nr, uint8_t* panel) {
            i8_repack_any_512<WT>(w, w_stride, r, nr, nb, panel);
            amx_panel_sign<WT>(panel, nb, 1);
        },
        [&](uint8_t* panel, int64_t r, int nr, int64_t c0, int64_t c1, bool first) {  // nr <= kStep * kI8Rows
            int64_t t = c0;
            auto tiles = [&](auto made) {
                constexpr bool MAKE = decltype(made)::value;
                for (; t + kAmxTokens <= c1; t += kAmxTokens) {
                    float* o = out + t * out_stride + r;
                    if constexpr (amx_pairs(FT)) {
                        if (nr > kI8Rows) {
                            amx_tile_pair<Tiles, FT, PARTS, MAKE>(panel, panel + panel_bytes, x + t * nb, xs + t * nb * 2,
                                                                  nb, mt.at(t, c0), o, out_stride, nr - kI8Rows);
                            continue;
                        }
                    }
                    amx_tile<Tiles, FT, PARTS, MAKE>(panel, x + t * nb, xs + t * nb * 2, nb, mt.at(t, c0), o,
                                                     out_stride, nr);
                }
            };
            if (i8_min_terms_per_block(FT) > 0 && first)
                tiles(std::integral_constant<bool, (i8_min_terms_per_block(FT) > 0)>{});
            else
                tiles(std::false_type{});
            if (t == c1) return;
            // the last pass: AMX reads these panels no more; the rest of the tokens go through the
            // VNNI tiles, a panel at a time (the first makes the min terms)
            for (int p = 0; p * kI8Rows < nr; p++) {
                uint8_t* pp = panel + p * panel_bytes;
                amx_panel_sign<WT>(pp, nb, -1);
                i8_tokens_512<FT, PARTS>(pp, x, xs, nb, mt, first && p == 0, t, c0, c1, out, out_stride,
                                         r + p * kI8Rows, std::min(kI8Rows, nr - p * kI8Rows));
            }
        });
}

template <class Tiles>
void gemm_i8_amx(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                 const int32_t* xs, int64_t nb, int64_t n_tok, int parts, float* out, int64_t out_stride,
                 uint8_t* work) {
    Tiles::begin(i8_is_halves(file_type(wt)));  // tile state is per thread: configured on every call
    auto run = [&](auto tag) {  // gemm_i8_amx_typed of the tag's type, one or two activation parts
        constexpr DType WT = decltype(tag)::value;
        parts == 2 ? gemm_i8_amx_typed<Tiles, WT, 2>(w, w_stride, r0, r1, x, xs, nb, n_tok, out, out_stride, work)
                   : gemm_i8_amx_typed<Tiles, WT, 1>(w, w_stride, r0, r1, x, xs, nb, n_tok, out, out_stride, work);
    };
    if (wt == DType::Q6_K)
        run(DTypeTag<DType::Q6_K>{});
    else if (wt == DType::Q3_K)
        run(DTypeTag<DType::Q3_K>{});
    else if (wt == DType::Q3_Kx16)
        run(DTypeTag<DType::Q3_Kx16>{});
    else if (wt == DType::Q2_K)
        run(DTypeTag<DType::Q2_K>{});
    else if (wt == DType::Q2_Kx16)
        run(DTypeTag<DType::Q2_Kx16>{});
    else if (wt == DType::Q8_0)
        run(DTypeTag<DType::Q8_0>{});
    else if (wt == DType::Q4_K)
        run(DTypeTag<DType::Q4_K>{});
    else if (wt == DType::Q5_K)
        run(DTypeTag<DType::Q5_K>{});
    else if (wt == DType::Q4_0)
        run(DTypeTag<DType::Q4_0>{});
    else if (wt == DType::Q4_1)
        run(DTypeTag<DType::Q4_1>{});
    else if (wt == DType::Q4_0x16)
        run(DTypeTag<DType::Q4_0x16>{});
    else if (wt == DType::Q4_1x16)
        run(DTypeTag<DType::Q4_1x16>{});
    else if (wt == DType::Q5_0)
        run(DTypeTag<DType::Q5_0>{});
    else if (wt == DType::Q5_0x16)
        run(DTypeTag<DType::Q5_0x16>{});
    else if (wt == DType::Q8_0x16)
        run(DTypeTag<DType::Q8_0x16>{});
    else if (wt == DType::Q4_Kx16)
        run(DTypeTag<DType::Q4_Kx16>{});
    else if (wt == DType::Q5_Kx16)
        run(DTypeTag<DType::Q5_Kx16>{});
    else if (wt == DType::Q6_Kx16)
        run(DTypeTag<DType::Q6_Kx16>{});
    else if (is_iq_lattice(wt))
        iq_grid_visit(wt, run);
    else {
        Tiles::end();
        throw std::logic_error("gemm_i8: unsupported weight type");
    }
    Tiles::end();
}

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
        s.gemm_i8 = gemm_i8_amx<AmxGemmTiles>;
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
        s.gemm_i8 = gemm_i8_amx<EmuGemmTiles>;
        s.gemm_q = amx_decode::gemm_q<amx_decode::EmuTiles>;
        return s;
    }();
    return &set;
}

}  // namespace forgert::cpu
