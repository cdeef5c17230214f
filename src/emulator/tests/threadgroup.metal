// Threadgroup memory and barriers.
#include <metal_stdlib>
using namespace metal;

struct reduce_args {
    uint n;
};

// out[group] = sum of x over the group's slice, through [[threadgroup(0)]] memory and a
// tree of barriers (works for any power-of-two threadgroup size).
kernel void tg_tree_sum(
        constant reduce_args & args [[buffer(0)]],
        device const float * x      [[buffer(1)]],
        device       float * out    [[buffer(2)]],
        threadgroup float * shmem   [[threadgroup(0)]],
        uint  gid  [[threadgroup_position_in_grid]],
        uint  tid  [[thread_index_in_threadgroup]],
        uint  ntg  [[threads_per_threadgroup]]) {
    const uint i = gid * ntg + tid;
    shmem[tid] = i < args.n ? x[i] : 0.0f;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = ntg / 2; s > 0; s /= 2) {
        if (tid < s) shmem[tid] += shmem[tid + s];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tid == 0) out[gid] = shmem[0];
}

// A `threadgroup` array declared in a template kernel body; reverses each block of T.
template <typename T>
kernel void tg_reverse(
        device const T * x [[buffer(0)]],
        device       T * out [[buffer(1)]],
        uint gid [[threadgroup_position_in_grid]],
        uint tid [[thread_index_in_threadgroup]],
        uint ntg [[threads_per_threadgroup]]) {
    threadgroup T buf[256], unused[4];
    (void)unused;
    buf[tid] = x[gid * ntg + tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid * ntg + tid] = buf[ntg - 1 - tid];
}
template [[host_name("tg_reverse_f32")]] kernel void tg_reverse<float>(device const float*, device float*, uint, uint, uint);
template [[host_name("tg_reverse_i32")]] kernel void tg_reverse<int>(device const int*, device int*, uint, uint, uint);

// Every builtin id, for a 3-D dispatch: out[linear thread] = 12 values.
kernel void tg_ids(
        device uint * out [[buffer(0)]],
        uint3 tpig [[thread_position_in_grid]],
        uint3 tptg [[thread_position_in_threadgroup]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        ushort3 ntg [[threads_per_threadgroup]],
        uint3 ngrp [[threadgroups_per_grid]],
        uint tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        uint nsg [[simdgroups_per_threadgroup]],
        uint width [[threads_per_simdgroup]]) {
    const uint group = (tgpig.z * ngrp.y + tgpig.y) * ngrp.x + tgpig.x;
    device uint* o = out + (group * (ntg.x * ntg.y * ntg.z) + tiitg) * 12;
    o[0] = tpig.x; o[1] = tpig.y; o[2] = tpig.z;
    o[3] = tptg.x; o[4] = tptg.y; o[5] = tptg.z;
    o[6] = tgpig.x; o[7] = tgpig.y; o[8] = tgpig.z;
    o[9] = sgitg * 32 + tiisg;
    o[10] = nsg;
    o[11] = width;
}

// Racy: reads its neighbour's slot without a barrier in between (forward order reads
// the poison, reverse order reads the value).
kernel void tg_racy_shift(
        device const float * x [[buffer(0)]],
        device       float * out [[buffer(1)]],
        uint tid [[thread_index_in_threadgroup]],
        uint ntg [[threads_per_threadgroup]]) {
    threadgroup float buf[64];
    buf[tid] = x[tid];
    // missing: threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = buf[(tid + 1) % ntg];
}

// The fixed version.
kernel void tg_shift(
        device const float * x [[buffer(0)]],
        device       float * out [[buffer(1)]],
        uint tid [[thread_index_in_threadgroup]],
        uint ntg [[threads_per_threadgroup]]) {
    threadgroup float buf[64];
    buf[tid] = x[tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = buf[(tid + 1) % ntg];
}

// Barrier divergence: even and odd threads wait at different barriers.
kernel void tg_divergent_barrier(
        device float * out [[buffer(0)]],
        uint tid [[thread_index_in_threadgroup]]) {
    if (tid % 2 == 0) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    } else {
        threadgroup_barrier(mem_flags::mem_device);
    }
    out[tid] = 1.0f;
}

// Early exit: threads past the data return before the barrier the others wait at.
kernel void tg_early_exit(
        constant reduce_args & args [[buffer(0)]],
        device float * out [[buffer(1)]],
        uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float buf[64];
    if (tid >= args.n) return;
    buf[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = buf[args.n - 1 - tid];
}

// More threadgroup memory than an Apple GPU has.
kernel void tg_too_much_memory(
        device float * out [[buffer(0)]],
        uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float big[9000];
    big[tid] = 1.0f;
    out[tid] = big[tid];
}
