// Recurrent layers: the causal depthwise convolution carrying its last K - 1 inputs (with SiLU:
// Gated DeltaNet, Qwen3.5, and Mamba2 with its bias; without: LFM2's short convolution), the gated delta rule carrying a
// [k_dim, v_dim] state per value head, and the attention output's sigmoid gate. Each recurrence walks a sequence's rows in order inside one threadgroup; the
// parallelism is over sequences, channels (convolution) and value heads and their columns (delta
// rule), never along time.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// False when run r is not this threadgroup's to start: an earlier row of the table names the same
// state row (that row's threadgroups take this run too: a state row's runs continue each other in
// table order), or its state row is outside the state.
static inline bool run_starts_here(device const int* runs, int r, int n_slots) {
    const int slot = runs[4 * r];
    if (slot < 0 || slot >= n_slots) return false;
    for (int p = 0; p < r; ++p)
        if (runs[4 * p] == slot) return false;
    return true;
}

// Run r's rows lie within the pass's (the host's check, repeated so that a bad table stays in bounds).
static inline bool run_in_rows(device const int* runs, int r, int rows) {
    const int row0 = runs[4 * r + 1], n = runs[4 * r + 2];
    return row0 >= 0 && n >= 1 && n <= rows - row0;
}

// One thread per channel slides the window through each run's rows; the window's past (the state)
// and the channel's weights stay in registers (fixed-size arrays indexed by constants once the
// loops unroll, their bounds guarded by K). The weights come through threadgroup memory: a lane
// loading its own channel's K weights would touch K times the lines a simdgroup needs (w is
// [C, K]); the threadgroup's rows of w are one range that consecutive lanes load whole.
kernel void conv1d_state_f32(
        constant conv1d_state_args & args [[buffer(0)]],
        device const char * x     [[buffer(1)]],
        device const char * w     [[buffer(2)]],
        device       char * state [[buffer(3)]],
        device const int  * runs  [[buffer(4)]],
        device       char * out   [[buffer(5)]],
        device const float * bias [[buffer(6)]],
        threadgroup float * wt    [[threadgroup(0)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c0 = tgpig.x * ntg.x, c = c0 + tptg.x;
    const int r0 = tgpig.y;
    if (!run_starts_here(runs, r0, args.n_slots)) return;  // the whole threadgroup: no barrier waits on it
    const int C = args.channels, K = args.width, past = K - 1, ws = FG_CONV_TG_STRIDE(K);
    const int n_ch = min((int)ntg.x, C - c0);  // [n_ch, K] floats of w, staged [n_ch, ws]
    for (int i = tptg.x; i < n_ch * K; i += ntg.x)
        wt[(i / K) * ws + i % K] = ((device const float*)(w + (uint64_t)(c0 + i / K) * args.w_stride))[i % K];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (c >= C) return;
    const int slot = runs[4 * r0];
    device float* st = (device float*)(state + slot * args.state_stride);
    const float b = args.has_bias != 0 ? bias[c] : 0.0f;
    float wr[FG_CONV_MAX_K];
    float win[FG_CONV_MAX_K];  // the past inputs, oldest first
    for (int j = 0; j < FG_CONV_MAX_K; ++j) {
        wr[j] = j < K ? wt[tptg.x * ws + j] : 0.0f;
        win[j] = j < past ? st[j * C + c] : 0.0f;
    }
    for (int r = r0; r < args.n_runs; ++r) {
        if (runs[4 * r] != slot || !run_in_rows(runs, r, args.rows)) continue;
        const int row0 = runs[4 * r + 1], n = runs[4 * r + 2];
        if (runs[4 * r + 3] != 0)
            for (int j = 0; j < FG_CONV_MAX_K; ++j) win[j] = 0.0f;
        for (int t = row0; t < row0 + n; ++t) {
            const float xt = ((device const float*)(x + t * args.x_stride))[c];
            float acc = b;  // wr[j] is 0 past K
            for (int j = 0; j < FG_CONV_MAX_K; ++j) acc += wr[j] * (j < past ? win[j] : j == past ? xt : 0.0f);
            ((device float*)(out + t * args.out_stride))[c] = args.silu ? acc / (1.0f + exp(-acc)) : acc;
            for (int j = 0; j < FG_CONV_MAX_K - 1; ++j)  // slide by one
                if (j < past) win[j] = j + 1 < past ? win[j + 1] : xt;
        }
    }
    for (int j = 0; j < FG_CONV_MAX_K - 1; ++j)
        if (j < past) st[j * C + c] = win[j];
}

// torch's softplus (threshold 20)
static inline float delta_softplus(float x) { return x > 20.0f ? x : log(1.0f + exp(x)); }

// Thread j of the threadgroup owns value column jc = grid.z * threads + j of head h's state and keeps
// S[:, jc] in s[]: the token's kv_mem = S^T k and out = S^T q are then sums over its own registers.
// Rows i >= k_dim of s[], and of the staged q and k, are zero, so the loops run to KMAX unguarded.
template <int KMAX>
kernel void gated_delta_rule_f32(
        constant delta_rule_args & args [[buffer(0)]],
        device const char  * q       [[buffer(1)]],
        device const char  * k       [[buffer(2)]],
        device const char  * v       [[buffer(3)]],
        device const char  * alpha   [[buffer(4)]],
        device const char  * beta    [[buffer(5)]],
        device const float * A       [[buffer(6)]],
        device const float * dt_bias [[buffer(7)]],
        device       char  * state   [[buffer(8)]],
        device const int   * runs    [[buffer(9)]],
        device       char  * out     [[buffer(10)]],
        threadgroup float * shmem    [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort3 ntg  [[threads_per_threadgroup]]) {
    const int r0 = tgpig.x, h = tgpig.y;
    if (!run_starts_here(runs, r0, args.n_slots)) return;  // the whole threadgroup: no barrier waits on it
    const int dk = args.k_dim, dv = args.v_dim;
    const int jc = tgpig.z * ntg.x + tiitg;
    const bool owns = jc < dv;  // threads past v_dim only help stage q and k
    const int kh = args.v_tiled != 0 ? h % args.n_k_heads : h / (args.n_v_heads / args.n_k_heads);
    const int nsg = (ntg.x + FG_SIMD_WIDTH - 1) / FG_SIMD_WIDTH;
    threadgroup float* qs = shmem;             // [KMAX] the token's query of head kh, raw
    threadgroup float* ks = shmem + KMAX;      // [KMAX] its key
    threadgroup float* part = shmem + 2 * KMAX;  // [2 * simdgroups]: sum q^2, sum k^2 per simdgroup
    const int slot = runs[4 * r0];
    device float* sh = (device float*)(state + slot * args.state_stride) + (uint64_t)h * dk * dv;
    const float a_h = A[h], dt_h = dt_bias[h];
    const float q_scale = 1.0f / sqrt(float(dk));

    float s[KMAX];
    for (int i = 0; i < KMAX; ++i) s[i] = owns && i < dk ? sh[i * dv + jc] : 0.0f;
    for (int r = r0; r < args.n_runs; ++r) {
        if (runs[4 * r] != slot || !run_in_rows(runs, r, args.rows)) continue;
        const int row0 = runs[4 * r + 1], n = runs[4 * r + 2];
        if (runs[4 * r + 3] != 0)
            for (int i = 0; i < KMAX; ++i) s[i] = 0.0f;
        for (int t = row0; t < row0 + n; ++t) {
            device const float* qr = (device const float*)(q + t * args.q_stride) + kh * dk;
            device const float* kr = (device const float*)(k + t * args.k_stride) + kh * dk;
            // The previous token's reads of qs, ks and part are done before they are overwritten.
            threadgroup_barrier(mem_flags::mem_threadgroup);
            float qq = 0.0f, kk = 0.0f;
            for (int i = tiitg; i < KMAX; i += ntg.x) {
                const float qi = i < dk ? qr[i] : 0.0f, ki = i < dk ? kr[i] : 0.0f;
                qs[i] = qi;
                ks[i] = ki;
                qq += qi * qi;
                kk += ki * ki;
            }
            qq = simd_sum(qq);
            kk = simd_sum(kk);
            if (tiisg == 0) {
                part[2 * sgitg] = qq;
                part[2 * sgitg + 1] = kk;
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
            if (!owns) continue;
            qq = 0.0f;
            kk = 0.0f;
            for (int g = 0; g < nsg; ++g) {
                qq += part[2 * g];
                kk += part[2 * g + 1];
            }
            const float qn = q_scale / sqrt(qq + args.eps), kn = 1.0f / sqrt(kk + args.eps);
            const float decay = exp(a_h * delta_softplus(((device const float*)(alpha + t * args.alpha_stride))[h] + dt_h));
            const float b = 1.0f / (1.0f + exp(-((device const float*)(beta + t * args.beta_stride))[h]));
            const float vj = ((device const float*)(v + t * args.v_stride))[h * dv + jc];
            float mem = 0.0f;  // S^T k after the decay, column jc
            for (int i = 0; i < KMAX; ++i) {
                s[i] *= decay;
                mem += s[i] * ks[i];
            }
            const float d = b * (vj - mem * kn) * kn;  // the write along the normed key
            float o = 0.0f;
            for (int i = 0; i < KMAX; ++i) {
                s[i] += ks[i] * d;
                o += s[i] * qs[i];
            }
            ((device float*)(out + t * args.out_stride))[h * dv + jc] = o * qn;
        }
    }
    if (owns)
        for (int i = 0; i < KMAX; ++i)
            if (i < dk) sh[i * dv + jc] = s[i];
}

typedef decltype(gated_delta_rule_f32<64>) gated_delta_rule_f32_t;
template [[host_name("gated_delta_rule_f32_k64")]] kernel gated_delta_rule_f32_t gated_delta_rule_f32<64>;
template [[host_name("gated_delta_rule_f32_k128")]] kernel gated_delta_rule_f32_t gated_delta_rule_f32<128>;
template [[host_name("gated_delta_rule_f32_k256")]] kernel gated_delta_rule_f32_t gated_delta_rule_f32<256>;

kernel void mul_sigmoid_f32(
        constant elementwise_args & args [[buffer(0)]],
        device const char * gate [[buffer(1)]],
        device       char * x    [[buffer(2)]],
        uint3 tgpig [[threadgroup_position_in_grid]],
        uint3 tptg  [[thread_position_in_threadgroup]],
        uint3 ntg   [[threads_per_threadgroup]]) {
    const int c = tgpig.x * ntg.x + tptg.x;
    const int t = tgpig.y;
    if (c >= args.dim) return;
    const float g = ((device const float*)(gate + t * args.a_stride))[c];
    device float* xr = (device float*)(x + t * args.out_stride);
    xr[c] = xr[c] / (1.0f + exp(-g));
}
