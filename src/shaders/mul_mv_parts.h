// The staged GEMVs' readers of a row window copied into threadgroup memory (mul_mv_staged.metal):
// each weight type's dot product over one lane's part of a 32-weight chunk (issue 14, threadgroup
// bank conflicts). mul_mv.h's readers give a lane pair a block each, so one read instruction of
// the simdgroup touches 16 blocks spread over 272-544 bytes, and words 32 apart share one of the
// 32 banks (4 bytes each): 1.3-2.0x the conflict-free wavefronts. Here `lanes` lanes (8; Q8_0 16)
// share a chunk, lane `part` reading one or two ushorts of it, so an instruction covers
// 32 / lanes consecutive chunks: the fields it reads lie within 128 bytes (32 words), each word
// in its own bank, whatever the copy's alignment. A lane reads x for its weights only
// (FG_QK / lanes of them per chunk) and, over the window's steps, 16 values in all, as before.
//
// Blocks whose size is a multiple of 4 bytes (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K, IQ4_XS) lie 4-byte
// aligned in a copy whose row starts so (a4: the device row's address % 4 == 0, which the copy
// keeps); there a lane reads adjacent 2-byte fields (d and m, dmin or scales_h) and 4 quant bytes
// as one uint, else as ushorts (mv_read4's path for Q3_K and Q6_K, whose super-blocks are 2-byte
// aligned; for these types only a weight buffer at an address 2 mod 4 takes it): fewer read
// instructions, each one wavefront.
//
// Parts: the 4-bit block types' lane p takes qs bytes 2p, 2p + 1 (weights 2p, 2p + 1 from the low
// nibbles, 16 + 2p, 17 + 2p from the high); Q8_0's lane p weights 2p, 2p + 1; the K-quants' lane p
// weights 4p .. 4p + 3 of the chunk (whose quants lie in 4 consecutive bytes of each array).
#ifndef FORGERT_MUL_MV_PARTS_H
#define FORGERT_MUL_MV_PARTS_H

#include "mul_mv.h"
#include "stage_bytes.h"

typedef threadgroup const char* mv_tg_row;

// x of a 4-bit part: x[2p], x[2p + 1], x[16 + 2p], x[17 + 2p] (xb: the chunk's 32 x in threadgroup
// memory, 16-byte aligned: float2 loads).
struct mv_nibble_part {
    typedef mv_block_layout layout;
    enum { lanes = 8 };
    static void load_x(threadgroup const float* xb, int p, thread float* xv) {
        const float2 lo = *((threadgroup const float2*)(xb + 2 * p));
        const float2 hi = *((threadgroup const float2*)(xb + 16 + 2 * p));
        xv[0] = lo.x; xv[1] = lo.y; xv[2] = hi.x; xv[3] = hi.y;
    }
    // the nibbles of qs bytes 2p (low byte of q) and 2p + 1 as weights in load_x's order
    static float nibbles_dot(uint q, thread const float* xv) {
        return float(q & 0xFu) * xv[0] + float((q >> 8) & 0xFu) * xv[1] + float((q >> 4) & 0xFu) * xv[2] +
               float((q >> 12) & 0xFu) * xv[3];
    }
    static float table_dot(constant float* t, uint q, thread const float* xv) {
        return t[q & 0xFu] * xv[0] + t[(q >> 8) & 0xFu] * xv[1] + t[(q >> 4) & 0xFu] * xv[2] +
               t[(q >> 12) & 0xFu] * xv[3];
    }
    // Q5_0 / Q5_1: the four quants with their fifth bits (bit j of qh for weight j)
    static float quints_dot(uint q, uint qh, int p, thread const float* xv) {
        const uint lo = qh >> (2 * p), hi = qh >> (16 + 2 * p);
        return float((q & 0xFu) | ((lo & 1u) << 4)) * xv[0] + float(((q >> 8) & 0xFu) | (((lo >> 1) & 1u) << 4)) * xv[1] +
               float(((q >> 4) & 0xFu) | ((hi & 1u) << 4)) * xv[2] +
               float(((q >> 12) & 0xFu) | (((hi >> 1) & 1u) << 4)) * xv[3];
    }
};

static inline uint mv_part_ushort(threadgroup const uint8_t* qs, int p) { return ((threadgroup const ushort*)qs)[p]; }

// 4 bytes at a (2-byte aligned; 4-byte aligned where a4), byte i in bits 8i ..
static inline uint mv_read4(threadgroup const uint8_t* a, bool a4) {
    if (a4) return *((threadgroup const uint*)a);
    threadgroup const ushort* h = (threadgroup const ushort*)a;
    return uint(h[0]) | (uint(h[1]) << 16);
}
// Two adjacent f16 fields (d and m / dmin) at a, as floats.
static inline float2 mv_read_f16x2(threadgroup const uint8_t* a, bool a4) {
    const uint u = mv_read4(a, a4);
    return float2(fg_f16_to_f32(ushort(u & 0xFFFFu)), fg_f16_to_f32(ushort(u >> 16)));
}

struct q4_0_part : mv_nibble_part {
    enum { window_bytes = q4_0_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q4_0* b = (threadgroup const block_q4_0*)row + c;
        return fg_f16_to_f32(b->d) * (nibbles_dot(mv_part_ushort(b->qs, p), xv) - 8.0f * xsum);
    }
};

struct q4_1_part : mv_nibble_part {
    enum { window_bytes = q4_1_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q4_1* b = (threadgroup const block_q4_1*)row + c;
        const float2 dm = mv_read_f16x2((threadgroup const uint8_t*)b, a4);
        return dm.x * nibbles_dot(mv_part_ushort(b->qs, p), xv) + dm.y * xsum;
    }
};

struct q5_0_part : mv_nibble_part {
    enum { window_bytes = q5_0_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q5_0* b = (threadgroup const block_q5_0*)row + c;
        const uint qh = fg_q5_qh<fg_threadgroup_space>(b->qh);
        return fg_f16_to_f32(b->d) * (quints_dot(mv_part_ushort(b->qs, p), qh, p, xv) - 16.0f * xsum);
    }
};

struct q5_1_part : mv_nibble_part {
    enum { window_bytes = q5_1_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q5_1* b = (threadgroup const block_q5_1*)row + c;
        const float2 dm = mv_read_f16x2((threadgroup const uint8_t*)b, a4);
        return dm.x * quints_dot(mv_part_ushort(b->qs, p), mv_read4(b->qh, a4), p, xv) + dm.y * xsum;
    }
};

struct iq4_nl_part : mv_nibble_part {
    enum { window_bytes = iq4_nl_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_iq4_nl* b = (threadgroup const block_iq4_nl*)row + c;
        return fg_f16_to_f32(b->d) * table_dot(fg_iq4_values, mv_part_ushort(b->qs, p), xv);
    }
};

// IQ4_XS: chunk c is sub-block c % 8 of super-block c / 8, laid out as an IQ4_NL block.
struct iq4_xs_part : mv_nibble_part {
    enum { window_bytes = iq4_xs_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_iq4_xs* b = (threadgroup const block_iq4_xs*)row + c / 8;
        const int j = c % 8;
        const uint u = mv_read4((threadgroup const uint8_t*)b, a4);  // d, scales_h
        const uint low = (uint(b->scales_l[j / 2]) >> (4 * (j % 2))) & 0xFu;
        const uint high = (u >> (16 + 2 * j)) & 3u;  // as fg_iq4_xs_scale
        const float scale = float(int(low | (high << 4)) - 32);
        return fg_f16_to_f32(ushort(u & 0xFFFFu)) * scale * table_dot(fg_iq4_values, mv_part_ushort(b->qs + 16 * j, p), xv);
    }
};

// MXFP4: 17-byte blocks, qs at odd offsets: two byte reads.
struct mxfp4_part : mv_nibble_part {
    enum { window_bytes = mxfp4_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_mxfp4* b = (threadgroup const block_mxfp4*)row + c;
        const uint q = uint(b->qs[2 * p]) | (uint(b->qs[2 * p + 1]) << 8);
        return fg_mxfp4_half_scale(b->e) * table_dot(fg_mxfp4_values, q, xv);
    }
};

// Q8_0: 16 lanes a block (a 34-byte block each 2 lanes' ushort: 4 blocks would span 136 bytes),
// lane p weights 2p, 2p + 1.
struct q8_0_part {
    typedef mv_block_layout layout;
    enum { lanes = 16, window_bytes = q8_0_dot::window_bytes };
    static void load_x(threadgroup const float* xb, int p, thread float* xv) {
        const float2 v = *((threadgroup const float2*)(xb + 2 * p));
        xv[0] = v.x; xv[1] = v.y;
    }
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q8_0* b = (threadgroup const block_q8_0*)row + c;
        const char2 q = as_type<char2>(((threadgroup const ushort*)b->qs)[p]);
        return fg_f16_to_f32(b->d) * (float(q.x) * xv[0] + float(q.y) * xv[1]);
    }
};

// K-quants: chunk c is 32-weight sub-block c % 8 of super-block c / 8; lane p weights l = 4p ..
// 4p + 3 of it, x[4p .. 4p + 3]. Super-blocks of 110 and 210 bytes leave arrays 2-byte aligned in
// the window: each array's 4 bytes are read as two ushorts, into one uint.
struct mv_k_part {
    typedef mv_block_layout layout;
    enum { lanes = 8 };
    static void load_x(threadgroup const float* xb, int p, thread float* xv) {
        const float4 v = *((threadgroup const float4*)(xb + 4 * p));
        xv[0] = v.x; xv[1] = v.y; xv[2] = v.z; xv[3] = v.w;
    }
    // bytes 4p .. 4p + 3 of an array (2-byte aligned; 4-byte aligned where a4), byte i in bits 8i ..
    static uint bytes4(threadgroup const uint8_t* a, int p, bool a4) { return mv_read4(a + 4 * p, a4); }
};

struct q4_K_part : mv_k_part {
    enum { window_bytes = q4_K_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q4_K* b = (threadgroup const block_q4_K*)row + c / 8;
        const int j = c % 8;
        float sc, m;
        fg_q4_K_scale_min(b->scales, j, sc, m);
        const uint q = bytes4(b->qs + 32 * (j / 2), p, a4) >> (4 * (j % 2));  // nibble j % 2 of each byte
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i) acc += float((q >> (8 * i)) & 0xFu) * xv[i];
        const float2 dm = mv_read_f16x2((threadgroup const uint8_t*)b, a4);  // d, dmin
        return dm.x * sc * acc - dm.y * m * xsum;
    }
};

struct q5_K_part : mv_k_part {
    enum { window_bytes = q5_K_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q5_K* b = (threadgroup const block_q5_K*)row + c / 8;
        const int j = c % 8;
        float sc, m;
        fg_q4_K_scale_min(b->scales, j, sc, m);
        const uint q = bytes4(b->qs + 32 * (j / 2), p, a4) >> (4 * (j % 2));
        const uint h = bytes4(b->qh, p, a4) >> j;  // bit j of qh[l]
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i) acc += float(((q >> (8 * i)) & 0xFu) | (((h >> (8 * i)) & 1u) << 4)) * xv[i];
        const float2 dm = mv_read_f16x2((threadgroup const uint8_t*)b, a4);  // d, dmin
        return dm.x * sc * acc - dm.y * m * xsum;
    }
};

// Q2_K: chunk j = c % 8 is 2-bit field j % 4 of qs[32 (j / 4) ..]; lane p's 4 weights lie in
// sub-block (of 16) 2j + p / 4: its scale and min.
struct q2_K_part : mv_k_part {
    enum { window_bytes = q2_K_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q2_K* b = (threadgroup const block_q2_K*)row + c / 8;
        const int j = c % 8;
        const uint q = bytes4(b->qs + 32 * (j / 4), p, a4) >> (2 * (j % 4));
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i) acc += float((q >> (8 * i)) & 3u) * xv[i];
        const uint s = b->scales[2 * j + p / 4];
        const float2 dm = mv_read_f16x2((threadgroup const uint8_t*)&b->d, a4);  // d, dmin (offset 80)
        return dm.x * float(s & 15u) * acc - dm.y * float(s >> 4) * xsum;
    }
};

// Q3_K: Q2_K's quants (2 bits) with bit 4 (j / 4) + j % 4 of hmask[l] (clear: minus 4).
struct q3_K_part : mv_k_part {
    enum { window_bytes = q3_K_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q3_K* b = (threadgroup const block_q3_K*)row + c / 8;
        const int j = c % 8;
        const uint q = bytes4(b->qs + 32 * (j / 4), p, false) >> (2 * (j % 4));  // 110-byte blocks
        const uint h = bytes4(b->hmask, p, false) >> (4 * (j / 4) + j % 4);
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i)
            acc += (float((q >> (8 * i)) & 3u) - (((h >> (8 * i)) & 1u) != 0u ? 0.0f : 4.0f)) * xv[i];
        return fg_f16_to_f32(b->d) * fg_q3_K_scale(b->scales, 2 * j + p / 4) * acc;
    }
};

// Q6_K: chunk j = c % 8 is quarter j % 4 of half j / 4: low nibbles (quarters 0, 1) or high
// (2, 3) of ql[64 (j / 4) + 32 (j % 2) ..], 2-bit field j % 4 of qh[32 (j / 4) ..].
struct q6_K_part : mv_k_part {
    enum { window_bytes = q6_K_dot::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const block_q6_K* b = (threadgroup const block_q6_K*)row + c / 8;
        const int j = c % 8, h = j / 4, quarter = j % 4;
        const uint l = bytes4(b->ql + 64 * h + 32 * (quarter & 1), p, false) >> (quarter < 2 ? 0u : 4u);  // 210-byte
        const uint hb = bytes4(b->qh + 32 * h, p, false) >> (2 * quarter);
        float acc = 0.0f;
        for (int i = 0; i < 4; ++i) acc += float(((l >> (8 * i)) & 0xFu) | (((hb >> (8 * i)) & 3u) << 4)) * xv[i];
        return fg_f16_to_f32(b->d) * float(b->scales[2 * j + p / 4]) * (acc - 32.0f * xsum);
    }
};

// The lattice types (iq_lattice.h): lane p's weights 4p .. 4p + 3 of chunk c are quad
// 8 (c % 8) + p of its super-block.
template <typename L>
struct lattice_part : mv_k_part {
    enum { window_bytes = lattice_dot<L>::window_bytes };
    static float dot(mv_tg_row row, int c, int p, thread const float* xv, float xsum, bool a4) {
        threadgroup const typename L::block* b = (threadgroup const typename L::block*)row + c / 8;
        float v[4];
        const float scale = L::template quad<fg_threadgroup_space>(b, 8 * (c % 8) + p, v);
        return scale * (v[0] * xv[0] + v[1] * xv[1] + v[2] * xv[2] + v[3] * xv[3]);
    }
};
typedef lattice_part<iq2_xxs_lattice> iq2_xxs_part;
typedef lattice_part<iq2_xs_lattice> iq2_xs_part;
typedef lattice_part<iq2_s_lattice> iq2_s_part;
typedef lattice_part<iq3_xxs_lattice> iq3_xxs_part;
typedef lattice_part<iq3_s_lattice> iq3_s_part;
typedef lattice_part<iq1_s_lattice> iq1_s_part;
typedef lattice_part<iq1_m_lattice> iq1_m_part;

#endif  // FORGERT_MUL_MV_PARTS_H
