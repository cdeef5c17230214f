// Atomics on device and threadgroup memory, and spin waits.
#include <metal_stdlib>
using namespace metal;

// Every thread of every threadgroup adds to device counters; the last thread of each
// threadgroup to finish (threadgroup atomic) records the group's count.
kernel void atomic_counts(
        device atomic_uint * counter   [[buffer(0)]],
        device atomic_float * total    [[buffer(1)]],
        device atomic_int * maximum    [[buffer(2)]],
        device uint * per_group        [[buffer(3)]],
        uint gid  [[threadgroup_position_in_grid]],
        uint tid  [[thread_index_in_threadgroup]],
        uint ntg  [[threads_per_threadgroup]]) {
    threadgroup atomic_uint arrived;
    if (tid == 0) atomic_store_explicit(&arrived, 0u, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);
    atomic_fetch_add_explicit(total, 0.5f, memory_order_relaxed);
    atomic_fetch_max_explicit(maximum, int(gid * 1000 + tid), memory_order_relaxed);
    const uint before = atomic_fetch_add_explicit(&arrived, 1u, memory_order_relaxed);
    if (before == ntg - 1) per_group[gid] = before + 1;
}

// Thread 0 waits until thread 1 raises a flag: fine on fibers, which yield while spinning.
kernel void atomic_spin_ok(
        device int * out [[buffer(0)]],
        uint tid [[thread_index_in_threadgroup]]) {
    threadgroup atomic_int flag;
    if (tid == 1) atomic_store_explicit(&flag, 0, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        while (atomic_load_explicit(&flag, memory_order_relaxed) == 0) {}
        out[0] = 42;
    } else if (tid == 1) {
        atomic_store_explicit(&flag, 1, memory_order_relaxed);
    }
}

// Deadlock: thread 0 waits for a flag that thread 1 raises only after a barrier that
// thread 0 never reaches.
kernel void atomic_deadlock(
        device int * out [[buffer(0)]],
        uint tid [[thread_index_in_threadgroup]]) {
    threadgroup atomic_int flag;
    if (tid == 0) atomic_store_explicit(&flag, 0, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        while (atomic_load_explicit(&flag, memory_order_relaxed) == 0) {}
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 1) atomic_store_explicit(&flag, 1, memory_order_relaxed);
    out[tid] = 1;
}
