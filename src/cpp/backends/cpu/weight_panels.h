// The x16 panel layouts of Q4_0 / Q4_1 / Q8_0 weights (core/tensor.h states the layout): packing from
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

// Bytes of one panel's 32-weight block: 16 f16 scales (Q4_1: and 16 f16 mins), then 16 rows' quants.
constexpr int64_t panel16_block_bytes(DType t) {
    const DType ft = file_type(t);
    return kPanel16Rows * (int64_t)(ft == DType::Q8_0 ? sizeof(block_q8_0) : ft == DType::Q4_1 ? sizeof(block_q4_1)
                                                                                                 : sizeof(block_q4_0));
}
constexpr int64_t kPanel16ScaleBytes = kPanel16Rows * 2;
// Offset of a panel block's quants: past the scales (Q4_1: and the mins, which follow the scales).
constexpr int64_t panel16_quants_offset(DType t) {
    return file_type(t) == DType::Q4_1 ? 2 * kPanel16ScaleBytes : kPanel16ScaleBytes;
}

// Panels [p0, p1) of a matrix of `rows` rows (file type ft, rows src_stride bytes apart) into
// dst, the packed matrix's first byte (panel p at p * 16 * row bytes). Rows past `rows` are zero.
inline void pack_panels16(DType ft, const uint8_t* src, size_t src_stride, int64_t rows, int64_t cols, int64_t p0,
                          int64_t p1, uint8_t* dst) {
    const int64_t nb = cols / FG_QK, bb = dtype_block_bytes(ft), pbb = kPanel16Rows * bb;
    const int qbytes = ft == DType::Q8_0 ? FG_QK : FG_QK / 2;  // quant bytes per row and block
    const int head = ft == DType::Q4_1 ? 4 : 2;                // the file block's d (Q4_1: d, m) before its quants
    const int64_t qoff = panel16_quants_offset(ft);
    for (int64_t p = p0; p < p1; p++) {
        uint8_t* panel = dst + p * kPanel16Rows * (size_t)(nb * bb);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t* pb = panel + b * pbb;
            std::memset(pb, 0, pbb);
            for (int64_t m = 0; m < kPanel16Rows && p * kPanel16Rows + m < rows; m++) {
                const uint8_t* blk = src + (p * kPanel16Rows + m) * src_stride + b * bb;
                std::memcpy(pb + 2 * m, blk, 2);                                              // d
                if (ft == DType::Q4_1) std::memcpy(pb + kPanel16ScaleBytes + 2 * m, blk + 2, 2);  // m
                for (int g = 0; g < qbytes / 4; g++) {
                    uint8_t* q = pb + qoff + (g * kPanel16Rows + m) * 4;
                    std::memcpy(q, blk + head + 4 * g, 4);
                    if (ft == DType::Q8_0)
                        for (int i = 0; i < 4; i++) q[i] ^= 0x80;  // q + 128: unsigned
                }
            }
        }
    }
}

// Row `row` of a packed matrix (base: its first byte, stride: a file row's bytes) as f32, as
// the file's dequantization gives it (Q4_0: d * (q - 8); Q4_1: d * q + m; Q8_0: d * q).  y [cols]
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
