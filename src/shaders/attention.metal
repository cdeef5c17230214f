// Causal attention over the f16 KV cache, one kernel for decode and prefill.
//
// Query t (at position pos0 + t) attends to cache rows 0 .. pos0 + t (the last `window` of
// them with sliding-window attention); with a row table (a batch of sequences), query t at
// position rows[t][0] attends to its sequence's rows from rows[t][1] on. Those keys are cut
// into chunks (flash-decoding: a long context spreads over many threadgroups even for a single
// query), each query by its own key count (kernel_args.h fg_attn_splits), so a query's bits do
// not depend on the other queries of the dispatch. GQA: query head h reads kv head h / (n_heads / n_kv_heads), so
// one threadgroup serves several query heads of one KV head (split, head block, query): each
// K/V row it loads is used by all of them, and the cache is read once per query rather than
// once per query head. Its FG_ATTN_SIMDGROUPS simdgroups take every 4th key of the chunk,
// each keeping an online softmax per head (running max m, running sum l, weighted sum of V
// rows acc), then merge in threadgroup memory. There is no length cap: the loop runs over
// the keys in place. Instantiated per head-size class (DPL elements per lane), so registers
// hold just the lanes' slices: a block has at most FG_ATTN_QREGS / DPL heads (8 at head_dim
// 64, 4 at 128, 2 at 256, 1 at 512 and 576), which keeps query and accumulator registers at 2 x 16 per lane.
#include <metal_stdlib>
using namespace metal;

#include "kernel_args.h"

// Finite "minus infinity": stays well defined when the compiler assumes no infinities.
#define ATTN_NEG_BIG (-1.0e30f)

template <int DPL>  // head elements per lane: head_dim <= 32 * DPL
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
        uint3  tgpg  [[threadgroups_per_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    constexpr int GROUP = FG_ATTN_QREGS / DPL > 0 ? FG_ATTN_QREGS / DPL : 1;  // query heads per threadgroup, at most
    const int split = tgpig.x;
    const int t = tgpig.z;
    const int hd = args.head_dim;
    // grid.y blocks of n_heads / grid.y consecutive query heads, all of one KV head (the
    // host makes the block size divide the GQA group and at most GROUP).
    const int n_qh = args.n_heads / int(tgpg.y);
    const int head0 = tgpig.y * n_qh;
    const int kv_head = head0 / (args.n_heads / args.n_kv_heads);
    const int kv_len = (args.has_rows != 0 ? rows[2 * t] : args.pos0 + t) + 1;
    // This query's sequence's cache rows (all of the bound cache without a row table).
    const uint64_t seq_base = args.has_rows != 0 ? uint64_t(rows[2 * t + 1]) * args.kv_stride : 0;
    device const char* keys = k_cache + seq_base;
    device const char* values = v_cache + seq_base;
    const int span = fg_attn_span(kv_len, args.window);  // the keys it sees: kv_len - span .. kv_len - 1
    const int n_splits = fg_attn_splits(span, args.max_splits, args.min_split_len);
    if (split >= n_splits) return;  // the grid has the longest query's splits (the whole threadgroup returns)
    const int split_len = fg_attn_split_len(span, n_splits);
    const int k_begin = kv_len - span + split * split_len;
    const int k_end = min(k_begin + split_len, kv_len);

    // The block's query heads (n_qh x hd contiguous floats) go through threadgroup memory,
    // read from device memory once rather than once per simdgroup.
    device const float* qb = (device const float*)(q + t * args.q_stride) + head0 * hd;
    for (int i = sgitg * FG_SIMD_WIDTH + tiisg; i < n_qh * hd; i += FG_ATTN_SIMDGROUPS * FG_SIMD_WIDTH)
        shmem[i] = qb[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // This lane's slice of each query head: elements tiisg + 32 j, pre-scaled.
    float qv[GROUP][DPL];
    float acc[GROUP][DPL];
    float m[GROUP];
    float l[GROUP];
    for (int g = 0; g < GROUP; ++g) {
        for (int j = 0; j < DPL; ++j) {
            const int d = tiisg + FG_SIMD_WIDTH * j;
            qv[g][j] = g < n_qh && d < hd ? shmem[g * hd + d] * args.scale : 0.0f;
            acc[g][j] = 0.0f;
        }
        m[g] = ATTN_NEG_BIG;
        l[g] = 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);  // shmem holds the merge states next

    // Two keys per step (k and k + FG_ATTN_SIMDGROUPS): their two reductions are
    // independent, so the GPU overlaps them. A second key past the end weighs nothing.
    // Each K and V row is loaded once into registers and used by every head of the block.
    for (int k = k_begin + sgitg; k < k_end; k += 2 * FG_ATTN_SIMDGROUPS) {
        const bool has2 = k + FG_ATTN_SIMDGROUPS < k_end;
        const int k2 = has2 ? k + FG_ATTN_SIMDGROUPS : k;
        device const half* kr1 = (device const half*)(keys + k * args.kv_stride) + kv_head * hd;
        device const half* kr2 = (device const half*)(keys + k2 * args.kv_stride) + kv_head * hd;
        device const half* vr1 = (device const half*)(values + k * args.kv_stride) + kv_head * hd;
        device const half* vr2 = (device const half*)(values + k2 * args.kv_stride) + kv_head * hd;
        float k1v[DPL], k2v[DPL], v1v[DPL], v2v[DPL];
        for (int j = 0; j < DPL; ++j) {
            const int d = tiisg + FG_SIMD_WIDTH * j;
            const bool in = d < hd;
            k1v[j] = in ? float(kr1[d]) : 0.0f;
            k2v[j] = in && has2 ? float(kr2[d]) : 0.0f;
            v1v[j] = in ? float(vr1[d]) : 0.0f;
            v2v[j] = in && has2 ? float(vr2[d]) : 0.0f;
        }
        for (int g = 0; g < GROUP; ++g) {
            if (g >= n_qh) break;  // uniform over the threadgroup
            float partial1 = 0.0f;
            float partial2 = 0.0f;
            for (int j = 0; j < DPL; ++j) {
                partial1 += qv[g][j] * k1v[j];
                partial2 += qv[g][j] * k2v[j];
            }
            float s1 = simd_sum(partial1);
            float s2 = simd_sum(partial2);
            if (args.softcap > 0.0f) {  // Gemma 2: scores squashed into (-softcap, softcap)
                s1 = args.softcap * precise::tanh(s1 / args.softcap);
                s2 = args.softcap * precise::tanh(s2 / args.softcap);
            }
            s2 = has2 ? s2 : ATTN_NEG_BIG;
            const float m_new = max(m[g], max(s1, s2));
            const float corr = exp(m[g] - m_new);
            const float p1 = exp(s1 - m_new);
            const float p2 = has2 ? exp(s2 - m_new) : 0.0f;
            l[g] = l[g] * corr + p1 + p2;
            for (int j = 0; j < DPL; ++j) acc[g][j] = acc[g][j] * corr + p1 * v1v[j] + p2 * v2v[j];
            m[g] = m_new;
        }
    }

    // Merge the simdgroups' states, head by head: shmem[(g * FG_ATTN_SIMDGROUPS + sg) * row]
    // = m, l, acc[0 .. hd).
    const int row = hd + 2;
    for (int g = 0; g < n_qh; ++g) {
        threadgroup float* mine = shmem + (g * FG_ATTN_SIMDGROUPS + sgitg) * row;
        if (tiisg == 0) {
            mine[0] = m[g];
            mine[1] = l[g];
        }
        for (int j = 0; j < DPL; ++j) {
            const int d = tiisg + FG_SIMD_WIDTH * j;
            if (d < hd) mine[2 + d] = acc[g][j];
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Simdgroup s writes heads s, s + FG_ATTN_SIMDGROUPS, ... of the block.
    for (int g = sgitg; g < n_qh; g += FG_ATTN_SIMDGROUPS) {
        const int head = head0 + g;
        threadgroup const float* st = shmem + g * FG_ATTN_SIMDGROUPS * row;  // [sg][row]
        float m_all = ATTN_NEG_BIG;
        for (int s = 0; s < FG_ATTN_SIMDGROUPS; ++s)
            if (st[s * row + 1] > 0.0f) m_all = max(m_all, st[s * row]);
        float w[FG_ATTN_SIMDGROUPS];
        float l_all = 0.0f;
        for (int s = 0; s < FG_ATTN_SIMDGROUPS; ++s) {
            const float ls = st[s * row + 1];
            w[s] = ls > 0.0f ? exp(st[s * row] - m_all) : 0.0f;  // empty states weigh nothing
            l_all += ls * w[s];
        }

        if (n_splits == 1) {
            device float* o = (device float*)(out + t * args.out_stride) + head * hd;
            if (args.has_sinks) l_all += exp(sinks[head] - m_all);  // in the denominator only (gpt-oss)
            const float inv_l = 1.0f / l_all;  // split 0 always holds key k_first: l_all > 0
            for (int d = tiisg; d < hd; d += FG_SIMD_WIDTH) {
                float a = 0.0f;
                for (int s = 0; s < FG_ATTN_SIMDGROUPS; ++s) a += st[s * row + 2 + d] * w[s];
                o[d] = a * inv_l;
            }
        } else {
            const int pidx = (t * args.n_heads + head) * int(tgpg.x) + split;
            device float* pr = partials + pidx * hd;
            device float2* stats = (device float2*)(partials + FG_ATTN_STATS_AT(int(tgpg.z) * args.n_heads * int(tgpg.x), hd));
            if (tiisg == 0) stats[pidx] = float2(m_all, l_all);
            for (int d = tiisg; d < hd; d += FG_SIMD_WIDTH) {
                float a = 0.0f;
                for (int s = 0; s < FG_ATTN_SIMDGROUPS; ++s) a += st[s * row + 2 + d] * w[s];
                pr[d] = a;
            }
        }
    }
}

typedef decltype(attention_f16<2>) attention_f16_t;
template [[host_name("attention_f16_d64")]] kernel attention_f16_t attention_f16<2>;
template [[host_name("attention_f16_d128")]] kernel attention_f16_t attention_f16<4>;
template [[host_name("attention_f16_d256")]] kernel attention_f16_t attention_f16<8>;
template [[host_name("attention_f16_d512")]] kernel attention_f16_t attention_f16<16>;
template [[host_name("attention_f16_d576")]] kernel attention_f16_t attention_f16<18>;  // latent attention's rows

// Latent attention's decode (DeepSeek's absorbed MLA: one cached row of latent + rope values per
// token, every query head attending to it, V the same row). attention_f16_d576's registers hold
// one 576-wide head a threadgroup, so each head's threadgroup would load the rows itself (16x
// the rows at 16 heads). Here a threadgroup of G simdgroups (up to FG_LATENT_MAX_HEADS) serves G
// heads, one each: it stages FG_LATENT_TILE_KEYS rows at a time in threadgroup memory
// (consecutive threads load consecutive words: whole lines), and every simdgroup scores its head
// against each staged row and adds the row, weighted, to its values: the rows are read once per G
// heads. Splits (of at least FG_LATENT_MIN_SPLIT_LEN keys), the row table and the outputs (out,
// or partials for attention_reduce) are attention_f16's.
kernel void attention_latent_f16(
        constant attention_args & args [[buffer(0)]],
        device const char * q          [[buffer(1)]],
        device const char * k_cache    [[buffer(2)]],
        device const char * v_cache    [[buffer(3)]],  // the same rows as k_cache: unread
        device       char * out        [[buffer(4)]],
        device      float * partials   [[buffer(5)]],
        device const float * sinks     [[buffer(6)]],  // unused: no sinks with latent attention
        device const int   * rows      [[buffer(7)]],
        threadgroup half * tile        [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        uint3  tgpg  [[threadgroups_per_grid]],
        uint3  tptg  [[thread_position_in_threadgroup]],
        uint3  ntg   [[threads_per_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    constexpr int DPL = 18;  // head elements per lane: head_dim <= 576
    const int split = tgpig.x;
    const int t = tgpig.z;
    const int hd = args.head_dim;
    const int head = tgpig.y * (int(ntg.x) / FG_SIMD_WIDTH) + sgitg;  // this simdgroup's query head
    const int kv_len = (args.has_rows != 0 ? rows[2 * t] : args.pos0 + t) + 1;
    const uint64_t seq_base = args.has_rows != 0 ? uint64_t(rows[2 * t + 1]) * args.kv_stride : 0;
    device const char* keys = k_cache + seq_base;
    const int span = fg_attn_span(kv_len, args.window);
    const int n_splits = fg_attn_splits(span, args.max_splits, args.min_split_len);
    if (split >= n_splits) return;  // the whole threadgroup
    const int split_len = fg_attn_split_len(span, n_splits);
    const int k_begin = kv_len - span + split * split_len;
    const int k_end = min(k_begin + split_len, kv_len);

    // This lane's slice of its head's query (elements tiisg + 32 j, pre-scaled) and values.
    device const float* qh = (device const float*)(q + t * args.q_stride) + head * hd;
    float qv[DPL];
    float acc[DPL];
    for (int j = 0; j < DPL; ++j) {
        const int d = tiisg + FG_SIMD_WIDTH * j;
        qv[j] = d < hd ? qh[d] * args.scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = ATTN_NEG_BIG;
    float l = 0.0f;
    const int words = hd / 2;  // half2 words a row (head_dim is even)
    for (int k0 = k_begin; k0 < k_end; k0 += FG_LATENT_TILE_KEYS) {
        const int nk = min(FG_LATENT_TILE_KEYS, k_end - k0);
        for (int i = int(tptg.x); i < nk * words; i += int(ntg.x)) {  // rows k0 .. k0 + nk - 1
            const int r = i / words;
            ((threadgroup half2*)tile)[i] = ((device const half2*)(keys + (k0 + r) * args.kv_stride))[i - r * words];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int r = 0; r < nk; ++r) {
            threadgroup const half* kr = tile + r * hd;
            float kv[DPL];
            float partial = 0.0f;
            for (int j = 0; j < DPL; ++j) {
                const int d = tiisg + FG_SIMD_WIDTH * j;
                kv[j] = d < hd ? float(kr[d]) : 0.0f;
                partial += qv[j] * kv[j];
            }
            const float s = simd_sum(partial);
            const float m_new = max(m, s);
            const float corr = exp(m - m_new);
            const float p = exp(s - m_new);
            l = l * corr + p;
            for (int j = 0; j < DPL; ++j) acc[j] = acc[j] * corr + p * kv[j];
            m = m_new;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the tile is staged again next
    }

    if (n_splits == 1) {
        device float* o = (device float*)(out + t * args.out_stride) + head * hd;
        const float inv_l = 1.0f / l;  // the split holds at least one key: l > 0
        for (int j = 0; j < DPL; ++j) {
            const int d = tiisg + FG_SIMD_WIDTH * j;
            if (d < hd) o[d] = acc[j] * inv_l;
        }
    } else {
        const int pidx = (t * args.n_heads + head) * int(tgpg.x) + split;
        device float* pr = partials + pidx * hd;
        device float2* stats = (device float2*)(partials + FG_ATTN_STATS_AT(int(tgpg.z) * args.n_heads * int(tgpg.x), hd));
        if (tiisg == 0) stats[pidx] = float2(m, l);
        for (int j = 0; j < DPL; ++j) {
            const int d = tiisg + FG_SIMD_WIDTH * j;
            if (d < hd) pr[d] = acc[j];
        }
    }
}

// Combines the partial states of one (head, query), its own splits (as attention_f16 cut its
// keys): one simdgroup per pair. Lane s takes the (max, sum) of splits s, s + 32, ...; the splits'
// weights go through threadgroup memory, so every partial is read once. A query of one split
// was written whole by attention_f16.
kernel void attention_reduce(
        constant attention_reduce_args & args [[buffer(0)]],
        device const float * partials [[buffer(1)]],
        device       char  * out      [[buffer(2)]],
        device const float * sinks    [[buffer(3)]],
        device const int   * rows     [[buffer(4)]],
        threadgroup float * weights   [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        uint3  tgpg  [[threadgroups_per_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int head = tgpig.x;
    const int t = tgpig.y;
    const int hd = args.head_dim;
    const int kv_len = (args.has_rows != 0 ? rows[2 * t] : args.pos0 + t) + 1;
    const int ns = fg_attn_splits(fg_attn_span(kv_len, args.window), args.max_splits, args.min_split_len);
    if (ns == 1) return;  // uniform: the threadgroup is one simdgroup
    const int pidx = (t * args.n_heads + head) * args.n_splits;
    device const float* acc = partials + pidx * hd;  // [ns][hd]
    device const float2* stats = (device const float2*)(partials + FG_ATTN_STATS_AT(int(tgpg.y) * args.n_heads * args.n_splits, hd)) + pidx;

    // This lane's splits merged online (an empty split, sum 0, weighs nothing), then across lanes.
    float m_lane = ATTN_NEG_BIG;
    float l_lane = 0.0f;
    for (int s = tiisg; s < ns; s += FG_SIMD_WIDTH) {
        const float2 ml = stats[s];
        if (ml.y > 0.0f) {
            const float m_new = max(m_lane, ml.x);
            l_lane = l_lane * exp(m_lane - m_new) + ml.y * exp(ml.x - m_new);
            m_lane = m_new;
        }
        weights[s] = ml.y > 0.0f ? ml.x : ATTN_NEG_BIG;  // the split's max, weighted below
    }
    const float m_all = simd_max(m_lane);
    float l_all = simd_sum(l_lane > 0.0f ? l_lane * exp(m_lane - m_all) : 0.0f);
    for (int s = tiisg; s < ns; s += FG_SIMD_WIDTH)
        weights[s] = weights[s] > ATTN_NEG_BIG ? exp(weights[s] - m_all) : 0.0f;  // each lane its own splits
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (args.has_sinks) l_all += exp(sinks[head] - m_all);  // in the denominator only (gpt-oss)
    const float inv_l = 1.0f / l_all;

    device float* o = (device float*)(out + t * args.out_stride) + head * hd;
    for (int d = tiisg; d < hd; d += FG_SIMD_WIDTH) {
        float a = 0.0f;
        for (int s = 0; s < ns; ++s) a += acc[s * hd + d] * weights[s];
        o[d] = a * inv_l;
    }
}

// Prefill: FG_ATTN_BQ queries of one head share each K/V tile loaded into threadgroup
// memory. Simdgroup s owns queries q0 + s * QPS .. + QPS, each with its own online
// softmax; no merge is needed since no two simdgroups share a query.
#define ATTN_QPS (FG_ATTN_BQ / FG_ATTN_SIMDGROUPS)

template <int ATTN_DPL>  // head elements per lane: head_dim <= 32 * ATTN_DPL
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

// Three head-size classes: up to 256 (8 elements per lane), Gemma 4's 512 global heads (16) and
// latent attention's 576-wide rows (18),
// so the smaller heads keep their registers.
typedef decltype(attention_prefill_f16<8>) attention_prefill_f16_t;
template [[host_name("attention_prefill_f16")]] kernel attention_prefill_f16_t attention_prefill_f16<8>;
template [[host_name("attention_prefill_f16_d512")]] kernel attention_prefill_f16_t attention_prefill_f16<16>;
template [[host_name("attention_prefill_f16_d576")]] kernel attention_prefill_f16_t attention_prefill_f16<18>;
