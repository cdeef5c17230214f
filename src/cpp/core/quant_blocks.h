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
#define FG_QK_K 256  // weights per K-quant super-block
#define FG_K_SCALE_SIZE 12  // packed 6-bit scales and mins of Q4_K

enum fg_dtype {
    FG_F32 = 0,
    FG_F16 = 1,
    FG_Q4_0 = 2,
    FG_Q4_1 = 3,
    FG_Q5_0 = 6,
    FG_Q5_1 = 7,
    FG_Q8_0 = 8,
    FG_Q2_K = 10,
    FG_Q3_K = 11,
    FG_Q4_K = 12,
    FG_Q5_K = 13,
    FG_Q6_K = 14,
    FG_IQ2_XXS = 16,
    FG_IQ2_XS = 17,
    FG_IQ3_XXS = 18,
    FG_IQ1_S = 19,
    FG_IQ4_NL = 20,
    FG_IQ3_S = 21,
    FG_IQ2_S = 22,
    FG_IQ4_XS = 23,
    FG_IQ1_M = 29,
    FG_I32 = 26,   // token ids, argmax results
    FG_BF16 = 30,
    FG_MXFP4 = 39,
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

// Q5_0: w[i] = d * (q[i] - 16), q 5 bits: the low 4 in nibbles as Q4_0 (qs[j] holds weights
// j and j + 16), the fifth in bit i of qh read as a little-endian uint32.
typedef struct {
    fg_half d;
    uint8_t qh[4];
    uint8_t qs[FG_QK / 2];
} block_q5_0;
FG_STATIC_ASSERT(sizeof(block_q5_0) == 22, "block_q5_0 is 22 bytes");

// Q5_1: w[i] = d * q[i] + m; q as in Q5_0.
typedef struct {
    fg_half d;
    fg_half m;
    uint8_t qh[4];
    uint8_t qs[FG_QK / 2];
} block_q5_1;
FG_STATIC_ASSERT(sizeof(block_q5_1) == 24, "block_q5_1 is 24 bytes");

// Q2_K: 16 sub-blocks of 16; sub-block i: w = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4),
// q 2 bits: in each half h (128 weights), weight 32 j + l (j < 4, l < 32) is qs[32 h + l] >> 2 j,
// sub-block 8 h + 2 j + l / 16 (as Q3_K).
typedef struct {
    uint8_t scales[FG_QK_K / 16];
    uint8_t qs[FG_QK_K / 4];
    fg_half d;
    fg_half dmin;
} block_q2_K;
FG_STATIC_ASSERT(sizeof(block_q2_K) == 84, "block_q2_K is 84 bytes");

// Q3_K: 16 sub-blocks of 16; sub-block i: w = d * (s[i] - 32) * (q - 4), s 6 bits (low 4 in
// scales[i] (i < 8) or scales[i - 8] >> 4, high 2 in scales[8 + i % 4] >> 2 (i / 4)), q 3 bits.
// In each half h (128 weights), weight 32 j + l (j < 4, l < 32) has bits 0-1 in qs[32 h + l]
// >> 2 j and bit 2 in hmask[l] bit 4 h + j; it is sub-block 8 h + 2 j + l / 16.
typedef struct {
    uint8_t hmask[FG_QK_K / 8];
    uint8_t qs[FG_QK_K / 4];
    uint8_t scales[12];
    fg_half d;
} block_q3_K;
FG_STATIC_ASSERT(sizeof(block_q3_K) == 110, "block_q3_K is 110 bytes");

// Q4_K: 8 sub-blocks of 32; sub-block j: w[i] = d * sc[j] * q[i] - dmin * m[j], q 4 bits,
// sc and m 6 bits, packed in `scales`: for j < 4 sc[j] = scales[j] & 63 and
// m[j] = scales[j + 4] & 63; for j >= 4 the low 4 bits come from scales[j + 4]
// (sc: low nibble, m: high nibble) and the high 2 bits from the top bits of
// scales[j - 4] (sc) and scales[j] (m). Weights 64k .. 64k + 31 are the low nibbles
// of qs[32k .. 32k + 31] (sub-block 2k), weights 64k + 32 .. 64k + 63 their high nibbles.
typedef struct {
    fg_half d;
    fg_half dmin;
    uint8_t scales[FG_K_SCALE_SIZE];
    uint8_t qs[FG_QK_K / 2];
} block_q4_K;
FG_STATIC_ASSERT(sizeof(block_q4_K) == 144, "block_q4_K is 144 bytes");

// Q5_K: Q4_K with a fifth quant bit, w[i] = d * sc[j] * q[i] - dmin * m[j], q 0..31: the low 4
// bits as in Q4_K (sub-block j: nibble j % 2 of qs[32 (j / 2) + l]), bit 4 is bit j of qh[l].
typedef struct {
    fg_half d;
    fg_half dmin;
    uint8_t scales[FG_K_SCALE_SIZE];
    uint8_t qh[FG_QK_K / 8];
    uint8_t qs[FG_QK_K / 2];
} block_q5_K;
FG_STATIC_ASSERT(sizeof(block_q5_K) == 176, "block_q5_K is 176 bytes");

// Q6_K: 16 sub-blocks of 16; sub-block j: w[i] = d * scales[j] * (q[i] - 32), q 6 bits:
// low 4 bits in ql, high 2 bits in qh. In each half h (128 weights; ql + 64h, qh + 32h),
// for l < 32: weight l is ql[l] low nibble | qh[l] bits 0-1, weight l + 32 ql[l + 32]
// low | qh[l] bits 2-3, weight l + 64 ql[l] high | qh[l] bits 4-5, weight l + 96
// ql[l + 32] high | qh[l] bits 6-7.
typedef struct {
    uint8_t ql[FG_QK_K / 2];
    uint8_t qh[FG_QK_K / 4];
    int8_t scales[FG_QK_K / 16];
    fg_half d;
} block_q6_K;
FG_STATIC_ASSERT(sizeof(block_q6_K) == 210, "block_q6_K is 210 bytes");

// IQ4_NL and IQ4_XS quants are 4-bit indices into one non-linear table of int8 values (denser
// near zero, where most weights lie). Each side declares its own array from this list.
#define FG_IQ4_NL_VALUES {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}

// IQ4_NL: w[i] = d * values[q[i]]; q's nibble order as Q4_0 (qs[j]: q[j] low, q[j + 16] high).
typedef struct {
    fg_half d;
    uint8_t qs[FG_QK / 2];
} block_iq4_nl;
FG_STATIC_ASSERT(sizeof(block_iq4_nl) == 18, "block_iq4_nl is 18 bytes");

// IQ4_XS: 8 sub-blocks of 32; sub-block j: w[i] = d * (ls[j] - 32) * values[q[i]], ls 6 bits:
// low 4 in scales_l[j / 2] >> 4 (j % 2), high 2 in scales_h >> 2 j. Sub-block j's quants are
// qs[16 j .. 16 j + 16) in IQ4_NL's (Q4_0's) nibble order.
typedef struct {
    fg_half d;
    uint16_t scales_h;
    uint8_t scales_l[FG_QK_K / 64];
    uint8_t qs[FG_QK_K / 2];
} block_iq4_xs;
FG_STATIC_ASSERT(sizeof(block_iq4_xs) == 136, "block_iq4_xs is 136 bytes");

// The lattice types IQ1_S .. IQ3_S: 256-weight super-blocks whose weights come in groups of 8
// (IQ2, IQ1) or 4 (IQ3) that index one point of a fixed codebook (iq_grids.h), times a sign per
// weight and a scale per 32 (or 16) weights. Every weight is a small integer times its scale,
//   IQ2_*:   w = d * (2 ls + 1) / 8 * (+-g),  g in {8, 25, 43}          (ls 4 bits)
//   IQ3_XXS: w = d * (2 ls + 1) / 4 * (+-g),  g in {4, 12, ..., 62}     (ls 4 bits)
//   IQ3_S:   w = d * (2 ls + 1)     * (+-g),  g in {1, 3, ..., 15}      (ls 4 bits)
//   IQ1_*:   w = d * (2 ls + 1) / 8 * (8 g + delta), g in {-1, 0, 1}, delta = +-1 (ls 3 bits)
// so the CPU kernels dot int8 quants with the activations exactly, as for IQ4_XS. Sign indices
// of 7 bits (IQ2_XXS, IQ2_XS, IQ3_XXS) name 8 signs: bit k for value k, the eighth the parity
// (FG_IQ2_KSIGNS); a set sign bit negates. Layouts as ggml's (ggml-common.h) byte for byte.

// IQ2_XXS: per 32 weights j, qs[4 j .. 4 j + 4) as two u32 words: word 0's bytes index the four
// 8-weight points (FG_IQ2XXS_GRID); word 1 holds four 7-bit sign indices (bits 7 k ..) and ls
// in bits 28..31.
typedef struct {
    fg_half d;
    uint16_t qs[FG_QK_K / 8];
} block_iq2_xxs;
FG_STATIC_ASSERT(sizeof(block_iq2_xxs) == 66, "block_iq2_xxs is 66 bytes");

// IQ2_XS: qs[l] (l = 0..31, 8 weights each): a 9-bit point index (FG_IQ2XS_GRID), then a 7-bit
// sign index; ls per 16 weights: scales[j] low nibble for weights 32 j .. 32 j + 15, high
// nibble for the next 16.
typedef struct {
    fg_half d;
    uint16_t qs[FG_QK_K / 8];
    uint8_t scales[FG_QK_K / 32];
} block_iq2_xs;
FG_STATIC_ASSERT(sizeof(block_iq2_xs) == 74, "block_iq2_xs is 74 bytes");

// IQ2_S: qs[0..32) the low 8 bits of the 10-bit point indices (FG_IQ2S_GRID) of the 32 groups
// of 8, qs[32..64) their 8 sign bits each (no parity); qh[j] bits 2 k, 2 k + 1 the top two
// bits of group 4 j + k; scales as IQ2_XS (per 16).
typedef struct {
    fg_half d;
    uint8_t qs[FG_QK_K / 4];
    uint8_t qh[FG_QK_K / 32];
    uint8_t scales[FG_QK_K / 32];
} block_iq2_s;
FG_STATIC_ASSERT(sizeof(block_iq2_s) == 82, "block_iq2_s is 82 bytes");

// IQ3_XXS: qs[0..64) the 8-bit point indices of the 64 groups of 4 (FG_IQ3XXS_GRID); then 8
// u32 words, word j for weights 32 j ..: four 7-bit sign indices (each for 8 weights, bits
// 7 k ..) and ls in bits 28..31.
typedef struct {
    fg_half d;
    uint8_t qs[3 * FG_QK_K / 8];
} block_iq3_xxs;
FG_STATIC_ASSERT(sizeof(block_iq3_xxs) == 98, "block_iq3_xxs is 98 bytes");

// IQ3_S: qs the low 8 bits of the 9-bit point indices of the 64 groups of 4 (FG_IQ3S_GRID),
// qh[j] bit k the ninth bit of group 8 j + k; signs one bit per weight (byte i: weights
// 8 i .. 8 i + 7); ls per 32: scales[j] low nibble for weights 64 j .., high for 64 j + 32 ...
typedef struct {
    fg_half d;
    uint8_t qs[FG_QK_K / 4];
    uint8_t qh[FG_QK_K / 32];
    uint8_t signs[FG_QK_K / 8];
    uint8_t scales[FG_QK_K / 64];
} block_iq3_s;
FG_STATIC_ASSERT(sizeof(block_iq3_s) == 110, "block_iq3_s is 110 bytes");

// IQ1_S: per 32 weights j, qh[j] (u16): bits 3 k .. 3 k + 2 the top three bits of group 4 j + k's
// 11-bit point index (low 8 bits qs[4 j + k]; FG_IQ1S_GRID), ls in bits 12..14, and bit 15 the
// delta's sign (set: -1, else +1) for all 32.
typedef struct {
    fg_half d;
    uint8_t qs[FG_QK_K / 8];
    uint16_t qh[FG_QK_K / 32];
} block_iq1_s;
FG_STATIC_ASSERT(sizeof(block_iq1_s) == 50, "block_iq1_s is 50 bytes");

// IQ1_M: qs as IQ1_S's; qh[i] one nibble per group of 8 (low nibble group 2 i, high 2 i + 1):
// three top index bits, then the group's own delta sign (bit 3: set -1); ls per 16 weights,
// 3 bits each, four to a u16 of scales (bits 3 k .. 3 k + 2 of u16 w: weights 64 w + 16 k ..),
// and d (f16) in the four u16's top nibbles (u16 w's bits 12..15 are d's bits 4 w .. 4 w + 3).
typedef struct {
    uint8_t qs[FG_QK_K / 8];
    uint8_t qh[FG_QK_K / 16];
    uint8_t scales[FG_QK_K / 32];
} block_iq1_m;
FG_STATIC_ASSERT(sizeof(block_iq1_m) == 56, "block_iq1_m is 56 bytes");

// MXFP4 (OCP microscaling, gpt-oss's experts): w[i] = 2^(e - 127) * fp4(q[i]), fp4 an E2M1 value.
// Stored as llama.cpp does: values doubled to integers and the scale halved,
// w[i] = values[q[i]] * 2^(e - 128), q's nibble order as Q4_0 (qs[j]: q[j] low, q[j + 16] high).
#define FG_MXFP4_VALUES {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12}
typedef struct {
    uint8_t e;   // E8M0: a power of two, no sign or mantissa
    uint8_t qs[FG_QK / 2];
} block_mxfp4;
FG_STATIC_ASSERT(sizeof(block_mxfp4) == 17, "block_mxfp4 is 17 bytes");

#endif  // FORGERT_QUANT_BLOCKS_H
