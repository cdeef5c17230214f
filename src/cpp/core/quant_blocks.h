// Weight types and quantization block layouts: the one source of truth for
// C++ (CPU backend, loaders) and the Metal Shading Language kernels.
//
// The numeric type ids match GGUF's ggml_type so a GGUF tensor's type field
// can be used as is. Every block packs QK = 32 consecutive weights of a row.
#ifndef FORGERT_QUANT_BLOCKS_H
#define FORGERT_QUANT_BLOCKS_H

#if defined(__METAL_VERSION__)
typedef half fg_half;            // IEEE binary16
typedef ushort fg_bf16;          // upper 16 bits of an f32
#define FG_STATIC_ASSERT(c, m)
#else
#include <stdint.h>
typedef uint16_t fg_half;        // raw binary16 bits on the host
typedef uint16_t fg_bf16;
#define FG_STATIC_ASSERT(c, m) static_assert(c, m)
#endif

#define FG_QK 32  // weights per quantization block

enum fg_dtype {
    FG_F32 = 0,
    FG_F16 = 1,
    FG_Q4_0 = 2,
    FG_Q4_1 = 3,
    FG_Q8_0 = 8,
    FG_I32 = 26,   // token ids, argmax results
    FG_BF16 = 30,
};

// Q8_0: w[i] = d * qs[i]
typedef struct {
    fg_half d;
    int8_t qs[FG_QK];
} block_q8_0;
FG_STATIC_ASSERT(sizeof(block_q8_0) == 34, "block_q8_0 is 34 bytes");

// Q4_0: w[i] = d * (q[i] - 8); qs[j] holds q[j] in its low nibble and q[j + 16] in its high nibble.
typedef struct {
    fg_half d;
    uint8_t qs[FG_QK / 2];
} block_q4_0;
FG_STATIC_ASSERT(sizeof(block_q4_0) == 18, "block_q4_0 is 18 bytes");

// Q4_1: w[i] = d * q[i] + m; same nibble order as Q4_0.
typedef struct {
    fg_half d;
    fg_half m;
    uint8_t qs[FG_QK / 2];
} block_q4_1;
FG_STATIC_ASSERT(sizeof(block_q4_1) == 20, "block_q4_1 is 20 bytes");

#endif  // FORGERT_QUANT_BLOCKS_H
