// Weight decoding shared by the mul_mv, mul_mm and get_rows kernels.
// Blocks are only 2-byte aligned inside a row (18, 20, 22, 24 and 34 bytes), so quantized
// data is read through ushort loads, never wider.
#ifndef FORGERT_DEQUANT_H
#define FORGERT_DEQUANT_H

#include "kernel_args.h"

// quant_blocks.h types the block scales as `half` under MSL; a translator that does not
// define __METAL_VERSION__ leaves them as raw uint16_t bits. Both read correctly here.
static inline float fg_f16_to_f32(half h) { return float(h); }
static inline float fg_f16_to_f32(ushort bits) { return float(as_type<half>(bits)); }

// The address space a decoder reads its blocks from, as a type: the weights where they lie, or
// (stage_bytes.h's fg_threadgroup_space) a copy in threadgroup memory. fg_ptr<S, T>: a
// const T* in S.
struct fg_device_space {
    template <typename T> using ptr = device const T*;
};
template <typename S, typename T> using fg_ptr = typename S::template ptr<T>;

static inline float fg_bf16_to_f32(ushort bits) { return as_type<float>(uint(bits) << 16); }

// Low and high nibble of a byte as floats.
static inline float fg_lo4(uint b) { return float(b & 0xFu); }
static inline float fg_hi4(uint b) { return float((b >> 4) & 0xFu); }

// Weight c (0 <= c < 32) of a quantized block, and element c of a float row.
template <typename S = fg_device_space>
static inline float fg_q8_0_at(fg_ptr<S, block_q8_0> b, int c) {
    return fg_f16_to_f32(b->d) * float(b->qs[c]);
}
template <typename S = fg_device_space>
static inline float fg_q4_0_at(fg_ptr<S, block_q4_0> b, int c) {
    const uint q = b->qs[c & 15];
    return fg_f16_to_f32(b->d) * ((c < 16 ? fg_lo4(q) : fg_hi4(q)) - 8.0f);
}
template <typename S = fg_device_space>
static inline float fg_q4_1_at(fg_ptr<S, block_q4_1> b, int c) {
    const uint q = b->qs[c & 15];
    return fg_f16_to_f32(b->d) * (c < 16 ? fg_lo4(q) : fg_hi4(q)) + fg_f16_to_f32(b->m);
}
// Q5_0 / Q5_1's high-bit word: qh as a little-endian uint32, read as two ushorts (qh at
// offset 2 / 4), and quant c (0..31) of a block.
template <typename S = fg_device_space>
static inline uint fg_q5_qh(fg_ptr<S, uint8_t> qh) {
    fg_ptr<S, ushort> h = (fg_ptr<S, ushort>)qh;
    return uint(h[0]) | (uint(h[1]) << 16);
}
template <typename S = fg_device_space>
static inline float fg_q5_quant(fg_ptr<S, uint8_t> qh, fg_ptr<S, uint8_t> qs, int c) {
    const uint q = qs[c & 15];
    const uint hb = (fg_q5_qh<S>(qh) >> c) & 1u;
    return float(((c < 16 ? q : q >> 4) & 0xFu) | (hb << 4));
}
template <typename S = fg_device_space>
static inline float fg_q5_0_at(fg_ptr<S, block_q5_0> b, int c) {
    return fg_f16_to_f32(b->d) * (fg_q5_quant<S>(b->qh, b->qs, c) - 16.0f);
}
template <typename S = fg_device_space>
static inline float fg_q5_1_at(fg_ptr<S, block_q5_1> b, int c) {
    return fg_f16_to_f32(b->d) * fg_q5_quant<S>(b->qh, b->qs, c) + fg_f16_to_f32(b->m);
}

// IQ4_NL / IQ4_XS: nibbles index one table of non-linear values (quant_blocks.h).
static constant float fg_iq4_values[16] = FG_IQ4_NL_VALUES;  // static: one copy per .metal, no link clash
template <typename S = fg_device_space>
static inline float fg_iq4_nl_at(fg_ptr<S, block_iq4_nl> b, int c) {
    const uint q = b->qs[c & 15];
    return fg_f16_to_f32(b->d) * fg_iq4_values[c < 16 ? q & 0xFu : q >> 4];
}
// IQ4_XS's scale of sub-block j (of 32 weights), minus its offset: -32..31.
template <typename P>  // a block_iq4_xs pointer, any address space
static inline float fg_iq4_xs_scale(P b, int j) {
    const uint low = (uint(b->scales_l[j / 2]) >> (4 * (j % 2))) & 0xFu;
    const uint high = (uint(b->scales_h) >> (2 * j)) & 3u;
    return float(int(low | (high << 4)) - 32);
}
template <typename S = fg_device_space>
static inline float fg_iq4_xs_at(fg_ptr<S, block_iq4_xs> b, int c) {
    const int j = c / 32, l = c % 32;
    const uint q = b->qs[16 * j + (l & 15)];
    return fg_f16_to_f32(b->d) * fg_iq4_xs_scale(b, j) * fg_iq4_values[l < 16 ? q & 0xFu : q >> 4];
}

// MXFP4: nibbles index the doubled E2M1 values; the E8M0 scale halved, 2^(e - 128), exactly
// (bit patterns as ggml's GGML_E8M0_TO_FP32_HALF: the two smallest are subnormal).
static constant float fg_mxfp4_values[16] = FG_MXFP4_VALUES;
static inline float fg_mxfp4_half_scale(uint8_t e) {
    const uint bits = e < 2 ? 0x00200000u << e : uint(e - 1) << 23;
    return as_type<float>(bits);
}
template <typename S = fg_device_space>
static inline float fg_mxfp4_at(fg_ptr<S, block_mxfp4> b, int c) {
    const uint q = b->qs[c & 15];
    return fg_mxfp4_half_scale(b->e) * fg_mxfp4_values[c < 16 ? q & 0xFu : q >> 4];
}

// K-quants (layouts in quant_blocks.h): 256-weight super-blocks of 2-byte alignment. Q4_K's
// 6-bit scale and min of sub-block j (of 32 weights).
template <typename P>  // a uint8_t pointer, any address space
static inline void fg_q4_K_scale_min(P s, int j, thread float& sc, thread float& m) {
    if (j < 4) {
        sc = float(s[j] & 63u);
        m = float(s[j + 4] & 63u);
    } else {
        sc = float((s[j + 4] & 0xFu) | ((s[j - 4] >> 6) << 4));
        m = float((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}
// Quant of weight c (0 <= c < 256): Q4_K 0..15; Q6_K minus its offset, -32..31.
template <typename S = fg_device_space>
static inline float fg_q4_K_quant(fg_ptr<S, block_q4_K> b, int c) {
    const uint q = b->qs[32 * (c / 64) + c % 32];
    return (c % 64) < 32 ? fg_lo4(q) : fg_hi4(q);
}
// Q2_K: quant c (0 <= c < 256), 0..3; sub-block c / 16 has scale scales & 15, min scales >> 4.
template <typename S = fg_device_space>
static inline float fg_q2_K_quant(fg_ptr<S, block_q2_K> b, int c) {
    const int h = c / 128, j = (c % 128) / 32, l = c % 32;
    return float((uint(b->qs[32 * h + l]) >> (2 * j)) & 3u);
}
template <typename S = fg_device_space>
static inline float fg_q2_K_at(fg_ptr<S, block_q2_K> b, int c) {
    const uint s = b->scales[c / 16];
    return fg_f16_to_f32(b->d) * float(s & 15u) * fg_q2_K_quant<S>(b, c) - fg_f16_to_f32(b->dmin) * float(s >> 4);
}

// Q3_K: signed scale of sub-block i (of 16 weights), and quant c (0 <= c < 256), -4..3.
template <typename P>  // a uint8_t pointer, any address space
static inline float fg_q3_K_scale(P s, int i) {
    const uint low = i < 8 ? (s[i] & 0xFu) : (s[i - 8] >> 4);
    return float(int(low | (((s[8 + i % 4] >> (2 * (i / 4))) & 3u) << 4)) - 32);
}
template <typename S = fg_device_space>
static inline float fg_q3_K_quant(fg_ptr<S, block_q3_K> b, int c) {
    const int h = c / 128, j = (c % 128) / 32, l = c % 32;
    const uint q = (uint(b->qs[32 * h + l]) >> (2 * j)) & 3u;
    const uint hb = (uint(b->hmask[l]) >> (4 * h + j)) & 1u;
    return float(q) - (hb != 0u ? 0.0f : 4.0f);
}
template <typename S = fg_device_space>
static inline float fg_q5_K_quant(fg_ptr<S, block_q5_K> b, int c) {
    const uint q = b->qs[32 * (c / 64) + c % 32];
    const uint hb = (uint(b->qh[c % 32]) >> (c / 32)) & 1u;  // bit j of qh[l] for sub-block j
    return ((c % 64) < 32 ? fg_lo4(q) : fg_hi4(q)) + 16.0f * float(hb);
}
template <typename S = fg_device_space>
static inline float fg_q6_K_quant(fg_ptr<S, block_q6_K> b, int c) {
    const int h = c / 128, quarter = (c % 128) / 32, l = c % 32;
    const uint ql = b->ql[64 * h + l + 32 * (quarter & 1)];
    const uint qh = (b->qh[32 * h + l] >> (2 * quarter)) & 3u;
    return float(((quarter < 2 ? ql & 0xFu : ql >> 4) | (qh << 4))) - 32.0f;
}
template <typename S = fg_device_space>
static inline float fg_q4_K_at(fg_ptr<S, block_q4_K> b, int c) {
    float sc, m;
    fg_q4_K_scale_min(b->scales, c / 32, sc, m);
    return fg_f16_to_f32(b->d) * sc * fg_q4_K_quant<S>(b, c) - fg_f16_to_f32(b->dmin) * m;
}
template <typename S = fg_device_space>
static inline float fg_q3_K_at(fg_ptr<S, block_q3_K> b, int c) {
    return fg_f16_to_f32(b->d) * fg_q3_K_scale(b->scales, c / 16) * fg_q3_K_quant<S>(b, c);
}
template <typename S = fg_device_space>
static inline float fg_q5_K_at(fg_ptr<S, block_q5_K> b, int c) {
    float sc, m;
    fg_q4_K_scale_min(b->scales, c / 32, sc, m);
    return fg_f16_to_f32(b->d) * sc * fg_q5_K_quant<S>(b, c) - fg_f16_to_f32(b->dmin) * m;
}
template <typename S = fg_device_space>
static inline float fg_q6_K_at(fg_ptr<S, block_q6_K> b, int c) {
    return fg_f16_to_f32(b->d) * float(b->scales[c / 16]) * fg_q6_K_quant<S>(b, c);
}

// The lattice types' elements (iq_lattice.h, included at the end of this file).
template <typename S>
static inline float fg_lattice_weight_at(fg_ptr<S, char> row, int type, int c);

// Element c of a row of weight type `type` (any c < cols), read from address space S.
template <typename S = fg_device_space>
static inline float fg_weight_at(fg_ptr<S, char> row, int type, int c) {
    switch (type) {
        case FG_F32: return ((fg_ptr<S, float>)row)[c];
        case FG_F16: return float(((fg_ptr<S, half>)row)[c]);
        case FG_BF16: return fg_bf16_to_f32(((fg_ptr<S, ushort>)row)[c]);
        case FG_Q8_0: return fg_q8_0_at<S>((fg_ptr<S, block_q8_0>)row + c / FG_QK, c % FG_QK);
        case FG_Q4_0: return fg_q4_0_at<S>((fg_ptr<S, block_q4_0>)row + c / FG_QK, c % FG_QK);
        case FG_Q4_1: return fg_q4_1_at<S>((fg_ptr<S, block_q4_1>)row + c / FG_QK, c % FG_QK);
        case FG_Q5_0: return fg_q5_0_at<S>((fg_ptr<S, block_q5_0>)row + c / FG_QK, c % FG_QK);
        case FG_Q5_1: return fg_q5_1_at<S>((fg_ptr<S, block_q5_1>)row + c / FG_QK, c % FG_QK);
        case FG_Q2_K: return fg_q2_K_at<S>((fg_ptr<S, block_q2_K>)row + c / FG_QK_K, c % FG_QK_K);
        case FG_Q3_K: return fg_q3_K_at<S>((fg_ptr<S, block_q3_K>)row + c / FG_QK_K, c % FG_QK_K);
        case FG_Q4_K: return fg_q4_K_at<S>((fg_ptr<S, block_q4_K>)row + c / FG_QK_K, c % FG_QK_K);
        case FG_Q5_K: return fg_q5_K_at<S>((fg_ptr<S, block_q5_K>)row + c / FG_QK_K, c % FG_QK_K);
        case FG_Q6_K: return fg_q6_K_at<S>((fg_ptr<S, block_q6_K>)row + c / FG_QK_K, c % FG_QK_K);
        case FG_IQ4_NL: return fg_iq4_nl_at<S>((fg_ptr<S, block_iq4_nl>)row + c / FG_QK, c % FG_QK);
        case FG_IQ4_XS: return fg_iq4_xs_at<S>((fg_ptr<S, block_iq4_xs>)row + c / FG_QK_K, c % FG_QK_K);
        case FG_MXFP4: return fg_mxfp4_at<S>((fg_ptr<S, block_mxfp4>)row + c / FG_QK, c % FG_QK);
        default: return fg_lattice_weight_at<S>(row, type, c);
    }
}

// Sixteen consecutive weights [16 * h, 16 * h + 16) of block `blk` of a quantized row.
// Q4 blocks keep weights 0..15 in the low nibbles of qs[0..15] and 16..31 in the high
// nibbles, so half h is one nibble of every byte.
static inline void fg_dequant16_q8_0(device const char* row, int blk, int h, thread float* out) {
    device const block_q8_0* b = (device const block_q8_0*)row + blk;
    const float d = fg_f16_to_f32(b->d);
    device const ushort* qs = (device const ushort*)(b->qs + 16 * h);
    for (int i = 0; i < 8; ++i) {
        const char2 q = as_type<char2>(qs[i]);
        out[2 * i] = d * float(q.x);
        out[2 * i + 1] = d * float(q.y);
    }
}
static inline void fg_dequant16_q4_0(device const char* row, int blk, int h, thread float* out) {
    device const block_q4_0* b = (device const block_q4_0*)row + blk;
    const float d = fg_f16_to_f32(b->d);
    device const ushort* qs = (device const ushort*)b->qs;
    const uint shift = 4 * h;
    for (int i = 0; i < 8; ++i) {
        const uint q = qs[i];
        out[2 * i] = d * (float((q >> shift) & 0xFu) - 8.0f);
        out[2 * i + 1] = d * (float((q >> (shift + 8)) & 0xFu) - 8.0f);
    }
}
static inline void fg_dequant16_q4_1(device const char* row, int blk, int h, thread float* out) {
    device const block_q4_1* b = (device const block_q4_1*)row + blk;
    const float d = fg_f16_to_f32(b->d);
    const float m = fg_f16_to_f32(b->m);
    device const ushort* qs = (device const ushort*)b->qs;
    const uint shift = 4 * h;
    for (int i = 0; i < 8; ++i) {
        const uint q = qs[i];
        out[2 * i] = d * float((q >> shift) & 0xFu) + m;
        out[2 * i + 1] = d * float((q >> (shift + 8)) & 0xFu) + m;
    }
}
// Q5_0 / Q5_1: half h is one nibble of every byte, its fifth bits qh bits 16 h .. 16 h + 15;
// w = d q + m (Q5_0: m = -16 d).
static inline void fg_dequant16_q5(device const uint8_t* qh, device const uint8_t* qs8, float d, float m, int h,
                                   thread float* out) {
    const uint hb = fg_q5_qh(qh) >> (16 * h);
    device const ushort* qs = (device const ushort*)qs8;
    const uint shift = 4 * h;
    for (int i = 0; i < 8; ++i) {
        const uint q = qs[i];
        out[2 * i] = d * float(((q >> shift) & 0xFu) | (((hb >> (2 * i)) & 1u) << 4)) + m;
        out[2 * i + 1] = d * float(((q >> (shift + 8)) & 0xFu) | (((hb >> (2 * i + 1)) & 1u) << 4)) + m;
    }
}
static inline void fg_dequant16_q5_0(device const char* row, int blk, int h, thread float* out) {
    device const block_q5_0* b = (device const block_q5_0*)row + blk;
    const float d = fg_f16_to_f32(b->d);
    fg_dequant16_q5(b->qh, b->qs, d, -16.0f * d, h, out);
}
static inline void fg_dequant16_q5_1(device const char* row, int blk, int h, thread float* out) {
    device const block_q5_1* b = (device const block_q5_1*)row + blk;
    fg_dequant16_q5(b->qh, b->qs, fg_f16_to_f32(b->d), fg_f16_to_f32(b->m), h, out);
}

// IQ4_NL / IQ4_XS: 16 bytes of nibble indices in Q4_0's order, half h one nibble of every
// byte, times the block's (sub-block's) scale d.
static inline void fg_dequant16_iq4(device const uint8_t* qs8, float d, int h, thread float* out) {
    device const ushort* qs = (device const ushort*)qs8;
    const uint shift = 4 * h;
    for (int i = 0; i < 8; ++i) {
        const uint q = qs[i];
        out[2 * i] = d * fg_iq4_values[(q >> shift) & 0xFu];
        out[2 * i + 1] = d * fg_iq4_values[(q >> (shift + 8)) & 0xFu];
    }
}
static inline void fg_dequant16_iq4_nl(device const char* row, int blk, int h, thread float* out) {
    device const block_iq4_nl* b = (device const block_iq4_nl*)row + blk;
    fg_dequant16_iq4(b->qs, fg_f16_to_f32(b->d), h, out);
}
// MXFP4 (17-byte blocks: byte reads only).
static inline void fg_dequant16_mxfp4(device const char* row, int blk, int h, thread float* out) {
    device const block_mxfp4* b = (device const block_mxfp4*)row + blk;
    const float d = fg_mxfp4_half_scale(b->e);
    for (int i = 0; i < 16; ++i) out[i] = d * fg_mxfp4_values[h == 0 ? b->qs[i] & 0xFu : b->qs[i] >> 4];
}
// IQ4_XS: chunk blk % 8 is sub-block j, its quants qs[16 j ..] (qs at offset 8: ushort reads).
static inline void fg_dequant16_iq4_xs(device const char* row, int blk, int h, thread float* out) {
    device const block_iq4_xs* b = (device const block_iq4_xs*)row + blk / 8;
    const int j = blk % 8;
    fg_dequant16_iq4(b->qs + 16 * j, fg_f16_to_f32(b->d) * fg_iq4_xs_scale(b, j), h, out);
}

// Sixteen consecutive weights [16 * h, 16 * h + 16) of 32-weight chunk `blk` of a K-quant
// row: one half of a Q4_K sub-block, one whole Q6_K sub-block. Quants are read as ushorts
// (blocks of 144 / 210 bytes, every quant run at an even offset: 2-byte aligned).
static inline void fg_dequant16_q4_K(device const char* row, int blk, int h, thread float* out) {
    device const block_q4_K* b = (device const block_q4_K*)row + blk / 8;
    const int j = blk % 8;  // sub-block: nibble j % 2 of qs[32 (j / 2) ..]
    float sc, m;
    fg_q4_K_scale_min(b->scales, j, sc, m);
    const float d = fg_f16_to_f32(b->d) * sc, dm = fg_f16_to_f32(b->dmin) * m;
    device const ushort* q2 = (device const ushort*)(b->qs + 32 * (j / 2) + 16 * h);
    const uint shift = 4 * (j % 2);
    for (int i = 0; i < 8; ++i) {
        const uint q = q2[i] >> shift;
        out[2 * i] = d * float(q & 0xFu) - dm;
        out[2 * i + 1] = d * float((q >> 8) & 0xFu) - dm;
    }
}
// Q2_K: chunk blk % 8 is (half, j), half h of it one sub-block of 16 (qs at offset 16).
static inline void fg_dequant16_q2_K(device const char* row, int blk, int h, thread float* out) {
    device const block_q2_K* b = (device const block_q2_K*)row + blk / 8;
    const int c0 = 32 * (blk % 8) + 16 * h;
    const int half = c0 / 128, j = (c0 % 128) / 32, l0 = c0 % 32;
    const uint s = b->scales[c0 / 16];
    const float d = fg_f16_to_f32(b->d) * float(s & 15u), dm = fg_f16_to_f32(b->dmin) * float(s >> 4);
    device const ushort* q2 = (device const ushort*)(b->qs + 32 * half + l0);
    const uint shift = 2u * uint(j);
    for (int i = 0; i < 8; ++i) {
        const uint q = uint(q2[i]) >> shift;
        out[2 * i] = d * float(q & 3u) - dm;
        out[2 * i + 1] = d * float((q >> 8) & 3u) - dm;
    }
}

// Q3_K: chunk blk % 8 is (half, j), half h of it one sub-block of 16 (hmask at offset 0, qs
// at 32: ushort reads).
static inline void fg_dequant16_q3_K(device const char* row, int blk, int h, thread float* out) {
    device const block_q3_K* b = (device const block_q3_K*)row + blk / 8;
    const int c0 = 32 * (blk % 8) + 16 * h;  // first weight
    const int half = c0 / 128, j = (c0 % 128) / 32, l0 = c0 % 32;
    const float d = fg_f16_to_f32(b->d) * fg_q3_K_scale(b->scales, c0 / 16);
    device const ushort* q2 = (device const ushort*)(b->qs + 32 * half + l0);
    device const ushort* m2 = (device const ushort*)(b->hmask + l0);
    const uint qshift = 2u * uint(j), hshift = uint(4 * half + j);
    for (int i = 0; i < 8; ++i) {
        const uint q = uint(q2[i]) >> qshift, hb = uint(m2[i]) >> hshift;
        out[2 * i] = d * (float(q & 3u) - ((hb & 1u) != 0u ? 0.0f : 4.0f));
        out[2 * i + 1] = d * (float((q >> 8) & 3u) - (((hb >> 8) & 1u) != 0u ? 0.0f : 4.0f));
    }
}

// Q5_K: Q4_K's nibbles plus bit j of qh[l] (qh at offset 16, qs at 48: ushort reads).
static inline void fg_dequant16_q5_K(device const char* row, int blk, int h, thread float* out) {
    device const block_q5_K* b = (device const block_q5_K*)row + blk / 8;
    const int j = blk % 8;
    float sc, m;
    fg_q4_K_scale_min(b->scales, j, sc, m);
    const float d = fg_f16_to_f32(b->d) * sc, dm = fg_f16_to_f32(b->dmin) * m;
    device const ushort* q2 = (device const ushort*)(b->qs + 32 * (j / 2) + 16 * h);
    device const ushort* h2 = (device const ushort*)(b->qh + 16 * h);
    const uint shift = 4 * (j % 2);
    for (int i = 0; i < 8; ++i) {
        const uint q = q2[i] >> shift, hb = uint(h2[i]) >> j;
        out[2 * i] = d * float((q & 0xFu) | ((hb & 1u) << 4)) - dm;
        out[2 * i + 1] = d * float(((q >> 8) & 0xFu) | (((hb >> 8) & 1u) << 4)) - dm;
    }
}
static inline void fg_dequant16_q6_K(device const char* row, int blk, int h, thread float* out) {
    device const block_q6_K* b = (device const block_q6_K*)row + blk / 8;
    const int c0 = 32 * (blk % 8) + 16 * h;  // first weight
    const int half = c0 / 128, quarter = (c0 % 128) / 32, l0 = c0 % 32;
    const float d = fg_f16_to_f32(b->d) * float(b->scales[c0 / 16]);
    device const ushort* ql = (device const ushort*)(b->ql + 64 * half + 32 * (quarter & 1) + l0);
    device const ushort* qh = (device const ushort*)(b->qh + 32 * half + l0);
    const uint lshift = quarter < 2 ? 0u : 4u, hshift = 2u * uint(quarter);
    for (int i = 0; i < 8; ++i) {
        const uint l = uint(ql[i]) >> lshift, hb = uint(qh[i]) >> hshift;
        out[2 * i] = d * (float((l & 0xFu) | ((hb & 3u) << 4)) - 32.0f);
        out[2 * i + 1] = d * (float(((l >> 8) & 0xFu) | (((hb >> 8) & 3u) << 4)) - 32.0f);
    }
}

#include "iq_lattice.h"

#endif  // FORGERT_DEQUANT_H
