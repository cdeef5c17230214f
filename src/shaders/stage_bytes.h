// Copying a span of a row from device into threadgroup memory with every device load covering
// whole cache lines (issue 14): shared by the staged GEMVs (mul_mv_staged.metal) and get_rows.
#ifndef FORGERT_STAGE_BYTES_H
#define FORGERT_STAGE_BYTES_H

#include "kernel_args.h"

// The decoders' (dequant.h, mul_mv.h) address space of a copy in threadgroup memory.
struct fg_threadgroup_space {
    template <typename T> using ptr = threadgroup const T*;
};

// Copies elements [0, n) from src to dst, thread `id` of `count` (a simdgroup's lanes, or a
// threadgroup). Every thread loads the same number of times, those past n the last element again
// (and store it again: the same value), so that the threads' k-th loads stay one simdgroup access
// of consecutive elements (a store under a condition would let the compiler sink the load into it);
// simdgroups wholly past n stop.
template <typename T, typename D>
static inline void mv_copy(device const T* src, D dst, int n, ushort id, ushort count) {
    for (int i0 = 0; i0 < n; i0 += count) {
        if (i0 + (int(id) & ~(FG_SIMD_WIDTH - 1)) >= n) break;  // the whole simdgroup is past n
        const int i = min(i0 + int(id), n - 1);
        dst(i, src[i]);
    }
}

struct mv_to_bytes {
    threadgroup char* out;
    void operator()(int i, char v) const { out[i] = v; }
};
struct mv_to_pieces {
    threadgroup uint4* out;
    void operator()(int i, uint4 v) const { out[i] = v; }
};

// Bytes [0, n) at src into dst (threadgroup, 16-byte aligned) from dst + (address of src) % 16,
// so that the copy's blocks keep their alignment; `align`: src's address % 128. Returns the copy.
// Loads: the bytes before the first 64-byte boundary, then (where that boundary is not a 128-byte
// one) the 4 pieces up to the next, then 16-byte pieces from a 128-byte boundary (32 lanes: 4
// whole 128-byte lines), then the bytes after the last whole piece: each load within whole 64-
// and 128-byte lines but the first and last partial ones.
static inline threadgroup const char* mv_stage_bytes(device const char* src, int n, int align,
                                                     threadgroup uint4* dst, ushort lane) {
    threadgroup char* out = (threadgroup char*)dst + align % 16;
    const int head = min(n, (64 - align % 64) % 64);          // up to the first 64-byte boundary
    const int pieces = (n - head) / 16;                       // whole 16-byte pieces from there
    const int lead = min(pieces, (128 - (align + head) % 128) % 128 / 16);  // to a 128-byte one: 0 or 4
    const int tail = head + 16 * pieces;
    device const uint4* src_pieces = (device const uint4*)(src + head);
    threadgroup uint4* out_pieces = (threadgroup uint4*)(out + head);
    mv_copy(src, mv_to_bytes{out}, head, lane, FG_SIMD_WIDTH);
    mv_copy(src_pieces, mv_to_pieces{out_pieces}, lead, lane, FG_SIMD_WIDTH);
    mv_copy(src_pieces + lead, mv_to_pieces{out_pieces + lead}, pieces - lead, lane, FG_SIMD_WIDTH);
    mv_copy(src + tail, mv_to_bytes{out + tail}, n - tail, lane, FG_SIMD_WIDTH);
    return out;
}

#endif  // FORGERT_STAGE_BYTES_H
