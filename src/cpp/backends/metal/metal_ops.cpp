// The Backend ops of MetalBackend: check the tensors, fill the kernel's argument
// struct, choose pipeline and dispatch geometry, bind. Geometry stays within what
// every Apple GPU allows: <= 1024 threads per threadgroup, simdgroups of 32,
// <= 32 KB of threadgroup memory.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "backends/metal/metal_backend.h"
#include "../../../shaders/kernel_args.h"

namespace forgert::metal {

namespace {

void need(bool ok, const char* op, const std::string& what) {
    if (!ok) throw InputError(std::string("metal ") + op + ": " + what);
}

uint32_t ceil_div(int64_t a, int64_t b) { return (uint32_t)((a + b - 1) / b); }
uint32_t round_up_simd(int64_t n) { return (uint32_t)std::max<int64_t>(32, (n + 31) / 32 * 32); }

// Kernel name suffix of a weight type ("mul_mv_" + "q4_0").
const char* weight_suffix(DType t) {
    switch (t) {
        case DType::F32: return "f32";
        case DType::F16: return "f16";
        case DType::BF16: return "bf16";
        case DType::Q8_0: return "q8_0";
        case DType::Q4_0: return "q4_0";
        case DType::Q4_1: return "q4_1";
        case DType::Q5_0: return "q5_0";
        case DType::Q5_1: return "q5_1";
        case DType::Q2_K: return "q2_K";
        case DType::Q3_K: return "q3_K";
        case DType::Q4_K: return "q4_K";
        case DType::Q5_K: return "q5_K";
        case DType::Q6_K: return "q6_K";
        case DType::IQ4_NL: return "iq4_nl";
        case DType::IQ4_XS: return "iq4_xs";
        case DType::IQ2_XXS: return "iq2_xxs";
        case DType::IQ2_XS: return "iq2_xs";
        case DType::IQ2_S: return "iq2_s";
        case DType::IQ3_XXS: return "iq3_xxs";
        case DType::IQ3_S: return "iq3_s";
        case DType::IQ1_S: return "iq1_s";
        case DType::IQ1_M: return "iq1_m";
        case DType::MXFP4: return "mxfp4";
        default: return nullptr;
    }
}

// Quantized rows are whole blocks: a width that is not would be silently truncated.
void need_whole_blocks(const Tensor& t, const char* op) {
    const int64_t block = dtype_block_elems(t.type);
    need(t.cols % block == 0, op,
         std::string(dtype_name(t.type)) + " rows must hold whole blocks of " + std::to_string(block) +
             " values, got " + std::to_string(t.cols) + " columns");
}

bool aligned(const Tensor& t, size_t a) {
    return reinterpret_cast<uintptr_t>(t.data()) % a == 0 && t.stride % a == 0;
}

void need_f32_rows(const Tensor& t, const char* op, const char* name, int64_t rows, int64_t cols) {
    need(t.buf != nullptr, op, std::string(name) + " has no buffer");
    need(t.type == DType::F32, op, std::string(name) + " must be f32, got " + dtype_name(t.type));
    need(t.rows == rows && t.cols == cols, op,
         std::string(name) + " is [" + std::to_string(t.rows) + ", " + std::to_string(t.cols) + "], expected [" +
             std::to_string(rows) + ", " + std::to_string(cols) + "]");
}

// A batch's row table (RowPositions): its shape, and a key range inside the cache. The rows'
// values live on the device; the caller (the model, the Ops binding) checked them on the host.
void need_row_table(const RowPositions& at, int64_t n, int64_t cache_rows, const char* op) {
    const Tensor& t = *at.table;
    const int64_t max_len = at.max_len;
    need(at.max_run >= 1 && at.max_run <= n, op, "the row table's longest run must be in 1..n");
    need(t.buf != nullptr && t.type == DType::I32 && t.rows == n && t.cols == 2 && t.stride == 2 * sizeof(int32_t), op,
         "the row table must be a contiguous i32 [" + std::to_string(n) + ", 2]");
    need(max_len > 0 && max_len <= cache_rows, op,
         "the row table's longest key range " + std::to_string(max_len) + " is not within a cache of " +
             std::to_string(cache_rows) + " rows");
}

// By row count (RowClasses::by_count), batches below this size use the matrix-vector kernels;
// larger ones the simdgroup-matrix GEMM, whose 32-token tiles would mostly idle on fewer tokens.
constexpr int64_t kMulMmMinTokens = 8;

// How many of a pass's leading rows take the GEMV (decode rows, each row's bits those of the row
// alone: a GEMV threadgroup serves one row, and a row's sums do not depend on the threadgroup's
// shape), the others the GEMM (whose per-(row, token) order does not depend on the token count or
// tile either): by row count, all rows or none.
int64_t gemv_rows(RowClasses rc, int64_t n) {
    if (rc.by_row_count()) return n < kMulMmMinTokens ? n : 0;
    return std::min(rc.n_decode, n);
}

// Flash-decoding: aim for this many threadgroups in flight so that even one query
// head keeps every GPU core busy on a long context (each split at least
// FG_ATTN_MIN_SPLIT_LEN keys).
constexpr int64_t kAttnTargetThreadgroups = 128;

// The most splits a decode-attention query takes when the dispatch has `blocks` threadgroups per
// split (queries x head blocks).
int32_t attention_max_splits(int64_t blocks) { return (int32_t)ceil_div(kAttnTargetThreadgroups, blocks); }

// Head elements per lane of the decode-attention kernel for head_dim (its _d64/_d128/_d256/_d512/_d576 variants).
int attention_lane_elems(int head_dim) {
    return head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : head_dim <= 256 ? 8 : head_dim <= 512 ? 16 : 18;
}

// Query heads per decode-attention threadgroup: the largest divisor of the GQA group that fits
// the kernel's registers (FG_ATTN_QREGS / elements per lane) and its merge state in threadgroup
// memory. Each K/V row a threadgroup loads serves all of them.
int attention_head_block(int group, int head_dim) {
    for (int g = std::min(group, FG_ATTN_QREGS / attention_lane_elems(head_dim)); g > 1; --g)
        if (group % g == 0 && FG_ATTN_TG_FLOATS(g, head_dim) * sizeof(float) <= FG_ATTN_MAX_TG_BYTES) return g;
    return 1;
}

// Query heads per threadgroup of latent attention's decode kernel (attention_latent_f16: a
// simdgroup a head, each staged row serving them all), or 0 where it does not apply: one KV head
// whose V rows are its K rows (latent attention), at most 576 wide, no sinks or softcap. The
// largest divisor of n_heads up to FG_LATENT_MAX_HEADS and the kernel's pipeline's threads (asked
// for only here: other models never load that pipeline).
int latent_head_block(const AttentionParams& p, const Tensor& k, const Tensor& v,
                      const std::function<uint32_t(const char*)>& thread_cap) {
    const bool latent = p.n_kv_heads == 1 && p.head_dim <= 576 && p.head_dim > 512 && p.head_dim % 2 == 0 &&
                        !p.sinks && p.softcap == 0.0f && k.buf == v.buf && k.offset == v.offset;
    if (!latent) return 0;
    const int max_simdgroups = (int)(thread_cap("attention_latent_f16") / FG_SIMD_WIDTH);
    for (int g = std::min({p.n_heads, FG_LATENT_MAX_HEADS, max_simdgroups}); g > 1; --g)
        if (p.n_heads % g == 0) return g;
    return 1;
}

}  // namespace

// Kernels that loop over their row take up to 1024 threads, or fewer where the compiled
// pipeline allows fewer (Metal lowers the limit for kernels that use many registers).
uint32_t MetalBackend::thread_cap(const char* kernel) {
    const int limit = std::min(1024, dev_->pipeline(kernel)->max_threads_per_threadgroup);
    return (uint32_t)std::max(32, limit / 32 * 32);
}

namespace {

void need_matmul_shapes(const Tensor& out, const Tensor& w, const Tensor& x, const char* op) {
    need(weight_suffix(w.type) != nullptr, op, std::string("unsupported weight type ") + dtype_name(w.type));
    need(w.buf != nullptr, op, "w has no buffer");
    need(w.rows > 0 && w.cols > 0, op, "empty weight");
    need_whole_blocks(w, op);
    need_f32_rows(x, op, "x", x.rows, w.cols);
    need_f32_rows(out, op, "out", x.rows, w.rows);
    need(w.rows <= INT32_MAX && w.cols <= INT32_MAX, op, "weight too large");
}

// A decode GEMV's kernel (family "mul_mv_", "mul_mv_swiglu_" or "mul_mv_id_") and launch shape:
// the staged kernels (mul_mv_staged.metal: every device load whole lines, x once per threadgroup)
// unless FORGERT_METAL_GEMV=direct picks mul_mv.metal's direct loads, which a real GPU may
// prefer (llama.cpp's choice; unmeasured here).
struct GemvKernel {
    std::string name;
    uint32_t rows_per_tg;
    uint32_t threads;
    size_t tg_bytes;   // threadgroup memory 0
    int32_t sg_rows;   // rows per simdgroup (mul_mv_args.sg_rows)
    bool tokens = false;  // mul_mv_tokens.metal: up to FG_MV_TOKENS tokens per threadgroup (mul_mv_tokens_args)
};

// Rows per threadgroup of the staged GEMVs. x (4 bytes a column) is requested once per
// threadgroup, which adds 4 / (R b) to a matrix of b bytes a weight in threadgroups of R rows:
// 22% to a 4-bit matrix (b = 0.56) at R = 32, 2.8% at 256 (Q2_K, b = 0.33: 38% and 4.8%). Fewer,
// larger threadgroups must still fill the GPU: an M1 has 7-8 cores, an M4 Max 40, and each core
// wants more than one threadgroup (one waiting at a barrier leaves another to run; the last wave
// is short). So R doubles from 32 up to 256 only while the dispatch keeps kGemvMinThreadgroups
// (2 per core of a 40-core GPU): at one token 64 rows from 5120 rows (Llama 3.2 1B's 8192-row
// FFN), 128 from 10240 (Llama 3 8B's 14336), 256 from 20480 (output projections over a vocabulary,
// 49152-152064 rows; MoE slots count as tokens). The total simdgroups stay rows / 4 up to R = 128
// (256, 512, 1024 threads); R = 256 takes 8 rows per simdgroup (1024 threads, the most a
// threadgroup has). FORGERT_METAL_GEMV_TG_ROWS=32|64|128|256 forces R (tests, bench/metal).
constexpr int64_t kGemvMinThreadgroups = 80;

int64_t gemv_tg_rows(int64_t rows, int64_t n_tokens) {
    if (const char* env = std::getenv("FORGERT_METAL_GEMV_TG_ROWS")) {
        const std::string v = env;
        if (v == "32" || v == "64" || v == "128" || v == "256") return std::stoi(v);
        throw std::invalid_argument("FORGERT_METAL_GEMV_TG_ROWS must be 32, 64, 128 or 256, not '" + v + "'");
    }
    int64_t r = 32;
    while (r < 256 && ceil_div(rows, 2 * r) * n_tokens >= kGemvMinThreadgroups) r *= 2;
    return r;
}

// FORGERT_METAL_GEMV=direct: mul_mv.metal's kernels rather than the staged ones.
bool gemv_direct() {
    const char* env = std::getenv("FORGERT_METAL_GEMV");
    return env != nullptr && std::strcmp(env, "direct") == 0;
}

// cap: the pipeline's threads per threadgroup (thread_cap); a lower cap takes fewer simdgroups.
GemvKernel gemv_kernel(const char* family, DType type, int64_t rows, int64_t n_tokens,
                       const std::function<uint32_t(const char*)>& cap) {
    if (gemv_direct())
        return {std::string(family) + weight_suffix(type), FG_MV_ROWS_PER_TG, FG_MV_SIMDGROUPS * FG_SIMD_WIDTH, 0,
                FG_MV_ROWS_PER_SIMDGROUP};
    GemvKernel k;
    k.name = std::string(family) + "staged_" + weight_suffix(type);
    const int64_t tg_rows = gemv_tg_rows(rows, n_tokens);
    k.sg_rows = tg_rows > 128 ? FG_MV_STAGED_MAX_SG_ROWS : FG_MV_ROWS_PER_SIMDGROUP;
    const uint32_t simdgroups =
        std::min<uint32_t>((uint32_t)(tg_rows / k.sg_rows), cap(k.name.c_str()) / FG_SIMD_WIDTH);
    k.rows_per_tg = simdgroups * (uint32_t)k.sg_rows;
    k.threads = simdgroups * FG_SIMD_WIDTH;
    // a window of FG_MV_WINDOW_BLOCKS 32-weight chunks of a row; float rows are not copied
    const bool is_float = type == DType::F32 || type == DType::F16 || type == DType::BF16;
    const int64_t window_bytes =
        is_float ? 0 : FG_MV_WINDOW_BLOCKS * FG_QK / dtype_block_elems(type) * dtype_block_bytes(type);
    k.tg_bytes = FG_MV_STAGED_TG_BYTES(window_bytes, (int64_t)simdgroups);
    return k;
}

// Rows per threadgroup of the multi-token GEMVs (mul_mv_tokens.metal). x is requested once per
// threadgroup for each of its T tokens: 4 T / (R b) of a matrix of b bytes a weight in threadgroups
// of R rows, so a threadgroup of T tokens takes T times the rows gemv_tg_rows gives one token (for
// its dispatch's token groups), up to 256: x's share of the requests stays the one-token kernel's
// (8 tokens: 256 rows), while every weight byte is requested once per T tokens rather than once per
// token. The price: T times fewer threadgroups than one token per threadgroup at the same rows, each
// doing T tokens' work (fewer, longer threadgroups on a GPU's cores: for a Mac to weigh against the
// requests). The rows are then spread evenly over that many threadgroups (in multiples of 32), so
// that no threadgroup runs simdgroups past the matrix's end: 576 rows take 3 of 192.
// FORGERT_METAL_GEMV_TG_ROWS forces R as for one token.
int64_t gemv_tokens_tg_rows(int64_t rows, int64_t n_tokens) {
    const int64_t groups = ceil_div(n_tokens, FG_MV_TOKENS), per_tg = std::min<int64_t>(n_tokens, FG_MV_TOKENS);
    if (std::getenv("FORGERT_METAL_GEMV_TG_ROWS") != nullptr) return gemv_tg_rows(rows, groups);
    const int64_t most = std::min<int64_t>(256, gemv_tg_rows(rows, groups) * per_tg);
    return std::min<int64_t>(most, (int64_t)ceil_div(ceil_div(rows, ceil_div(rows, most)), 32) * 32);
}

// The multi-token kernel of a family ("mul_mv_" or "mul_mv_swiglu_") for n_tokens >= 2 decode rows.
GemvKernel gemv_tokens_kernel(const char* family, DType type, int64_t rows, int64_t n_tokens,
                              const std::function<uint32_t(const char*)>& cap) {
    GemvKernel k;
    k.tokens = true;
    k.name = std::string(family) + "tokens_" + weight_suffix(type);
    const int64_t tg_rows = gemv_tokens_tg_rows(rows, n_tokens);
    k.sg_rows = tg_rows > 128 ? FG_MV_STAGED_MAX_SG_ROWS : FG_MV_ROWS_PER_SIMDGROUP;
    const uint32_t simdgroups =
        std::min<uint32_t>((uint32_t)ceil_div(tg_rows, k.sg_rows), cap(k.name.c_str()) / FG_SIMD_WIDTH);
    k.rows_per_tg = simdgroups * (uint32_t)k.sg_rows;
    k.threads = simdgroups * FG_SIMD_WIDTH;
    const bool is_float = type == DType::F32 || type == DType::F16 || type == DType::BF16;
    const int64_t window_bytes =
        is_float ? 0 : FG_MV_TOKENS_WINDOW_BLOCKS * FG_QK / dtype_block_elems(type) * dtype_block_bytes(type);
    k.tg_bytes = FG_MV_TOKENS_TG_BYTES(window_bytes, std::min<int64_t>(n_tokens, FG_MV_TOKENS), (int64_t)simdgroups);
    return k;
}

// A decode GEMV of n tokens: the one-token staged or direct kernel for one token or
// FORGERT_METAL_GEMV=direct, else the multi-token kernel (which gives each token the one-token
// kernel's bits: mul_mv_tokens.metal).
GemvKernel decode_gemv_kernel(const char* family, DType type, int64_t rows, int64_t n_tokens,
                              const std::function<uint32_t(const char*)>& cap) {
    if (n_tokens < 2 || gemv_direct()) return gemv_kernel(family, type, rows, n_tokens, cap);
    return gemv_tokens_kernel(family, type, rows, n_tokens, cap);
}

// The argument struct and grid of a GEMV dispatch of n tokens over `rows` weight rows (a
// mul_mv_tokens_args starts with its mul_mv_args: the one-token kernels get that prefix).
struct GemvLaunch {
    mul_mv_tokens_args args;
    size_t args_bytes;
    Size3 grid;
};
GemvLaunch gemv_launch(const GemvKernel& k, const mul_mv_args& a, int64_t rows, int64_t n) {
    GemvLaunch l{};
    l.args.mv = a;
    l.args.mv.sg_rows = k.sg_rows;
    l.args.n_tokens = (int32_t)n;
    l.args_bytes = k.tokens ? sizeof(mul_mv_tokens_args) : sizeof(mul_mv_args);
    l.grid = {ceil_div(rows, k.rows_per_tg), k.tokens ? ceil_div(n, FG_MV_TOKENS) : (uint32_t)n, 1};
    return l;
}

// Where a tensor's 128-byte lines start: its address % 128 (the staged copies load whole lines).
int32_t line_offset(const Tensor& t) { return (int32_t)(reinterpret_cast<uintptr_t>(t.data()) % 128); }

mul_mv_args make_mul_mv_args(const Tensor& out, const Tensor& w, const Tensor& x, bool accumulate) {
    mul_mv_args a{};
    a.w_stride = w.stride;
    a.x_stride = x.stride;
    a.out_stride = out.stride;
    a.rows = (int32_t)w.rows;
    a.cols = (int32_t)w.cols;
    a.x_vec4 = w.cols % 4 == 0 && aligned(x, 16);
    const size_t elem = w.type == DType::F32 ? 4 : 2;
    a.w_vec4 = w.cols % 4 == 0 && aligned(w, 4 * elem);
    a.accumulate = accumulate ? 1 : 0;
    a.w_align = line_offset(w);
    return a;
}

}  // namespace

void MetalBackend::encode_matmul(const Tensor& out, const Tensor& w, const Tensor& x, bool accumulate,
                                 RowClasses rc) {
    const int64_t n = x.rows, g = gemv_rows(rc, n);
    if (g > 0) encode_gemv(out.slice_rows(0, g), w, x.slice_rows(0, g), accumulate);
    if (g < n) encode_gemm(out.slice_rows(g, n - g), w, x.slice_rows(g, n - g), accumulate);
}

void MetalBackend::encode_gemv(const Tensor& out, const Tensor& w, const Tensor& x, bool accumulate) {
    const int64_t n = x.rows;
    const GemvKernel k =
        decode_gemv_kernel("mul_mv_", w.type, w.rows, n, [this](const char* name) { return thread_cap(name); });
    const GemvLaunch l = gemv_launch(k, make_mul_mv_args(out, w, x, accumulate), w.rows, n);
    encode(k.name, &l.args, l.args_bytes, {reads(w), reads(x), writes(out)}, l.grid, {k.threads, 1, 1}, k.tg_bytes);
}

void MetalBackend::encode_gemm(const Tensor& out, const Tensor& w, const Tensor& x, bool accumulate) {
    const int64_t n = x.rows;
    mul_mm_args a{};
    a.w_stride = w.stride;
    a.x_stride = x.stride;
    a.out_stride = out.stride;
    a.rows = (int32_t)w.rows;
    a.cols = (int32_t)w.cols;
    a.n_tokens = (int32_t)n;
    a.accumulate = accumulate ? 1 : 0;
    encode(std::string("mul_mm_") + weight_suffix(w.type), &a, sizeof a, {reads(w), reads(x), writes(out)},
           {ceil_div(w.rows, FG_MM_TILE_ROWS), ceil_div(n, FG_MM_TILE_TOKENS), 1}, {FG_MM_THREADS, 1, 1},
           FG_MM_TG_BYTES(w.type == DType::F32 || w.type == DType::BF16 ? 4 : 2));
}

void MetalBackend::matmul(const Tensor& out, const Tensor& w, const Tensor& x, RowClasses rc) {
    need_matmul_shapes(out, w, x, "matmul");
    encode_matmul(out, w, x, false, rc);
}

// The GEMV and GEMM add into out as they store it: no scratch, no separate add dispatch.
void MetalBackend::matmul_add(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor&, RowClasses rc) {
    need_matmul_shapes(out, w, x, "matmul_add");
    encode_matmul(out, w, x, true, rc);
}

// GEMV rows: one pass over x computes the gate and up rows together and stores act(gate) * up
// (mul_mv_swiglu), where the two weights allow it, else two GEMVs and the elementwise kernel;
// GEMM rows: two GEMMs and the elementwise kernel.
void MetalBackend::matmul_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                              const Tensor& scratch, RowClasses rc, bool gelu) {
    const char* op = gelu ? "matmul_geglu" : "matmul_swiglu";
    need_matmul_shapes(out, w_gate, x, op);
    need_matmul_shapes(out, w_up, x, op);
    auto unfused = [&](int64_t r0, int64_t m, RowClasses part) {
        need_f32_rows(scratch, op, "scratch", x.rows, w_up.rows);
        const Tensor o = out.slice_rows(r0, m), xs = x.slice_rows(r0, m), sc = scratch.slice_rows(r0, m);
        if (gelu)
            Backend::matmul_geglu(o, w_gate, w_up, xs, sc, part);
        else
            Backend::matmul_swiglu(o, w_gate, w_up, xs, sc, part);
    };
    const int64_t n = x.rows, g = gemv_rows(rc, n);
    if (g > 0 && !encode_fused_glu(out.slice_rows(0, g), w_gate, w_up, x.slice_rows(0, g), gelu))
        unfused(0, g, RowClasses::decode(g));
    if (g < n) unfused(g, n - g, RowClasses::prefix());
}

// False where mul_mv_swiglu cannot take the two weights (the caller falls back).
bool MetalBackend::encode_fused_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                                    bool gelu) {
    // One args struct serves both weights: they must agree in type, stride and alignment.
    mul_mv_args a = make_mul_mv_args(out, w_gate, x, false);
    const bool fused = w_gate.type == w_up.type && w_gate.stride == w_up.stride &&
                       a.w_vec4 == make_mul_mv_args(out, w_up, x, false).w_vec4;
    if (!fused) return false;
    a.gelu = gelu ? 1 : 0;
    a.w_up_align = line_offset(w_up);
    const GemvKernel k = decode_gemv_kernel("mul_mv_swiglu_", w_gate.type, w_gate.rows, x.rows,
                                            [this](const char* name) { return thread_cap(name); });
    const GemvLaunch l = gemv_launch(k, a, w_gate.rows, x.rows);
    encode(k.name, &l.args, l.args_bytes, {reads(w_gate), reads(x), writes(out), reads(w_up)}, l.grid,
           {k.threads, 1, 1}, k.tg_bytes);
    return true;
}

void MetalBackend::matmul_swiglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                                 const Tensor& scratch, RowClasses rc) {
    matmul_glu(out, w_gate, w_up, x, scratch, rc, false);
}

void MetalBackend::matmul_geglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                                const Tensor& scratch, RowClasses rc) {
    matmul_glu(out, w_gate, w_up, x, scratch, rc, true);
}

void MetalBackend::get_rows(const Tensor& out, const Tensor& table, const Tensor& ids) {
    const char* sfx = weight_suffix(table.type);
    need(sfx != nullptr, "get_rows", std::string("unsupported table type ") + dtype_name(table.type));
    need(table.buf != nullptr && ids.buf != nullptr, "get_rows", "tensor without buffer");
    need(ids.type == DType::I32, "get_rows", "ids must be i32");
    need_whole_blocks(table, "get_rows");
    const int64_t n = ids.rows * ids.cols;
    need(ids.rows == 1 || ids.stride == (size_t)ids.cols * 4, "get_rows", "ids must be contiguous");
    need_f32_rows(out, "get_rows", "out", n, table.cols);
    get_rows_args a{};
    a.table_stride = table.stride;
    a.out_stride = out.stride;
    a.table_rows = (int32_t)table.rows;
    a.cols = (int32_t)table.cols;
    a.table_align = line_offset(table);
    a.block_cols = (int32_t)dtype_block_elems(table.type);
    a.block_bytes = (int32_t)dtype_block_bytes(table.type);
    encode(std::string("get_rows_") + sfx, &a, sizeof a, {reads(table), reads(ids), writes(out)},
           {ceil_div(table.cols, FG_GET_ROWS_WINDOW), (uint32_t)n, 1}, {FG_SIMD_WIDTH, 1, 1});
}

void MetalBackend::rms_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) {
    encode_rms_norm(out, x, w, eps, false);
}

void MetalBackend::layer_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) {
    encode_rms_norm(out, x, w, eps, false, true);
}

void MetalBackend::add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, float eps) {
    encode_rms_norm(x, y, w, eps, true);
}

void MetalBackend::encode_rms_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps, bool accumulate,
                                   bool center) {
    need(x.cols > 0, "rms_norm", "empty rows");
    need_f32_rows(x, "rms_norm", "x", x.rows, x.cols);
    need_f32_rows(out, "rms_norm", "out", x.rows, x.cols);
    need_f32_rows(w, "rms_norm", "w", 1, x.cols);
    rms_norm_args a{};
    a.x_stride = x.stride;
    a.out_stride = out.stride;
    a.dim = (int32_t)x.cols;
    a.eps = eps;
    a.accumulate = accumulate ? 1 : 0;
    a.center = center ? 1 : 0;
    const uint32_t threads = std::min<uint32_t>(thread_cap("rms_norm_f32"), round_up_simd(x.cols));
    encode("rms_norm_f32", &a, sizeof a, {reads(x), reads(w), writes(out)}, {(uint32_t)x.rows, 1, 1},
           {threads, 1, 1}, FG_SIMD_WIDTH * sizeof(float));
}

void MetalBackend::add_bias(const Tensor& x, const Tensor& b) {
    need_f32_rows(x, "add_bias", "x", x.rows, x.cols);
    need_f32_rows(b, "add_bias", "b", 1, x.cols);
    elementwise_args a{};
    a.a_stride = x.stride;
    a.b_stride = 0;
    a.out_stride = x.stride;
    a.dim = (int32_t)x.cols;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(x.cols));
    encode("add_bias_f32", &a, sizeof a, {writes(x), reads(b)}, {ceil_div(x.cols, threads), (uint32_t)x.rows, 1},
           {threads, 1, 1});
}

void MetalBackend::rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache,
                                 const Tensor& v_cache, const Tensor& freqs, const RowPositions& at,
                                 const RopeKvParams& p) {
    const char* op = "rope_kv_write";
    const int pos0 = at.pos0;
    need(p.n_heads > 0 && p.n_kv_heads >= 0 && p.head_dim > 0 && p.head_dim % 2 == 0, op,
         "need n_heads > 0, n_kv_heads >= 0 and an even head_dim");
    const bool q_only = p.n_kv_heads == 0;  // queries alone (a layer reading another's K/V): k, v, caches unused
    const int64_t n = q.rows, kv_dim = (int64_t)p.n_kv_heads * p.head_dim;
    need_f32_rows(q, op, "q", n, (int64_t)p.n_heads * p.head_dim);
    const int rot = p.rotated_dims();
    need(rot >= 0 && rot <= p.head_dim && rot % 2 == 0, op, "rope_dim must be even and <= head_dim");
    if (rot > 0) need_f32_rows(freqs, op, "freqs", 1, rot / 2);
    const bool with_v = !q_only && !p.v_from_k;  // V cached from v (not read from the K cache's rows)
    if (!q_only) {
        need_f32_rows(k, op, "k", n, kv_dim);
        if (with_v) need_f32_rows(v, op, "v", n, kv_dim);
        for (const Tensor* c : {&k_cache, &v_cache}) {
            if (c == &v_cache && !with_v) continue;
            need(c->buf != nullptr && c->type == DType::F16 && c->cols == kv_dim, op, "caches must be f16 [n_ctx, kv_dim]");
        }
        if (with_v)
            need(k_cache.stride == v_cache.stride && k_cache.rows == v_cache.rows, op, "k and v caches must have one shape");
    }
    if (at.table)
        need_row_table(at, n, q_only ? INT32_MAX : k_cache.rows, op);
    else
        need(pos0 >= 0 && (q_only || pos0 + n <= k_cache.rows), op,
             "rows " + std::to_string(pos0) + ".." + std::to_string(pos0 + n) + " past a cache of " +
                 std::to_string(k_cache.rows));
    rope_kv_write_args a{};
    a.q_stride = q.stride;
    a.k_stride = k.stride;
    a.v_stride = with_v ? v.stride : 0;
    a.cache_stride = k_cache.stride;
    a.n_heads = p.n_heads;
    a.n_kv_heads = p.n_kv_heads;
    a.head_dim = p.head_dim;
    a.pos0 = pos0;
    a.neox = p.neox ? 1 : 0;
    a.rope_dim = rot;
    a.attn_factor = p.attn_factor;
    a.has_rows = at.table ? 1 : 0;
    a.q_temp_beta = p.q_temp_beta;
    a.q_temp_floor = p.q_temp_floor;
    a.n_v_heads = with_v ? p.n_kv_heads : 0;
    // Bound from row pos0 on, so the hazard tracker sees exactly the rows written; a batch's
    // rows land anywhere in the caches (the table says where), so they are bound whole.
    const Binding unused{q.buf, q.offset, 0, false};  // a slot the kernel does not touch: any buffer
    const Binding rows = at.table ? reads(*at.table) : unused;
    const int64_t heads = p.n_heads + p.n_kv_heads + a.n_v_heads;
    // One threadgroup per token: its (cos, sin) table computed once, shared by all its heads.
    const uint32_t cap = thread_cap("rope_kv_write_f32");
    const uint32_t lanes = std::min<uint32_t>(cap, FG_ROPE_LANES(p.head_dim));
    const uint32_t slots = std::min<uint32_t>(cap / lanes, heads);
    if (q_only) {  // the kernel's head loop stops at the query heads (n_kv_heads 0)
        encode("rope_kv_write_f32", &a, sizeof a, {writes(q), unused, unused, unused, unused, reads(freqs), rows},
               {1, (uint32_t)n, 1}, {lanes * slots, 1, 1}, std::max(1, rot / 2) * 2 * sizeof(float));
        return;
    }
    const Tensor kc = at.table ? k_cache : k_cache.slice_rows(pos0, n),
                 vc = !with_v ? Tensor{} : at.table ? v_cache : v_cache.slice_rows(pos0, n);
    encode("rope_kv_write_f32", &a, sizeof a,
           {writes(q), writes(k), with_v ? reads(v) : unused, writes(kc), with_v ? writes(vc) : unused, reads(freqs), rows},
           {1, (uint32_t)n, 1}, {lanes * slots, 1, 1}, std::max(1, rot / 2) * 2 * sizeof(float));
}

// Worked out once per attention call: the head blocks size its splits, and the decode kernel
// dispatches them.
MetalBackend::DecodeHeads MetalBackend::decode_heads(const AttentionParams& p, const Tensor& k_cache,
                                                     const Tensor& v_cache) {
    const int latent =
        latent_head_block(p, k_cache, v_cache, [this](const char* name) { return thread_cap(name); });
    if (latent > 0) return {true, latent, FG_LATENT_MIN_SPLIT_LEN};
    return {false, attention_head_block(p.n_heads / p.n_kv_heads, p.head_dim), FG_ATTN_MIN_SPLIT_LEN};
}

void MetalBackend::attention(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const RowPositions& at, const AttentionParams& p) {
    const int pos0 = at.pos0;
    need(p.n_heads > 0 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0, "attention",
         "n_heads must be a positive multiple of n_kv_heads");
    need(p.head_dim > 0 && p.head_dim <= FG_ATTN_MAX_HEAD_DIM, "attention",
         "head_dim must be in 1.." + std::to_string(FG_ATTN_MAX_HEAD_DIM));
    const int64_t n = q.rows;
    const int64_t kv_dim = (int64_t)p.n_kv_heads * p.head_dim;
    need_f32_rows(q, "attention", "q", n, (int64_t)p.n_heads * p.head_dim);
    need_f32_rows(out, "attention", "out", n, q.cols);
    need(k_cache.buf && v_cache.buf && k_cache.type == DType::F16 && v_cache.type == DType::F16, "attention",
         "k_cache and v_cache must be f16");
    need(k_cache.cols == kv_dim && v_cache.cols == kv_dim && k_cache.rows == v_cache.rows &&
             k_cache.stride == v_cache.stride,
         "attention", "k_cache and v_cache must both be [n_ctx, n_kv_heads * head_dim] with one row stride");
    if (at.table)
        need_row_table(at, n, k_cache.rows, "attention");
    else
        need(pos0 >= 0 && pos0 + n <= k_cache.rows, "attention", "queries past the cache");
    if (n == 0) return;

    need(p.window >= 0, "attention", "negative window");
    need(p.softcap >= 0.0f && std::isfinite(p.softcap), "attention", "softcap must be >= 0 and finite");
    need(!p.sinks || (p.sinks->buf && p.sinks->type == DType::F32 && p.sinks->rows * p.sinks->cols == p.n_heads),
         "attention", "sinks must be f32 with one value per head");
    const DecodeHeads heads = decode_heads(p, k_cache, v_cache);
    const int64_t head_blocks = p.n_heads / heads.per_threadgroup;
    if (at.classes.by_row_count()) {
        // By count: a chunk whose keys need no split shares K/V tiles in the prefill kernel (for
        // a batch, when it holds a prompt chunk: decode rows of many sequences, runs of one, share
        // nothing); otherwise the decode kernel, its splits filling the GPU for n queries.
        const int32_t max_splits = attention_max_splits(n * head_blocks);
        const int64_t kv_max = at.table ? at.max_len : pos0 + n;
        const bool runs = !at.table || at.max_run >= FG_ATTN_PREFILL_MIN_TOKENS;
        if (runs && n >= FG_ATTN_PREFILL_MIN_TOKENS &&
            fg_attn_splits(fg_attn_span((int32_t)kv_max, p.window), max_splits, heads.min_split_len) == 1)
            encode_attention_prefill(out, q, k_cache, v_cache, at, p);
        else
            encode_attention_decode(out, q, k_cache, v_cache, at, p, heads, max_splits);
        return;
    }
    // By class: decode rows through the decode kernel with the splits a lone decode step's one
    // query takes, prefix rows through the prefill kernel, whatever else the pass holds (in both
    // kernels a query's bits depend only on its own keys: attention.metal).
    const int64_t n_decode = std::min(at.classes.n_decode, n);
    auto rows_of = [&](int64_t r0, int64_t m, Tensor& table_part) {
        if (!at.table) return RowPositions(pos0 + (int)r0);
        table_part = at.table->slice_rows(r0, m);
        return RowPositions(table_part, at.max_len, (int)std::min<int64_t>(at.max_run, m));
    };
    Tensor table_part;
    if (n_decode > 0)
        encode_attention_decode(out.slice_rows(0, n_decode), q.slice_rows(0, n_decode), k_cache, v_cache,
                                rows_of(0, n_decode, table_part), p, heads, attention_max_splits(head_blocks));
    if (n_decode < n)
        encode_attention_prefill(out.slice_rows(n_decode, n - n_decode), q.slice_rows(n_decode, n - n_decode), k_cache,
                                 v_cache, rows_of(n_decode, n - n_decode, table_part), p);
}

namespace {
// The cache rows a dispatch may read: a batch's whole cache (its rows land anywhere: the table
// says where), or one sequence's first kv_max rows.
Tensor bound_cache(const Tensor& cache, const RowPositions& at, int64_t n) {
    return at.table ? cache : cache.slice_rows(0, at.pos0 + n);
}
}  // namespace

void MetalBackend::encode_attention_prefill(const Tensor& out, const Tensor& q, const Tensor& k_cache,
                                            const Tensor& v_cache, const RowPositions& at, const AttentionParams& p) {
    const int64_t n = q.rows;
    // Blocks of 8 queries share K/V tiles; a query's online softmax takes its keys one by one in order.
    attention_prefill_args a{};
    a.q_stride = q.stride;
    a.kv_stride = k_cache.stride;
    a.out_stride = out.stride;
    a.n_queries = (int32_t)n;
    a.n_heads = p.n_heads;
    a.n_kv_heads = p.n_kv_heads;
    a.head_dim = p.head_dim;
    a.pos0 = at.pos0;
    a.tile_keys = std::min(64, FG_ATTN_TILE_HALFS / p.head_dim);
    a.scale = p.scale;
    a.window = p.window;
    a.softcap = p.softcap;
    a.has_sinks = p.sinks ? 1 : 0;
    a.has_rows = at.table ? 1 : 0;
    // Without sinks or a table their slots are bound to out, zero bytes tracked: Metal's validation
    // wants every slot bound.
    const Binding unused{out.buf, out.offset, 0, false};
    // the kernel of this head size's class: up to 256, or up to 512 (Gemma 4's global heads)
    encode(p.head_dim <= 256   ? "attention_prefill_f16"
           : p.head_dim <= 512 ? "attention_prefill_f16_d512"
                               : "attention_prefill_f16_d576",
           &a, sizeof a,
           {reads(q), reads(bound_cache(k_cache, at, n)), reads(bound_cache(v_cache, at, n)), writes(out),
            p.sinks ? reads(*p.sinks) : unused, at.table ? reads(*at.table) : unused},
           {ceil_div(n, FG_ATTN_BQ), (uint32_t)p.n_heads, 1}, {FG_ATTN_SIMDGROUPS * FG_SIMD_WIDTH, 1, 1},
           2 * sizeof(uint16_t) * a.tile_keys * p.head_dim);
}

void MetalBackend::encode_attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache,
                                           const Tensor& v_cache, const RowPositions& at, const AttentionParams& p,
                                           const DecodeHeads& heads, int32_t max_splits) {
    const int64_t n = q.rows;
    // Each query cuts its own keys (fg_attn_splits); the grid has the longest query's splits.
    const int64_t kv_max = at.table ? at.max_len : at.pos0 + n;
    const int32_t min_split_len = heads.min_split_len;
    const int64_t splits = fg_attn_splits(fg_attn_span((int32_t)kv_max, p.window), max_splits, min_split_len);
    const int head_block = heads.per_threadgroup;
    attention_args a{};
    a.q_stride = q.stride;
    a.kv_stride = k_cache.stride;
    a.out_stride = out.stride;
    a.n_heads = p.n_heads;
    a.n_kv_heads = p.n_kv_heads;
    a.head_dim = p.head_dim;
    a.pos0 = at.pos0;
    a.max_splits = max_splits;
    a.scale = p.scale;
    a.window = p.window;
    a.softcap = p.softcap;
    a.has_sinks = p.sinks ? 1 : 0;
    a.has_rows = at.table ? 1 : 0;
    a.min_split_len = min_split_len;
    const size_t tg_bytes = heads.latent ? FG_LATENT_TILE_KEYS * p.head_dim * sizeof(uint16_t)
                                         : FG_ATTN_TG_FLOATS(head_block, p.head_dim) * sizeof(float);
    const std::string kernel = heads.latent ? "attention_latent_f16"
                                            : "attention_f16_d" + std::to_string(32 * attention_lane_elems(p.head_dim));
    const uint32_t simdgroups = heads.latent ? (uint32_t)head_block : FG_ATTN_SIMDGROUPS;  // latent: one a head
    const Size3 threads{simdgroups * FG_SIMD_WIDTH, 1, 1};
    const Binding unused{out.buf, out.offset, 0, false};  // see encode_attention_prefill
    const Binding sinks = p.sinks ? reads(*p.sinks) : unused, rows = at.table ? reads(*at.table) : unused;
    const Tensor keys = bound_cache(k_cache, at, n), values = bound_cache(v_cache, at, n);
    const Size3 grid{(uint32_t)splits, (uint32_t)(p.n_heads / head_block), (uint32_t)n};

    if (splits == 1) {  // every query writes out directly; slot 5 is never touched
        encode(kernel, &a, sizeof a, {reads(q), reads(keys), reads(values), writes(out), unused, sinks, rows}, grid,
               threads, tg_bytes);
        return;
    }
    const int64_t groups = n * p.n_heads;
    const size_t partial_bytes = (FG_ATTN_STATS_AT((size_t)groups * splits, p.head_dim) + 2 * groups * splits) *
                                 sizeof(float);  // acc rows, then (max, sum) pairs
    Buffer* scratch = attention_scratch(partial_bytes);
    Binding partials{scratch, 0, partial_bytes, true};
    // Queries of one split write out here, the others their partials: out is written by both dispatches.
    encode(kernel, &a, sizeof a, {reads(q), reads(keys), reads(values), writes(out), partials, sinks, rows}, grid,
           threads, tg_bytes);
    attention_reduce_args r{};
    r.out_stride = out.stride;
    r.n_heads = p.n_heads;
    r.head_dim = p.head_dim;
    r.n_splits = (int32_t)splits;
    r.max_splits = max_splits;
    r.pos0 = at.pos0;
    r.window = p.window;
    r.has_sinks = a.has_sinks;
    r.has_rows = a.has_rows;
    r.min_split_len = min_split_len;
    Binding partials_in{scratch, 0, partial_bytes, false};
    encode("attention_reduce", &r, sizeof r, {partials_in, writes(out), sinks, rows},
           {(uint32_t)p.n_heads, (uint32_t)n, 1}, {FG_SIMD_WIDTH, 1, 1}, splits * sizeof(float));
}

void MetalBackend::encode_binary(const char* kernel, const char* op, const char* a_name, const char* b_name,
                                 const Tensor& out, const Tensor& a, const Tensor& b) {
    need_f32_rows(a, op, a_name, a.rows, a.cols);
    need_f32_rows(b, op, b_name, a.rows, a.cols);
    need_f32_rows(out, op, "out", a.rows, a.cols);
    elementwise_args args{};
    args.a_stride = a.stride;
    args.b_stride = b.stride;
    args.out_stride = out.stride;
    args.dim = (int32_t)a.cols;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(a.cols));
    encode(kernel, &args, sizeof args, {reads(a), reads(b), writes(out)}, {ceil_div(a.cols, threads), (uint32_t)a.rows, 1},
           {threads, 1, 1});
}

void MetalBackend::silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) {
    encode_binary("silu_mul_f32", "silu_mul", "gate", "up", out, gate, up);
}

void MetalBackend::add(const Tensor& out, const Tensor& a, const Tensor& b) {
    encode_binary("add_f32", "add", "a", "b", out, a, b);
}

void MetalBackend::mul(const Tensor& out, const Tensor& a, const Tensor& b) {
    encode_binary("mul_f32", "mul", "a", "b", out, a, b);
}

void MetalBackend::copy(const Tensor& dst, const Tensor& src) {
    check_copy(dst, src);
    if (src.rows == 0) return;
    // A copy kernel rather than a blit: the encoder's hazard tracking sees its reads and
    // writes like any dispatch's, and one compute encoder serves the whole pass.
    const size_t bytes = (size_t)row_bytes(src.type, src.cols);
    need(bytes % 4 == 0 && src.stride % 4 == 0 && dst.stride % 4 == 0 && src.offset % 4 == 0 && dst.offset % 4 == 0,
         "copy", "rows, strides and offsets must be whole 32-bit words");
    copy_args a{};
    a.src_stride = src.stride;
    a.dst_stride = dst.stride;
    a.words = (int32_t)(bytes / 4);
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(a.words));
    encode("copy_u32", &a, sizeof a, {reads(src), writes(dst)}, {ceil_div(a.words, threads), (uint32_t)src.rows, 1},
           {threads, 1, 1});
}

void MetalBackend::gelu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) {
    encode_binary("gelu_mul_f32", "gelu_mul", "gate", "up", out, gate, up);
}

void MetalBackend::encode_unary(const char* kernel, const Tensor& x, float value) {
    need_f32_rows(x, kernel, "x", x.rows, x.cols);
    unary_args a{};
    a.x_stride = x.stride;
    a.dim = (int32_t)x.cols;
    a.value = value;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(x.cols));
    encode(kernel, &a, sizeof a, {writes(x)}, {ceil_div(x.cols, threads), (uint32_t)x.rows, 1}, {threads, 1, 1});
}

void MetalBackend::scale(const Tensor& x, float s) { encode_unary("scale_f32", x, s); }

void MetalBackend::gelu(const Tensor& x) { encode_unary("gelu_f32", x, 0.0f); }

void MetalBackend::relu_sq(const Tensor& x) { encode_unary("relu_sq_f32", x, 0.0f); }

void MetalBackend::softcap(const Tensor& x, float cap) {
    need(cap > 0.0f && std::isfinite(cap), "softcap", "cap must be positive and finite");
    encode_unary("softcap_f32", x, cap);
}

// argmax.h's sentinels are the contract's (core/backend.h).
static_assert(FG_ARGMAX_NAN == Backend::kArgmaxNaN && FG_ARGMAX_INF == Backend::kArgmaxInf &&
                  FG_ARGMAX_NONE == Backend::kArgmaxNone,
              "argmax sentinels differ between kernel_args.h and core/backend.h");

void MetalBackend::argmax(const Tensor& out, const Tensor& x) {
    need_f32_rows(x, "argmax", "x", x.rows, x.cols);
    need(x.cols > 0, "argmax", "empty rows");
    need(out.buf != nullptr && out.type == DType::I32 && out.rows * out.cols == x.rows &&
             (out.rows == 1 || out.stride == (size_t)out.cols * 4),
         "argmax", "out must be a contiguous i32 [n]");
    argmax_args a{};
    a.x_stride = x.stride;
    a.cols = (int32_t)x.cols;
    const uint32_t threads = std::min<uint32_t>(thread_cap("argmax_f32"), round_up_simd(x.cols));
    encode("argmax_f32", &a, sizeof a, {reads(x), writes(out)}, {(uint32_t)x.rows, 1, 1}, {threads, 1, 1},
           2 * FG_SIMD_WIDTH * sizeof(float));
}

namespace {
// FORGERT_METAL_FUSED_ARGMAX=0 turns the fused greedy GEMV off: matmul, then argmax (the tests
// compare the two paths).
bool fused_argmax_on() {
    const char* env = std::getenv("FORGERT_METAL_FUSED_ARGMAX");
    if (env == nullptr || std::strcmp(env, "1") == 0) return true;
    if (std::strcmp(env, "0") == 0) return false;
    throw std::invalid_argument("FORGERT_METAL_FUSED_ARGMAX must be 0 or 1, not '" + std::string(env) + "'");
}
}  // namespace

void MetalBackend::matmul_argmax(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& logits,
                                 RowClasses rc) {
    need_matmul_shapes(logits, w, x, "matmul_argmax");
    need(out.buf != nullptr && out.type == DType::I32 && out.rows == x.rows && out.cols == 1 &&
             (out.rows == 1 || out.stride == sizeof(int32_t)),
         "matmul_argmax", "out must be a contiguous i32 [n, 1]");
    // Only the staged GEMV has the fused form; the GEMM rows (prefix rows) keep their logits. Its
    // candidates (8 bytes per threadgroup of >= 4 rows) fit in the logits rows from 2 rows on.
    // The fused kernel serves one token per threadgroup, so it takes a lone decode row only:
    // several decode rows go through the multi-token GEMV (the output matrix requested once per
    // 8 rows, not once per row) and then argmax, writing and re-reading 8 vocab floats a row
    // instead (SmolLM2, 8 rows: 3.1 MB against 7 more requests of its 30 MB output matrix). The
    // tokens are the same: both paths give the logits' bits and follow argmax.h's rule.
    const bool fused = !gemv_direct() && fused_argmax_on() && w.rows >= 2;
    const int64_t n = x.rows, g = fused && gemv_rows(rc, n) == 1 ? 1 : 0;
    if (g > 0) encode_gemv_argmax(out.slice_rows(0, g), w, x.slice_rows(0, g), logits.slice_rows(0, g));
    if (g < n)
        Backend::matmul_argmax(out.slice_rows(g, n - g), w, x.slice_rows(g, n - g), logits.slice_rows(g, n - g),
                               g > 0 ? RowClasses::prefix() : rc);
}

void MetalBackend::encode_gemv_argmax(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& partials) {
    const int64_t n = x.rows;
    const GemvKernel k =
        gemv_kernel("mul_mv_argmax_", w.type, w.rows, n, [this](const char* name) { return thread_cap(name); });
    const uint32_t n_tg = ceil_div(w.rows, k.rows_per_tg);
    // Each token's candidates (n_tg values, n_tg indices) in the first words of its logits row.
    Tensor cand = make_tensor(partials.buf, partials.offset, DType::F32, n, 2 * (int64_t)n_tg);  // [n, 2 n_tg]
    cand.stride = partials.stride;
    mul_mv_args a = make_mul_mv_args(partials, w, x, false);
    a.sg_rows = k.sg_rows;
    encode(k.name, &a, sizeof a, {reads(w), reads(x), writes(cand)}, {n_tg, (uint32_t)n, 1}, {k.threads, 1, 1},
           k.tg_bytes);
    argmax_args b{};
    b.x_stride = cand.stride;
    b.cols = (int32_t)n_tg;
    const uint32_t threads = std::min<uint32_t>(thread_cap("argmax_partials"), round_up_simd(n_tg));
    encode("argmax_partials", &b, sizeof b, {reads(cand), writes(out)}, {(uint32_t)n, 1, 1}, {threads, 1, 1},
           2 * FG_SIMD_WIDTH * sizeof(float));
}

// --- mixture of experts ---

namespace {
void need_i32_rows(const Tensor& t, const char* op, const char* name, int64_t rows, int64_t cols) {
    need(t.buf != nullptr && t.type == DType::I32 && t.rows == rows && t.cols == cols, op,
         std::string(name) + " must be i32 [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
}
}  // namespace

void MetalBackend::moe_route(const Tensor& weights, const Tensor& ids, const Tensor& logits, const MoeRouting& r,
                             const Tensor& select_bias) {
    check_moe_route(weights, ids, logits, r, select_bias);
    const int64_t n = logits.rows, k = ids.cols;
    moe_route_args a{};
    a.logits_stride = logits.stride;
    a.weights_stride = weights.stride;
    a.ids_stride = ids.stride;
    a.n = (int32_t)n;
    a.n_expert = (int32_t)logits.cols;
    a.k = (int32_t)k;
    a.renormalize = r.renormalize ? 1 : 0;
    a.sigmoid = r.sigmoid ? 1 : 0;
    a.has_bias = select_bias.rows ? 1 : 0;
    a.n_group = r.n_group;
    a.topk_group = r.topk_group;
    a.scale = r.scale;
    encode("moe_route_f32", &a, sizeof a,
           {reads(logits), writes(weights), writes(ids), reads(select_bias.rows ? select_bias : logits)},
           {ceil_div(n, 32), 1, 1}, {32, 1, 1});
}

namespace {
// Where a stack's experts lie: in one buffer, each a whole number of strides from the lowest, in
// any order (GGUF's 3-D stacks in expert order; HF's per-expert tensors as safetensors stores
// them: in name order, experts.10 before experts.2, interleaved with the other stacks' experts).
// slot[e]: expert e's place (place s at the lowest offset + s * stride).
struct ExpertOrder {
    enum Fault {
        none,
        mismatched,  // an expert differs from expert 0 in type or shape: refused
        scattered,   // alike, but in several files or not at one stride: prepare_experts copies them
    };
    Fault fault = none;
    std::string problem;  // why the stack does not lie so ("" when it does)
    std::vector<int32_t> slot;
    bool in_order = true;  // slot[e] == e
};

ExpertOrder expert_order(const Tensor* experts, int n_expert) {
    ExpertOrder o;
    auto fail = [&o](ExpertOrder::Fault fault, std::string why) {
        o.fault = fault;
        o.problem = std::move(why);
        return o;
    };
    // Type and shape first: a mismatch is refused whether or not the experts also lie apart.
    const Tensor& w0 = experts[0];
    for (int e = 1; e < n_expert; e++) {
        const Tensor& we = experts[e];
        if (we.type != w0.type || we.rows != w0.rows || we.cols != w0.cols || we.stride != w0.stride)
            return fail(ExpertOrder::mismatched,
                        "expert " + std::to_string(e) + " differs from expert 0 in type or shape");
    }
    size_t lo = w0.offset, hi = w0.offset;
    for (int e = 1; e < n_expert; e++) {
        const Tensor& we = experts[e];
        if (we.buf != w0.buf)
            return fail(ExpertOrder::scattered, "expert " + std::to_string(e) + " lies in another file than expert 0");
        lo = std::min(lo, we.offset);
        hi = std::max(hi, we.offset);
    }
    o.slot.assign(n_expert, 0);
    if (n_expert == 1) return o;
    const size_t stride = (hi - lo) / (n_expert - 1);
    std::vector<char> taken(n_expert, 0);
    for (int e = 0; e < n_expert; e++) {
        const size_t d = experts[e].offset - lo, s = stride > 0 ? d / stride : 0;
        if (stride < w0.nbytes() || d % stride != 0 || s >= (size_t)n_expert || taken[s])
            return fail(ExpertOrder::scattered, "the experts do not lie at one stride in their file");
        taken[s] = 1;
        o.slot[e] = (int32_t)s;
        o.in_order = o.in_order && (int)s == e;
    }
    return o;
}
}  // namespace

// The kernels find the expert in place s at w + s * expert_stride: the stack must lie so, in any
// order (matmul_id maps the ids to places).
std::string MetalBackend::expert_stack_problem(const Tensor* experts, int n_expert) const {
    return expert_order(experts, n_expert).problem;
}

// Each slot's expert id mapped to its expert's place in a stack stored out of order
// (map_ids_i32 through a table made once per order), into a scratch i32 [n, k].
Tensor MetalBackend::encode_expert_places(const Tensor& ids, const std::vector<int32_t>& slot) {
    std::unique_ptr<Buffer>& table = expert_place_tables_[slot];
    if (!table) {  // a new buffer: no pass reads it yet
        table = dev_->new_buffer(slot.size() * sizeof(int32_t));
        std::memcpy(table->host, slot.data(), slot.size() * sizeof(int32_t));
    }
    const int64_t n = ids.rows, k = ids.cols;
    const Tensor places = make_tensor(grow_scratch(expert_places_, (size_t)(n * k) * sizeof(int32_t)), 0, DType::I32, n, k);
    moe_group_args a{};
    a.ids_stride = ids.stride;
    a.n = (int32_t)n;
    a.k = (int32_t)k;
    a.n_expert = (int32_t)slot.size();
    encode("map_ids_i32", &a, sizeof a,
           {reads(ids), Binding{table.get(), 0, slot.size() * sizeof(int32_t), false}, writes(places)},
           {ceil_div(n * k, 32), 1, 1}, {32, 1, 1});
    return places;
}

// Experts that do not lie at one stride in one buffer (a layer's experts split across HF shards)
// are copied, in expert order, into one buffer of their own, read as a GGUF stack is. The copy
// costs the stack's bytes in memory beside the file's (whose pages for it are no longer read; a
// residency set keeps them mapped all the same). A stack that differs in type or shape between
// experts stays as it is, for the model to refuse by name.
void MetalBackend::prepare_experts(std::vector<Tensor>& experts, std::vector<std::unique_ptr<Buffer>>& owned) {
    const int n = (int)experts.size();
    if (n < 2 || expert_order(experts.data(), n).fault != ExpertOrder::scattered) return;
    // The experts are alike (expert_order): each is copied whole, its rows back to back.
    const Tensor& w0 = experts[0];
    const size_t bytes = w0.nbytes();
    if (w0.stride != (size_t)row_bytes(w0.type, w0.cols) ||
        std::any_of(experts.begin(), experts.end(), [](const Tensor& e) { return e.buf == nullptr; }))
        return;
    owned.push_back(alloc(bytes * n));
    Buffer* stack = owned.back().get();
    for (int e = 0; e < n; e++) {
        const Tensor copy = make_tensor(stack, (size_t)e * bytes, w0.type, w0.rows, w0.cols);
        write(copy, experts[e].data<uint8_t>(), bytes);
        experts[e] = copy;
    }
}

void MetalBackend::matmul_id(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x,
                             const Tensor& ids, RowClasses rc) {
    need(n_expert >= 1 && experts != nullptr, "matmul_id", "no experts");
    const Tensor& w0 = experts[0];
    const int64_t n = ids.rows, k = ids.cols;
    need_matmul_shapes(out.slice_rows(0, x.rows), w0, x, "matmul_id");
    need(x.rows == n || x.rows == n * k, "matmul_id", "x must have n or n*k rows");
    need_f32_rows(out, "matmul_id", "out", n * k, w0.rows);
    need_i32_rows(ids, "matmul_id", "ids", n, k);
    const ExpertOrder order = expert_order(experts, n_expert);
    need(order.problem.empty(), "matmul_id", order.problem);
    need(n * k <= INT32_MAX / std::max(n_expert, 1), "matmul_id", "too many slots");
    // A stack stored out of expert order: the kernels read it in its stored order, each slot's id
    // first mapped to its expert's place (no copy of the weights).
    std::vector<Tensor> stored;
    Tensor places = ids;
    if (!order.in_order) {
        stored.resize(n_expert);
        for (int e = 0; e < n_expert; e++) stored[order.slot[e]] = experts[e];
        experts = stored.data();
        places = encode_expert_places(ids, order.slot);
    }
    // GEMV tokens first (their slots i*k + j lead), then GEMM tokens: each token's x rows (its own
    // row, or its k slots' rows) and out rows go with it.
    const int64_t g = gemv_rows(rc, n), x_rows_per_token = x.rows == n ? 1 : k;
    auto tokens = [&](int64_t i0, int64_t m, bool gemv) {
        const Tensor o = out.slice_rows(i0 * k, m * k), xs = x.slice_rows(i0 * x_rows_per_token, m * x_rows_per_token),
                     id = places.slice_rows(i0, m);
        if (gemv)
            encode_matmul_id_gemv(o, experts, n_expert, xs, id);
        else
            encode_matmul_id_gemm(o, experts, n_expert, xs, id);
    };
    if (g > 0) tokens(0, g, true);
    if (g < n) tokens(g, n - g, false);
}

namespace {
// Where the experts lie (expert e at w0 + e * stride; expert_stack_problem checked it) and the
// binding that covers them all.
size_t expert_stride(const Tensor* experts, int n_expert) {
    return n_expert > 1 ? experts[1].offset - experts[0].offset : 0;
}
MetalBackend::Binding expert_stack(const Tensor* experts, int n_expert) {
    const Tensor& w0 = experts[0];
    return {w0.buf, w0.offset, (n_expert - 1) * expert_stride(experts, n_expert) + w0.nbytes(), false};
}
}  // namespace

// The slots grouped by expert on the device (moe_group_i32): [n_expert] counts, then
// [n_expert][n_slots] each expert's slots in increasing order; the binding that reads them.
MetalBackend::Binding MetalBackend::encode_moe_groups(const Tensor& ids, int n_expert) {
    const int64_t n = ids.rows, k = ids.cols;
    const size_t group_bytes = (size_t)(n_expert + (int64_t)n_expert * n * k) * sizeof(int32_t);
    const Buffer* groups = moe_groups_scratch(group_bytes);
    moe_group_args g{};
    g.ids_stride = ids.stride;
    g.n = (int32_t)n;
    g.k = (int32_t)k;
    g.n_expert = n_expert;
    encode("moe_group_i32", &g, sizeof g, {reads(ids), Binding{groups, 0, group_bytes, true}},
           {ceil_div(n_expert, 32), 1, 1}, {32, 1, 1});
    return Binding{groups, 0, group_bytes, false};
}

// A GEMV per slot over its expert's rows: one token's slots through the one-token kernel (each
// slot its own threadgroups), several tokens' through the multi-token kernel over the slots
// grouped by expert (the slots of one expert share its weight windows, up to FG_MV_TOKENS a
// threadgroup; each slot's bits those of the one-token kernel).
void MetalBackend::encode_matmul_id_gemv(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x,
                                         const Tensor& ids) {
    const Tensor& w0 = experts[0];
    const int64_t n_slots = ids.rows * ids.cols;
    if (ids.rows >= 2 && !gemv_direct()) {
        const Binding groups = encode_moe_groups(ids, n_expert);
        mul_mv_id_tokens_args a{};
        a.id.mv = make_mul_mv_args(out, w0, x, false);
        a.id.expert_stride = expert_stride(experts, n_expert);
        a.id.ids_stride = ids.stride;
        a.id.k = (int32_t)ids.cols;
        a.id.x_per_slot = x.rows == n_slots && ids.cols > 1 ? 1 : 0;
        a.id.n_expert = n_expert;
        a.n_slots = (int32_t)n_slots;
        // grid y: an expert's token groups when each token names it at most once (moe_route's ids
        // are distinct); the kernel loops over any more
        const GemvKernel kern = gemv_tokens_kernel("mul_mv_id_", w0.type, w0.rows, n_slots,
                                                   [this](const char* name) { return thread_cap(name); });
        a.id.mv.sg_rows = kern.sg_rows;
        encode(kern.name, &a, sizeof a, {expert_stack(experts, n_expert), reads(x), writes(out), reads(ids), groups},
               {ceil_div(w0.rows, kern.rows_per_tg), ceil_div(ids.rows, FG_MV_TOKENS), (uint32_t)n_expert + 1},
               {kern.threads, 1, 1}, kern.tg_bytes);
        return;
    }
    mul_mv_id_args a{};
    a.mv = make_mul_mv_args(out, w0, x, false);
    a.expert_stride = expert_stride(experts, n_expert);
    a.ids_stride = ids.stride;
    a.k = (int32_t)ids.cols;
    a.x_per_slot = x.rows == n_slots && ids.cols > 1 ? 1 : 0;
    a.n_expert = n_expert;
    const GemvKernel kern =
        gemv_kernel("mul_mv_id_", w0.type, w0.rows, n_slots, [this](const char* name) { return thread_cap(name); });
    a.mv.sg_rows = kern.sg_rows;
    encode(kern.name, &a, sizeof a, {expert_stack(experts, n_expert), reads(x), writes(out), reads(ids)},
           {ceil_div(w0.rows, kern.rows_per_tg), (uint32_t)n_slots, 1}, {kern.threads, 1, 1}, kern.tg_bytes);
}

// The slots grouped by expert on the device, then one GEMM per expert over its slots.
void MetalBackend::encode_matmul_id_gemm(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x,
                                         const Tensor& ids) {
    const Tensor& w0 = experts[0];
    const int64_t n = ids.rows, k = ids.cols, n_slots = n * k;
    const Binding groups = encode_moe_groups(ids, n_expert);
    mul_mm_id_args a{};
    a.mm.w_stride = w0.stride;
    a.mm.x_stride = x.stride;
    a.mm.out_stride = out.stride;
    a.mm.rows = (int32_t)w0.rows;
    a.mm.cols = (int32_t)w0.cols;
    a.mm.n_tokens = (int32_t)n_slots;
    a.mm.accumulate = 0;
    a.expert_stride = expert_stride(experts, n_expert);
    a.n_slots = (int32_t)n_slots;
    a.k = (int32_t)k;
    a.x_per_slot = x.rows == n_slots && k > 1 ? 1 : 0;
    a.n_expert = n_expert;
    encode(std::string("mul_mm_id_") + weight_suffix(w0.type), &a, sizeof a,
           {expert_stack(experts, n_expert), reads(x), writes(out), groups},
           {ceil_div(w0.rows, FG_MM_TILE_ROWS), ceil_div(n_slots, FG_MM_TILE_TOKENS), (uint32_t)n_expert},
           {FG_MM_THREADS, 1, 1}, FG_MM_TG_BYTES(w0.type == DType::F32 || w0.type == DType::BF16 ? 4 : 2));
}

void MetalBackend::moe_sum_add(const Tensor& out, const Tensor& y, const Tensor& weights) {
    const int64_t n = out.rows, k = weights.cols;
    need_f32_rows(out, "moe_sum_add", "out", n, out.cols);
    need_f32_rows(weights, "moe_sum_add", "weights", n, k);
    need_f32_rows(y, "moe_sum_add", "y", n * k, out.cols);
    moe_sum_args a{};
    a.y_stride = y.stride;
    a.weights_stride = weights.stride;
    a.out_stride = out.stride;
    a.dim = (int32_t)out.cols;
    a.k = (int32_t)k;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(out.cols));
    encode("moe_sum_add_f32", &a, sizeof a, {reads(y), reads(weights), writes(out)},
           {ceil_div(out.cols, threads), (uint32_t)n, 1}, {threads, 1, 1});
}

void MetalBackend::scale_sigmoid(const Tensor& x, const Tensor& gate) {
    need_f32_rows(x, "scale_sigmoid", "x", x.rows, x.cols);
    need_f32_rows(gate, "scale_sigmoid", "gate", x.rows, 1);
    moe_sum_args a{};
    a.weights_stride = gate.stride;
    a.out_stride = x.stride;
    a.dim = (int32_t)x.cols;
    a.k = 1;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(x.cols));
    encode("scale_sigmoid_f32", &a, sizeof a, {reads(gate), writes(x)}, {ceil_div(x.cols, threads), (uint32_t)x.rows, 1},
           {threads, 1, 1});
}

void MetalBackend::swiglu_oai(const Tensor& out, const Tensor& gate, const Tensor& up, float alpha, float limit) {
    need_f32_rows(out, "swiglu_oai", "out", out.rows, out.cols);
    need_f32_rows(gate, "swiglu_oai", "gate", out.rows, out.cols);
    need_f32_rows(up, "swiglu_oai", "up", out.rows, out.cols);
    need(alpha > 0.0f && limit > 0.0f && std::isfinite(alpha) && std::isfinite(limit), "swiglu_oai",
         "alpha and limit must be positive and finite");
    if (out.rows == 0) return;
    swiglu_oai_args a{};
    a.gate_stride = gate.stride;
    a.up_stride = up.stride;
    a.out_stride = out.stride;
    a.dim = (int32_t)out.cols;
    a.alpha = alpha;
    a.limit = limit;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(out.cols));
    encode("swiglu_oai_f32", &a, sizeof a, {reads(gate), reads(up), writes(out)},
           {ceil_div(out.cols, threads), (uint32_t)out.rows, 1}, {threads, 1, 1});
}

void MetalBackend::add_bias_id(const Tensor& x, const Tensor& b, const Tensor& ids) {
    const int64_t n = ids.rows, k = ids.cols;
    need(ids.buf && ids.type == DType::I32, "add_bias_id", "ids must be i32 [n, k]");
    need_f32_rows(x, "add_bias_id", "x", n * k, x.cols);
    need_f32_rows(b, "add_bias_id", "b", b.rows, x.cols);
    if (n * k == 0) return;
    add_bias_id_args a{};
    a.b_stride = b.stride;
    a.ids_stride = ids.stride;
    a.x_stride = x.stride;
    a.dim = (int32_t)x.cols;
    a.k = (int32_t)k;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(x.cols));
    encode("add_bias_id_f32", &a, sizeof a, {reads(b), reads(ids), writes(x)},
           {ceil_div(x.cols, threads), (uint32_t)(n * k), 1}, {threads, 1, 1});
}

namespace {
bool overlap(const Tensor& a, const Tensor& b) {
    return a.buf == b.buf && a.offset < b.offset + b.nbytes() && b.offset < a.offset + a.nbytes();
}

// The recurrent kernels read their f32 rows as floats: 4-byte aligned starts and strides.
void need_f32_aligned(const Tensor& t, const char* op, const char* name) {
    need(aligned(t, 4), op, std::string(name) + " must start and stride at multiples of 4 bytes");
}

// The state is read and written by other threadgroups than those reading the inputs: apart from all of them.
void need_state_apart(const Tensor& state, std::initializer_list<const Tensor*> others, const char* op) {
    for (const Tensor* t : others) need(!overlap(state, *t), op, "state may not overlap another argument");
}
}  // namespace

void MetalBackend::conv1d_state(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                                const Tensor& state, const Tensor& runs, bool silu) {
    const char* op = "conv1d_state";
    check_conv1d_state(out, x, w, bias, state, runs, nullptr);  // the table's contents are on the device
    for (const auto& [t, name] : {std::pair{&x, "x"}, {&w, "w"}, {&state, "state"}, {&out, "out"}})
        need_f32_aligned(*t, op, name);
    const Tensor& b = bias.rows ? bias : w;  // slot 6 is bound either way; the kernel reads it only with has_bias
    need_f32_aligned(b, op, "bias");
    need_state_apart(state, {&x, &w, &b, &out, &runs}, op);
    need(x.rows <= INT32_MAX && x.cols <= INT32_MAX && state.rows <= INT32_MAX && runs.rows <= INT32_MAX, op,
         "too many rows or channels");
    static_assert(FG_CONV_MAX_K >= 16, "check_conv1d_state allows K up to 16");
    conv1d_state_args a{};
    a.x_stride = x.stride;
    a.w_stride = w.stride;
    a.out_stride = out.stride;
    a.state_stride = state.stride;
    a.channels = (int32_t)x.cols;
    a.width = (int32_t)w.cols;
    a.n_runs = (int32_t)runs.rows;
    a.rows = (int32_t)x.rows;
    a.n_slots = (int32_t)state.rows;
    a.silu = silu ? 1 : 0;
    a.has_bias = bias.rows ? 1 : 0;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(x.cols));
    encode("conv1d_state_f32", &a, sizeof a, {reads(x), reads(w), writes(state), reads(runs), writes(out), reads(b)},
           {ceil_div(x.cols, threads), (uint32_t)runs.rows, 1}, {threads, 1, 1},
           threads * FG_CONV_TG_STRIDE(a.width) * sizeof(float));
}

void MetalBackend::gated_delta_rule(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& alpha, const Tensor& beta, const Tensor& A, const Tensor& dt_bias,
                                    const Tensor& state, const Tensor& runs, const DeltaNetParams& p) {
    const char* op = "gated_delta_rule";
    check_delta_rule(out, q, k, v, alpha, beta, A, dt_bias, state, runs, p, nullptr);
    for (const auto& [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&alpha, "alpha"}, {&beta, "beta"},
                                  {&A, "A"}, {&dt_bias, "dt_bias"}, {&state, "state"}, {&out, "out"}})
        need_f32_aligned(*t, op, name);
    need_state_apart(state, {&q, &k, &v, &alpha, &beta, &A, &dt_bias, &out, &runs}, op);
    need(q.rows <= INT32_MAX && state.rows <= INT32_MAX && runs.rows <= INT32_MAX, op, "too many rows");
    delta_rule_args a{};
    a.q_stride = q.stride;
    a.k_stride = k.stride;
    a.v_stride = v.stride;
    a.alpha_stride = alpha.stride;
    a.beta_stride = beta.stride;
    a.out_stride = out.stride;
    a.state_stride = state.stride;
    a.n_runs = (int32_t)runs.rows;
    a.n_k_heads = p.n_k_heads;
    a.n_v_heads = p.n_v_heads;
    a.k_dim = p.k_dim;
    a.v_dim = p.v_dim;
    a.v_tiled = p.v_tiled ? 1 : 0;
    a.eps = p.eps;
    a.rows = (int32_t)q.rows;
    a.n_slots = (int32_t)state.rows;
    // The variant whose register column holds k_dim (check_delta_rule: k_dim <= 256).
    const int kmax = p.k_dim <= 64 ? 64 : p.k_dim <= 128 ? 128 : 256;
    const uint32_t threads = std::min<uint32_t>(FG_DELTA_MAX_TILE, round_up_simd(p.v_dim));
    encode("gated_delta_rule_f32_k" + std::to_string(kmax), &a, sizeof a,
           {reads(q), reads(k), reads(v), reads(alpha), reads(beta), reads(A), reads(dt_bias), writes(state),
            reads(runs), writes(out)},
           {(uint32_t)runs.rows, (uint32_t)p.n_v_heads, ceil_div(p.v_dim, threads)}, {threads, 1, 1},
           FG_DELTA_TG_FLOATS(kmax) * sizeof(float));
}

void MetalBackend::mamba2_scan(const Tensor& out, const Tensor& x, const Tensor& B, const Tensor& C, const Tensor& dt,
                               const Tensor& A, const Tensor& D, const Tensor& dt_bias, const Tensor& state,
                               const Tensor& runs, const Mamba2Params& p) {
    const char* op = "mamba2_scan";
    check_mamba2_scan(out, x, B, C, dt, A, D, dt_bias, state, runs, p, nullptr);
    for (const auto& [t, name] : {std::pair{&x, "x"}, {&B, "B"}, {&C, "C"}, {&dt, "dt"}, {&A, "A"}, {&D, "D"},
                                  {&dt_bias, "dt_bias"}, {&state, "state"}, {&out, "out"}})
        need_f32_aligned(*t, op, name);
    need_state_apart(state, {&x, &B, &C, &dt, &A, &D, &dt_bias, &out, &runs}, op);
    need(x.rows <= INT32_MAX && state.rows <= INT32_MAX && runs.rows <= INT32_MAX, op, "too many rows");
    mamba2_scan_args a{};
    a.x_stride = x.stride;
    a.b_stride = B.stride;
    a.c_stride = C.stride;
    a.dt_stride = dt.stride;
    a.out_stride = out.stride;
    a.state_stride = state.stride;
    a.n_runs = (int32_t)runs.rows;
    a.n_heads = p.n_heads;
    a.head_dim = p.head_dim;
    a.n_groups = p.n_groups;
    a.d_state = p.d_state;
    a.rows = (int32_t)x.rows;
    a.n_slots = (int32_t)state.rows;
    // The variant whose register row holds d_state (check_mamba2_scan: d_state <= 256).
    const int nmax = p.d_state <= 64 ? 64 : p.d_state <= 128 ? 128 : 256;
    const uint32_t threads = std::min<uint32_t>(FG_MAMBA_MAX_TILE, round_up_simd(p.head_dim));
    encode("mamba2_scan_f32_n" + std::to_string(nmax), &a, sizeof a,
           {reads(x), reads(B), reads(C), reads(dt), reads(A), reads(D), reads(dt_bias), writes(state), reads(runs),
            writes(out)},
           {(uint32_t)runs.rows, (uint32_t)p.n_heads, ceil_div(p.head_dim, threads)}, {threads, 1, 1},
           FG_MAMBA_TG_FLOATS * sizeof(float));
}

// Elementwise: gate may be a view beside x in one buffer (each thread reads and writes one element).
void MetalBackend::mul_sigmoid(const Tensor& x, const Tensor& gate) {
    const char* op = "mul_sigmoid";
    need_f32_rows(x, op, "x", x.rows, x.cols);
    need_f32_rows(gate, op, "gate", x.rows, x.cols);
    need_f32_aligned(x, op, "x");
    need_f32_aligned(gate, op, "gate");
    need(x.rows <= INT32_MAX && x.cols <= INT32_MAX, op, "too many rows or columns");
    elementwise_args a{};
    a.a_stride = gate.stride;
    a.out_stride = x.stride;
    a.dim = (int32_t)x.cols;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(x.cols));
    encode("mul_sigmoid_f32", &a, sizeof a, {reads(gate), writes(x)}, {ceil_div(x.cols, threads), (uint32_t)x.rows, 1},
           {threads, 1, 1});
}


// --- Gemma 3n (altup.metal) ---

void MetalBackend::gaussian_topk(const Tensor& x, float std_mult) {
    need(x.cols > 0 && std::isfinite(std_mult), "gaussian_topk", "empty rows or a non-finite std_mult");
    need_f32_rows(x, "gaussian_topk", "x", x.rows, x.cols);
    altup_row_args a{};
    a.x_stride = x.stride;
    a.dim = (int32_t)x.cols;
    a.std_mult = std_mult;
    const uint32_t threads = std::min<uint32_t>(thread_cap("gaussian_topk_f32"), round_up_simd(x.cols));
    encode("gaussian_topk_f32", &a, sizeof a, {writes(x)}, {(uint32_t)x.rows, 1, 1}, {threads, 1, 1},
           FG_SIMD_WIDTH * sizeof(float));
}

void MetalBackend::rms_match(const Tensor& out, const Tensor& x, const Tensor& target) {
    need(x.cols > 0, "rms_match", "empty rows");
    need_f32_rows(x, "rms_match", "x", x.rows, x.cols);
    need_f32_rows(target, "rms_match", "target", x.rows, x.cols);
    need_f32_rows(out, "rms_match", "out", x.rows, x.cols);
    altup_row_args a{};
    a.x_stride = x.stride;
    a.target_stride = target.stride;
    a.out_stride = out.stride;
    a.dim = (int32_t)x.cols;
    const uint32_t threads = std::min<uint32_t>(thread_cap("rms_match_f32"), round_up_simd(x.cols));
    encode("rms_match_f32", &a, sizeof a, {reads(x), reads(target), writes(out)}, {(uint32_t)x.rows, 1, 1},
           {threads, 1, 1}, FG_SIMD_WIDTH * sizeof(float));
}

void MetalBackend::altup_mix(const Tensor& out, const Tensor& xs, const Tensor& coefs, const Tensor& base) {
    const int64_t n = out.rows, dim = out.cols, k = coefs.cols;
    need(k > 0 && dim > 0, "altup_mix", "no streams or empty rows");
    need_f32_rows(out, "altup_mix", "out", n, dim);
    need_f32_rows(base, "altup_mix", "base", n, dim);
    need_f32_rows(coefs, "altup_mix", "coefs", n, k);
    need_f32_rows(xs, "altup_mix", "xs", n, k * dim);
    altup_mix_args a{};
    a.xs_stride = xs.stride;
    a.coefs_stride = coefs.stride;
    a.base_stride = base.stride;
    a.out_stride = out.stride;
    a.dim = (int32_t)dim;
    a.k = (int32_t)k;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(dim));
    encode("altup_mix_f32", &a, sizeof a, {reads(xs), reads(coefs), reads(base), writes(out)},
           {ceil_div(dim, threads), (uint32_t)n, 1}, {threads, 1, 1});
}

void MetalBackend::clamp_ids(const Tensor& out, const Tensor& ids, int32_t limit) {
    const int64_t n = ids.rows * ids.cols;
    need(ids.buf != nullptr && out.buf != nullptr && ids.type == DType::I32 && out.type == DType::I32 &&
             out.rows * out.cols == n && limit > 0,
         "clamp_ids", "ids and out must be i32 of one size, limit positive");
    need((ids.rows == 1 || ids.stride == (size_t)ids.cols * 4) && (out.rows == 1 || out.stride == (size_t)out.cols * 4),
         "clamp_ids", "ids and out must be contiguous");
    clamp_ids_args a{};
    a.n = (int32_t)n;
    a.limit = limit;
    const uint32_t threads = std::min<uint32_t>(256, round_up_simd(n));
    encode("clamp_ids_i32", &a, sizeof a, {reads(ids), writes(out)}, {ceil_div(n, threads), 1, 1}, {threads, 1, 1});
}

}  // namespace forgert::metal
