// simd_* collectives, checked against NumPy by tests/test_emulator.py.
#include <metal_stdlib>
using namespace metal;

struct simd_args {
    uint n;  // threads that read x (the threadgroup may be larger)
};

// Per thread: out[tid * 12 + k] for k = 0..11 (see test_simd_collectives).
kernel void simd_collectives(
        constant simd_args & args [[buffer(0)]],
        device const float * x    [[buffer(1)]],
        device       float * out  [[buffer(2)]],
        uint tid  [[thread_index_in_threadgroup]],
        ushort lane [[thread_index_in_simdgroup]],
        ushort sg  [[simdgroup_index_in_threadgroup]]) {
    const float v = x[tid];
    device float* o = out + tid * 12;
    o[0] = simd_sum(v);
    o[1] = simd_max(v);
    o[2] = simd_min(v);
    o[3] = simd_prefix_exclusive_sum(v);
    o[4] = simd_prefix_inclusive_sum(v);
    o[5] = simd_broadcast(v, 3);
    o[6] = simd_shuffle(v, ushort((lane + 5) % 16));  // lanes 0..15 exist in every simdgroup here
    o[7] = simd_shuffle_xor(v, 1);
    o[8] = simd_shuffle_down(v, 4);
    o[9] = simd_shuffle_up(v, 2);
    const uint votes = uint(uint64_t(simd_ballot(v > 0.0f)));
    o[10] = float(popcount(votes)) + (((votes >> lane) & 1u) ? 0.5f : 0.0f);
    o[11] = simd_broadcast_first(v) + (simd_is_first() ? 1000.0f : 0.0f);
    (void)sg;
}

// Tree reduction with shuffles vs simd_sum, on float4 (vector collectives).
kernel void simd_vector_sum(
        device const float4 * x [[buffer(0)]],
        device       float4 * out [[buffer(1)]],
        uint tid [[thread_index_in_threadgroup]],
        ushort lane [[thread_index_in_simdgroup]]) {
    float4 t = x[tid];
    for (ushort off = 16; off > 0; off /= 2) t += simd_shuffle_down(t, off);
    const float4 s = simd_sum(x[tid]);
    if (lane == 0) {
        out[(tid / 32) * 2] = t;
        out[(tid / 32) * 2 + 1] = s;
    }
}

// Divergent collectives: odd lanes sum among themselves, then all lanes reconverge.
kernel void simd_divergent(
        device const float * x [[buffer(0)]],
        device       float * out [[buffer(1)]],
        uint tid [[thread_index_in_threadgroup]],
        ushort lane [[thread_index_in_simdgroup]]) {
    float odd = 0.0f;
    if (lane % 2 == 1) odd = simd_sum(x[tid]);
    const float all = simd_sum(x[tid]);
    out[tid * 2] = odd;
    out[tid * 2 + 1] = all;
}

// Reads a lane that does not exist (threadgroup of 40: simdgroup 1 has lanes 0..7).
kernel void simd_bad_shuffle(
        device float * out [[buffer(0)]],
        uint tid [[thread_index_in_threadgroup]]) {
    float t = float(tid);
    for (ushort off = 16; off > 0; off /= 2) t += simd_shuffle_down(t, off);
    out[tid] = t;
}

// Reads an inactive lane: only even lanes take part, each reads its odd neighbour.
kernel void simd_inactive_read(
        device float * out [[buffer(0)]],
        ushort lane [[thread_index_in_simdgroup]]) {
    if (lane % 2 == 0) out[lane] = simd_shuffle(float(lane), ushort(lane + 1));
}
