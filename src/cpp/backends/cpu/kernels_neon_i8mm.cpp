// The prefill int8 GEMM on arm64 with the int8 matrix-multiply extension (FEAT_I8MM: Apple M2
// and later, Neoverse V1/V2/N2, Cortex-A710 and later), for the small-block types and the
// K-quants (Q8_0, Q4_0, Q4_1, Q5_0, Q2_K ... Q6_K); the lattice types and everything else are
// the NEON dot-product set's.
//
// SMMLA multiplies a 2x8 int8 block of weights (two rows, eight quants) by the transpose of a
// 2x8 block of activations (two tokens) into a 2x2 int32 tile: 32 multiply-adds an instruction,
// twice SDOT's 16. A panel is converted as the dot-product set converts it (the portable
// [4-quant group][16 rows][4 bytes] panel, kernels_int8_gemm.h), then rearranged in place, once
// per call, into SMMLA's operands (i8mm_operands): per 8 quants and row pair, the two rows' signed
// quants side by side; the activations likewise once per pass (i8mm_pair_blocks). The tiles then
// only load operands: they subtracted the offset, zipped two groups and joined two tokens'
// 8-byte halves in every tile and block, twice the instructions a block takes now
// (bench/neon_mca.py; bench/results/neon_tiles_mca.md).
// Per block (per 16-weight half for the halves types) the integer dot is exact and is scaled in
// gemm_i8_scalar's steps, so the results are bit-identical to the portable kernel's.
#if defined(__aarch64__) && defined(__ARM_FEATURE_MATMUL_INT8)
#include <arm_neon.h>

#include <algorithm>
#include <vector>

#include "kernels_int8_gemm.h"

namespace forgert::cpu {
namespace {

constexpr int kPairs = 2;  // token pairs per tile: 4 tokens

// A converted panel's quants (nb blocks at wp) as SMMLA operands, in place: block b's quants
// 8g .. 8g + 7 of row pair p (rows 2p, 2p + 1 of the panel's 16) at b * kI8PanelBlockBytes +
// 128 g + 16 p: the first row's 8 signed quants, then the second's. Groups 2g and 2g + 1 (the
// 128 bytes from 128 g) are read before they are written.
void i8mm_operands(uint8_t* wp, int64_t nb, int offset) {
    const int8x16_t o = vdupq_n_s8((int8_t)offset);
    for (int64_t b = 0; b < nb; b++) {
        for (int g = 0; g < 4; g++) {
            int8_t* p = reinterpret_cast<int8_t*>(wp + b * kI8PanelBlockBytes + 128 * g);
            int32x4_t q0[4], q1[4];  // rows 4i .. 4i + 3 of groups 2g, 2g + 1: (q + o) - o, wrapping
            for (int i = 0; i < 4; i++) {
                q0[i] = vreinterpretq_s32_s8(vsubq_s8(vld1q_s8(p + 16 * i), o));
                q1[i] = vreinterpretq_s32_s8(vsubq_s8(vld1q_s8(p + 64 + 16 * i), o));
            }
            for (int i = 0; i < 4; i++) {  // row pairs 2i (rows 4i, 4i + 1) and 2i + 1
                vst1q_s8(p + 32 * i, vreinterpretq_s8_s32(vzip1q_s32(q0[i], q1[i])));
                vst1q_s8(p + 32 * i + 16, vreinterpretq_s8_s32(vzip2q_s32(q0[i], q1[i])));
            }
        }
    }
}

// Two tokens' activation block as SMMLA operands: the 2x8 blocks of the tokens' quants, their
// scales and min terms laid out as the tile's lanes use them. Made once per pass for all the
// panels (i8mm_pair_blocks), where a tile made each operand from two 8-byte loads and an insert.
struct I8mmPairBlock {
    int8_t x[2][4][16];  // [part][g]: token a's quants 8g .. 8g + 7, then token b's
    float dx[4];         // {dxa, dxb, dxa, dxb}: i8_act_scale
    float m[2][4];       // the min terms (i8_block_min_terms) the same way, one vector a term
};

// Token pairs (t, t + 1) of tokens [c0, c1) (a last token alone pairs with itself), nb blocks
// each: pair u's block b at pb[u * nb + b].
template <DType WT, int PARTS>
void i8mm_pair_blocks(const BlockQ8Act* x, const int32_t* xs, int64_t nb, int64_t n_tok, int64_t c0, int64_t c1,
                      I8mmPairBlock* pb) {
    constexpr int M = i8_min_terms_per_block(WT);
    for (int64_t t = c0; t < c1; t += 2) {
        const int64_t t2 = t + 1 < c1 ? t + 1 : t;
        for (int64_t b = 0; b < nb; b++) {
            const BlockQ8Act &a = x[t * nb + b], &c = x[t2 * nb + b];
            I8mmPairBlock& o = pb[(t - c0) / 2 * nb + b];
            for (int part = 0; part < PARTS; part++) {
                const int8_t* pa = part ? a.lo : a.hi;
                const int8_t* pc = part ? c.lo : c.hi;
                for (int i = 0; i < 2; i++) {  // quants 16i .. 16i + 15: g = 2i, 2i + 1
                    const int64x2_t va = vreinterpretq_s64_s8(vld1q_s8(pa + 16 * i));
                    const int64x2_t vc = vreinterpretq_s64_s8(vld1q_s8(pc + 16 * i));
                    vst1q_s8(o.x[part][2 * i], vreinterpretq_s8_s64(vzip1q_s64(va, vc)));
                    vst1q_s8(o.x[part][2 * i + 1], vreinterpretq_s8_s64(vzip2q_s64(va, vc)));
                }
            }
            const float da = i8_act_scale(a, PARTS), dc = i8_act_scale(c, PARTS);
            o.dx[0] = o.dx[2] = da, o.dx[1] = o.dx[3] = dc;
            if constexpr (M > 0) {
                float ma[2], mc[2];
                i8_block_min_terms(WT, a, xs, n_tok * nb, t * nb + b, PARTS, ma);
                i8_block_min_terms(WT, c, xs, n_tok * nb, t2 * nb + b, PARTS, mc);
                for (int k = 0; k < M; k++) o.m[k][0] = o.m[k][2] = ma[k], o.m[k][1] = o.m[k][3] = mc[k];
            }
        }
    }
}

// Rows [8 half, 8 half + 8) of one panel against token pairs u < TP (pair u's blocks at
// px + u * nb). acc[p][u] holds [row 2p x tok a, row 2p x tok b, row 2p+1 x tok a, row 2p+1 x
// tok b], so a factor of the rows is {f[2p], f[2p], f[2p+1], f[2p+1]}.
template <DType WT, int PARTS, int TP>
void i8mm_tile(const uint8_t* wp, int half, const I8mmPairBlock* px, int64_t nb, float* const* out_row, int nr) {
    constexpr int M = i8_min_terms_per_block(WT);
    constexpr int E = i8_is_halves(WT) ? 2 : 1;  // integer dots a block: one a 16-weight half, or one
    constexpr int G = 4 / E;                      // 8-quant steps a dot
    float32x4_t acc[4][TP];
    for (int p = 0; p < 4; p++)
        for (int u = 0; u < TP; u++) acc[p][u] = vdupq_n_f32(0.0f);
    // the rows' factors at f (16 floats: the panel's rows) as the 4 row-pair vectors of this half
    auto pairs = [half](const uint8_t* f, float32x4_t* v) {
        const float* r = reinterpret_cast<const float*>(f) + 8 * half;
        const float32x4_t a = vld1q_f32(r), b = vld1q_f32(r + 4);
        v[0] = vzip1q_f32(a, a), v[1] = vzip2q_f32(a, a), v[2] = vzip1q_f32(b, b), v[3] = vzip2q_f32(b, b);
    };
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = wp + b * kI8PanelBlockBytes;
        for (int e = 0; e < E; e++) {
            // the dot of quants 8G e .. 8G (e + 1): with two parts the hi dots are shifted and the lo
            // dots added onto them, 256 hi + lo (exact in int32)
            int32x4_t h[4][TP];
            for (int p = 0; p < 4; p++)
                for (int u = 0; u < TP; u++) h[p][u] = vdupq_n_s32(0);
            for (int part = 0; part < PARTS; part++) {
                if (part)
                    for (int p = 0; p < 4; p++)
                        for (int u = 0; u < TP; u++) h[p][u] = vshlq_n_s32(h[p][u], 8);
                for (int g = G * e; g < G * (e + 1); g++) {
                    const int8_t* q = reinterpret_cast<const int8_t*>(pb + 128 * g + 64 * half);
                    const int8x16_t w[4] = {vld1q_s8(q), vld1q_s8(q + 16), vld1q_s8(q + 32), vld1q_s8(q + 48)};
                    for (int u = 0; u < TP; u++) {
                        const int8x16_t xv = vld1q_s8(px[u * nb + b].x[part][g]);
                        for (int p = 0; p < 4; p++) h[p][u] = vmmlaq_s32(h[p][u], w[p], xv);
                    }
                }
            }
            // the halves types' second half has its factors in the mins' slot
            float32x4_t f[4];
            pairs(pb + (e ? kI8PanelMins : kI8PanelScales), f);
            for (int u = 0; u < TP; u++) {
                const float32x4_t dx = vld1q_f32(px[u * nb + b].dx);
                for (int p = 0; p < 4; p++) acc[p][u] = vfmaq_f32(acc[p][u], vcvtq_f32_s32(h[p][u]), vmulq_f32(f[p], dx));
            }
        }
        if constexpr (M > 0) {  // + min * term (K-quants' mins negated; Q2_K: half 1's in the half terms)
            for (int k = 0; k < M; k++) {
                float32x4_t mn[4];
                pairs(pb + (k ? kI8PanelHalfTerms : kI8PanelMins), mn);
                for (int u = 0; u < TP; u++) {
                    const float32x4_t mv = vld1q_f32(px[u * nb + b].m[k]);
                    for (int p = 0; p < 4; p++) acc[p][u] = vfmaq_f32(acc[p][u], mn[p], mv);
                }
            }
        }
    }
    const int rows = std::min(8, nr - 8 * half);
    for (int u = 0; u < TP; u++) {
        for (int p = 0; p < 4; p++) {
            float v[4];
            vst1q_f32(v, acc[p][u]);
            for (int i = 0; i < 2; i++) {  // row 2p + i
                if (2 * p + i >= rows) continue;
                const int64_t r = 8 * half + 2 * p + i;
                out_row[2 * u][r] = v[2 * i];
                if (out_row[2 * u + 1]) out_row[2 * u + 1][r] = v[2 * i + 1];
            }
        }
    }
}

template <DType WT, int PARTS>
void gemm_i8mm_typed(const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                     const int32_t* xs, int64_t nb, int64_t n_tok, float* out, int64_t out_stride, uint8_t* work) {
    constexpr int TT = 2 * kPairs;
    // tokens in passes whose activations (~1 MB) stay in cache while every panel reads them
    const int64_t chunk = i8_token_chunk(nb, TT);
    thread_local std::vector<I8mmPairBlock> pair_blocks;  // a pass's token pairs
    const size_t need = (size_t)((std::min(chunk, n_tok) + 1) / 2 * nb);
    if (pair_blocks.size() < need) pair_blocks.resize(need);
    for (int64_t c0 = 0; c0 < n_tok; c0 += chunk) {
        const int64_t c1 = std::min(n_tok, c0 + chunk);
        i8mm_pair_blocks<WT, PARTS>(x, xs, nb, n_tok, c0, c1, pair_blocks.data());
        for (int64_t r = r0; r < r1; r += kI8Rows) {
            const int nr = (int)std::min<int64_t>(kI8Rows, r1 - r);
            i8_repack_panel(WT, w, w_stride, r, nr, nb, work);
            i8mm_operands(work, nb, i8_offset(WT));
            for (int half = 0; half < (nr > 8 ? 2 : 1); half++) {
                for (int64_t t = c0; t < c1; t += TT) {
                    const int nt = (int)std::min<int64_t>(TT, c1 - t);
                    // A lone last token is paired with itself, and its copy is not stored.
                    float* out_row[TT];
                    for (int i = 0; i < TT; i++) out_row[i] = i < nt ? out + (t + i) * out_stride + r : nullptr;
                    const I8mmPairBlock* px = pair_blocks.data() + (t - c0) / 2 * nb;
                    if (nt > 2) i8mm_tile<WT, PARTS, 2>(work, half, px, nb, out_row, nr);
                    else i8mm_tile<WT, PARTS, 1>(work, half, px, nb, out_row, nr);
                }
            }
        }
    }
}

void gemm_i8_i8mm(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                  const int32_t* xs, int64_t nb, int64_t n_tok, int parts, float* out, int64_t out_stride,
                  uint8_t* work) {
    auto run = [&](auto tag) {  // gemm_i8mm_typed of the tag's type, one or two activation parts
        constexpr DType WT = decltype(tag)::value;
        parts == 2 ? gemm_i8mm_typed<WT, 2>(w, w_stride, r0, r1, x, xs, nb, n_tok, out, out_stride, work)
                   : gemm_i8mm_typed<WT, 1>(w, w_stride, r0, r1, x, xs, nb, n_tok, out, out_stride, work);
    };
    if (i8_file_type_visit(wt, run)) return;
    // the lattice types (IQ1-IQ3: their panels are built by the dot-product set's NEON repack) and
    // anything else: the dot-product set's int8 GEMM
    kernels_neon()->gemm_i8(wt, w, w_stride, r0, r1, x, xs, nb, n_tok, parts, out, out_stride, work);
}

}  // namespace

const KernelSet* kernels_neon_i8mm() {
    static const KernelSet set = [] {
        KernelSet s = *kernels_neon();
        s.name = "neon-i8mm";
        s.gemm_i8 = gemm_i8_i8mm;  // the same types as the dot-product set's (some through its gemm_i8)
        return s;
    }();
    return &set;
}

}  // namespace forgert::cpu

#else
#include "cpu_kernels.h"
namespace forgert::cpu {
const KernelSet* kernels_neon_i8mm() { return nullptr; }
}  // namespace forgert::cpu
#endif
