// Reading the AVX-512 sets' K-quant panels (Q2_Kx16 ... Q6_Kx16, core/tensor.h): a block's 4-quant
// groups as vpdpbusd operands and Q4_K's packed scales for 16 rows at once. Shared by the decode
// kernel (kernels_x86_panels16_kquant.inc) and the int8 prefill's panel conversion
// (kernels_x86_int8.inc); included where FG_PANEL_512 is set, after <immintrin.h>.
#pragma once

#include "weight_panels.h"

namespace forgert::cpu {
namespace {

// Byte k of each 32-bit lane of v, zero-extended, as int32 or f32 (the panels' packed Q4_K scales):
// a byte shuffle inside each 128-bit lane (dword i of it: byte 4 i + k; 0x80: a zero byte).
inline __m512i kpanel16_byte_i32(__m512i v, int k) {
    const __m512i pick = _mm512_set4_epi32((int)(0x8080800Cu + k), (int)(0x80808008u + k), (int)(0x80808004u + k),
                                           (int)(0x80808000u + k));
    return _mm512_shuffle_epi8(v, pick);
}
inline __m512 kpanel16_byte_f32(__m512i v, int k) { return _mm512_cvtepi32_ps(kpanel16_byte_i32(v, k)); }

// Group g of Q4_Kx16 / Q5_Kx16 / Q6_Kx16 block j's quants (the 16 rows' quants 4g..4g+3), unsigned
// bytes: nibble pair j / 2 (low nibbles for even j); Q5_K: bit j of the fifth-bit group as bit 4;
// Q6_K: bits 2 (j % 4) of high quad j / 4 as bits 4-5.
template <DType WT>
inline __m512i kpanel16_group(const uint8_t* pb, int j, int g) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    constexpr bool kQ6 = file_type(WT) == DType::Q6_K;
    const __m512i raw = _mm512_loadu_si512(pb + (kQ6 ? kq6_nib_at(j, g) : kq4_nib_at(WT, j, g)));
    const __m512i low = j % 2 ? _mm512_srli_epi16(raw, 4) : raw;  // bits 0-3: the block's nibble
    if constexpr (file_type(WT) == DType::Q4_K) {
        return _mm512_and_si512(low, nib);
    } else if constexpr (file_type(WT) == DType::Q5_K) {
        const __m512i hb = _mm512_loadu_si512(pb + kKPanelQ5High + kKPanelGroupBytes * g);
        __m512i pos;  // bit j of each byte to bit 4 (what crosses bytes is masked off below)
        switch (j) {
            case 0: pos = _mm512_slli_epi16(hb, 4); break;
            case 1: pos = _mm512_slli_epi16(hb, 3); break;
            case 2: pos = _mm512_slli_epi16(hb, 2); break;
            case 3: pos = _mm512_slli_epi16(hb, 1); break;
            case 4: pos = hb; break;
            case 5: pos = _mm512_srli_epi16(hb, 1); break;
            case 6: pos = _mm512_srli_epi16(hb, 2); break;
            default: pos = _mm512_srli_epi16(hb, 3);
        }
        return _mm512_and_si512(_mm512_ternarylogic_epi32(low, pos, nib, 0xE4), _mm512_set1_epi8(0x1f));
    } else {
        const __m512i hb = _mm512_loadu_si512(pb + kq6_high_at(j, g));
        // bits 2k, 2k + 1 of each byte (k = j % 4) to bits 4-5: a 16-bit shift; the mask below
        // drops what crossed from the neighbouring byte
        __m512i pos;
        switch (j % 4) {
            case 0: pos = _mm512_slli_epi16(hb, 4); break;
            case 1: pos = _mm512_slli_epi16(hb, 2); break;
            case 2: pos = hb; break;
            default: pos = _mm512_srli_epi16(hb, 2);
        }
        // (low & 0x0f) | (pos & 0x30): one ternary op (select by the 0x0f mask), then the top bits off
        return _mm512_and_si512(_mm512_ternarylogic_epi32(low, pos, nib, 0xE4), _mm512_set1_epi8(0x3f));
    }
}

// Q4_Kx16 / Q5_Kx16: the 16 rows' 6-bit scales and mins of one super-block, a byte each per 32-bit lane:
// sc[0] scales 0-3, sc[1] scales 4-7, mn[0] mins 0-3, mn[1] mins 4-7 (q4_K_scale_min_words, 16 rows
// at once).
inline void kpanel16_q4_scales(const uint8_t* pb, __m512i* sc, __m512i* mn) {
    const __m512i u0 = _mm512_loadu_si512(pb + kKPanelQ4Scales), u1 = _mm512_loadu_si512(pb + kKPanelQ4Scales + 64),
                  u2 = _mm512_loadu_si512(pb + kKPanelQ4Scales + 128);
    const __m512i k6 = _mm512_set1_epi8(0x3f), k4 = _mm512_set1_epi8(0x0f), k2 = _mm512_set1_epi8(0x03);
    sc[0] = _mm512_and_si512(u0, k6);
    sc[1] = _mm512_or_si512(_mm512_and_si512(u2, k4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), k2), 4));
    mn[0] = _mm512_and_si512(u1, k6);
    mn[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), k4),
                            _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), k2), 4));
}

// Q2_Kx16 / Q3_Kx16 (kernels_x86_panels16_q23.inc's tile, and Q3_K's int8 prefill conversion):
// Group g of block j's quants (the 16 rows' quants 4g..4g+3) as bytes: bits 2 (j % 4) of the 2-bit
// half j / 4; Q3_K: bit j of the high-bit group as bit 2 (q + 4).
template <DType WT>
inline __m512i kpanel16_q23_group(const uint8_t* pb, int j, int g) {
    const __m512i raw = _mm512_loadu_si512(pb + kq2_bits_at(WT, j / 4, g));
    const __m512i low = j % 4 ? _mm512_srli_epi16(raw, 2 * (j % 4)) : raw;  // bits 0-1: the quant's low bits
    if constexpr (file_type(WT) == DType::Q2_K) {
        return _mm512_and_si512(low, _mm512_set1_epi8(0x03));
    } else {
        const __m512i hb = _mm512_loadu_si512(pb + kKPanelQ3High + kKPanelGroupBytes * g);
        // bit j of each byte to bit 2: a 16-bit shift; what crosses from the next byte is masked off
        const __m512i pos = j < 2 ? _mm512_slli_epi16(hb, 2 - j) : j == 2 ? hb : _mm512_srli_epi16(hb, j - 2);
        return _mm512_and_si512(_mm512_ternarylogic_epi32(low, pos, _mm512_set1_epi8(0x03), 0xE4), _mm512_set1_epi8(0x07));
    }
}

// Q3_Kx16: the 16 rows' scales + 32 (0..63), a byte each per 32-bit lane: o[w] holds scales 4w..4w+3
// (q3_K_scale_words_biased on 16 rows at once).
inline void kpanel16_q3_scales(const uint8_t* pb, __m512i* o) {
    const __m512i u0 = _mm512_loadu_si512(pb + kKPanelQ3Scales), u1 = _mm512_loadu_si512(pb + kKPanelQ3Scales + 64),
                  u2 = _mm512_loadu_si512(pb + kKPanelQ3Scales + 128);
    const __m512i k4 = _mm512_set1_epi8(0x0f), k2 = _mm512_set1_epi8(0x03);
    o[0] = _mm512_or_si512(_mm512_and_si512(u0, k4), _mm512_slli_epi32(_mm512_and_si512(u2, k2), 4));
    o[1] = _mm512_or_si512(_mm512_and_si512(u1, k4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u2, 2), k2), 4));
    o[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u0, 4), k4),
                           _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u2, 4), k2), 4));
    o[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u1, 4), k4),
                           _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u2, 6), k2), 4));
}

}  // namespace
}  // namespace forgert::cpu
