// Portable IQ4_NL / IQ4_XS building blocks (layouts in quant_blocks.h): quants as the signed
// int8 table values they index, f32 dequantization, and integer dots against the two-part
// activation blocks (BlockQ8Act). An IQ4_NL block and an IQ4_XS sub-block are both 32 weights,
// one activation block, so every integer dot is exact. Included into each kernels_*.cpp
// (internal linkage).
#pragma once

#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "cpu_kernels.h"

namespace forgert::cpu {
namespace {

constexpr int8_t kIq4Values[16] = FG_IQ4_NL_VALUES;

// 16 bytes of nibble indices -> 32 table values in weight order (low nibbles first).  q [32]
inline void iq4_values32(const uint8_t* qs, int8_t* q) {
    for (int i = 0; i < FG_QK / 2; i++) {
        q[i] = kIq4Values[qs[i] & 0x0f];
        q[i + FG_QK / 2] = kIq4Values[qs[i] >> 4];
    }
}

// IQ4_XS's 6-bit scale of sub-block j, minus its offset 32: -32..31.
inline int iq4_xs_scale(const block_iq4_xs* b, int j) {
    const int low = (b->scales_l[j / 2] >> (4 * (j % 2))) & 0x0f;
    const int high = (b->scales_h >> (2 * j)) & 3;
    return (low | high << 4) - 32;
}

// Integer dot of 32 table values with one activation block's two parts.
inline int32_t iq4_act_dot(const int8_t* q, const BlockQ8Act& a) {
    int32_t s = 0;  // |q| <= 127, |256 hi + lo| < 2^15, 32 terms: |s| < 2^27
    for (int i = 0; i < FG_QK; i++) s += (int32_t)q[i] * (256 * a.hi[i] + a.lo[i]);
    return s;
}

inline float iq4_nl_block_dot(const uint8_t* blk, const BlockQ8Act& a) {
    const auto* b = reinterpret_cast<const block_iq4_nl*>(blk);
    int8_t q[FG_QK];
    iq4_values32(b->qs, q);
    return f16_to_f32(b->d) * a.d * (float)iq4_act_dot(q, a);
}

// MXFP4's E8M0 scale halved (its values are stored doubled): 2^(e - 128), exact for every e
// (the two smallest are subnormal), as ggml's GGML_E8M0_TO_FP32_HALF.
inline float mxfp4_half_scale(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

constexpr int8_t kMxfp4Values[16] = FG_MXFP4_VALUES;

// One MXFP4 block dotted with one activation block.
inline float mxfp4_block_dot(const uint8_t* blk, const BlockQ8Act& a) {
    const auto* b = reinterpret_cast<const block_mxfp4*>(blk);
    int32_t s = 0;  // |s| < 2^24
    for (int i = 0; i < FG_QK / 2; i++) {
        s += kMxfp4Values[b->qs[i] & 0x0f] * (256 * a.hi[i] + a.lo[i]);
        s += kMxfp4Values[b->qs[i] >> 4] * (256 * a.hi[i + FG_QK / 2] + a.lo[i + FG_QK / 2]);
    }
    return mxfp4_half_scale(b->e) * a.d * (float)s;
}

// One MXFP4 block to f32.                                            y [32]
inline void mxfp4_dequantize_block(const uint8_t* blk, float* y) {
    const auto* b = reinterpret_cast<const block_mxfp4*>(blk);
    const float d = mxfp4_half_scale(b->e);
    for (int i = 0; i < FG_QK / 2; i++) {
        y[i] = d * kMxfp4Values[b->qs[i] & 0x0f];
        y[i + FG_QK / 2] = d * kMxfp4Values[b->qs[i] >> 4];
    }
}

// One IQ4_NL block to f32.                                           y [32]
inline void iq4_nl_dequantize_block(const uint8_t* blk, float* y) {
    const auto* b = reinterpret_cast<const block_iq4_nl*>(blk);
    int8_t q[FG_QK];
    iq4_values32(b->qs, q);
    const float d = f16_to_f32(b->d);
    for (int i = 0; i < FG_QK; i++) y[i] = d * (float)q[i];  // as ggml: one exact product
}

// One IQ4_XS super-block to f32.                                     y [256]
inline void iq4_xs_dequantize_super_block(const uint8_t* blk, float* y) {
    const auto* b = reinterpret_cast<const block_iq4_xs*>(blk);
    const float d = f16_to_f32(b->d);
    for (int j = 0; j < 8; j++) {
        int8_t q[FG_QK];
        iq4_values32(b->qs + 16 * j, q);
        const float dl = d * (float)iq4_xs_scale(b, j);  // as ggml: (d * ls) * value
        for (int i = 0; i < FG_QK; i++) y[32 * j + i] = dl * (float)q[i];
    }
}

// dot of one IQ4_XS super-block with its eight activation blocks a[0..7].
inline float iq4_xs_super_block_dot(const uint8_t* blk, const BlockQ8Act* a) {
    const auto* b = reinterpret_cast<const block_iq4_xs*>(blk);
    float acc = 0.0f;
    for (int j = 0; j < 8; j++) {  // sub-block j is activation block j
        int8_t q[FG_QK];
        iq4_values32(b->qs + 16 * j, q);
        acc += a[j].d * (float)iq4_xs_scale(b, j) * (float)iq4_act_dot(q, a[j]);
    }
    return f16_to_f32(b->d) * acc;
}

}  // namespace
}  // namespace forgert::cpu
