// The x16 panel layouts of Q4_0 / Q4_1 / Q5_0 / Q8_0 / Q2_K / Q3_K / Q4_K / Q5_K / Q6_K weights (core/tensor.h states the layouts):
// packing from the file's rows, and reading one row back. Portable code, shared by every kernel set and
// the backend (load-time repack, get_rows of packed tied embeddings, the f32 prefill panels).
#pragma once

#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "core/tensor.h"
#include "kernels_kquant.h"  // q4_K_scale_min: the K-quant panels' rows read back

namespace forgert::cpu {

// FORGERT_CPU_REPACK: "1" (default) repack at load where the kernel set has a panel layout,
// "0" keep the file's layout (cpu_weight_prep.cpp).
bool repack_from_env();

// Bytes of one panel's 32-weight block: 16 f16 scales (Q4_1: and 16 f16 mins; Q5_0: and 8 masks
// of bit 4), then 16 rows' quants: 16 file blocks' bytes.
constexpr int64_t panel16_block_bytes(DType t) {
    switch (file_type(t)) {
        case DType::Q8_0: return kPanel16Rows * (int64_t)sizeof(block_q8_0);
        case DType::Q4_1: return kPanel16Rows * (int64_t)sizeof(block_q4_1);
        case DType::Q5_0: return kPanel16Rows * (int64_t)sizeof(block_q5_0);
        default: return kPanel16Rows * (int64_t)sizeof(block_q4_0);
    }
}
constexpr int64_t kPanel16ScaleBytes = kPanel16Rows * 2;
// Q5_0x16: the 8 masks of the quants' bit 4 follow the scales (core/tensor.h).
constexpr int64_t kPanel16Q5MaskBytes = 8 * 8;
// Offset of a panel block's quants: past the scales (Q4_1: and the mins, which follow the
// scales; Q5_0: and the bit-4 masks).
constexpr int64_t panel16_quants_offset(DType t) {
    return file_type(t) == DType::Q4_1   ? 2 * kPanel16ScaleBytes
           : file_type(t) == DType::Q5_0 ? kPanel16ScaleBytes + kPanel16Q5MaskBytes
                                         : kPanel16ScaleBytes;
}

// Q4_Kx16 / Q5_Kx16 / Q6_Kx16: offsets inside one panel super-block (16 rows x 256 weights; core/tensor.h;
// Q2_Kx16 / Q3_Kx16 below).
constexpr int64_t kKPanelDmin = 32;             // Q4_Kx16 / Q5_Kx16: the rows' f16 dmin
constexpr int64_t kKPanelQ4Scales = 64;         // Q4_Kx16 / Q5_Kx16: 3 packed-scale words [word][row]
constexpr int64_t kKPanelQ5High = 256;          // Q5_Kx16: the fifth bits, 8 groups of 64 bytes
// Q4_Kx16 / Q5_Kx16: 4 nibble pairs of 512 bytes (Q5_Kx16: after its fifth bits)
constexpr int64_t kpanel16_nibbles(DType t) { return file_type(t) == DType::Q5_K ? 768 : 256; }
constexpr int64_t kKPanelQ6Scales = 32;         // Q6_Kx16: int8 scales [sub-block][row]
constexpr int64_t kKPanelQ6Quants = 288;        // Q6_Kx16: 2 quads of 1536 bytes
constexpr int64_t kKPanelGroupBytes = kPanel16Rows * 4;  // one 4-quant group of the 16 rows
// Where group g of block j (0..7) lies in a panel super-block: Q4_Kx16's and Q5_Kx16's nibbles (pair j / 2);
// Q6_Kx16's nibbles and high bits (quad j / 4, group g: nibble pairs 2 (j / 4) and 2 (j / 4) + 1,
// then the high bits, 64 bytes each).
constexpr int64_t kq4_nib_at(DType t, int j, int g) { return kpanel16_nibbles(t) + 512 * (j / 2) + kKPanelGroupBytes * g; }
constexpr int64_t kq6_nib_at(int j, int g) {
    return kKPanelQ6Quants + 1536 * (j / 4) + 3 * kKPanelGroupBytes * g + kKPanelGroupBytes * ((j / 2) % 2);
}
constexpr int64_t kq6_high_at(int j, int g) { return kKPanelQ6Quants + 1536 * (j / 4) + 3 * kKPanelGroupBytes * g + 2 * kKPanelGroupBytes; }
// Q2_Kx16 / Q3_Kx16 (core/tensor.h): their scales, Q3_Kx16's high bits, and the two halves of 2-bit
// quants, group g of half n at kq2_bits_at(t, n, g) (bits 2k: block 4n + k).
constexpr int64_t kKPanelQ2Scales = 64;   // Q2_Kx16: scale bytes [sub-block][row], after d and dmin
constexpr int64_t kKPanelQ3Scales = 32;   // Q3_Kx16: 3 packed-scale words [word][row], after d
constexpr int64_t kKPanelQ3High = 224;    // Q3_Kx16: the high bits, 8 groups of 64 bytes
constexpr int64_t kq2_bits_at(DType t, int n, int g) {
    return (file_type(t) == DType::Q2_K ? 320 : 736) + 512 * n + kKPanelGroupBytes * g;
}
// Bytes of one panel super-block: 16 file super-blocks.
constexpr int64_t kpanel16_super_bytes(DType t) {
    return kPanel16Rows * (int64_t)(file_type(t) == DType::Q4_K   ? sizeof(block_q4_K)
                                    : file_type(t) == DType::Q5_K ? sizeof(block_q5_K)
                                    : file_type(t) == DType::Q2_K ? sizeof(block_q2_K)
                                    : file_type(t) == DType::Q3_K ? sizeof(block_q3_K)
                                                                  : sizeof(block_q6_K));
}

// Row m of one Q2_Kx16 / Q3_Kx16 panel super-block (pb) from / to the file's block (blk): the
// bytes as they are, moved (to_panel: file -> panel).
inline void kpanel16_q23_move(DType ft, uint8_t* pb, uint8_t* blk, int64_t m, bool to_panel) {
    auto mv = [to_panel](uint8_t* panel_at, uint8_t* file_at, size_t n) {
        if (to_panel) std::memcpy(panel_at, file_at, n);
        else std::memcpy(file_at, panel_at, n);
    };
    const int64_t row4 = 4 * m;
    if (ft == DType::Q2_K) {
        auto* b = reinterpret_cast<block_q2_K*>(blk);
        mv(pb + 2 * m, reinterpret_cast<uint8_t*>(&b->d), 2);
        mv(pb + 32 + 2 * m, reinterpret_cast<uint8_t*>(&b->dmin), 2);
        for (int i = 0; i < 16; i++) mv(pb + kKPanelQ2Scales + i * kPanel16Rows + m, b->scales + i, 1);
        for (int n = 0; n < 2; n++)
            for (int g = 0; g < 8; g++) mv(pb + kq2_bits_at(ft, n, g) + row4, b->qs + 32 * n + 4 * g, 4);
    } else {
        auto* b = reinterpret_cast<block_q3_K*>(blk);
        mv(pb + 2 * m, reinterpret_cast<uint8_t*>(&b->d), 2);
        for (int w = 0; w < 3; w++) mv(pb + kKPanelQ3Scales + (w * kPanel16Rows + m) * 4, b->scales + 4 * w, 4);
        for (int g = 0; g < 8; g++) mv(pb + kKPanelQ3High + kKPanelGroupBytes * g + row4, b->hmask + 4 * g, 4);
        for (int n = 0; n < 2; n++)
            for (int g = 0; g < 8; g++) mv(pb + kq2_bits_at(ft, n, g) + row4, b->qs + 32 * n + 4 * g, 4);
    }
}

// pack_panels16 of Q4_K / Q5_K / Q6_K: panels [p0, p1), super-block by super-block.
inline void pack_kpanels16(DType ft, const uint8_t* src, size_t src_stride, int64_t rows, int64_t cols, int64_t p0,
                           int64_t p1, uint8_t* dst) {
    const int64_t ns = cols / FG_QK_K, bb = dtype_block_bytes(ft), pbb = kPanel16Rows * bb;
    for (int64_t p = p0; p < p1; p++) {
        uint8_t* panel = dst + p * kPanel16Rows * (size_t)(ns * bb);
        for (int64_t s = 0; s < ns; s++) {
            uint8_t* pb = panel + s * pbb;
            std::memset(pb, 0, pbb);
            for (int64_t m = 0; m < kPanel16Rows && p * kPanel16Rows + m < rows; m++) {
                const uint8_t* blk = src + (p * kPanel16Rows + m) * src_stride + s * bb;
                if (ft == DType::Q2_K || ft == DType::Q3_K) {
                    kpanel16_q23_move(ft, pb, const_cast<uint8_t*>(blk), m, true);
                } else if (ft == DType::Q4_K || ft == DType::Q5_K) {  // the same head (d, dmin, scales); Q5_K: qh, then qs
                    const auto* b = reinterpret_cast<const block_q4_K*>(blk);
                    const uint8_t* qs = ft == DType::Q4_K ? b->qs : reinterpret_cast<const block_q5_K*>(blk)->qs;
                    std::memcpy(pb + 2 * m, &b->d, 2);
                    std::memcpy(pb + kKPanelDmin + 2 * m, &b->dmin, 2);
                    for (int w = 0; w < 3; w++) std::memcpy(pb + kKPanelQ4Scales + (w * kPanel16Rows + m) * 4, b->scales + 4 * w, 4);
                    for (int q = 0; q < 4; q++)  // qs[32 q + l]: quant l of sub-blocks 2q (low) and 2q + 1 (high)
                        for (int g = 0; g < 8; g++) std::memcpy(pb + kq4_nib_at(ft, 2 * q, g) + 4 * m, qs + 32 * q + 4 * g, 4);
                    if (ft == DType::Q5_K)  // qh[l]: bit j is quant l of sub-block j's bit 4
                        for (int g = 0; g < 8; g++)
                            std::memcpy(pb + kKPanelQ5High + kKPanelGroupBytes * g + 4 * m,
                                        reinterpret_cast<const block_q5_K*>(blk)->qh + 4 * g, 4);
                } else {
                    const auto* b = reinterpret_cast<const block_q6_K*>(blk);
                    std::memcpy(pb + 2 * m, &b->d, 2);
                    for (int i = 0; i < 16; i++) pb[kKPanelQ6Scales + i * kPanel16Rows + m] = (uint8_t)b->scales[i];
                    // Weights 128 h + 32 k + l (block 4h + k, quant l): ql[64 h + l]'s nibbles are blocks 4h
                    // (low) and 4h + 2 (high), ql[64 h + 32 + l]'s blocks 4h + 1 and 4h + 3, and qh[32 h + l]
                    // holds the four blocks' high bits at bits 2k: the panel's high-bit byte as it is.
                    constexpr uint32_t lo4 = 0x0f0f0f0f;
                    for (int h = 0; h < 2; h++)
                        for (int g = 0; g < 8; g++) {
                            uint32_t l0, l1;
                            std::memcpy(&l0, b->ql + 64 * h + 4 * g, 4);
                            std::memcpy(&l1, b->ql + 64 * h + 32 + 4 * g, 4);
                            const uint32_t pair0 = (l0 & lo4) | (l1 & lo4) << 4, pair1 = (l0 >> 4 & lo4) | (l1 & ~lo4);
                            std::memcpy(pb + kq6_nib_at(4 * h, g) + 4 * m, &pair0, 4);
                            std::memcpy(pb + kq6_nib_at(4 * h + 2, g) + 4 * m, &pair1, 4);
                            std::memcpy(pb + kq6_high_at(4 * h, g) + 4 * m, b->qh + 32 * h + 4 * g, 4);
                        }
                }
            }
        }
    }
}

// pack_kpanels16 undone: rows m < nr of the K-quant panel at `panel` (ns super-blocks) back in the
// file's layout, row m at dst + m dst_stride: the bytes the panel was made from. The 256-bit sets'
// prefill converters read file rows; a panel's rows come back through this once per call.
inline void unpack_kpanel16_rows(DType ft, const uint8_t* panel, int64_t ns, int nr, uint8_t* dst, size_t dst_stride) {
    const int64_t bb = dtype_block_bytes(ft), pbb = kPanel16Rows * bb;
    for (int64_t s = 0; s < ns; s++) {
        const uint8_t* pb = panel + s * pbb;
        for (int m = 0; m < nr; m++) {
            uint8_t* blk = dst + m * dst_stride + s * bb;
            if (ft == DType::Q2_K || ft == DType::Q3_K) {
                kpanel16_q23_move(ft, const_cast<uint8_t*>(pb), blk, m, false);
            } else if (ft == DType::Q4_K || ft == DType::Q5_K) {
                auto* b = reinterpret_cast<block_q4_K*>(blk);
                uint8_t* qs = ft == DType::Q4_K ? b->qs : reinterpret_cast<block_q5_K*>(blk)->qs;
                std::memcpy(&b->d, pb + 2 * m, 2);
                std::memcpy(&b->dmin, pb + kKPanelDmin + 2 * m, 2);
                for (int w = 0; w < 3; w++) std::memcpy(b->scales + 4 * w, pb + kKPanelQ4Scales + (w * kPanel16Rows + m) * 4, 4);
                for (int q = 0; q < 4; q++)
                    for (int g = 0; g < 8; g++) std::memcpy(qs + 32 * q + 4 * g, pb + kq4_nib_at(ft, 2 * q, g) + 4 * m, 4);
                if (ft == DType::Q5_K)
                    for (int g = 0; g < 8; g++)
                        std::memcpy(reinterpret_cast<block_q5_K*>(blk)->qh + 4 * g,
                                    pb + kKPanelQ5High + kKPanelGroupBytes * g + 4 * m, 4);
            } else {
                auto* b = reinterpret_cast<block_q6_K*>(blk);
                std::memcpy(&b->d, pb + 2 * m, 2);
                for (int i = 0; i < 16; i++) b->scales[i] = (int8_t)pb[kKPanelQ6Scales + i * kPanel16Rows + m];
                constexpr uint32_t lo4 = 0x0f0f0f0f;  // pack_kpanels16's nibble pairs, parted again
                for (int h = 0; h < 2; h++)
                    for (int g = 0; g < 8; g++) {
                        uint32_t pair0, pair1;
                        std::memcpy(&pair0, pb + kq6_nib_at(4 * h, g) + 4 * m, 4);
                        std::memcpy(&pair1, pb + kq6_nib_at(4 * h + 2, g) + 4 * m, 4);
                        const uint32_t l0 = (pair0 & lo4) | (pair1 & lo4) << 4, l1 = (pair0 >> 4 & lo4) | (pair1 & ~lo4);
                        std::memcpy(b->ql + 64 * h + 4 * g, &l0, 4);
                        std::memcpy(b->ql + 64 * h + 32 + 4 * g, &l1, 4);
                        std::memcpy(b->qh + 32 * h + 4 * g, pb + kq6_high_at(4 * h, g) + 4 * m, 4);
                    }
            }
        }
    }
}

// Row m of one panel super-block of Q2_Kx16 ... Q6_Kx16 to f32, as dequantize_super_block
// gives the file's (Q4_K / Q5_K: (d sc) q - dmin m; Q6_K: (d sc) (q - 32)).   y [256]
inline void dequantize_kpanel16_super(DType t, const uint8_t* pb, int64_t m, float* y) {
    if (file_type(t) == DType::Q2_K || file_type(t) == DType::Q3_K) {  // the row's file block, dequantized
        alignas(4) uint8_t blk[sizeof(block_q3_K)];
        kpanel16_q23_move(file_type(t), const_cast<uint8_t*>(pb), blk, m, false);
        return dequantize_super_block(file_type(t), blk, y);
    }
    uint16_t h;
    std::memcpy(&h, pb + 2 * m, 2);
    const float d = f16_to_f32(h);
    if (file_type(t) != DType::Q6_K) {
        std::memcpy(&h, pb + kKPanelDmin + 2 * m, 2);
        const float dmin = f16_to_f32(h);
        uint8_t sc12[12];
        for (int w = 0; w < 3; w++) std::memcpy(sc12 + 4 * w, pb + kKPanelQ4Scales + (w * kPanel16Rows + m) * 4, 4);
        for (int j = 0; j < 8; j++) {
            int sc, mn;
            q4_K_scale_min(sc12, j, sc, mn);
            const float dj = d * (float)sc, mj = dmin * (float)mn;
            for (int e = 0; e < FG_QK; e++) {
                const uint8_t v = pb[kq4_nib_at(t, j, e / 4) + 4 * m + e % 4];
                int q = j % 2 ? v >> 4 : v & 0x0f;
                if (file_type(t) == DType::Q5_K) q |= ((pb[kKPanelQ5High + kKPanelGroupBytes * (e / 4) + 4 * m + e % 4] >> j) & 1) << 4;
                y[FG_QK * j + e] = dj * (float)q - mj;
            }
        }
    } else {
        for (int j = 0; j < 8; j++) {
            for (int e = 0; e < FG_QK; e++) {
                const uint8_t nib = pb[kq6_nib_at(j, e / 4) + 4 * m + e % 4], hb = pb[kq6_high_at(j, e / 4) + 4 * m + e % 4];
                const int q = (((nib >> (4 * (j % 2))) & 0x0f) | ((hb >> (2 * (j % 4))) & 3) << 4) - 32;
                const float dj = d * (float)(int8_t)pb[kKPanelQ6Scales + (2 * j + e / 16) * kPanel16Rows + m];
                y[FG_QK * j + e] = dj * (float)q;
            }
        }
    }
}

// Panels [p0, p1) of a matrix of `rows` rows (file type ft, rows src_stride bytes apart) into
// dst, the packed matrix's first byte (panel p at p * 16 * row bytes). Rows past `rows` are zero.
inline void pack_panels16(DType ft, const uint8_t* src, size_t src_stride, int64_t rows, int64_t cols, int64_t p0,
                          int64_t p1, uint8_t* dst) {
    if (is_kquant(ft)) return pack_kpanels16(ft, src, src_stride, rows, cols, p0, p1, dst);
    const int64_t nb = cols / FG_QK, bb = dtype_block_bytes(ft), pbb = kPanel16Rows * bb;
    const int qbytes = ft == DType::Q8_0 ? FG_QK : FG_QK / 2;                     // quant bytes per row and block
    const int head = ft == DType::Q4_1 ? 4 : ft == DType::Q5_0 ? 6 : 2;  // the file block's d (Q4_1: d, m; Q5_0: d, qh)
    const int64_t qoff = panel16_quants_offset(ft);
    for (int64_t p = p0; p < p1; p++) {
        uint8_t* panel = dst + p * kPanel16Rows * (size_t)(nb * bb);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t* pb = panel + b * pbb;
            std::memset(pb, 0, pbb);
            uint64_t masks[8] = {};  // Q5_0: bit 4m + i of mask j = qh bit 4j + i of row m
            for (int64_t m = 0; m < kPanel16Rows && p * kPanel16Rows + m < rows; m++) {
                const uint8_t* blk = src + (p * kPanel16Rows + m) * src_stride + b * bb;
                std::memcpy(pb + 2 * m, blk, 2);                                                  // d
                if (ft == DType::Q4_1) std::memcpy(pb + kPanel16ScaleBytes + 2 * m, blk + 2, 2);  // m
                if (ft == DType::Q5_0) {
                    uint32_t qh;
                    std::memcpy(&qh, blk + 2, 4);
                    for (int j = 0; j < 8; j++) masks[j] |= (uint64_t)((qh >> (4 * j)) & 0xf) << (4 * m);
                }
                for (int g = 0; g < qbytes / 4; g++) {
                    uint8_t* q = pb + qoff + (g * kPanel16Rows + m) * 4;
                    std::memcpy(q, blk + head + 4 * g, 4);
                    if (ft == DType::Q8_0)
                        for (int i = 0; i < 4; i++) q[i] ^= 0x80;  // q + 128: unsigned
                }
            }
            if (ft == DType::Q5_0)
                for (int j = 0; j < 8; j++)
                    for (int i = 0; i < 8; i++) pb[kPanel16ScaleBytes + 8 * j + i] = (uint8_t)(masks[j] >> (8 * i));
        }
    }
}

// Q5_0x16: row m's qh (the file's: bit e is quant e's bit 4) from a panel block's 8 masks
// (mask j's bits 4m..4m+3 are qh's bits 4j..4j+3).
inline uint32_t panel16_q5_qh(const uint8_t* pb, int64_t m) {
    uint32_t qh = 0;
    for (int j = 0; j < 8; j++) {
        uint64_t mask;
        std::memcpy(&mask, pb + kPanel16ScaleBytes + 8 * j, 8);
        qh |= (uint32_t)((mask >> (4 * m)) & 0xf) << (4 * j);
    }
    return qh;
}

// Row `row` of a packed matrix (base: its first byte, stride: a file row's bytes) as f32, as
// the file's dequantization gives it (Q4_0: d * (q - 8); Q4_1: d * q + m; Q5_0: d * (q - 16); Q8_0: d * q;
// the K-quants: dequantize_kpanel16_super).  y [cols]
inline void dequantize_panel16_row(DType t, const uint8_t* base, size_t stride, int64_t row, float* y, int64_t cols) {
    if (is_kpanel16(t)) {
        const uint8_t* panel = base + row / kPanel16Rows * kPanel16Rows * stride;
        for (int64_t s = 0; s < cols / FG_QK_K; s++)
            dequantize_kpanel16_super(t, panel + s * kpanel16_super_bytes(t), row % kPanel16Rows, y + s * FG_QK_K);
        return;
    }
    const DType ft = file_type(t);
    const int64_t nb = cols / FG_QK, pbb = panel16_block_bytes(t), m = row % kPanel16Rows;
    const uint8_t* panel = base + row / kPanel16Rows * kPanel16Rows * stride;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * pbb;
        uint16_t h;
        std::memcpy(&h, pb + 2 * m, 2);
        const float d = f16_to_f32(h);
        const uint8_t* q = pb + panel16_quants_offset(t);
        float* yb = y + b * FG_QK;
        if (ft == DType::Q8_0) {
            for (int i = 0; i < FG_QK; i++) yb[i] = d * (float)((int)q[(i / 4 * kPanel16Rows + m) * 4 + i % 4] - 128);
        } else if (ft == DType::Q5_0) {
            const uint32_t qh = panel16_q5_qh(pb, m);
            for (int j = 0; j < FG_QK / 2; j++) {  // as the file's dequantization: d (q - 16)
                const uint8_t v = q[(j / 4 * kPanel16Rows + m) * 4 + j % 4];
                yb[j] = d * (float)((int)((v & 0x0f) | ((qh >> j) & 1) << 4) - 16);
                yb[j + FG_QK / 2] = d * (float)((int)((v >> 4) | ((qh >> (j + 16)) & 1) << 4) - 16);
            }
        } else {
            float mw = -8.0f * d;  // as the file's dequantization: d q + m
            if (ft == DType::Q4_1) {
                std::memcpy(&h, pb + kPanel16ScaleBytes + 2 * m, 2);
                mw = f16_to_f32(h);
            }
            for (int j = 0; j < FG_QK / 2; j++) {
                const uint8_t v = q[(j / 4 * kPanel16Rows + m) * 4 + j % 4];
                yb[j] = d * (float)(v & 0x0f) + mw, yb[j + FG_QK / 2] = d * (float)(v >> 4) + mw;
            }
        }
    }
}

}  // namespace forgert::cpu
