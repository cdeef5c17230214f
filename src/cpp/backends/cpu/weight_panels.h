// The x16 panel layouts of Q4_0 / Q4_1 / Q5_0 / Q8_0 weights (core/tensor.h states the layout): packing from
// the file's rows, and reading one row back. Portable code, shared by every kernel set and
// the backend (load-time repack, get_rows of packed tied embeddings, the f32 prefill panels).
#pragma once

#include <cstdint>
#include <cstring>

#include "core/fp16.h"
#include "core/tensor.h"

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

// Panels [p0, p1) of a matrix of `rows` rows (file type ft, rows src_stride bytes apart) into
// dst, the packed matrix's first byte (panel p at p * 16 * row bytes). Rows past `rows` are zero.
inline void pack_panels16(DType ft, const uint8_t* src, size_t src_stride, int64_t rows, int64_t cols, int64_t p0,
                          int64_t p1, uint8_t* dst) {
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
// the file's dequantization gives it (Q4_0: d * (q - 8); Q4_1: d * q + m; Q5_0: d * (q - 16); Q8_0: d * q).  y [cols]
inline void dequantize_panel16_row(DType t, const uint8_t* base, size_t stride, int64_t row, float* y, int64_t cols) {
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
