// Causal attention over the f16 KV cache, one kernel for decode and prefill.
//
// Query t (at position pos0 + t) attends to cache rows 0 .. pos0 + t (the last `window` of
// them with sliding-window attention); with a row table (a batch of sequences), query t at
// position rows[t][0] attends to its sequence's rows from rows[t][1] on. Those keys are cut
// into n_splits chunks (flash-decoding: a long context spreads over many threadgroups
// even for a single query); one threadgroup handles one (split, head, query). Its
// FG_ATTN_SIMDGROUPS simdgroups take every 4th key of the chunk, each keeping an online
// softmax (running max m, running sum l, weighted sum of V rows acc), then merge in
// threadgroup memory. There is no length cap: the loop runs over the keys in place.
// GQA: head h reads kv head h / (n_heads / n_kv_heads).
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

#define ATTN_DPL (FG_ATTN_MAX_HEAD_DIM / FG_SIMD_WIDTH)  // head elements per lane, at most
#define ATTN_ROW (FG_ATTN_MAX_HEAD_DIM + 2)               // tg memory per simdgroup: m, l, acc
// Finite "minus infinity": stays well defined when the compiler assumes no infinities.
#define ATTN_NEG_BIG (-1.0e30f)

kernel void attention_f16(
        constant attention_args & args [[buffer(0)]],
        device const char * q          [[buffer(1)]],
        device const char * k_cache    [[buffer(2)]],
        device const char * v_cache    [[buffer(3)]],
        device       char * out        [[buffer(4)]],
        device      float * partials   [[buffer(5)]],
        device const float * sinks     [[buffer(6)]],
        device const int   * rows      [[buffer(7)]],
        threadgroup float * shmem      [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int split = tgpig.x;
    const int head = tgpig.y;
    const int t = tgpig.z;
    const int hd = args.head_dim;
    const int kv_head = head / (args.n_heads / args.n_kv_heads);
    const int kv_len = (args.has_rows != 0 ? rows[2 * t] : args.pos0 + t) + 1;
    // This query's sequence's cache rows (all of the bound cache without a row table).
    const uint64_t seq_base = args.has_rows != 0 ? uint64_t(rows[2 * t + 1]) * args.kv_stride : 0;
    device const char* keys = k_cache + seq_base;
    device const char* values = v_cache + seq_base;
    const int k_first = args.window > 0 ? max(0, kv_len - args.window) : 0;  // sliding window
    const int k_begin = k_first + split * args.split_len;
    const int k_end = min(k_begin + args.split_len, kv_len);

    // This lane's slice of the query: elements tiisg + 32 j, pre-scaled.
    device const float* qh = (device const float*)(q + t * args.q_stride) + head * hd;
    float qv[ATTN_DPL];
    float acc[ATTN_DPL];
    for (int j = 0; j < ATTN_DPL; ++j) {
        const int d = tiisg + FG_SIMD_WIDTH * j;
        qv[j] = d < hd ? qh[d] * args.scale : 0.0f;
        acc[j] = 0.0f;
    }

    // Two keys per step (k and k + FG_ATTN_SIMDGROUPS): their two reductions are
    // independent, so the GPU overlaps them. A second key past the end weighs nothing.
    float m = ATTN_NEG_BIG;
    float l = 0.0f;
    for (int k = k_begin + sgitg; k < k_end; k += 2 * FG_ATTN_SIMDGROUPS) {
        const bool has2 = k + FG_ATTN_SIMDGROUPS < k_end;
        const int k2 = has2 ? k + FG_ATTN_SIMDGROUPS : k;
        device const half* kr1 = (device const half*)(keys + k * args.kv_stride) + kv_head * hd;
        device const half* kr2 = (device const half*)(keys + k2 * args.kv_stride) + kv_head * hd;
        device const half* vr1 = (device const half*)(values + k * args.kv_stride) + kv_head * hd;
        device const half* vr2 = (device const half*)(values + k2 * args.kv_stride) + kv_head * hd;
        float partial1 = 0.0f;
        float partial2 = 0.0f;
        for (int j = 0; j < ATTN_DPL; ++j) {
            const int d = tiisg + FG_SIMD_WIDTH * j;
            if (d < hd) {
                partial1 += qv[j] * float(kr1[d]);
                partial2 += qv[j] * float(kr2[d]);
            }
        }
        float s1 = simd_sum(partial1);
        float s2 = simd_sum(partial2);
        if (args.softcap > 0.0f) {  // Gemma 2: scores squashed into (-softcap, softcap)
            s1 = args.softcap * precise::tanh(s1 / args.softcap);
            s2 = args.softcap * precise::tanh(s2 / args.softcap);
        }
        s2 = has2 ? s2 : ATTN_NEG_BIG;
        const float m_new = max(m, max(s1, s2));
        const float corr = exp(m - m_new);
        const float p1 = exp(s1 - m_new);
        const float p2 = has2 ? exp(s2 - m_new) : 0.0f;
        l = l * corr + p1 + p2;
        for (int j = 0; j < ATTN_DPL; ++j) {
            const int d = tiisg + FG_SIMD_WIDTH * j;
            acc[j] = acc[j] * corr + (d < hd ? p1 * float(vr1[d]) + p2 * float(vr2[d]) : 0.0f);
        }
        m = m_new;
    }

    // Merge the simdgroups' states: shmem[sg * ATTN_ROW] = m, l, acc[0 .. hd).
    threadgroup float* mine = shmem + sgitg * ATTN_ROW;
    if (tiisg == 0) {
        mine[0] = m;
        mine[1] = l;
    }
    for (int j = 0; j < ATTN_DPL; ++j) {
        const int d = tiisg + FG_SIMD_WIDTH * j;
        if (d < hd) mine[2 + d] = acc[j];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sgitg != 0) return;  // no barrier follows

    float m_all = ATTN_NEG_BIG;
    for (int g = 0; g < FG_ATTN_SIMDGROUPS; ++g)
        if (shmem[g * ATTN_ROW + 1] > 0.0f) m_all = max(m_all, shmem[g * ATTN_ROW]);
    float w[FG_ATTN_SIMDGROUPS];
    float l_all = 0.0f;
    for (int g = 0; g < FG_ATTN_SIMDGROUPS; ++g) {
        const float lg = shmem[g * ATTN_ROW + 1];
        w[g] = lg > 0.0f ? exp(shmem[g * ATTN_ROW] - m_all) : 0.0f;  // empty states weigh nothing
        l_all += lg * w[g];
    }

    if (args.n_splits == 1) {
        device float* o = (device float*)(out + t * args.out_stride) + head * hd;
        if (args.has_sinks) l_all += exp(sinks[head] - m_all);  // in the denominator only (gpt-oss)
        const float inv_l = 1.0f / l_all;  // split 0 always holds key k_first: l_all > 0
        for (int d = tiisg; d < hd; d += FG_SIMD_WIDTH) {
            float a = 0.0f;
            for (int g = 0; g < FG_ATTN_SIMDGROUPS; ++g) a += shmem[g * ATTN_ROW + 2 + d] * w[g];
            o[d] = a * inv_l;
        }
    } else {
        device float* pr = partials + ((t * args.n_heads + head) * args.n_splits + split) * (hd + 2);
        if (tiisg == 0) {
            pr[0] = m_all;
            pr[1] = l_all;
        }
        for (int d = tiisg; d < hd; d += FG_SIMD_WIDTH) {
            float a = 0.0f;
            for (int g = 0; g < FG_ATTN_SIMDGROUPS; ++g) a += shmem[g * ATTN_ROW + 2 + d] * w[g];
            pr[2 + d] = a;
        }
    }
}

// Combines the n_splits partial states of one (head, query): one simdgroup per pair.
kernel void attention_reduce(
        constant attention_reduce_args & args [[buffer(0)]],
        device const float * partials [[buffer(1)]],
        device       char  * out      [[buffer(2)]],
        device const float * sinks    [[buffer(3)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int head = tgpig.x;
    const int t = tgpig.y;
    const int hd = args.head_dim;
    const int row = hd + 2;
    device const float* pr = partials + (t * args.n_heads + head) * args.n_splits * row;

    float m_all = ATTN_NEG_BIG;
    for (int s = 0; s < args.n_splits; ++s)
        if (pr[s * row + 1] > 0.0f) m_all = max(m_all, pr[s * row]);
    float l_all = 0.0f;
    for (int s = 0; s < args.n_splits; ++s) {
        const float ls = pr[s * row + 1];
        if (ls > 0.0f) l_all += ls * exp(pr[s * row] - m_all);
    }
    if (args.has_sinks) l_all += exp(sinks[head] - m_all);  // in the denominator only (gpt-oss)
    const float inv_l = 1.0f / l_all;

    device float* o = (device float*)(out + t * args.out_stride) + head * hd;
    for (int d = tiisg; d < hd; d += FG_SIMD_WIDTH) {
        float a = 0.0f;
        for (int s = 0; s < args.n_splits; ++s) {
            const float ls = pr[s * row + 1];
            if (ls > 0.0f) a += pr[s * row + 2 + d] * exp(pr[s * row] - m_all);
        }
        o[d] = a * inv_l;
    }
}

// Prefill: FG_ATTN_BQ queries of one head share each K/V tile loaded into threadgroup
// memory. Simdgroup s owns queries q0 + s * QPS .. + QPS, each with its own online
// softmax; no merge is needed since no two simdgroups share a query.
#define ATTN_QPS (FG_ATTN_BQ / FG_ATTN_SIMDGROUPS)

kernel void attention_prefill_f16(
        constant attention_prefill_args & args [[buffer(0)]],
        device const char * q          [[buffer(1)]],
        device const char * k_cache    [[buffer(2)]],
        device const char * v_cache    [[buffer(3)]],
        device       char * out        [[buffer(4)]],
        device const float * sinks     [[buffer(5)]],
        device const int   * rows      [[buffer(6)]],
        threadgroup half  * kv_tile    [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiitg [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int head = tgpig.y;
    const int q0 = int(tgpig.x) * FG_ATTN_BQ;
    const int hd = args.head_dim;
    const int kv_head = head / (args.n_heads / args.n_kv_heads);
    const int tile = args.tile_keys;
    threadgroup half* kt = kv_tile;               // [tile][hd]
    threadgroup half* vt = kv_tile + tile * hd;   // [tile][hd]
    const int q_end = min(q0 + FG_ATTN_BQ, args.n_queries);

    float qv[ATTN_QPS][ATTN_DPL];
    float acc[ATTN_QPS][ATTN_DPL];
    float m[ATTN_QPS];
    float l[ATTN_QPS];
    for (int j = 0; j < ATTN_QPS; ++j) {
        const int t = min(q0 + sgitg * ATTN_QPS + j, args.n_queries - 1);  // clamped rows are not stored
        device const float* qh = (device const float*)(q + t * args.q_stride) + head * hd;
        for (int i = 0; i < ATTN_DPL; ++i) {
            const int d = tiisg + FG_SIMD_WIDTH * i;
            qv[j][i] = d < hd ? qh[d] * args.scale : 0.0f;
            acc[j][i] = 0.0f;
        }
        m[j] = ATTN_NEG_BIG;
        l[j] = 0.0f;
    }

    // Runs of queries r_begin .. r_end - 1 of one sequence at consecutive positions (query t at
    // run_pos0 + t, its keys from cache row `base` on): the whole block without a row table.
    // Every thread finds the same runs, so the barriers below stay uniform.
    for (int r_begin = q0; r_begin < q_end;) {
        const int base = args.has_rows != 0 ? rows[2 * r_begin + 1] : 0;
        const int run_pos0 = (args.has_rows != 0 ? rows[2 * r_begin] : args.pos0 + r_begin) - r_begin;
        int r_end = r_begin + 1;
        if (args.has_rows == 0) r_end = q_end;
        while (r_end < q_end && rows[2 * r_end + 1] == base && rows[2 * r_end] == run_pos0 + r_end) ++r_end;
        device const char* keys = k_cache + uint64_t(base) * args.kv_stride;
        device const char* values = v_cache + uint64_t(base) * args.kv_stride;
        // Keys kv_first .. kv_end - 1: from the run's first query's window start to its last query.
        const int kv_end = run_pos0 + r_end;
        const int kv_first = args.window > 0 ? max(0, run_pos0 + r_begin + 1 - args.window) : 0;

        for (int k0 = kv_first; k0 < kv_end; k0 += tile) {
            const int n_keys = min(tile, kv_end - k0);
            for (int e = tiitg; e < n_keys * hd; e += FG_ATTN_SIMDGROUPS * FG_SIMD_WIDTH) {
                const int key = k0 + e / hd;
                const int d = e % hd;
                kt[e] = ((device const half*)(keys + key * args.kv_stride))[kv_head * hd + d];
                vt[e] = ((device const half*)(values + key * args.kv_stride))[kv_head * hd + d];
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);

            for (int kk = 0; kk < n_keys; ++kk) {
                const int key = k0 + kk;
                for (int j = 0; j < ATTN_QPS; ++j) {
                    const int t = q0 + sgitg * ATTN_QPS + j;
                    // in this run, causal, and within the window; uniform per simdgroup
                    if (t < r_begin || t >= r_end || key > run_pos0 + t) continue;
                    if (args.window > 0 && key <= run_pos0 + t - args.window) continue;
                    float partial = 0.0f;
                    for (int i = 0; i < ATTN_DPL; ++i) {
                        const int d = tiisg + FG_SIMD_WIDTH * i;
                        if (d < hd) partial += qv[j][i] * float(kt[kk * hd + d]);
                    }
                    float s = simd_sum(partial);
                    if (args.softcap > 0.0f) s = args.softcap * precise::tanh(s / args.softcap);  // Gemma 2
                    const float m_new = max(m[j], s);
                    const float corr = exp(m[j] - m_new);
                    const float p = exp(s - m_new);
                    l[j] = l[j] * corr + p;
                    for (int i = 0; i < ATTN_DPL; ++i) {
                        const int d = tiisg + FG_SIMD_WIDTH * i;
                        acc[j][i] = acc[j][i] * corr + (d < hd ? p * float(vt[kk * hd + d]) : 0.0f);
                    }
                    m[j] = m_new;
                }
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);  // the tile is overwritten next
        }
        r_begin = r_end;
    }

    for (int j = 0; j < ATTN_QPS; ++j) {
        const int t = q0 + sgitg * ATTN_QPS + j;
        if (t >= args.n_queries) continue;
        device float* o = (device float*)(out + t * args.out_stride) + head * hd;
        // key pos0 + t is always attended: l > 0; a sink joins the denominator only (gpt-oss)
        const float inv_l = 1.0f / (l[j] + (args.has_sinks ? exp(sinks[head] - m[j]) : 0.0f));
        for (int i = 0; i < ATTN_DPL; ++i) {
            const int d = tiisg + FG_SIMD_WIDTH * i;
            if (d < hd) o[d] = acc[j][i] * inv_l;
        }
    }
}
