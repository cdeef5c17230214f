// Mamba2's selective state scan (Granite 4.0-H, Nemotron-H): per head a [head_dim, d_state] state S,
// S = exp(dt A) S + dt x B^T, y = S C + D x, one token at a time. A sequence's rows are walked in
// order inside one threadgroup; the parallelism is over sequences, heads and the rows of each
// head's state, never along time. The run table is read as deltanet.metal reads it.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// False when run r is not this threadgroup's to start (an earlier run names its state row, whose
// threadgroups take this run too), or its state row is outside the state.
static inline bool mamba_run_starts_here(device const int* runs, int r, int n_slots) {
    const int slot = runs[4 * r];
    if (slot < 0 || slot >= n_slots) return false;
    for (int p = 0; p < r; ++p)
        if (runs[4 * p] == slot) return false;
    return true;
}

// Run r's rows lie within the pass's (the host's check, repeated so that a bad table stays in bounds).
static inline bool mamba_run_in_rows(device const int* runs, int r, int rows) {
    const int row0 = runs[4 * r + 1], n = runs[4 * r + 2];
    return row0 >= 0 && n >= 1 && n <= rows - row0;
}

// torch's softplus (threshold 20)
static inline float mamba_softplus(float x) { return x > 20.0f ? x : log(1.0f + exp(x)); }

// Thread i of the threadgroup owns row ir = grid.z * threads + i of head h's state and keeps S[i, :]
// in s[]; its output element is a sum over its own registers, so the threads never meet while
// scanning. Columns j >= d_state of s[] stay zero and are never written back. The state moves
// between device memory and the registers through threadgroup memory, 32 columns at a time: the
// threadgroup's rows are one contiguous range of the state, which a simdgroup reads and writes a
// row's 32 consecutive columns at a time (whole lines), where each thread reading its own row
// would touch a line per lane. A staged row is 33 floats apart, so the lanes reading down one
// column of the tile hit distinct banks.
template <int NMAX>
kernel void mamba2_scan_f32(
        constant mamba2_scan_args & args [[buffer(0)]],
        device const char  * x       [[buffer(1)]],
        device const char  * B       [[buffer(2)]],
        device const char  * C       [[buffer(3)]],
        device const char  * dt      [[buffer(4)]],
        device const float * A       [[buffer(5)]],
        device const float * D       [[buffer(6)]],
        device const float * dt_bias [[buffer(7)]],
        device       char  * state   [[buffer(8)]],
        device const int   * runs    [[buffer(9)]],
        device       char  * out     [[buffer(10)]],
        threadgroup float  * tile    [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    const int r0 = tgpig.x, h = tgpig.y;
    if (!mamba_run_starts_here(runs, r0, args.n_slots)) return;  // the whole threadgroup: no barrier waits on it
    const int hd = args.head_dim, ds = args.d_state;
    const int first = tgpig.z * ntg.x;              // the threadgroup's first state row
    const int n_rows = min((int)ntg.x, hd - first); // its rows in the head (the last tile's may be fewer)
    const int ir = first + tiitg;
    const bool live = ir < hd;
    const int g = h / (args.n_heads / args.n_groups);
    const int slot = runs[4 * r0];
    device float* block = (device float*)(state + slot * args.state_stride) + ((uint64_t)h * hd + first) * ds;
    threadgroup float* mine = tile + tiitg * FG_MAMBA_TILE_STRIDE;
    const float a_h = A[h], d_h = D[h], bias_h = dt_bias[h];

    float s[NMAX];
    for (int c = 0; c < NMAX; c += FG_SIMD_WIDTH) {
        if (c < ds) {   // the same for every thread: the barriers below are reached by all or none
            for (int e = tiitg; e < n_rows * FG_SIMD_WIDTH; e += ntg.x) {
                const int row = e / FG_SIMD_WIDTH, col = e % FG_SIMD_WIDTH;
                if (c + col < ds) tile[row * FG_MAMBA_TILE_STRIDE + col] = block[(uint64_t)row * ds + c + col];
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
        for (int k = 0; k < FG_SIMD_WIDTH; ++k)
            s[c + k] = live && c + k < ds ? mine[k] : 0.0f;
        if (c < ds) threadgroup_barrier(mem_flags::mem_threadgroup);  // the tile is refilled next
    }
    for (int r = r0; r < args.n_runs && live; ++r) {
        if (runs[4 * r] != slot || !mamba_run_in_rows(runs, r, args.rows)) continue;
        const int row0 = runs[4 * r + 1], n = runs[4 * r + 2];
        if (runs[4 * r + 3] != 0)
            for (int j = 0; j < NMAX; ++j) s[j] = 0.0f;
        for (int t = row0; t < row0 + n; ++t) {
            device const float* br = (device const float*)(B + t * args.b_stride) + g * ds;
            device const float* cr = (device const float*)(C + t * args.c_stride) + g * ds;
            const float xi = ((device const float*)(x + t * args.x_stride))[h * hd + ir];
            const float step = mamba_softplus(((device const float*)(dt + t * args.dt_stride))[h] + bias_h);
            const float decay = exp(step * a_h);
            const float u = step * xi;
            float y = 0.0f;
            for (int j = 0; j < NMAX; ++j) {
                if (j < ds) {
                    s[j] = s[j] * decay + u * br[j];
                    y += s[j] * cr[j];
                }
            }
            ((device float*)(out + t * args.out_stride))[h * hd + ir] = y + d_h * xi;
        }
    }
    for (int c = 0; c < NMAX; c += FG_SIMD_WIDTH) {
        if (c < ds) {
            for (int k = 0; k < FG_SIMD_WIDTH; ++k)
                mine[k] = s[c + k];
            threadgroup_barrier(mem_flags::mem_threadgroup);
            for (int e = tiitg; e < n_rows * FG_SIMD_WIDTH; e += ntg.x) {
                const int row = e / FG_SIMD_WIDTH, col = e % FG_SIMD_WIDTH;
                if (c + col < ds) block[(uint64_t)row * ds + c + col] = tile[row * FG_MAMBA_TILE_STRIDE + col];
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
    }
}

typedef decltype(mamba2_scan_f32<64>) mamba2_scan_f32_t;
template [[host_name("mamba2_scan_f32_n64")]] kernel mamba2_scan_f32_t mamba2_scan_f32<64>;
template [[host_name("mamba2_scan_f32_n128")]] kernel mamba2_scan_f32_t mamba2_scan_f32<128>;
template [[host_name("mamba2_scan_f32_n256")]] kernel mamba2_scan_f32_t mamba2_scan_f32<256>;
