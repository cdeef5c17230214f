// The decode GEMV's parts: each weight type's dot product over half a 32-weight block
// (mul_mv.metal's direct loads: lanes pair up on a block), and, shared with mul_mv_staged.metal
// (weights and x through threadgroup memory; its dots: mul_mv_parts.h), the rows a simdgroup
// owns, the final reduction and store, and a mixture-of-experts slot's rows. One simdgroup of
// mul_mv.metal owns MV_NR rows.
#ifndef FORGERT_MUL_MV_H
#define FORGERT_MUL_MV_H

#include "dequant.h"

#define MV_NR FG_MV_ROWS_PER_SIMDGROUP

// Eight x values starting at p, with float4 loads where rows are aligned.
template <typename S>
static inline void load_x8(fg_ptr<S, float> p, bool vec4, thread float* xv) {
    if (vec4) {
        const float4 a = *((fg_ptr<S, float4>)p);
        const float4 b = *((fg_ptr<S, float4>)(p + 4));
        xv[0] = a.x; xv[1] = a.y; xv[2] = a.z; xv[3] = a.w;
        xv[4] = b.x; xv[5] = b.y; xv[6] = b.z; xv[7] = b.w;
    } else {
        for (int i = 0; i < 8; ++i) xv[i] = p[i];
    }
}

// ---------------------------------------------------------------------------------
// Quantized weights. Lanes work in pairs on one block: lane parity `il` picks half
// of the block, so a simdgroup covers 16 blocks (512 weights) of a row per step.
// Each type says which 16 x values its half needs (load_x) and how to dot them, reading
// its blocks from address space S (fg_device_space); `window_bytes`: the bytes of
// FG_MV_WINDOW_BLOCKS 32-weight chunks (also the staged kernels' copy, mul_mv_parts.h).
// ---------------------------------------------------------------------------------

// What a weight type's reader is, for the kernels that take both: 32-weight blocks (the dot
// structs below), or float rows (f32_row, f16_row, bf16_row).
struct mv_block_layout {};
struct mv_float_layout {};

// Q4_0 / Q4_1: half il = bytes qs[8 il .. 8 il + 8): low nibbles are weights 8 il + j,
// high nibbles weights 16 + 8 il + j.
struct q4_x_layout {
    typedef mv_block_layout layout;
    template <typename S>
    static void load_x(fg_ptr<S, float> xb, int il, bool vec4, thread float* xv) {
        load_x8<S>(xb + 8 * il, vec4, xv);
        load_x8<S>(xb + 16 + 8 * il, vec4, xv + 8);
    }
    // sum_j lo_j * xv[j] + hi_j * xv[8 + j] over the 8 bytes at qs (2-byte aligned)
    template <typename S>
    static float nibble_dot(fg_ptr<S, uint8_t> qs, thread const float* xv) {
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)qs;
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i) {
            const uint q = q2[i];
            acc += float(q & 0xFu) * xv[2 * i] + float((q >> 8) & 0xFu) * xv[2 * i + 1];
            acc += float((q >> 4) & 0xFu) * xv[8 + 2 * i] + float((q >> 12) & 0xFu) * xv[8 + 2 * i + 1];
        }
        return acc;
    }
};

struct q4_0_dot : q4_x_layout {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS * sizeof(block_q4_0) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q4_0> b = (fg_ptr<S, block_q4_0>)row + blk;
        return fg_f16_to_f32(b->d) * (nibble_dot<S>(b->qs + 8 * il, xv) - 8.0f * xsum);
    }
};

struct q4_1_dot : q4_x_layout {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS * sizeof(block_q4_1) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q4_1> b = (fg_ptr<S, block_q4_1>)row + blk;
        return fg_f16_to_f32(b->d) * nibble_dot<S>(b->qs + 8 * il, xv) + fg_f16_to_f32(b->m) * xsum;
    }
};

// Q5_0 / Q5_1: Q4_0's nibble layout (half il: bytes qs[8 il .. 8 il + 8), weights 8 il + j
// and 16 + 8 il + j), each quant's fifth bit from qh; w = d (q - 16) / d q + m.
struct q5_x_layout : q4_x_layout {
    // sum_j q_j * xv[j] over this half's 16 quants
    template <typename S>
    static float quant_dot(fg_ptr<S, uint8_t> qh8, fg_ptr<S, uint8_t> qs, int il, thread const float* xv) {
        const uint qh = fg_q5_qh<S>(qh8);
        const uint hlo = qh >> (8 * il), hhi = qh >> (16 + 8 * il);  // bit j: weight 8 il + j / 16 + 8 il + j
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)(qs + 8 * il);
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i) {
            const uint q = q2[i];
            const int j = 2 * i;
            acc += float((q & 0xFu) | (((hlo >> j) & 1u) << 4)) * xv[j] +
                   float(((q >> 8) & 0xFu) | (((hlo >> (j + 1)) & 1u) << 4)) * xv[j + 1];
            acc += float(((q >> 4) & 0xFu) | (((hhi >> j) & 1u) << 4)) * xv[8 + j] +
                   float(((q >> 12) & 0xFu) | (((hhi >> (j + 1)) & 1u) << 4)) * xv[8 + j + 1];
        }
        return acc;
    }
};

struct q5_0_dot : q5_x_layout {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS * sizeof(block_q5_0) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q5_0> b = (fg_ptr<S, block_q5_0>)row + blk;
        return fg_f16_to_f32(b->d) * (quant_dot<S>(b->qh, b->qs, il, xv) - 16.0f * xsum);
    }
};

struct q5_1_dot : q5_x_layout {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS * sizeof(block_q5_1) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q5_1> b = (fg_ptr<S, block_q5_1>)row + blk;
        return fg_f16_to_f32(b->d) * quant_dot<S>(b->qh, b->qs, il, xv) + fg_f16_to_f32(b->m) * xsum;
    }
};

// IQ4_NL / IQ4_XS: Q4_0's nibble layout (half il: bytes qs[8 il .. 8 il + 8), read once as 4
// ushorts), each nibble naming a table value.
struct iq4_x_layout : q4_x_layout {
    template <typename S>
    static float value_dot(fg_ptr<S, uint8_t> qs, thread const float* xv) {
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)qs;
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i) {
            const uint q = q2[i];
            acc += fg_iq4_values[q & 0xFu] * xv[2 * i] + fg_iq4_values[(q >> 8) & 0xFu] * xv[2 * i + 1];
            acc += fg_iq4_values[(q >> 4) & 0xFu] * xv[8 + 2 * i] + fg_iq4_values[(q >> 12) & 0xFu] * xv[8 + 2 * i + 1];
        }
        return acc;
    }
};

struct iq4_nl_dot : iq4_x_layout {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS * sizeof(block_iq4_nl) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_iq4_nl> b = (fg_ptr<S, block_iq4_nl>)row + blk;
        return fg_f16_to_f32(b->d) * value_dot<S>(b->qs + 8 * il, xv);
    }
};

// MXFP4: IQ4_NL's layout with the E2M1 table and a power-of-two scale (17-byte blocks: byte reads).
struct mxfp4_dot : q4_x_layout {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS * sizeof(block_mxfp4) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_mxfp4> b = (fg_ptr<S, block_mxfp4>)row + blk;
        fg_ptr<S, uint8_t> qs = b->qs + 8 * il;
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const uint q = qs[i];
            acc += fg_mxfp4_values[q & 0xFu] * xv[i] + fg_mxfp4_values[q >> 4] * xv[8 + i];
        }
        return fg_mxfp4_half_scale(b->e) * acc;
    }
};

// IQ4_XS: chunk blk is sub-block blk % 8 of super-block blk / 8, laid out as an IQ4_NL block.
struct iq4_xs_dot : iq4_x_layout {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS / 8 * sizeof(block_iq4_xs) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_iq4_xs> b = (fg_ptr<S, block_iq4_xs>)row + blk / 8;
        const int j = blk % 8;
        return fg_f16_to_f32(b->d) * fg_iq4_xs_scale(b, j) * value_dot<S>(b->qs + 16 * j + 8 * il, xv);
    }
};

// Q8_0: half il = weights 16 il .. 16 il + 16.
struct q8_0_dot {
    typedef mv_block_layout layout;
    enum { window_bytes = FG_MV_WINDOW_BLOCKS * sizeof(block_q8_0) };
    template <typename S>
    static void load_x(fg_ptr<S, float> xb, int il, bool vec4, thread float* xv) {
        load_x8<S>(xb + 16 * il, vec4, xv);
        load_x8<S>(xb + 16 * il + 8, vec4, xv + 8);
    }
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q8_0> b = (fg_ptr<S, block_q8_0>)row + blk;
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)(b->qs + 16 * il);
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const char2 q = as_type<char2>(q2[i]);
            acc += float(q.x) * xv[2 * i] + float(q.y) * xv[2 * i + 1];
        }
        return fg_f16_to_f32(b->d) * acc;
    }
};

// K-quants: `blk` is a 32-weight chunk of the row (super-block blk / 8) and half il
// weights 16 il .. 16 il + 16 of it, as for Q8_0: one half of a Q4_K sub-block (scale
// sc, min m: d sc q - dmin m, the min through xsum), one whole Q6_K sub-block.
struct q4_K_dot : q8_0_dot {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS / 8 * sizeof(block_q4_K) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q4_K> b = (fg_ptr<S, block_q4_K>)row + blk / 8;
        const int j = blk % 8;
        float sc, m;
        fg_q4_K_scale_min(b->scales, j, sc, m);
        // weights of sub-block j: nibble j % 2 of qs[32 (j / 2) ..], this half 16 bytes of it,
        // read as 8 ushorts (qs is 2-byte aligned: blocks are 144 bytes, qs at offset 16)
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)(b->qs + 32 * (j / 2) + 16 * il);
        const uint shift = 4 * (j % 2);
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const uint q = q2[i] >> shift;
            acc += float(q & 0xFu) * xv[2 * i] + float((q >> 8) & 0xFu) * xv[2 * i + 1];
        }
        return fg_f16_to_f32(b->d) * sc * acc - fg_f16_to_f32(b->dmin) * m * xsum;
    }
};

// Q2_K: half il of chunk blk is one sub-block of 16 (scale and min, the min through xsum).
struct q2_K_dot : q8_0_dot {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS / 8 * sizeof(block_q2_K) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q2_K> b = (fg_ptr<S, block_q2_K>)row + blk / 8;
        const int c0 = 32 * (blk % 8) + 16 * il;
        const int half = c0 / 128, j = (c0 % 128) / 32, l0 = c0 % 32;
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)(b->qs + 32 * half + l0);
        const uint shift = 2u * uint(j);
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const uint q = uint(q2[i]) >> shift;
            acc += float(q & 3u) * xv[2 * i] + float((q >> 8) & 3u) * xv[2 * i + 1];
        }
        const uint s = b->scales[c0 / 16];
        return fg_f16_to_f32(b->d) * float(s & 15u) * acc - fg_f16_to_f32(b->dmin) * float(s >> 4) * xsum;
    }
};

// Q3_K: half il of chunk blk is one sub-block of 16 (as Q6_K): quants from qs (2 bits) and
// hmask (bit 2), at even offsets: ushort reads.
struct q3_K_dot : q8_0_dot {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS / 8 * sizeof(block_q3_K) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q3_K> b = (fg_ptr<S, block_q3_K>)row + blk / 8;
        const int c0 = 32 * (blk % 8) + 16 * il;
        const int half = c0 / 128, j = (c0 % 128) / 32, l0 = c0 % 32;
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)(b->qs + 32 * half + l0);
        fg_ptr<S, ushort> m2 = (fg_ptr<S, ushort>)(b->hmask + l0);
        const uint qshift = 2u * uint(j), hshift = uint(4 * half + j);
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const uint q = uint(q2[i]) >> qshift, hb = uint(m2[i]) >> hshift;
            acc += (float(q & 3u) - ((hb & 1u) != 0u ? 0.0f : 4.0f)) * xv[2 * i] +
                   (float((q >> 8) & 3u) - (((hb >> 8) & 1u) != 0u ? 0.0f : 4.0f)) * xv[2 * i + 1];
        }
        return fg_f16_to_f32(b->d) * fg_q3_K_scale(b->scales, c0 / 16) * acc;
    }
};

// Q5_K: Q4_K plus the fifth bit j of qh[l] (qh at offset 16: ushort reads).
struct q5_K_dot : q8_0_dot {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS / 8 * sizeof(block_q5_K) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q5_K> b = (fg_ptr<S, block_q5_K>)row + blk / 8;
        const int j = blk % 8;
        float sc, m;
        fg_q4_K_scale_min(b->scales, j, sc, m);
        fg_ptr<S, ushort> q2 = (fg_ptr<S, ushort>)(b->qs + 32 * (j / 2) + 16 * il);
        fg_ptr<S, ushort> h2 = (fg_ptr<S, ushort>)(b->qh + 16 * il);
        const uint shift = 4 * (j % 2);
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const uint q = q2[i] >> shift, hb = uint(h2[i]) >> j;
            acc += float((q & 0xFu) | ((hb & 1u) << 4)) * xv[2 * i] +
                   float(((q >> 8) & 0xFu) | (((hb >> 8) & 1u) << 4)) * xv[2 * i + 1];
        }
        return fg_f16_to_f32(b->d) * sc * acc - fg_f16_to_f32(b->dmin) * m * xsum;
    }
};

struct q6_K_dot : q8_0_dot {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS / 8 * sizeof(block_q6_K) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, block_q6_K> b = (fg_ptr<S, block_q6_K>)row + blk / 8;
        const int c0 = 32 * (blk % 8) + 16 * il;  // first weight of the sub-block
        const int h = c0 / 128, quarter = (c0 % 128) / 32, l0 = c0 % 32;
        // 8 ushorts each of ql and qh (2-byte aligned: 210-byte blocks, even offsets)
        fg_ptr<S, ushort> ql = (fg_ptr<S, ushort>)(b->ql + 64 * h + 32 * (quarter & 1) + l0);
        fg_ptr<S, ushort> qh = (fg_ptr<S, ushort>)(b->qh + 32 * h + l0);
        const uint lshift = quarter < 2 ? 0u : 4u, hshift = 2u * uint(quarter);
        float acc = 0.0f;
        for (int i = 0; i < 8; ++i) {
            const uint l = uint(ql[i]) >> lshift, hb = uint(qh[i]) >> hshift;
            acc += float((l & 0xFu) | ((hb & 3u) << 4)) * xv[2 * i];
            acc += float(((l >> 8) & 0xFu) | (((hb >> 8) & 3u) << 4)) * xv[2 * i + 1];
        }
        return fg_f16_to_f32(b->d) * float(b->scales[c0 / 16]) * (acc - 32.0f * xsum);
    }
};

// The lattice types (iq_lattice.h): half il of chunk blk, weights 16 il .. 16 il + 16 as for
// Q8_0, is one `sixteen` (its fields read once) under one scale.
template <typename L>
struct lattice_dot : q8_0_dot {
    enum { window_bytes = FG_MV_WINDOW_BLOCKS / 8 * sizeof(typename L::block) };
    template <typename S>
    static float dot(fg_ptr<S, char> row, int blk, int il, thread const float* xv, float xsum) {
        fg_ptr<S, typename L::block> b = (fg_ptr<S, typename L::block>)row + blk / 8;
        float v[16];
        const float scale = L::template sixteen<S>(b, 2 * (blk % 8) + il, v);
        float acc = 0.0f;
        for (int i = 0; i < 16; ++i) acc += v[i] * xv[i];
        return scale * acc;
    }
};
typedef lattice_dot<iq2_xxs_lattice> iq2_xxs_dot;
typedef lattice_dot<iq2_xs_lattice> iq2_xs_dot;
typedef lattice_dot<iq2_s_lattice> iq2_s_dot;
typedef lattice_dot<iq3_xxs_lattice> iq3_xxs_dot;
typedef lattice_dot<iq3_s_lattice> iq3_s_dot;
typedef lattice_dot<iq1_s_lattice> iq1_s_dot;
typedef lattice_dot<iq1_m_lattice> iq1_m_dot;

// Float weights (F32, F16, BF16): element c of a row, and 4 from c (4-wide loads: aligned rows).
struct f32_row {
    typedef mv_float_layout layout;
    enum { window_bytes = 0 };
    static float4 load4(device const char* r, int c) { return *((device const float4*)(r + 4 * c)); }
    static float load1(device const char* r, int c) { return ((device const float*)r)[c]; }
};
struct f16_row {
    typedef mv_float_layout layout;
    enum { window_bytes = 0 };
    static float4 load4(device const char* r, int c) { return float4(*((device const half4*)(r + 2 * c))); }
    static float load1(device const char* r, int c) { return float(((device const half*)r)[c]); }
};
struct bf16_row {
    typedef mv_float_layout layout;
    enum { window_bytes = 0 };
    // one 8-byte load (a ushort4 load compiled to four 2-byte ones: each a quarter of its lines)
    static float4 load4(device const char* r, int c) {
        const ulong u = *((device const ulong*)(r + 2 * c));
        const uint lo = uint(u), hi = uint(u >> 32);
        return float4(as_type<float>(lo << 16), as_type<float>(lo & 0xFFFF0000u),
                      as_type<float>(hi << 16), as_type<float>(hi & 0xFFFF0000u));
    }
    static float load1(device const char* r, int c) { return fg_bf16_to_f32(((device const ushort*)r)[c]); }
};

// ---------------------------------------------------------------------------------
// One body for every kernel: NW weight matrices (1, or 2 for gate and up) of the same
// shape, MV_NR rows each, dotted with one x row; lane sums stay private until the end.
// ---------------------------------------------------------------------------------

// Rows past the end repeat the last row (valid memory); their sums are dropped. NR rows of each
// matrix: wrow[r] of w, wrow[NR + r] of w2 (NW == 2).
template <int NW, int NR = MV_NR>
static inline void mv_row_pointers(constant mul_mv_args& args, device const char* w, device const char* w2, int r0,
                                   device const char* thread* wrow) {
    for (int r = 0; r < NR; ++r) {
        const int row = min(r0 + r, args.rows - 1);
        wrow[r] = w + row * args.w_stride;
        if (NW == 2) wrow[NR + r] = w2 + row * args.w_stride;
    }
}

// Reduces the lane sums and writes rows r0 .. r0 + nr (nr <= NR) of token row o: w x (NW == 1,
// added to o with accumulate) or silu(gate) * up (NW == 2; gelu_tanh(gate) * up with args.gelu).
template <int NW, int NR = MV_NR>
static inline void mv_store(constant mul_mv_args& args, thread float* sum, device float* o, int r0, ushort tiisg,
                            int nr = NR) {
    for (int r = 0; r < NR; ++r) {
        if (r >= nr) break;  // uniform in the simdgroup
        const float s = simd_sum(sum[r]);
        if (NW == 2) {
            const float u = simd_sum(sum[NR + r]);
            const float act = args.gelu != 0
                ? 0.5f * s * (1.0f + precise::tanh(0.7978845608028654f * (s + 0.044715f * s * s * s)))
                : s / (1.0f + exp(-s));
            if (tiisg == 0 && r0 + r < args.rows) o[r0 + r] = act * u;
        } else if (tiisg == 0 && r0 + r < args.rows) {
            o[r0 + r] = args.accumulate != 0 ? o[r0 + r] + s : s;
        }
    }
}

// The selected expert's matrix and the slot's x and out rows; valid false for an id out of
// range (nothing is read: the slot's outputs are zeros).
struct mv_id_rows {
    device const char* w;
    ulong w_offset;  // bytes from the slot-0 expert's first byte to w (where the lines fall)
    device const float* x;
    device float* o;
    bool valid;
};

static inline mv_id_rows mv_id_slot(constant mul_mv_id_args& args, device const char* w, device const char* x,
                                    device char* out, device const char* ids, int slot) {
    const int i = slot / args.k, j = slot % args.k;
    const int e = ((device const int*)(ids + i * args.ids_stride))[j];
    mv_id_rows r;
    r.x = (device const float*)(x + (args.x_per_slot != 0 ? slot : i) * args.mv.x_stride);
    r.o = (device float*)(out + slot * args.mv.out_stride);
    r.w_offset = (uint64_t)max(e, 0) * args.expert_stride;
    r.w = w + r.w_offset;
    r.valid = e >= 0 && e < args.n_expert;
    return r;
}

#endif  // FORGERT_MUL_MV_H
