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
    IQ4_NL = FG_IQ4_NL,
    IQ4_XS = FG_IQ4_XS,
    I32 = FG_I32,
    BF16 = FG_BF16,
    MXFP4 = FG_MXFP4,
};

const char* dtype_name(DType t);
bool dtype_is_known(int id);
// Elements per block (32 for quantized types and MXFP4, 256 for K-quants and IQ4_XS, 1 otherwise) and bytes per block.
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
    size_t nbytes() const { return rows == 0 ? 0 : stride * (rows - 1) + row_bytes(type, cols); }
    // Rows [r0, r0 + n) of this tensor.
    Tensor slice_rows(int64_t r0, int64_t n) const {
        Tensor t = *this;
        t.offset += stride * r0;
        t.rows = n;
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
