// Weight decoding shared by the mul_mv, mul_mm and get_rows kernels.
// Blocks are only 2-byte aligned inside a row (18, 20 and 34 bytes), so quantized
// data is read through ushort loads, never wider.
#ifndef FORGERT_DEQUANT_H
#define FORGERT_DEQUANT_H

#include "kernel_args.h"

// quant_blocks.h types the block scales as `half` under MSL; a translator that does not
// define __METAL_VERSION__ leaves them as raw uint16_t bits. Both read correctly here.
static inline float fg_f16_to_f32(half h) { return float(h); }
static inline float fg_f16_to_f32(ushort bits) { return float(as_type<half>(bits)); }

static inline float fg_bf16_to_f32(ushort bits) { return as_type<float>(uint(bits) << 16); }

// Low and high nibble of a byte as floats.
static inline float fg_lo4(uint b) { return float(b & 0xFu); }
static inline float fg_hi4(uint b) { return float((b >> 4) & 0xFu); }

// Weight c (0 <= c < 32) of a quantized block, and element c of a float row.
static inline float fg_q8_0_at(device const block_q8_0* b, int c) {
    return fg_f16_to_f32(b->d) * float(b->qs[c]);
}
static inline float fg_q4_0_at(device const block_q4_0* b, int c) {
    const uint q = b->qs[c & 15];
    return fg_f16_to_f32(b->d) * ((c < 16 ? fg_lo4(q) : fg_hi4(q)) - 8.0f);
}
static inline float fg_q4_1_at(device const block_q4_1* b, int c) {
    const uint q = b->qs[c & 15];
    return fg_f16_to_f32(b->d) * (c < 16 ? fg_lo4(q) : fg_hi4(q)) + fg_f16_to_f32(b->m);
}

// Element c of a row of weight type `type` (any c < cols).
static inline float fg_weight_at(device const char* row, int type, int c) {
    switch (type) {
        case FG_F32: return ((device const float*)row)[c];
        case FG_F16: return float(((device const half*)row)[c]);
        case FG_BF16: return fg_bf16_to_f32(((device const ushort*)row)[c]);
        case FG_Q8_0: return fg_q8_0_at((device const block_q8_0*)row + c / FG_QK, c % FG_QK);
        case FG_Q4_0: return fg_q4_0_at((device const block_q4_0*)row + c / FG_QK, c % FG_QK);
        case FG_Q4_1: return fg_q4_1_at((device const block_q4_1*)row + c / FG_QK, c % FG_QK);
        default: return 0.0f;
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

#endif  // FORGERT_DEQUANT_H
