// The lattice weight types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S (layouts in
// quant_blocks.h, codebooks in iq_grids.h): every reader of them goes through two decoders per
// type: `quad`, weights 4q .. 4q + 3 (q < 64) of a 256-weight super-block, and `sixteen`, weights
// 16k .. 16k + 15 (k < 16), as small integers v (exact in f32) and the float `scale` they share,
// w = scale * v. scale is d times the type's odd scale factor (2 ls + 1) over a power of two
// (quant_blocks.h's table), both exact in f32, and so is every product scale * v: the weights
// equal ggml's (and gguf's) dequantization bit for bit. A scale covers 16 aligned weights at least.
//
// `quad` serves the readers of threadgroup copies (the staged GEMVs' lanes take 4 consecutive
// weights of a chunk: mul_mv_parts.h's mv_k_part layout; IQ3's codebook points are 4 weights,
// IQ2's and IQ1's 8, of which a quad is one half) and get_rows' per-element reads. `sixteen` serves
// the readers of device memory (the direct GEMVs' half blocks, the GEMM's tile loads) and reads
// each field of its 16 weights once, indices and signs as ushorts where they lie at even offsets
// (blocks are 50 .. 110 bytes, only 2-byte aligned in a row).
#ifndef FORGERT_IQ_LATTICE_H
#define FORGERT_IQ_LATTICE_H

#include "../cpp/core/iq_grids.h"

// The codebooks (static: one copy per .metal, no link clash). Entry i's byte k is value k.
static constant ulong fg_iq2xxs_grid[256] = FG_IQ2XXS_GRID;
static constant ulong fg_iq2xs_grid[512] = FG_IQ2XS_GRID;
static constant ulong fg_iq2s_grid[1024] = FG_IQ2S_GRID;
static constant uint fg_iq3xxs_grid[256] = FG_IQ3XXS_GRID;
static constant uint fg_iq3s_grid[512] = FG_IQ3S_GRID;
static constant ulong fg_iq1s_grid[2048] = FG_IQ1S_GRID;  // int8 values -1, 0, 1
static constant uchar fg_iq2_ksigns[128] = FG_IQ2_KSIGNS;

// Four magnitudes (the bytes of u) with signs from bits 0..3 of s (set: negative), into v.
static inline void fg_iq_signed4(uint u, uint s, thread float* v) {
    for (int k = 0; k < 4; ++k) {
        const float m = float((u >> (8 * k)) & 0xFFu);
        v[k] = ((s >> k) & 1u) != 0u ? -m : m;
    }
}
// IQ1: four int8 codebook values g (bytes of u: -1, 0, 1) as 8 g + delta (delta +-1), into v.
static inline void fg_iq1_values4(uint u, float delta, thread float* v) {
    for (int k = 0; k < 4; ++k) {
        const int g = int((u >> (8 * k)) & 0xFFu);
        v[k] = 8.0f * float(g < 128 ? g : g - 256) + delta;
    }
}
// All 8 of a point: magnitudes signed by the 8 bits of s / IQ1's 8 g + delta, into v[0..8).
static inline void fg_iq_signed8(ulong point, uint s, thread float* v) {
    fg_iq_signed4(uint(point), s, v);
    fg_iq_signed4(uint(point >> 32), s >> 4, v + 4);
}
static inline void fg_iq1_values8(ulong point, float delta, thread float* v) {
    fg_iq1_values4(uint(point), delta, v);
    fg_iq1_values4(uint(point >> 32), delta, v + 4);
}
// The half h (0: bytes 0..3, 1: bytes 4..7) of an 8-byte codebook point.
static inline uint fg_iq_half(ulong point, int h) { return uint(point >> (32 * h)); }

// IQ2_XXS: 32-weight sub-block ib = q / 8 is qs[4 ib .. 4 ib + 4): word 0's byte l indexes point l,
// word 1 holds the four 7-bit sign indices and ls (bits 28..31); w = d (2 ls + 1) / 8 (+-g).
struct iq2_xxs_lattice {
    typedef block_iq2_xxs block;
    template <typename S>
    static float sixteen(fg_ptr<S, block_iq2_xxs> b, int k, thread float* v) {
        fg_ptr<S, ushort> qs = (fg_ptr<S, ushort>)b->qs + 4 * (k / 2);
        const uint aux = uint(qs[2]) | (uint(qs[3]) << 16);
        const uint idx = qs[k % 2];  // the index bytes of points 2 (k % 2) and 2 (k % 2) + 1
        for (int i = 0; i < 2; ++i)
            fg_iq_signed8(fg_iq2xxs_grid[(idx >> (8 * i)) & 0xFFu],
                          fg_iq2_ksigns[(aux >> (7 * (2 * (k % 2) + i))) & 127u], v + 8 * i);
        return fg_f16_to_f32(b->d) * float(2u * (aux >> 28) + 1u) * 0.125f;
    }
    template <typename S>
    static float quad(fg_ptr<S, block_iq2_xxs> b, int q, thread float* v) {
        const int ib = q / 8, l = (q / 2) % 4, h = q % 2;
        const uint aux = uint(b->qs[4 * ib + 2]) | (uint(b->qs[4 * ib + 3]) << 16);
        const uint idx = ((fg_ptr<S, uint8_t>)b->qs)[8 * ib + l];
        const uint signs = uint(fg_iq2_ksigns[(aux >> (7 * l)) & 127u]) >> (4 * h);
        fg_iq_signed4(fg_iq_half(fg_iq2xxs_grid[idx], h), signs, v);
        return fg_f16_to_f32(b->d) * float(2u * (aux >> 28) + 1u) * 0.125f;
    }
};

// IQ2_XS / IQ2_S's ls of the 16 weights that hold quad q: a nibble of scales[q / 8].
template <typename P>  // a uint8_t pointer, any address space
static inline float fg_iq2_scale16(P scales, int q) {
    return float(2u * ((uint(scales[q / 8]) >> (4 * ((q / 4) % 2))) & 0xFu) + 1u) * 0.125f;
}

// IQ2_XS: qs[g] for point g = q / 2: a 9-bit index and a 7-bit sign index.
struct iq2_xs_lattice {
    typedef block_iq2_xs block;
    template <typename S>
    static float sixteen(fg_ptr<S, block_iq2_xs> b, int k, thread float* v) {
        for (int i = 0; i < 2; ++i) {
            const uint w = b->qs[2 * k + i];
            fg_iq_signed8(fg_iq2xs_grid[w & 511u], fg_iq2_ksigns[w >> 9], v + 8 * i);
        }
        return fg_f16_to_f32(b->d) * fg_iq2_scale16(b->scales, 4 * k);
    }
    template <typename S>
    static float quad(fg_ptr<S, block_iq2_xs> b, int q, thread float* v) {
        const int h = q % 2;
        const uint w = b->qs[q / 2];
        const uint signs = uint(fg_iq2_ksigns[w >> 9]) >> (4 * h);
        fg_iq_signed4(fg_iq_half(fg_iq2xs_grid[w & 511u], h), signs, v);
        return fg_f16_to_f32(b->d) * fg_iq2_scale16(b->scales, q);
    }
};

// IQ2_S: point g = q / 2's index: qs[g] and bits 2 (g % 4) .. of qh[g / 4]; its 8 signs qs[32 + g].
struct iq2_s_lattice {
    typedef block_iq2_s block;
    template <typename S>
    static float sixteen(fg_ptr<S, block_iq2_s> b, int k, thread float* v) {
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)b->qs;  // at an even offset
        const uint idx = q2[k], signs = q2[16 + k], h = uint(b->qh[k / 2]) >> (4 * (k % 2));
        for (int i = 0; i < 2; ++i)
            fg_iq_signed8(fg_iq2s_grid[((idx >> (8 * i)) & 0xFFu) | (((h >> (2 * i)) & 3u) << 8)], signs >> (8 * i),
                          v + 8 * i);
        return fg_f16_to_f32(b->d) * fg_iq2_scale16(b->scales, 4 * k);
    }
    template <typename S>
    static float quad(fg_ptr<S, block_iq2_s> b, int q, thread float* v) {
        const int g = q / 2, h = q % 2;
        const uint idx = uint(b->qs[g]) | (((uint(b->qh[g / 4]) >> (2 * (g % 4))) & 3u) << 8);
        fg_iq_signed4(fg_iq_half(fg_iq2s_grid[idx], h), uint(b->qs[32 + g]) >> (4 * h), v);
        return fg_f16_to_f32(b->d) * fg_iq2_scale16(b->scales, q);
    }
};

// IQ3_XXS: point q's index qs[q]; sub-block ib = q / 8's word (qs[64 + 4 ib ..], at an even
// offset: two ushorts) holds the sign index of each 8 weights and ls; w = d (2 ls + 1) / 4 (+-g).
struct iq3_xxs_lattice {
    typedef block_iq3_xxs block;
    template <typename S>
    static float sixteen(fg_ptr<S, block_iq3_xxs> b, int k, thread float* v) {
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)b->qs;  // at an even offset
        const uint idx = uint(q2[2 * k]) | (uint(q2[2 * k + 1]) << 16);  // points 4k .. 4k + 3
        const uint aux = uint(q2[32 + 2 * (k / 2)]) | (uint(q2[33 + 2 * (k / 2)]) << 16);
        for (int i = 0; i < 2; ++i) {
            const uint signs = fg_iq2_ksigns[(aux >> (7 * (2 * (k % 2) + i))) & 127u];
            fg_iq_signed4(fg_iq3xxs_grid[(idx >> (16 * i)) & 0xFFu], signs, v + 8 * i);
            fg_iq_signed4(fg_iq3xxs_grid[(idx >> (16 * i + 8)) & 0xFFu], signs >> 4, v + 8 * i + 4);
        }
        return fg_f16_to_f32(b->d) * float(2u * (aux >> 28) + 1u) * 0.25f;
    }
    template <typename S>
    static float quad(fg_ptr<S, block_iq3_xxs> b, int q, thread float* v) {
        const int ib = q / 8, l = (q % 8) / 2;
        fg_ptr<S, ushort> w = (fg_ptr<S, ushort>)(b->qs + 64 + 4 * ib);
        const uint aux = uint(w[0]) | (uint(w[1]) << 16);
        const uint signs = uint(fg_iq2_ksigns[(aux >> (7 * l)) & 127u]) >> (4 * (q % 2));
        fg_iq_signed4(fg_iq3xxs_grid[b->qs[q]], signs, v);
        return fg_f16_to_f32(b->d) * float(2u * (aux >> 28) + 1u) * 0.25f;
    }
};

// IQ3_S: point q's index qs[q] with bit q % 8 of qh[q / 8] as its ninth; one sign bit per weight;
// w = d (2 ls + 1) (+-g), ls a nibble of scales[q / 16].
struct iq3_s_lattice {
    typedef block_iq3_s block;
    template <typename S>
    static float sixteen(fg_ptr<S, block_iq3_s> b, int k, thread float* v) {
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)b->qs;  // qs and signs at even offsets
        const uint idx = uint(q2[2 * k]) | (uint(q2[2 * k + 1]) << 16);  // points 4k .. 4k + 3
        const uint h = uint(b->qh[k / 2]) >> (4 * (k % 2));
        const uint signs = ((fg_ptr<S, ushort>)b->signs)[k];
        for (int i = 0; i < 4; ++i)
            fg_iq_signed4(fg_iq3s_grid[((idx >> (8 * i)) & 0xFFu) | (((h >> i) & 1u) << 8)], signs >> (4 * i), v + 4 * i);
        const uint ls = (uint(b->scales[k / 4]) >> (4 * ((k / 2) % 2))) & 0xFu;
        return fg_f16_to_f32(b->d) * float(2u * ls + 1u);
    }
    template <typename S>
    static float quad(fg_ptr<S, block_iq3_s> b, int q, thread float* v) {
        const uint idx = uint(b->qs[q]) | (((uint(b->qh[q / 8]) >> (q % 8)) & 1u) << 8);
        fg_iq_signed4(fg_iq3s_grid[idx], uint(b->signs[q / 2]) >> (4 * (q % 2)), v);
        const uint ls = (uint(b->scales[q / 16]) >> (4 * ((q / 8) % 2))) & 0xFu;
        return fg_f16_to_f32(b->d) * float(2u * ls + 1u);
    }
};

// IQ1_S: sub-block ib = q / 8's qh[ib] holds the top index bits of its 4 points, ls and the
// delta's sign; w = d (2 ls + 1) / 8 (8 g + delta).
struct iq1_s_lattice {
    typedef block_iq1_s block;
    template <typename S>
    static float sixteen(fg_ptr<S, block_iq1_s> b, int k, thread float* v) {
        const uint idx = ((fg_ptr<S, ushort>)b->qs)[k];  // at an even offset: points 2k, 2k + 1
        const uint h16 = b->qh[k / 2];
        const float delta = (h16 & 0x8000u) != 0u ? -1.0f : 1.0f;
        for (int i = 0; i < 2; ++i)
            fg_iq1_values8(fg_iq1s_grid[((idx >> (8 * i)) & 0xFFu) | (((h16 >> (3 * (2 * (k % 2) + i))) & 7u) << 8)], delta,
                           v + 8 * i);
        return fg_f16_to_f32(b->d) * float(2u * ((h16 >> 12) & 7u) + 1u) * 0.125f;
    }
    template <typename S>
    static float quad(fg_ptr<S, block_iq1_s> b, int q, thread float* v) {
        const int g = q / 2;
        const uint h16 = b->qh[q / 8];
        const uint idx = uint(b->qs[g]) | (((h16 >> (3 * (g % 4))) & 7u) << 8);
        fg_iq1_values4(fg_iq_half(fg_iq1s_grid[idx], q % 2), (h16 & 0x8000u) != 0u ? -1.0f : 1.0f, v);
        return fg_f16_to_f32(b->d) * float(2u * ((h16 >> 12) & 7u) + 1u) * 0.125f;
    }
};

// IQ1_M: point g = q / 2's nibble of qh[g / 2] (3 index bits, its delta's sign); ls per 16 weights
// (3 bits of the u16 scales[q / 16]); d's 16 bits are the four u16's top nibbles.
struct iq1_m_lattice {
    typedef block_iq1_m block;
    template <typename S>
    static float sixteen(fg_ptr<S, block_iq1_m> b, int k, thread float* v) {
        const uint idx = ((fg_ptr<S, ushort>)b->qs)[k];  // points 2k, 2k + 1
        const uint nib = b->qh[k];                          // their nibbles
        for (int i = 0; i < 2; ++i) {
            const uint n = nib >> (4 * i);
            fg_iq1_values8(fg_iq1s_grid[((idx >> (8 * i)) & 0xFFu) | ((n & 7u) << 8)], (n & 8u) != 0u ? -1.0f : 1.0f,
                           v + 8 * i);
        }
        fg_ptr<S, ushort> sc = (fg_ptr<S, ushort>)b->scales;
        const uint s0 = sc[0], s1 = sc[1], s2 = sc[2], s3 = sc[3];
        const ushort dbits = ushort((s0 >> 12) | ((s1 >> 8) & 0x00F0u) | ((s2 >> 4) & 0x0F00u) | (s3 & 0xF000u));
        const uint w = k / 4 == 0 ? s0 : k / 4 == 1 ? s1 : k / 4 == 2 ? s2 : s3;
        return fg_f16_to_f32(dbits) * float(2u * ((w >> (3 * (k % 4))) & 7u) + 1u) * 0.125f;
    }
    template <typename S>
    static float quad(fg_ptr<S, block_iq1_m> b, int q, thread float* v) {
        const int g = q / 2;
        const uint nib = (uint(b->qh[g / 2]) >> (4 * (g % 2))) & 0xFu;
        const uint idx = uint(b->qs[g]) | ((nib & 7u) << 8);
        fg_iq1_values4(fg_iq_half(fg_iq1s_grid[idx], q % 2), (nib & 8u) != 0u ? -1.0f : 1.0f, v);
        fg_ptr<S, ushort> sc = (fg_ptr<S, ushort>)b->scales;
        const uint s0 = sc[0], s1 = sc[1], s2 = sc[2], s3 = sc[3];
        const ushort dbits = ushort((s0 >> 12) | ((s1 >> 8) & 0x00F0u) | ((s2 >> 4) & 0x0F00u) | (s3 & 0xF000u));
        const uint w = q / 16 == 0 ? s0 : q / 16 == 1 ? s1 : q / 16 == 2 ? s2 : s3;  // no fifth read
        return fg_f16_to_f32(dbits) * float(2u * ((w >> (3 * ((q / 4) % 4))) & 7u) + 1u) * 0.125f;
    }
};

// Weight c (< 256) of super-block b.
template <typename L, typename S>
static inline float fg_lattice_at(fg_ptr<S, typename L::block> b, int c) {
    float v[4];
    const float scale = L::template quad<S>(b, c / 4, v);
    return scale * v[c % 4];
}

// Element c of a lattice-type row (fg_weight_at's cases for these types; 0 for any other type).
template <typename S>
static inline float fg_lattice_weight_at(fg_ptr<S, char> row, int type, int c) {
    switch (type) {
#define FG_LATTICE_CASE(T, L) \
        case T: return fg_lattice_at<L, S>((fg_ptr<S, typename L::block>)row + c / FG_QK_K, c % FG_QK_K);
        FG_LATTICE_CASE(FG_IQ2_XXS, iq2_xxs_lattice)
        FG_LATTICE_CASE(FG_IQ2_XS, iq2_xs_lattice)
        FG_LATTICE_CASE(FG_IQ2_S, iq2_s_lattice)
        FG_LATTICE_CASE(FG_IQ3_XXS, iq3_xxs_lattice)
        FG_LATTICE_CASE(FG_IQ3_S, iq3_s_lattice)
        FG_LATTICE_CASE(FG_IQ1_S, iq1_s_lattice)
        FG_LATTICE_CASE(FG_IQ1_M, iq1_m_lattice)
#undef FG_LATTICE_CASE
        default: return 0.0f;
    }
}

// Sixteen consecutive weights [16 h, 16 h + 16) of 32-weight chunk blk of a row (the GEMM's tiles).
template <typename L>
static inline void fg_dequant16_lattice(device const char* row, int blk, int h, thread float* out) {
    device const typename L::block* b = (device const typename L::block*)row + blk / 8;
    float v[16];
    const float scale = L::template sixteen<fg_device_space>(b, 2 * (blk % 8) + h, v);
    for (int i = 0; i < 16; ++i) out[i] = scale * v[i];
}

#endif  // FORGERT_IQ_LATTICE_H
