// simdgroup_matrix: C[M x N] = A[M x K] * B[K x N] in 8x8 tiles, one simdgroup per 8x8
// output tile; A is staged through threadgroup memory as half, B is read transposed
// from a row-major B^T.
#include <metal_stdlib>
using namespace metal;

struct matmul_args {
    uint m, n, k;
};

kernel void simdgroup_matmul(
        constant matmul_args & args [[buffer(0)]],
        device const float * a      [[buffer(1)]],  // [m][k]
        device const float * bt     [[buffer(2)]],  // [n][k] (B transposed)
        device       float * c      [[buffer(3)]],  // [m][n]
        uint2 tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    threadgroup half a_tile[64];
    const uint row0 = tgpig.y * 8, col0 = tgpig.x * 8;
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8>(0.0f);
    for (uint k0 = 0; k0 < args.k; k0 += 8) {
        for (uint e = tiisg; e < 64; e += 32) a_tile[e] = half(a[(row0 + e / 8) * args.k + k0 + e % 8]);
        simdgroup_barrier(mem_flags::mem_threadgroup);
        simdgroup_half8x8 ma;
        simdgroup_float8x8 mb;
        simdgroup_load(ma, a_tile, 8);
        simdgroup_load(mb, bt, args.k, ulong2(k0, col0), true);
        simdgroup_multiply_accumulate(acc, ma, mb, acc);
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }
    simdgroup_store(acc, c, args.n, ulong2(col0, row0));
}

// Diagonal constructor and simdgroup_multiply: out = (2 I) * x, stored transposed.
kernel void simdgroup_diag(
        device const float * x [[buffer(0)]],
        device       float * out [[buffer(1)]]) {
    simdgroup_float8x8 d = simdgroup_float8x8(2.0f);
    simdgroup_float8x8 mx, r;
    simdgroup_load(mx, x);
    simdgroup_multiply(r, d, mx);
    simdgroup_store(r, out, 8, ulong2(0, 0), true);
}

// Each lane passes its own pointer: invalid (the arguments must be uniform).
kernel void simdgroup_bad_load(
        device const float * a [[buffer(0)]],
        device       float * c [[buffer(1)]],
        ushort lane [[thread_index_in_simdgroup]]) {
    simdgroup_float8x8 m;
    simdgroup_load(m, a + lane, 8);
    simdgroup_store(m, c, 8);
}
