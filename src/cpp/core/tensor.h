// Tensor views over backend buffers. A Tensor never owns memory: it names a
// byte range of a Buffer (device memory, or a zero-copy view of host memory
// such as the mmap'd model file) and how to read it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "quant_blocks.h"

namespace forgert {

enum class DType : int {
    F32 = FG_F32,
    F16 = FG_F16,
    Q4_0 = FG_Q4_0,
    Q4_1 = FG_Q4_1,
    Q5_0 = FG_Q5_0,
    Q5_1 = FG_Q5_1,
    Q8_0 = FG_Q8_0,
    Q2_K = FG_Q2_K,
    Q3_K = FG_Q3_K,
    Q4_K = FG_Q4_K,
    Q5_K = FG_Q5_K,
    Q6_K = FG_Q6_K,
    IQ2_XXS = FG_IQ2_XXS,
    IQ2_XS = FG_IQ2_XS,
    IQ2_S = FG_IQ2_S,
    IQ3_XXS = FG_IQ3_XXS,
    IQ3_S = FG_IQ3_S,
    IQ1_S = FG_IQ1_S,
    IQ1_M = FG_IQ1_M,
    IQ4_NL = FG_IQ4_NL,
    IQ4_XS = FG_IQ4_XS,
    I32 = FG_I32,
    BF16 = FG_BF16,
    MXFP4 = FG_MXFP4,
    // Internal layouts, never in a file (dtype_is_known rejects them): a CPU kernel set's
    // repacking of a Q4_0 / Q4_1 / Q5_0 / Q8_0 / Q2_K / Q3_K / Q4_K / Q5_K / Q6_K matrix into panels of kPanel16Rows rows
    // (docs/design.md, "Repacked weights"). 1000 + the file type's id.
    Q4_0x16 = 1000 + FG_Q4_0,
    Q4_1x16 = 1000 + FG_Q4_1,
    Q5_0x16 = 1000 + FG_Q5_0,
    Q8_0x16 = 1000 + FG_Q8_0,
    Q2_Kx16 = 1000 + FG_Q2_K,
    Q3_Kx16 = 1000 + FG_Q3_K,
    Q4_Kx16 = 1000 + FG_Q4_K,
    Q5_Kx16 = 1000 + FG_Q5_K,
    Q6_Kx16 = 1000 + FG_Q6_K,
};

// Rows per panel of the x16 layouts. Per panel and 32-weight block b (rows r0..r0+15): the 16
// rows' f16 scales (32 bytes; Q4_1: then the 16 rows' f16 mins, 32 more; Q5_0: then 8 64-bit
// masks of the quants' bit 4, 64 more), then the quants as [4-byte group][row][4]: Q8_0 group k
// holds quants 4k..4k+3 + 128 as unsigned bytes (8 groups: vpdpbusd's unsigned operand as
// stored), Q4_0 / Q4_1 / Q5_0 group g the nibble bytes 4g..4g+3 (low nibble: quant 4g + i,
// high: 16 + 4g + i; 4 groups). Q5_0's mask j (little-endian u64) has bit 4m + i set where
// quant 4j + i of row m has bit 4 (the file's qh bit 4j + i): masks 0-3 go with the groups'
// low nibbles, 4-7 with their high ones, one mask bit per byte of a 64-byte group. A panel's block is 16 file
// blocks' bytes, so a panel is 16 file rows' bytes; the last panel is padded with zero bytes
// (scale and min 0: rows computed, never stored or looked up).
// The K-quant layouts go per 256-weight super-block s (16 file super-blocks' bytes, so again a
// panel is 16 file rows' bytes); "lane m" is row m, and a 64-byte group holds quants 4g..4g+3 of
// the 16 rows ([row][4], g = 0..7) of 32-weight sub-block(s) as below:
//   Q4_Kx16: the rows' f16 d (32 bytes), f16 dmin (32), the rows' 12 packed scale bytes as 3
//     u32 words [word][row] (192: word w of row m holds the file's scales[4w..4w+3]), then 4
//     nibble pairs of 512 bytes: pair p, group g, byte i of row m has quant 4g + i of sub-block
//     2p in its low nibble and of sub-block 2p + 1 in its high one (the file's qs pairing).
//   Q5_Kx16: Q4_Kx16's d, dmin and scales (256 bytes), the fifth bits as 8 groups of 64 bytes (byte i
//     of row m in group g is the file's qh[4g + i]: bit j, quant 4g + i of sub-block j), then
//     Q4_Kx16's nibble pairs: read in that order (the fifth bits after the nibbles, read in step
//     with them, were 1.5x slower from memory on Zen 4 than with a far prefetch).
//   Q6_Kx16: the rows' f16 d (32), the 16 signed sub-block scales [sub-block][row] (256), then 2
//     quads of 1536 bytes, quad h holding 32-weight blocks 4h..4h+3 group by group: group g's
//     nibbles of blocks 4h, 4h + 1 (low, high nibble: the quants' low 4 bits), of blocks 4h + 2,
//     4h + 3, then their high bits (bits 2k, 2k + 1 of byte i of row m: quant 4g + i of block
//     4h + k), 64 bytes each; quants 0..63 (q + 32). In the order the kernels read them: a
//     block's nibbles and high bits in two regions apart were read at a quarter of the speed
//     from memory on Zen 4 (its prefetchers did not follow).
//   Q2_Kx16: the rows' f16 d (32), f16 dmin (32), the 16 scale bytes [sub-block][row] (256: the
//     file's, scale in the low nibble, min in the high one), then the 2-bit quants as 2 halves of
//     512 bytes: half n, group g, byte i of row m is the file's qs[32 n + 4 g + i] (bits 2k:
//     quant 4g + i of block 4n + k, 0..3).
//   Q3_Kx16: the rows' f16 d (32), the 12 packed scale bytes as 3 u32 words [word][row] (192, as
//     Q4_Kx16's), the high bits as 8 groups of 64 bytes (byte i of row m in group g is the file's
//     hmask[4g + i]: bit j, quant 4g + i of block j), then Q2_Kx16's two halves of 2-bit quants;
//     quants 0..7 (q + 4: the low bits | the high bit as bit 2).
constexpr int64_t kPanel16Rows = 16;
constexpr bool is_panel16(DType t) {
    return t == DType::Q4_0x16 || t == DType::Q4_1x16 || t == DType::Q5_0x16 || t == DType::Q8_0x16 ||
           t == DType::Q2_Kx16 || t == DType::Q3_Kx16 || t == DType::Q4_Kx16 || t == DType::Q5_Kx16 ||
           t == DType::Q6_Kx16;
}
// The K-quant panel layouts (256-weight super-blocks).
constexpr bool is_kpanel16(DType t) {
    return t == DType::Q2_Kx16 || t == DType::Q3_Kx16 || t == DType::Q4_Kx16 || t == DType::Q5_Kx16 || t == DType::Q6_Kx16;
}
// The lattice types (quant_blocks.h: codebook points of iq_grids.h times signs and scales).
constexpr bool is_iq_lattice(DType t) {
    return t == DType::IQ1_S || t == DType::IQ1_M || t == DType::IQ2_XXS || t == DType::IQ2_XS || t == DType::IQ2_S ||
           t == DType::IQ3_XXS || t == DType::IQ3_S;
}
// The file type a layout holds (t itself for file types).
constexpr DType file_type(DType t) { return is_panel16(t) ? static_cast<DType>(static_cast<int>(t) - 1000) : t; }

const char* dtype_name(DType t);
bool dtype_is_known(int id);
// Elements per block (32 for quantized types and MXFP4, 256 for K-quants, IQ4_XS and the IQ lattice types, 1 otherwise) and bytes per block.
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);
// Bytes of one row of `cols` elements; cols must be a multiple of the block size.
int64_t row_bytes(DType t, int64_t cols);

// A buffer belongs to one backend. `host` is its CPU-visible address (always
// set for the CPU backend and for shared-storage GPU buffers); `handle` is the
// backend's own object (an MTLBuffer), opaque to the core.
struct Buffer {
    void* host = nullptr;
    void* handle = nullptr;
    size_t size = 0;
    virtual ~Buffer() = default;
};

// A 2-D row-major view: `rows` rows of `cols` elements, rows `stride` bytes apart.
// Vectors are rows == 1. Weight matrices are [out_features, in_features].
struct Tensor {
    Buffer* buf = nullptr;
    size_t offset = 0;
    DType type = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    size_t stride = 0;

    template <class T = void>
    T* data() const {
        return reinterpret_cast<T*>(static_cast<char*>(buf->host) + offset);
    }
    // Panel layouts: whole panels (stride stays a file row's bytes: panel p at 16 p stride).
    size_t nbytes() const {
        if (rows == 0) return 0;
        if (is_panel16(type)) return stride * (size_t)((rows + kPanel16Rows - 1) / kPanel16Rows * kPanel16Rows);
        return stride * (rows - 1) + row_bytes(type, cols);
    }
    // Rows [r0, r0 + n) of this tensor (panel layouts: r0 a multiple of kPanel16Rows).
    Tensor slice_rows(int64_t r0, int64_t n) const {
        Tensor t = *this;
        t.offset += stride * r0;
        t.rows = n;
        return t;
    }
    // Columns [c0, c0 + n) of every row, the row stride kept: a strided view (c0 a multiple of
    // the type's block; not for panel layouts).
    Tensor slice_cols(int64_t c0, int64_t n) const {
        Tensor t = *this;
        t.offset += static_cast<size_t>(row_bytes(type, c0));
        t.cols = n;
        return t;
    }
};

inline Tensor make_tensor(Buffer* buf, size_t offset, DType type, int64_t rows, int64_t cols) {
    Tensor t;
    t.buf = buf;
    t.offset = offset;
    t.type = type;
    t.rows = rows;
    t.cols = cols;
    t.stride = static_cast<size_t>(row_bytes(type, cols));
    return t;
}

// Errors the user can act on (bad model file, bad argument) surface in Python
// as ValueError; everything else as RuntimeError.
struct InputError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

}  // namespace forgert
