// Kernels whose memory traffic is counted by hand (tests/test_emulator_traffic.py).
#include <metal_stdlib>
using namespace metal;

struct stride_args {
    uint stride;  // elements between the reads (device) or the words (threadgroup) of neighbouring threads
};

// out[i] = x[i]: each simdgroup reads and writes 128 contiguous bytes.
kernel void traffic_copy(
        device const float * x   [[buffer(0)]],
        device       float * out [[buffer(1)]],
        uint i [[thread_position_in_grid]]) {
    out[i] = x[i];
}

// out[i] = x[i * stride]: a simdgroup's 32 reads fall in 32 lines once stride >= 32.
kernel void traffic_strided_copy(
        constant stride_args & args [[buffer(0)]],
        device const float * x      [[buffer(1)]],
        device       float * out    [[buffer(2)]],
        uint i [[thread_position_in_grid]]) {
    out[i] = x[i * args.stride];
}

// Every thread reads x[0]: one 4-byte broadcast per simdgroup.
kernel void traffic_broadcast(
        device const float * x   [[buffer(0)]],
        device       float * out [[buffer(1)]],
        uint i [[thread_position_in_grid]]) {
    out[i] = x[0] + float(i);
}

// Threadgroup memory at word tid * stride: stride 32 puts a simdgroup in one bank.
kernel void traffic_bank_conflict(
        constant stride_args & args [[buffer(0)]],
        device       float * out    [[buffer(1)]],
        uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float buf[64 * 32];
    buf[(tid * args.stride) % 2048] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = buf[(tid * args.stride) % 2048];
}
