// Portable building blocks of the lattice types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and
// IQ3_S (layouts and formulas in quant_blocks.h). A 32-weight sub-block j of a super-block unpacks
// to int8 quants q (the codebook value times its sign; IQ1: 8 g + delta) and two integer scale
// multipliers m = 2 ls + 1 (weights 0..15 and 16..31; equal where the type has one scale per 32),
// and the super-block has one float base (d / 8, d / 4 or d), so that every weight is
//   w = (base * m) * q,
// each product exact in f32 (base: 11 bits, m: 5, q: 6 at most), hence bit-identical to ggml's and
// gguf-py's dequantization whatever order they multiply in. The dot with the eight activation
// blocks (BlockQ8Act, one per sub-block) is exact in integers per sub-block, then one fma per
// sub-block and one per super-block (its base). Every kernel set calls these same functions for these types
// (results bit-identical across sets). Included into each kernels_*.cpp (internal linkage).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "core/iq_grids.h"
#include "cpu_kernels.h"

namespace forgert::cpu {
namespace {

constexpr uint64_t kIq2xxsGrid[256] = FG_IQ2XXS_GRID;
constexpr uint64_t kIq2xsGrid[512] = FG_IQ2XS_GRID;
constexpr uint64_t kIq2sGrid[1024] = FG_IQ2S_GRID;
constexpr uint32_t kIq3xxsGrid[256] = FG_IQ3XXS_GRID;
constexpr uint32_t kIq3sGrid[512] = FG_IQ3S_GRID;
constexpr uint64_t kIq1sGrid[2048] = FG_IQ1S_GRID;
constexpr uint8_t kIq2Ksigns[128] = FG_IQ2_KSIGNS;

// One unpacked 32-weight sub-block.
struct IqSub {
    int8_t q[FG_QK];  // |q| <= 62 (IQ3_XXS), 43 (IQ2), 15 (IQ3_S), 9 (IQ1)
    int m[2];         // 2 ls + 1 of weights 0..15 and 16..31: 1..31
};

inline uint32_t load_u32(const void* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}
inline uint16_t load_u16(const void* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}
inline uint64_t load_u64(const void* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

// A 32-weight sub-block's fields as every CPU kernel reads them (each type's layout decoded here
// once): four 8-byte codebook words in weight order (IQ2: one entry of 8 magnitudes each; IQ3: two
// entries of 4; IQ1: one entry of 8 int8 values g), the 32 sign bits (bit w set: weight w negative;
// IQ1 none), IQ1's delta per 8 weights (+-1), and the multipliers 2 ls + 1 of weights 0..15 and
// 16..31. The quants are then the magnitudes signed, or IQ1's 8 g + delta (iq_grid_sub, and the
// SIMD sets' builders).
struct IqFields {
    uint64_t words[4];
    uint32_t signs = 0;
    int delta[4] = {0, 0, 0, 0};
    int m[2];
};

constexpr bool is_iq1(DType wt) { return wt == DType::IQ1_S || wt == DType::IQ1_M; }

inline uint32_t iq_ksigns4(uint32_t sg) {  // four 7-bit sign indices -> 32 sign bits
    return (uint32_t)kIq2Ksigns[sg & 127] | (uint32_t)kIq2Ksigns[(sg >> 7) & 127] << 8 |
           (uint32_t)kIq2Ksigns[(sg >> 14) & 127] << 16 | (uint32_t)kIq2Ksigns[(sg >> 21) & 127] << 24;
}
inline uint64_t iq_pair32(uint32_t a, uint32_t b) { return (uint64_t)a | (uint64_t)b << 32; }

template <DType WT>
inline IqFields iq_grid_fields(const uint8_t* blk, int j) {
    IqFields f;
    if constexpr (WT == DType::IQ2_XXS) {
        const auto* b = reinterpret_cast<const block_iq2_xxs*>(blk);
        const uint32_t idx = load_u32(b->qs + 4 * j), sg = load_u32(b->qs + 4 * j + 2);
        for (int l = 0; l < 4; l++) f.words[l] = kIq2xxsGrid[(idx >> (8 * l)) & 0xff];
        f.signs = iq_ksigns4(sg);
        f.m[0] = f.m[1] = 2 * (int)(sg >> 28) + 1;
    } else if constexpr (WT == DType::IQ2_XS) {
        const auto* b = reinterpret_cast<const block_iq2_xs*>(blk);
        // the four index words in one load: four 2-byte loads were stored and reloaded 8 bytes
        // wide by the compiler (a store-forwarding stall per word, kernels_x86_iq_grid.inc)
        const uint64_t q4 = load_u64(b->qs + 4 * j);
        for (int l = 0; l < 4; l++) {
            const uint16_t v = (uint16_t)(q4 >> (16 * l));
            f.words[l] = kIq2xsGrid[v & 511];
            f.signs |= (uint32_t)kIq2Ksigns[v >> 9] << (8 * l);
        }
        f.m[0] = 2 * (b->scales[j] & 0x0f) + 1, f.m[1] = 2 * (b->scales[j] >> 4) + 1;
    } else if constexpr (WT == DType::IQ2_S) {
        const auto* b = reinterpret_cast<const block_iq2_s*>(blk);
        for (int l = 0; l < 4; l++) f.words[l] = kIq2sGrid[b->qs[4 * j + l] | ((b->qh[j] >> (2 * l)) & 3) << 8];
        f.signs = load_u32(b->qs + FG_QK_K / 8 + 4 * j);
        f.m[0] = 2 * (b->scales[j] & 0x0f) + 1, f.m[1] = 2 * (b->scales[j] >> 4) + 1;
    } else if constexpr (WT == DType::IQ3_XXS) {
        const auto* b = reinterpret_cast<const block_iq3_xxs*>(blk);
        const uint8_t* qs = b->qs + 8 * j;
        const uint32_t sg = load_u32(b->qs + FG_QK_K / 4 + 4 * j);
        for (int l = 0; l < 4; l++) f.words[l] = iq_pair32(kIq3xxsGrid[qs[2 * l]], kIq3xxsGrid[qs[2 * l + 1]]);
        f.signs = iq_ksigns4(sg);
        f.m[0] = f.m[1] = 2 * (int)(sg >> 28) + 1;
    } else if constexpr (WT == DType::IQ3_S) {
        const auto* b = reinterpret_cast<const block_iq3_s*>(blk);
        const uint8_t* qs = b->qs + 8 * j;
        const int qh = b->qh[j];
        for (int l = 0; l < 4; l++)
            f.words[l] = iq_pair32(kIq3sGrid[qs[2 * l] | ((qh >> (2 * l)) & 1) << 8],
                                   kIq3sGrid[qs[2 * l + 1] | ((qh >> (2 * l + 1)) & 1) << 8]);
        f.signs = load_u32(b->signs + 4 * j);
        f.m[0] = f.m[1] = 2 * ((b->scales[j / 2] >> (4 * (j % 2))) & 0x0f) + 1;
    } else if constexpr (WT == DType::IQ1_S) {
        const auto* b = reinterpret_cast<const block_iq1_s*>(blk);
        const int qh = load_u16(b->qh + j);
        for (int l = 0; l < 4; l++) {
            f.words[l] = kIq1sGrid[b->qs[4 * j + l] | ((qh >> (3 * l)) & 7) << 8];
            f.delta[l] = qh & 0x8000 ? -1 : 1;
        }
        f.m[0] = f.m[1] = 2 * ((qh >> 12) & 7) + 1;
    } else {
        static_assert(WT == DType::IQ1_M, "a lattice type");
        const auto* b = reinterpret_cast<const block_iq1_m*>(blk);
        for (int l = 0; l < 4; l++) {
            const int h = b->qh[2 * j + l / 2] >> (4 * (l % 2));  // the group's nibble
            f.words[l] = kIq1sGrid[b->qs[4 * j + l] | (h & 7) << 8];
            f.delta[l] = h & 8 ? -1 : 1;
        }
        const int sc = load_u16(b->scales + 2 * (j / 2)) >> (6 * (j % 2));
        f.m[0] = 2 * (sc & 7) + 1, f.m[1] = 2 * ((sc >> 3) & 7) + 1;
    }
    return f;
}

// IQ1_M's f16 d, spread over the top nibbles of its four scale words.
inline float iq1_m_d(const block_iq1_m* b) {
    uint16_t sc[4];
    std::memcpy(sc, b->scales, 8);
    return f16_to_f32((uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000)));
}

// The super-block's base: w = (base * m) * q.
inline float iq_grid_base(DType wt, const uint8_t* blk) {
    if (wt == DType::IQ1_M) return iq1_m_d(reinterpret_cast<const block_iq1_m*>(blk)) * 0.125f;
    const float d = f16_to_f32(load_u16(blk));  // every other type starts with its f16 d
    switch (wt) {
        case DType::IQ3_S: return d;
        case DType::IQ3_XXS: return d * 0.25f;
        default: return d * 0.125f;  // IQ2_*, IQ1_S
    }
}

// f(DTypeTag<wt>{}) for a lattice type wt: a kernel's dispatch to its per-type template.
template <class F>
inline void iq_grid_visit(DType wt, F&& f) {
    switch (wt) {
        case DType::IQ2_XXS: return f(DTypeTag<DType::IQ2_XXS>{});
        case DType::IQ2_XS: return f(DTypeTag<DType::IQ2_XS>{});
        case DType::IQ2_S: return f(DTypeTag<DType::IQ2_S>{});
        case DType::IQ3_XXS: return f(DTypeTag<DType::IQ3_XXS>{});
        case DType::IQ3_S: return f(DTypeTag<DType::IQ3_S>{});
        case DType::IQ1_S: return f(DTypeTag<DType::IQ1_S>{});
        default: return f(DTypeTag<DType::IQ1_M>{});
    }
}

// Sub-block j (0..7) of a super-block as int8 quants and multipliers.
inline void iq_grid_sub(DType wt, const uint8_t* blk, int j, IqSub& s) {
    IqFields f;
    iq_grid_visit(wt, [&](auto tag) { f = iq_grid_fields<decltype(tag)::value>(blk, j); });
    for (int w = 0; w < FG_QK; w++) {
        const uint8_t byte = (uint8_t)(f.words[w / 8] >> (8 * (w % 8)));
        s.q[w] = is_iq1(wt) ? (int8_t)(8 * (int8_t)byte + f.delta[w / 8])
                            : (int8_t)((f.signs >> w) & 1 ? -(int)byte : (int)byte);
    }
    s.m[0] = f.m[0], s.m[1] = f.m[1];
}

// One super-block to f32, each weight (base * m) * q.                 y [256]
inline void iq_grid_dequantize_super_block(DType wt, const uint8_t* blk, float* y) {
    const float base = iq_grid_base(wt, blk);
    for (int j = 0; j < FG_QK_K / FG_QK; j++) {
        IqSub s;
        iq_grid_sub(wt, blk, j, s);
        for (int h = 0; h < 2; h++) {
            const float dl = base * (float)s.m[h];
            for (int i = 0; i < FG_QK / 2; i++) y[FG_QK * j + 16 * h + i] = dl * (float)s.q[16 * h + i];
        }
    }
}

// The float steps of the dot, the same in every kernel (a SIMD kernel computes the integers its
// own way, then calls these): per sub-block, with h0 / h1 the exact integer dots of its quants
// 0..15 / 16..31 with the activation block's 256 hi + lo, the sum m0 h0 + m1 h1 (|.| < 2^31:
// 62 * 32639 * 32 * 31) and acc = fma(a.d, sum, acc); per super-block, acc = fma(base, its sum,
// acc). Explicit fmas: a compiler may not contract them differently in the sets built with and
// without FMA instructions.
inline float iq_grid_sub_step(float acc, float ad, const int* m, int32_t h0, int32_t h1) {
    return std::fma(ad, (float)((int64_t)m[0] * h0 + (int64_t)m[1] * h1), acc);
}
inline float iq_grid_super_step(float acc, float base, float super_sum) { return std::fma(base, super_sum, acc); }

// dot of one super-block with its eight activation blocks a[0..7], without the base.
inline float iq_grid_super_block_sum(DType wt, const uint8_t* blk, const BlockQ8Act* a) {
    float acc = 0.0f;
    for (int j = 0; j < FG_QK_K / FG_QK; j++) {
        IqSub s;
        iq_grid_sub(wt, blk, j, s);
        int32_t h[2] = {0, 0};
        for (int i = 0; i < FG_QK; i++) h[i / 16] += (int32_t)s.q[i] * (256 * a[j].hi[i] + a[j].lo[i]);
        acc = iq_grid_sub_step(acc, a[j].d, s.m, h[0], h[1]);
    }
    return acc;
}

// dot of a row of n_super super-blocks with its activation blocks x[0 .. 8 n_super).
inline float iq_grid_row_dot(DType wt, const uint8_t* row, const BlockQ8Act* x, int64_t n_super) {
    const int64_t bb = dtype_block_bytes(wt);
    float acc = 0.0f;
    for (int64_t b = 0; b < n_super; b++) {
        const uint8_t* blk = row + b * bb;
        acc = iq_grid_super_step(acc, iq_grid_base(wt, blk), iq_grid_super_block_sum(wt, blk, x + b * (FG_QK_K / FG_QK)));
    }
    return acc;
}

}  // namespace
}  // namespace forgert::cpu
