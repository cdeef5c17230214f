// Argument structs of the Metal kernels, shared by the C++ ops layer
// (src/cpp/backends/metal/) and the .metal sources. Each kernel takes its struct
// as `constant <name>_args & args [[buffer(0)]]`; buffers follow in slots 1..n in
// the order given in the comment above each struct.
//
// Conventions (as in llama.cpp's ggml-metal-impl.h): element counts are int32_t,
// byte strides uint64_t. Fields are ordered widest-first so host and MSL layouts
// agree without implicit padding; the static_asserts below pin the sizes on the host.
#ifndef FORGERT_KERNEL_ARGS_H
#define FORGERT_KERNEL_ARGS_H

#include "../cpp/core/quant_blocks.h"

#if defined(__METAL_VERSION__)
#define FG_ARGS_ASSERT(c, m)
#else
#define FG_ARGS_ASSERT(c, m) static_assert(c, m)
#endif

// Simdgroup width the kernels are written for (every Apple GPU since A7 / M1).
#define FG_SIMD_WIDTH 32

// --- mul_mv: out[t, r] = sum_c w[r, c] * x[t, c] for a few tokens (decode) ---
// (or out[t, r] += ... with accumulate)
// slots: 1 w (any weight type), 2 x f32 [n_tokens, cols], 3 out f32 [n_tokens, rows]
// grid: (ceil(rows / FG_MV_ROWS_PER_TG), n_tokens); threads: FG_MV_SIMDGROUPS * 32
#define FG_MV_ROWS_PER_SIMDGROUP 4
#define FG_MV_SIMDGROUPS 2
#define FG_MV_ROWS_PER_TG (FG_MV_ROWS_PER_SIMDGROUP * FG_MV_SIMDGROUPS)
// mul_mv_staged_<type> (every weight type; mul_mv_swiglu_staged_, mul_mv_id_staged_ alike): the
// same product with every device load covering whole lines: each simdgroup copies its rows a
// window of FG_MV_WINDOW_BLOCKS 32-weight blocks at a time into threadgroup memory (16-byte
// pieces from 128-byte boundaries), the threadgroup x's window once; then dots it, 8 lanes a block.
// x is requested once per threadgroup, so a threadgroup takes as many rows as the matrix allows
// while still filling the GPU (the rule and why: metal_ops.cpp, gemv_tg_rows): args.sg_rows rows
// per simdgroup (FG_MV_ROWS_PER_SIMDGROUP or FG_MV_STAGED_MAX_SG_ROWS), up to 32 simdgroups.
// grid: (ceil(rows / (sg_rows * simdgroups)), n_tokens); threads: simdgroups * 32
// threadgroup memory 0: FG_MV_STAGED_TG_BYTES(window bytes of the type, simdgroups)
#define FG_MV_WINDOW_BLOCKS 16
#define FG_MV_STAGED_MAX_SG_ROWS 8
// x's window: 32-float blocks FG_MV_X_PITCH floats apart, 16 banks (of 4 bytes) from one block to
// the next: the 4-bit types' lanes read float2s of 4 chunks at once (mul_mv_parts.h), 16 words of
// each, and chunks c and c + 1 take the two halves of the 32 banks
#define FG_MV_X_PITCH 48
// x's window, then per simdgroup a window of one row (window_bytes: FG_MV_WINDOW_BLOCKS blocks of
// the type; 0 for float weights, which load directly) plus its alignment offset and a partial piece
#define FG_MV_STAGED_TG_BYTES(window_bytes, simdgroups) \
    (FG_MV_WINDOW_BLOCKS * FG_MV_X_PITCH * 4 + ((window_bytes) ? (simdgroups) * ((window_bytes) / 16 + 2) * 16 : 0))
typedef struct {
    uint64_t w_stride;    // bytes between weight rows
    uint64_t x_stride;    // bytes between token rows of x
    uint64_t out_stride;  // bytes between token rows of out
    int32_t rows;
    int32_t cols;
    int32_t x_vec4;       // 1: x rows are 16-byte aligned and cols % 4 == 0 (float4 loads)
    int32_t w_vec4;       // 1: float weight rows allow 4-wide loads (cols % 4 == 0, aligned)
    int32_t accumulate;   // 1: out += w x (the residual add fused in); 0: out = w x
    int32_t gelu;         // mul_mv_swiglu only: 1: the gate's activation is tanh-GELU (GeGLU), 0: SiLU
    int32_t w_align;      // staged kernels: address of w's first byte % 128 (where its lines start)
    int32_t w_up_align;   // the same for mul_mv_swiglu's w_up
    int32_t sg_rows;      // staged kernels: rows per simdgroup (<= FG_MV_STAGED_MAX_SG_ROWS)
    int32_t pad0;
} mul_mv_args;
FG_ARGS_ASSERT(sizeof(mul_mv_args) == 64, "mul_mv_args layout");
// mul_mv_swiglu_<type>: out[t, r] = silu(sum_c w[r, c] x[t, c]) * sum_c w_up[r, c] x[t, c], the
// feed-forward's gate and up projections and SiLU * mul in one pass over x (tanh-GELU instead of
// SiLU with args.gelu: Gemma's GeGLU).
// slots: 1 w (gate), 2 x, 3 out, 4 w_up (w's type and shape); args and grid as mul_mv
// mul_mv_tokens_<type> (mul_mv_swiglu_tokens_<type> alike): mul_mv_staged's product for several
// decode rows (tokens), up to FG_MV_TOKENS of them per threadgroup: each row window of the weights
// is copied into threadgroup memory once and dotted with every token's x, each token's sums computed
// as mul_mv_staged computes them for the token alone (the same lane parts, chunk order, float
// operations and reduction: its bits do not depend on the other tokens), so the weights are
// requested once per FG_MV_TOKENS tokens instead of once per token. A window is
// FG_MV_TOKENS_WINDOW_BLOCKS blocks (a lane's chunks come in the same order whatever the window).
// 8 tokens and 8-block windows: the most tokens whose x windows fit beside 32 simdgroups' copies in
// 32 KB for every type (Q8_0: 22016 bytes; 16 tokens would take 34304, 8 tokens of 16-block
// windows 43008); 8 decode rows then request 1.01-1.13x one row's bytes at SmolLM2's 576 x 1536
// (tests/test_metal_traffic.py, test_gemv_tokens_traffic), a ninth row's group the weights again.
// slots as mul_mv; grid: (ceil(rows / (sg_rows * simdgroups)), ceil(n_tokens / FG_MV_TOKENS));
// threads: simdgroups * 32; threadgroup memory 0: FG_MV_TOKENS_TG_BYTES(window bytes of the type,
// min(n_tokens, FG_MV_TOKENS), simdgroups)
#define FG_MV_TOKENS 8
#define FG_MV_TOKENS_WINDOW_BLOCKS 8
#define FG_MV_TOKENS_TG_BYTES(window_bytes, tokens, simdgroups)               \
    ((tokens) * FG_MV_TOKENS_WINDOW_BLOCKS * FG_MV_X_PITCH * 4 +                \
     ((window_bytes) ? (simdgroups) * ((window_bytes) / 16 + 2) * 16 : 0))
typedef struct {
    mul_mv_args mv;    // the matrix and strides as for mul_mv_staged
    int32_t n_tokens;  // rows of x and out
    int32_t pad0;
    int32_t pad1;
    int32_t pad2;
} mul_mv_tokens_args;
FG_ARGS_ASSERT(sizeof(mul_mv_tokens_args) == 80, "mul_mv_tokens_args layout");

// --- mul_mm: the same product for many tokens (prefill), on 8x8 simdgroup matrices ---
// slots: 1 w, 2 x, 3 out (as mul_mv)
// grid: (ceil(rows / FG_MM_TILE_ROWS), ceil(n_tokens / FG_MM_TILE_TOKENS)); threads: 128
// threadgroup memory 0: FG_MM_TG_BYTES(2) for f16 and quantized weights, FG_MM_TG_BYTES(4) for f32, bf16
#define FG_MM_TILE_ROWS 64    // weight rows per threadgroup
#define FG_MM_TILE_TOKENS 32  // tokens per threadgroup
#define FG_MM_TILE_K 32       // reduction depth per step: one quant block per weight row
#define FG_MM_THREADS 128
// w tile [64][32] of w_bytes-wide values (half: 2, f32/bf16 weights: 4) + x tile [32][32]
// f32; the output tile [32][64] f32 (8 KB) reuses the space, so it is at least that.
#define FG_MM_TG_BYTES(w_bytes) ((FG_MM_TILE_ROWS * (w_bytes) + FG_MM_TILE_TOKENS * 4) * FG_MM_TILE_K)
typedef struct {
    uint64_t w_stride;
    uint64_t x_stride;
    uint64_t out_stride;
    int32_t rows;
    int32_t cols;
    int32_t n_tokens;
    int32_t accumulate;   // 1: out += w x; 0: out = w x
} mul_mm_args;
FG_ARGS_ASSERT(sizeof(mul_mm_args) == 40, "mul_mm_args layout");

// --- rms_norm: out[t, :] = x[t, :] * rsqrt(mean(x[t, :]^2) + eps) * w; with center, LayerNorm
// without a bias: (x - mean(x)) * rsqrt(mean((x - mean(x))^2) + eps) * w (Cohere) ---
// slots: 1 x f32 [n, dim], 2 w f32 [dim], 3 out f32 [n, dim]
// grid: (n); threads: min(1024, 32 * ceil(dim / 32)); threadgroup memory 0: 32 floats
typedef struct {
    uint64_t x_stride;
    uint64_t out_stride;
    int32_t dim;
    float eps;
    int32_t accumulate;   // 1: out += the normed row (a post-norm fused with its residual add); 0: out =
    int32_t center;       // 1: subtract the row's mean first (LayerNorm); 0: RMSNorm
} rms_norm_args;
FG_ARGS_ASSERT(sizeof(rms_norm_args) == 32, "rms_norm_args layout");

// --- rope_kv_write: rope on q and k (in place), then k and v into the f16 caches ---
// slots: 1 q f32 [n, n_heads * head_dim], 2 k f32 [n, kv_dim], 3 v f32 [n, kv_dim],
//        4 k_cache f16, 5 v_cache f16 (both bound at row pos0; at row 0 with has_rows),
//        6 freqs f32 [rope_dim / 2], 7 rows i32 [n, 2] (or unused): with has_rows, row t sits at
//        position rows[t][0] and goes to cache row rows[t][1] + rows[t][0] (a batch of sequences)
// grid: (1, n); threads: a multiple of FG_ROPE_LANES(head_dim) (threads per head; fewer if
// the pipeline allows fewer), one slot of lanes per head up to n_heads + n_kv_heads + n_v_heads
// (q heads, then k heads, then v heads; slots loop over them)
// threadgroup memory 0: rope_dim / 2 float2 (cos, sin) per pair
#define FG_ROPE_LANES(head_dim) ((head_dim) / 2 > 32 ? ((head_dim) / 2 + 31) / 32 * 32 : 32)
typedef struct {
    uint64_t q_stride;
    uint64_t k_stride;
    uint64_t v_stride;
    uint64_t cache_stride;  // k and v caches alike
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t pos0;
    int32_t neox;      // 0: pairs (x[2j], x[2j+1]); 1: pairs (x[j], x[j + rope_dim/2])
    int32_t rope_dim;  // the first rope_dim dims of a head rotate (0: none, NoPE); the rest pass through
    float attn_factor; // multiplies cos and sin (YaRN, LongRoPE)
    int32_t has_rows;  // 1: slot 7 holds each row's (position, first cache row); pos0 unused
    float q_temp_beta;    // query temperature (Llama 4, Mistral 3): a query row times
    int32_t q_temp_floor; // 1 + beta ln(floor(pos / floor) + 1) (1 below floor); beta 0: off
    int32_t n_v_heads;    // n_kv_heads, or 0 when V is read from the K cache (latent attention)
    int32_t pad_;
} rope_kv_write_args;
FG_ARGS_ASSERT(sizeof(rope_kv_write_args) == 80, "rope_kv_write_args layout");

// --- attention: causal attention over an f16 KV cache, flash-decoding style ---
// The span keys of query t (positions 0 .. pos0 + t, or the last `window` of them) are cut
// into fg_attn_splits(span, max_splits) chunks of fg_attn_split_len keys: each query its own
// cut, from its own key count, so that its bits do not depend on the other queries of the
// dispatch (a decode row gives the bits it gives alone: docs/design.md "Batch invariance").
// One threadgroup of FG_ATTN_SIMDGROUPS simdgroups handles one (split, block of query heads
// sharing one KV head, query) and keeps an online softmax per head; the grid has the splits
// of the longest query, and a threadgroup past its query's splits does nothing. A query of
// one split writes the normalized result to out; one of several writes partials that
// attention_reduce combines: acc rows, then the (max, sum) pairs (rows of hd floats stay
// line-aligned).
// slots: 1 q f32 [n, H * hd], 2 k_cache f16, 3 v_cache f16 [n_ctx, KV * hd],
//        4 out f32 [n, H * hd], 6 sinks f32 [H] (or unused),
//        5 partials f32: acc [n, H, S, hd], then (max, sum) [n, H, S, 2] from float
//          FG_ATTN_STATS_AT(n * H * S, hd) (8-byte aligned), S = the grid's splits
//        7 rows i32 [n, 2] (or unused): with has_rows, query t sits at position rows[t][0] of the
//        sequence whose cache rows start at rows[t][1] (a batch of sequences in one dispatch)
// kernels: attention_f16_d64 / _d128 / _d256 / _d512 for head_dim up to 64 / 128 / 256 / 512
//          (DPL = 2 / 4 / 8 / 16 elements per lane; _d512: Gemma 4's global layers)
// grid: (S, H / G, n) for G query heads per threadgroup (G divides H / KV, G <=
//       FG_ATTN_QREGS / DPL; the kernel reads G from the grid), S = fg_attn_splits of the
//       longest span; threads: FG_ATTN_SIMDGROUPS * 32
// threadgroup memory 0: FG_ATTN_TG_FLOATS(G, hd) floats (<= FG_ATTN_MAX_TG_BYTES bytes)
// attention_latent_f16: the same slots and args for latent attention's decode (one KV head of
// head_dim <= 576, V read from the K rows: slot 3 bound to them, unread; no sinks, no softcap):
// one simdgroup a query head, G heads a threadgroup sharing each staged tile of
// FG_LATENT_TILE_KEYS rows. grid: (S, H / G, n); threads: 32 G (G <= FG_LATENT_MAX_HEADS);
// threadgroup memory 0: FG_LATENT_TILE_KEYS * head_dim halfs
#define FG_LATENT_TILE_KEYS 16
#define FG_LATENT_MAX_HEADS 32
#define FG_ATTN_SIMDGROUPS 4
#define FG_ATTN_MAX_HEAD_DIM 576  // latent attention's cached rows (DeepSeek: 512 latent + 64 rope)
#define FG_ATTN_QREGS 16  // query elements per lane of a decode threadgroup: G x DPL, at most
#define FG_ATTN_TG_FLOATS(g, hd) ((g) * FG_ATTN_SIMDGROUPS * ((hd) + 2))
#define FG_ATTN_MAX_TG_BYTES 32768
#define FG_ATTN_STATS_AT(n_partials, hd) (((n_partials) * (hd) + 1) / 2 * 2)
#define FG_ATTN_MIN_SPLIT_LEN 128  // keys per split, at least (while the span allows)
// The keys a query at kv_len keys sees: all of them, or its window's.
static inline int32_t fg_attn_span(int32_t kv_len, int32_t window) {
    return window > 0 && window < kv_len ? window : kv_len;
}
// Latent attention's splits take at least this many keys: each split's threadgroup reads its
// heads' queries (G x 576 f32) once, 2 G / FG_LATENT_MIN_SPLIT_LEN of the rows' bytes (<= 6%).
#define FG_LATENT_MIN_SPLIT_LEN 512
// How many chunks a query's span keys are cut into: one per min_split_len keys
// (FG_ATTN_MIN_SPLIT_LEN, or FG_LATENT_MIN_SPLIT_LEN), at most max_splits (>= 1), and the
// chunks' length. Monotonic in span, so the longest query's count bounds every query's (the
// grid's splits).
static inline int32_t fg_attn_splits(int32_t span, int32_t max_splits, int32_t min_split_len) {
    const int32_t n = (span + min_split_len - 1) / min_split_len;
    return n < 1 ? 1 : n < max_splits ? n : max_splits;
}
static inline int32_t fg_attn_split_len(int32_t span, int32_t splits) { return (span + splits - 1) / splits; }
typedef struct {
    uint64_t q_stride;
    uint64_t kv_stride;   // bytes between cache rows (k and v)
    uint64_t out_stride;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t pos0;
    int32_t max_splits;   // a query's splits, at most (fg_attn_splits); the host's choice
    float scale;
    int32_t window;       // > 0: query t sees only keys pos0 + t - window + 1 .. pos0 + t
    float softcap;        // > 0: score s -> softcap * tanh(s / softcap) (Gemma 2); 0: none
    int32_t has_sinks;    // 1: slot 6 holds f32 [H] logits that join the softmax denominator (gpt-oss)
    int32_t has_rows;     // 1: slot 7 holds each query's (position, first cache row); pos0 unused
    int32_t min_split_len;  // keys a split takes at least (fg_attn_splits)
    int32_t pad0;
} attention_args;
FG_ARGS_ASSERT(sizeof(attention_args) == 72, "attention_args layout");

// attention_prefill: the same attention for a chunk of >= FG_ATTN_PREFILL_MIN_TOKENS
// queries. One threadgroup takes FG_ATTN_BQ consecutive queries of one head
// (FG_ATTN_BQ / FG_ATTN_SIMDGROUPS per simdgroup) and streams the keys they need through
// threadgroup memory in tiles of tile_keys rows of K and V, so each cache row is read from
// memory once per FG_ATTN_BQ queries instead of once per query.
// With has_rows (a batch of sequences), a block's queries go in runs of one sequence's
// consecutive positions, each run streaming its own sequence's keys (a block inside one
// prompt chunk is one run).
// slots: 1 q, 2 k_cache, 3 v_cache, 4 out (as attention_f16), 5 sinks f32 [H] (or unused),
//        6 rows i32 [n, 2] (or unused; as attention_f16's slot 7)
// grid: (ceil(n / FG_ATTN_BQ), H); threads: FG_ATTN_SIMDGROUPS * 32
// threadgroup memory 0: 2 * tile_keys * head_dim halfs (<= FG_ATTN_TILE_HALFS * 2 * 2 bytes)
#define FG_ATTN_PREFILL_MIN_TOKENS 8
#define FG_ATTN_BQ 8
#define FG_ATTN_TILE_HALFS 4096  // tile_keys * head_dim, per K or V tile
typedef struct {
    uint64_t q_stride;
    uint64_t kv_stride;
    uint64_t out_stride;
    int32_t n_queries;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t pos0;
    int32_t tile_keys;
    float scale;
    int32_t window;       // as in attention_args
    float softcap;        // as in attention_args
    int32_t has_sinks;    // 1: slot 5 holds the sinks f32 [H]
    int32_t has_rows;     // 1: slot 6 holds each query's (position, first cache row); pos0 unused
    int32_t pad0;
} attention_prefill_args;
FG_ARGS_ASSERT(sizeof(attention_prefill_args) == 72, "attention_prefill_args layout");

// attention_reduce: slots 1 partials (as attention_f16's), 2 out, 3 sinks f32 [H] (or unused),
// 4 rows i32 [n, 2] (or unused; as attention_f16's slot 7). Query t's own splits (from its span,
// as attention_f16 cut them) are merged; a query of one split was written by attention_f16.
// grid (H, n); threads: 32; threadgroup memory 0: n_splits floats
typedef struct {
    uint64_t out_stride;
    int32_t n_heads;
    int32_t head_dim;
    int32_t n_splits;     // the attention grid's splits (the partials' layout)
    int32_t max_splits;   // as attention_args
    int32_t pos0;         // as attention_args: where query t's keys end
    int32_t window;
    int32_t has_sinks;    // 1: slot 3 holds the sinks f32 [H]
    int32_t has_rows;     // 1: slot 4 holds each query's (position, first cache row); pos0 unused
    int32_t min_split_len;  // as attention_args
    int32_t pad0;
} attention_reduce_args;
FG_ARGS_ASSERT(sizeof(attention_reduce_args) == 48, "attention_reduce_args layout");

// --- elementwise over [n, dim] rows ---
// silu_mul: slots 1 gate, 2 up, 3 out.   add: slots 1 a, 2 b, 3 out (out may alias a).
// mul: slots 1 a, 2 b, 3 out (out may alias a or b).
// add_bias: slots 1 x (in place), 2 b f32 [dim], 3 unused.
// grid: (ceil(dim / 256), n); threads: 256
typedef struct {
    uint64_t a_stride;
    uint64_t b_stride;    // 0 for add_bias: the bias row is broadcast
    uint64_t out_stride;
    int32_t dim;
    int32_t pad0;
} elementwise_args;
FG_ARGS_ASSERT(sizeof(elementwise_args) == 32, "elementwise_args layout");

// --- copy_u32: dst[t, :] = src[t, :] as 32-bit words, any dtype (a KV slot's rows to another) ---
// slots: 1 src, 2 dst; grid: (ceil(words / 256), n); threads: 256
typedef struct {
    uint64_t src_stride;
    uint64_t dst_stride;
    int32_t words;        // 32-bit words per row (row bytes / 4)
    int32_t pad0;
} copy_args;
FG_ARGS_ASSERT(sizeof(copy_args) == 24, "copy_args layout");

// scale_f32: x *= value.  softcap_f32: x = value * tanh(x / value).  Both in place.
// slots: 1 x f32 [n, dim]; grid: (ceil(dim / 256), n); threads: 256
typedef struct {
    uint64_t x_stride;
    int32_t dim;
    float value;
} unary_args;
FG_ARGS_ASSERT(sizeof(unary_args) == 16, "unary_args layout");

// --- get_rows: out[t, :] = f32(table[ids[t], :]); an id outside [0, table_rows) gives zeros ---
// slots: 1 table (any weight type), 2 ids i32 [n], 3 out f32 [n, cols]
// grid: (ceil(cols / FG_GET_ROWS_WINDOW), n); threads: FG_SIMD_WIDTH (one window of a row each)
#define FG_GET_ROWS_WINDOW 2048  // columns: whole blocks of every type (a multiple of 256)
typedef struct {
    uint64_t table_stride;
    uint64_t out_stride;
    int32_t table_rows;
    int32_t cols;
    int32_t table_align;  // the table's address % 128 (quantized tables)
    int32_t block_cols;   // weights per block (quantized tables)
    int32_t block_bytes;  // bytes per block (quantized tables)
    int32_t pad0;
} get_rows_args;
FG_ARGS_ASSERT(sizeof(get_rows_args) == 40, "get_rows_args layout");

// --- argmax: out[t] = first index of the maximum of x[t, :], or a negative sentinel (argmax.h) ---
// The sentinels (core/backend.h's Backend::kArgmax*, the same values): the row holds a NaN; a +inf
// (no NaN); nothing above -inf. Bad bits: what a thread or candidate saw (a candidate's index -bits).
#define FG_ARGMAX_NAN (-1)
#define FG_ARGMAX_INF (-2)
#define FG_ARGMAX_NONE (-3)
#define FG_ARGMAX_BAD_NAN 1
#define FG_ARGMAX_BAD_INF 2
// slots: 1 x f32 [n, cols], 2 out i32 [n]
// grid: (n); threads: 1024 (fewer for short rows); threadgroup memory 0: 2 * 32 * 4 bytes
typedef struct {
    uint64_t x_stride;
    int32_t cols;
    int32_t pad0;
} argmax_args;
FG_ARGS_ASSERT(sizeof(argmax_args) == 16, "argmax_args layout");
// Greedy tokens whose logits nobody reads (decode), without writing them: mul_mv_argmax_staged_<type>
// (mul_mv_staged.metal) computes mul_mv_staged_<type>'s rows, the same bits (args, slots 1 w,
// 2 x, grid, threads and threadgroup memory as it), and writes instead each threadgroup's
// candidate (argmax.h's rule over its rows) into slot 3: per token row (out_stride bytes apart)
// grid.x values f32, then their grid.x indices i32 (INT32_MAX: no row above -inf; negative: minus
// the bad bits of a threadgroup whose rows held NaN or +inf), so that every
// load is of 4 bytes at any row alignment. Then argmax_partials (argmax.metal; argmax_args with
// x_stride = out_stride, cols = grid.x; as argmax_f32) picks each token's.

// --- mixture of experts (moe.metal; mul_mv_id_* in mul_mv.metal) ---
// moe_route_f32: per token, each expert's score (softmax over the logits, or each logit's sigmoid
// when `sigmoid`), the choice score (plus the selection bias when has_bias), within the
// topk_group of n_group groups of largest top-2 choice sum, the k largest choices (lower id first
// on ties); weights the chosen unbiased scores, renormalised over the k when `renormalize`,
// times `scale` (Backend::moe_route).
// slots: 1 logits f32 [n, n_expert], 2 weights f32 [n, k], 3 ids i32 [n, k],
//        4 select_bias f32 [n_expert] (bound to the logits when has_bias == 0, unread)
// grid: (ceil(n / 32)); threads: 32 (one token per thread)
typedef struct {
    uint64_t logits_stride;
    uint64_t weights_stride;
    uint64_t ids_stride;
    int32_t n;
    int32_t n_expert;
    int32_t k;
    int32_t renormalize;
    int32_t sigmoid;
    int32_t has_bias;
    int32_t n_group;     // 1..64, dividing n_expert
    int32_t topk_group;  // 1..n_group
    float scale;
    int32_t pad;
} moe_route_args;
FG_ARGS_ASSERT(sizeof(moe_route_args) == 64, "moe_route_args layout");

// mul_mv_id_<type>: out[s, r] = sum_c w_e[r, c] x[t, c] for slot s = i*k + j, e = ids[i, j],
// w_e = w + e * expert_stride, t = s (x_per_slot) or i. The decode GEMV reading only the
// selected experts' rows. slots: 1 w (expert 0), 2 x, 3 out, 4 ids i32 [n, k]
// grid: (ceil(rows / FG_MV_ROWS_PER_TG), n * k); threads as mul_mv (the staged kernel: as mul_mv_staged)
typedef struct {
    mul_mv_args mv;          // one expert's matrix; accumulate 0
    uint64_t expert_stride;  // bytes between the experts' matrices
    uint64_t ids_stride;     // bytes between the rows of ids
    int32_t k;
    int32_t x_per_slot;
    int32_t n_expert;
    int32_t pad0;
} mul_mv_id_args;
FG_ARGS_ASSERT(sizeof(mul_mv_id_args) == 96, "mul_mv_id_args layout");
// mul_mv_id_tokens_<type>: mul_mv_id for several decode tokens, the slots of each expert (as
// moe_group_i32 lists them) up to FG_MV_TOKENS per threadgroup sharing each weight window, each
// slot's bits those of mul_mv_id_staged alone. slots: 1-4 as mul_mv_id, 5 groups (moe_group_i32's)
// grid: (row tiles as mul_mv_tokens, ceil(n / FG_MV_TOKENS): an expert's token groups when a token
// names it once, the kernel looping over any more; n_expert + 1: the last the out-of-range ids'
// zero rows); threads and threadgroup memory as mul_mv_tokens for min(n_slots, 8) tokens
typedef struct {
    mul_mv_id_args id;
    int32_t n_slots;  // n * k
    int32_t pad0;
    int32_t pad1;
    int32_t pad2;
} mul_mv_id_tokens_args;
FG_ARGS_ASSERT(sizeof(mul_mv_id_tokens_args) == 112, "mul_mv_id_tokens_args layout");

// moe_group_i32: the slots grouped by expert on the device, for mul_mm_id. groups i32:
// [n_expert] counts, then [n_expert][n_slots] each expert's slots in increasing order.
// slots: 1 ids i32 [n, k], 2 groups; grid: (ceil(n_expert / 32)); threads: 32 (one expert each)
typedef struct {
    uint64_t ids_stride;
    int32_t n;
    int32_t k;
    int32_t n_expert;
    int32_t pad0;
} moe_group_args;
FG_ARGS_ASSERT(sizeof(moe_group_args) == 24, "moe_group_args layout");

// map_ids_i32 (args moe_group_args): out[i, j] = table[ids[i, j]] (an expert's place in a stack
// stored out of expert order); ids outside 0..n_expert-1 stay as they are. slots: 1 ids i32
// [n, k], 2 table i32 [n_expert], 3 out i32 [n, k] (contiguous); grid: (ceil(n * k / 32));
// threads: 32 (a slot each)

// mul_mm_id_<type>: mul_mm over the slots moe_group gathered per expert (prefill).
// slots: 1 w (expert 0), 2 x, 3 out, 4 groups (moe_group's)
// grid: (ceil(rows / FG_MM_TILE_ROWS), ceil(n_slots / FG_MM_TILE_TOKENS), n_expert); threads and
// threadgroup memory as mul_mm. Threadgroups past an expert's count return at once.
typedef struct {
    mul_mm_args mm;          // one expert's matrix; n_tokens unused (the expert's count), accumulate 0
    uint64_t expert_stride;
    int32_t n_slots;         // n * k
    int32_t k;
    int32_t x_per_slot;
    int32_t n_expert;
} mul_mm_id_args;
FG_ARGS_ASSERT(sizeof(mul_mm_id_args) == 64, "mul_mm_id_args layout");

// moe_sum_add_f32: out[i, c] += sum_j weights[i, j] * y[i*k + j, c]
// slots: 1 y f32 [n*k, dim], 2 weights f32 [n, k], 3 out f32 [n, dim]
// grid: (ceil(dim / threads), n); threads: min(256, dim rounded to 32)
// scale_sigmoid_f32: out[i, c] *= sigmoid(weights[i, 0]) (k = 1, y unused: slot 1 binds weights)
typedef struct {
    uint64_t y_stride;
    uint64_t weights_stride;
    uint64_t out_stride;
    int32_t dim;
    int32_t k;
} moe_sum_args;
FG_ARGS_ASSERT(sizeof(moe_sum_args) == 32, "moe_sum_args layout");

// swiglu_oai_f32 (gpt-oss): g = min(gate, limit), u = clamp(up, -limit, limit),
// out = (u + 1) * g * sigmoid(alpha * g).
// slots: 1 gate, 2 up, 3 out, all f32 [n, dim] (out may alias either)
// grid: (ceil(dim / threads), n); threads: min(256, dim rounded to 32)
typedef struct {
    uint64_t gate_stride;
    uint64_t up_stride;
    uint64_t out_stride;
    int32_t dim;
    float alpha;
    float limit;
    int32_t pad0;
} swiglu_oai_args;
FG_ARGS_ASSERT(sizeof(swiglu_oai_args) == 40, "swiglu_oai_args layout");

// add_bias_id_f32: x[s, c] += b[ids[s / k, s % k], c] (each slot's expert bias, gpt-oss)
// slots: 1 b f32 [n_expert, dim], 2 ids i32 [n, k], 3 x f32 [n*k, dim] (in place)
// grid: (ceil(dim / threads), n*k); threads: min(256, dim rounded to 32)
typedef struct {
    uint64_t b_stride;
    uint64_t ids_stride;
    uint64_t x_stride;
    int32_t dim;
    int32_t k;
} add_bias_id_args;
FG_ARGS_ASSERT(sizeof(add_bias_id_args) == 32, "add_bias_id_args layout");

// --- recurrent layers: Gated DeltaNet, short convolutions (deltanet.metal; Backend::conv1d_state, gated_delta_rule) ---
// Both walk each sequence's runs in order. runs i32 [n_runs, 4] (state row, first row, rows,
// fresh): the threadgroups of table row r return at once when an earlier row names the same state
// row; the others take every run of their state row, in table order, with the state in registers
// between runs (read from the state row at the start, written back at the end). The host checks
// the table where it has a copy; a run outside the rows or the state anyway is skipped here, so a
// bad table never reaches past the buffers.

// conv1d_state_f32: out[t, c] = act(sum_j w[c, j] h[t + j, c] + bias[c]) over the window h = [the
// state's K - 1 rows (zeros when fresh); x's rows of the run], act SiLU where silu is set, else none,
// the bias where has_bias; the state row becomes its last K - 1 rows.
// slots: 1 x f32 [rows, C], 2 w f32 [C, K], 3 state f32 [n_slots, (K - 1) * C] (read and written),
//        4 runs i32 [n_runs, 4], 5 out f32 [rows, C], 6 bias f32 [C] (bound to w when has_bias is 0)
// grid: (ceil(C / threads), n_runs); threads: min(256, C rounded to 32) (one channel each)
// threadgroup memory 0: threads * FG_CONV_TG_STRIDE(K) floats, the threadgroup's channels' weights
#define FG_CONV_MAX_K 16
// The staged weight rows' stride in floats: odd, so that lanes reading their own rows hit distinct banks.
#define FG_CONV_TG_STRIDE(k) ((k) | 1)
typedef struct {
    uint64_t x_stride;
    uint64_t w_stride;
    uint64_t out_stride;
    uint64_t state_stride;
    int32_t channels;  // C
    int32_t width;     // K, 1..FG_CONV_MAX_K
    int32_t n_runs;
    int32_t rows;      // x's and out's
    int32_t n_slots;   // the state's rows
    int32_t silu;      // 1: SiLU of the sum (Qwen3.5, Mamba2), 0: the sum itself (LFM2)
    int32_t has_bias;  // 1: slot 6 holds bias f32 [C], added to the sum (Mamba2's conv1d.bias)
    int32_t pad;
} conv1d_state_args;
FG_ARGS_ASSERT(sizeof(conv1d_state_args) == 64, "conv1d_state_args layout");

// gated_delta_rule_f32_k64 / _k128 / _k256 (k_dim up to 64, 128, 256): the gated delta rule of value
// head h = grid.y over the columns grid.z * threads + [0, threads) of its [k_dim, v_dim] state,
// one value column per thread, S[:, j] in its registers (rows past k_dim stay zero). Per token the
// threadgroup stages q and k of h's key head in threadgroup memory (zero past k_dim) and takes their
// L2 norms (simd_sum, then the simdgroups' partials); then every thread updates its column alone.
// slots: 1 q f32 [rows, n_k_heads * k_dim], 2 k (as q), 3 v f32 [rows, n_v_heads * v_dim],
//        4 alpha f32 [rows, n_v_heads], 5 beta (as alpha), 6 A f32 [n_v_heads], 7 dt_bias (as A),
//        8 state f32 [n_slots, n_v_heads * k_dim * v_dim] (read and written), 9 runs i32 [n_runs, 4],
//        10 out f32 [rows, n_v_heads * v_dim]
// grid: (n_runs, n_v_heads, ceil(v_dim / threads)); threads: min(FG_DELTA_MAX_TILE, v_dim rounded to 32)
// threadgroup memory 0: FG_DELTA_TG_FLOATS(kmax) floats
#define FG_DELTA_MAX_TILE 64
#define FG_DELTA_TG_FLOATS(kmax) (2 * (kmax) + 2 * (FG_DELTA_MAX_TILE / FG_SIMD_WIDTH))
typedef struct {
    uint64_t q_stride;
    uint64_t k_stride;
    uint64_t v_stride;
    uint64_t alpha_stride;
    uint64_t beta_stride;
    uint64_t out_stride;
    uint64_t state_stride;
    int32_t n_runs;
    int32_t n_k_heads;
    int32_t n_v_heads;
    int32_t k_dim;
    int32_t v_dim;
    int32_t v_tiled;   // 1: h's key head is h % n_k_heads, else h / (n_v_heads / n_k_heads)
    float eps;         // the L2 norms'
    int32_t rows;      // q's, k's, v's, alpha's, beta's and out's
    int32_t n_slots;   // the state's rows
    int32_t pad0;
} delta_rule_args;
FG_ARGS_ASSERT(sizeof(delta_rule_args) == 96, "delta_rule_args layout");

// mamba2_scan_f32_n64 / _n128 / _n256 (d_state up to 64, 128, 256; mamba.metal): Mamba2's selective
// state scan of head h = grid.y over the rows grid.z * threads + [0, threads) of its
// [head_dim, d_state] state, one row (one element of the head's x) per thread, S[i, :] in its
// registers (columns past d_state stay zero). Per token every thread reads the group's B and C
// itself; the state is loaded and stored through threadgroup memory 0 (FG_MAMBA_TG_FLOATS floats:
// a tile of threads x 32 columns, rows FG_MAMBA_TILE_STRIDE apart).
// slots: 1 x f32 [rows, n_heads * head_dim], 2 B f32 [rows, n_groups * d_state], 3 C (as B),
//        4 dt f32 [rows, n_heads], 5 A f32 [n_heads], 6 D (as A), 7 dt_bias (as A),
//        8 state f32 [n_slots, n_heads * head_dim * d_state] (read and written), 9 runs i32 [n_runs, 4],
//        10 out f32 [rows, n_heads * head_dim]
// grid: (n_runs, n_heads, ceil(head_dim / threads)); threads: min(FG_MAMBA_MAX_TILE, head_dim rounded to 32)
#define FG_MAMBA_MAX_TILE 64
#define FG_MAMBA_TILE_STRIDE (FG_SIMD_WIDTH + 1)
#define FG_MAMBA_TG_FLOATS (FG_MAMBA_MAX_TILE * FG_MAMBA_TILE_STRIDE)
typedef struct {
    uint64_t x_stride;
    uint64_t b_stride;
    uint64_t c_stride;
    uint64_t dt_stride;
    uint64_t out_stride;
    uint64_t state_stride;
    int32_t n_runs;
    int32_t n_heads;
    int32_t head_dim;
    int32_t n_groups;
    int32_t d_state;
    int32_t rows;      // x's and out's
    int32_t n_slots;   // the state's rows
    int32_t pad;
} mamba2_scan_args;
FG_ARGS_ASSERT(sizeof(mamba2_scan_args) == 80, "mamba2_scan_args layout");

// mul_sigmoid_f32: x[t, c] *= sigmoid(gate[t, c]) (elementwise_args: a_stride gate's, out_stride x's)
// slots: 1 gate f32 [n, dim], 2 x f32 [n, dim] (in place); grid: (ceil(dim / threads), n);
// threads: min(256, dim rounded to 32)

// --- altup.metal (Gemma 3n) ---
// gaussian_topk_f32: x[t, :] = max(x[t, :] - (mean + sd * std_mult), 0), mean and population sd of
// the row, in place. slots: 1 x f32 [n, dim]. rms_match_f32: out[t, :] = x[t, :] *
// sqrt(mean(target[t, :]^2)) / sqrt(max(mean(x[t, :]^2), 1e-5)). slots: 1 x, 2 target, 3 out, f32
// [n, dim] (out may alias x). Both: grid (n); threads: min(1024, dim rounded to 32); threadgroup
// memory 0: 32 floats.
typedef struct {
    uint64_t x_stride;
    uint64_t target_stride;
    uint64_t out_stride;
    int32_t dim;
    float std_mult;
} altup_row_args;
FG_ARGS_ASSERT(sizeof(altup_row_args) == 32, "altup_row_args layout");

// altup_mix_f32: out[t, c] = base[t, c] + sum_{j < k} coefs[t, j] * xs[t, j * dim + c]
// slots: 1 xs f32 [n, k * dim], 2 coefs f32 [n, k], 3 base f32 [n, dim], 4 out f32 [n, dim] (may alias base)
// grid: (ceil(dim / threads), n); threads: min(256, dim rounded to 32)
typedef struct {
    uint64_t xs_stride;
    uint64_t coefs_stride;
    uint64_t base_stride;
    uint64_t out_stride;
    int32_t dim;
    int32_t k;
} altup_mix_args;
FG_ARGS_ASSERT(sizeof(altup_mix_args) == 40, "altup_mix_args layout");

// clamp_ids_i32: out[i] = ids[i] if 0 <= ids[i] < limit else 0 (Gemma 3n's per-layer table's ids)
// slots: 1 ids i32 [n], 2 out i32 [n]; grid: (ceil(n / threads)); threads: min(256, n rounded to 32)
typedef struct {
    int32_t n;
    int32_t limit;
} clamp_ids_args;
FG_ARGS_ASSERT(sizeof(clamp_ids_args) == 8, "clamp_ids_args layout");

#endif  // FORGERT_KERNEL_ARGS_H
