// The CPU backend's inner kernels, compiled once per ISA level (kernels_*.cpp,
// each file built with its own -m flags) and chosen at run time by what the CPU
// reports. Everything here works on one thread's share of an op.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/tensor.h"

namespace forgert::cpu {

// A weight type as a type: lets one generic lambda instantiate a kernel template per DType.
template <DType T>
using DTypeTag = std::integral_constant<DType, T>;

// Activations quantized for integer dot products against quantized weights, in
// two int8 parts: x[i] ~= d * (256 * hi[i] + lo[i]), where hi is x rounded to 8
// bits of the block's range and lo the rounding error rounded to 8 more bits.
// The residual is ~2^-16 of the block's max |x|: logits match an f32 reference
// (one int8 part, as llama.cpp uses, flips near-tied argmaxes of small models).
// `sum` is the exact sum of the block's x (zero-point terms of Q4_0 and Q4_1).
// One-part activations (activations="int8", drop_lo_parts below): lo = 0, x[i] ~= 256 d hi[i].
struct BlockQ8Act {
    float d;
    float sum;
    int8_t hi[FG_QK];
    int8_t lo[FG_QK];
};
static_assert(sizeof(BlockQ8Act) == 72, "BlockQ8Act is 72 bytes");

// Activation parts of the int8 paths: two (x ~= d (256 hi + lo), about 16 bits: the default,
// activations="int16") or one (x ~= 256 d hi, llama.cpp's 8 bits: activations="int8", faster
// where the kernels skip the lo dots, coarser: docs/design.md "Numerics of the CPU backend").
// One-part blocks: lo = 0 and `sum` the sum of the rounded values, 256 d sum(hi), so a result is
// the weights' dot with x rounded to one int8 a value, the same integers whether a kernel skips
// the lo dots (gemm_q's parts = 1) or multiplies the zeros.  x [n_blocks]
inline void drop_lo_parts(BlockQ8Act* x, int64_t n_blocks) {
    for (int64_t b = 0; b < n_blocks; b++) {
        int32_t s = 0;
        for (int i = 0; i < FG_QK; i++) s += x[b].hi[i], x[b].lo[i] = 0;
        x[b].sum = (float)(256 * s) * x[b].d;
    }
}

// gemm_i8's activation sums (xs) for blocks [b0, b1) of an activation of n_blocks blocks:
// xs[2 b + p] is the integer sum of part p (0: hi, 1: lo) of block b (the zero-point and min
// terms), then xs[2 n_blocks + 4 b + 2 p + h] the sum of part p over the block's 16-weight half
// h (Q2_K's per-half mins). xs holds i8_act_sums_ints(n_blocks) ints.
constexpr int64_t i8_act_sums_ints(int64_t n_blocks) { return 6 * n_blocks; }
inline void i8_act_sums(const BlockQ8Act* x, int64_t b0, int64_t b1, int64_t n_blocks, int32_t* xs) {
    for (int64_t b = b0; b < b1; b++)
        for (int p = 0; p < 2; p++) {
            const int8_t* v = p ? x[b].lo : x[b].hi;
            int32_t s[2];
            for (int h = 0; h < 2; h++) {  // 16 at a time: a loop the compiler vectorizes (s[i / 16]: 4.7x slower)
                int32_t a = 0;
                for (int i = 0; i < 16; i++) a += v[16 * h + i];
                s[h] = a;
            }
            xs[2 * b + p] = s[0] + s[1];
            for (int h = 0; h < 2; h++) xs[2 * n_blocks + 4 * b + 2 * p + h] = s[h];
        }
}

struct KernelSet {
    const char* name;
    // Quantize one row of n (multiple of 32) floats into n/32 blocks.
    void (*quantize_row_q8)(const float* x, BlockQ8Act* y, int64_t n);
    // out[t * out_stride + r] = dot(w row r, x row t) for r in [r0, r1), t in [0, n_tok):
    // w quantized (Q8_0/Q4_0/Q4_1) with rows w_stride bytes apart; x rows of nb blocks.
    // parts: 2, or 1 where x's blocks went through drop_lo_parts (lo = 0): a kernel may then skip
    // the lo dots, and gives the bits it gives on those blocks with parts = 2.
    void (*gemm_q)(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1,
                   const BlockQ8Act* x, int64_t nb, int64_t n_tok, float* out, int64_t out_stride, int parts);
    // The same for float weights (F32/F16/BF16) against f32 activations of `cols` columns.
    void (*gemm_f)(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1,
                   const float* x, int64_t cols, int64_t n_tok, float* out, int64_t out_stride);
    // Prefill GEMM (many tokens), all weight types, f32 activations: rows [r0, r1) of w
    // are dequantized kPanelRows at a time into `work` and multiplied against xp, the
    // activations packed per token tile: xp[(t / TT) * cols * TT + c * TT + t % TT] with
    // TT = panel_tokens, the last tile zero-filled. Streams FMAs with no per-block
    // overhead, exact as f32 math. nullptr where the set has none (gemm_q / gemm_f then).
    void (*gemm_panel)(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const float* xp,
                       int64_t cols, int64_t n_tok, float* out, int64_t out_stride, float* work);
    int panel_tokens;  // token tile of gemm_panel
    // Convert n f16 values to f32 and back.
    void (*f16_to_f32_row)(const uint16_t* x, float* y, int64_t n);
    void (*f32_to_f16_row)(const float* x, uint16_t* y, int64_t n);
    // Causal attention of nq query vectors in n_kv groups of g = nq / n_kv, each group sharing
    // one KV head (the GQA group's heads, for a block of tokens): group h's queries q[h g ..
    // (h + 1) g) read columns h hd .. of the K and V rows. Query i attends to keys 0..len[i]-1 of
    // k, v (f16, rows kv_stride elements apart, head_dim hd <= kMaxHeadDim) with an online
    // softmax over key chunks; `work` holds attention_work_floats(hd) floats. A query's bits
    // depend on its group's size, not on n_kv: several heads in one call let a set read the rows
    // whole, chunk by chunk (decode at depth streams the cache from memory).
    // With lse != nullptr also lse[i] = log(sum of query i's exp-scores) (the log-sum-exp),
    // so that results over disjoint key ranges can be merged (split-K decode).
    // softcap > 0: each score s becomes softcap * tanh(s / softcap) before the softmax (Gemma 2).
    void (*attention_group)(const float* const* q, float* const* out, const int64_t* len, int nq, int n_kv,
                            const uint16_t* k, const uint16_t* v, int64_t kv_stride, int hd, float scale,
                            float softcap, float* work, float* lse);
    // y[i] = silu(g[i]) * u[i]
    void (*silu_mul_row)(const float* g, const float* u, float* y, int64_t n);
    // y[i] = gelu_tanh(g[i]) * u[i] (GeGLU), gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
    void (*gelu_mul_row)(const float* g, const float* u, float* y, int64_t n);
    // Prefill int8 GEMM for the weight types in gemm_i8_types (gemm_i8_takes): out[t * out_stride + r] for
    // r in [r0, r1), t in [0, n_tok), with integer dots of the weights' quants against x's
    // int8 parts: parts = 2 takes hi and lo (decode's ~16-bit activations), parts = 1 hi alone
    // (one int8 per value, as llama.cpp). xs: i8_act_sums of x's n_tok * nb blocks (the part sums
    // of each block, then of each half of it). Per row and token the blocks are accumulated in
    // order, acc = fma((float)idot, dw * dx, acc): every set gives the same bits.
    // The SIMD sets repack kI8Rows weight rows at a time into `work` (gemm_i8_work_bytes),
    // interleaved for their dot instruction, and reuse each panel for all n_tok tokens.
    // nullptr where the set has none.
    void (*gemm_i8)(DType wt, const uint8_t* w, size_t w_stride, int64_t r0, int64_t r1, const BlockQ8Act* x,
                    const int32_t* xs, int64_t nb, int64_t n_tok, int parts, float* out, int64_t out_stride,
                    uint8_t* work);
    uint64_t gemm_i8_types;  // bit (int)t set: gemm_i8 takes weight type t (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K and
                             // the IQ1-IQ3 lattice types at most)
    // Bit (int)t set: this set reads file type t (Q4_0, Q4_1, Q5_0, Q8_0, Q2_K ... Q6_K)
    // repacked into 16-row panels (DType::Q4_0x16 / Q4_1x16 / Q5_0x16 / Q8_0x16 / Q2_Kx16 ... Q6_Kx16) in every kernel
    // (gemm_q, gemm_i8, gemm_panel), so the backend
    // repacks such weights at load (CpuBackend::prepare_weight). 0: the file's layout throughout.
    uint64_t panel16_types = 0;
};

// Weight types whose matmuls take q8-quantized activations (KernelSet::gemm_q); the float
// types (F32/F16/BF16) take f32 activations (gemm_f).
inline bool is_quantized(DType t) {
    return is_panel16(t) || t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
           t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K ||
           t == DType::IQ4_NL || t == DType::IQ4_XS || t == DType::MXFP4 || is_iq_lattice(t);
}

// 64 bits: GGUF type ids reach 39 (MXFP4); a 32-bit shift by them is undefined (UBSan caught
// it), and on x86 would wrap to another type's bit.
inline bool gemm_i8_takes(const KernelSet& k, DType t) {
    if (is_panel16(t)) t = file_type(t);  // a set packs only types its kernels all read
    return k.gemm_i8 && (int)t >= 0 && (int)t < 64 && ((k.gemm_i8_types >> (int)t) & 1);
}
constexpr uint64_t i8_type_bit(DType t) { return uint64_t(1) << (int)t; }
// The layout in which set k reads weights of file type t: its panel layout, or t itself.
inline DType packed_type(const KernelSet& k, DType t) {
    if ((int)t < 0 || (int)t >= 64 || !((k.panel16_types >> (int)t) & 1)) return t;
    switch (t) {
        case DType::Q4_0: return DType::Q4_0x16;
        case DType::Q4_1: return DType::Q4_1x16;
        case DType::Q5_0: return DType::Q5_0x16;
        case DType::Q8_0: return DType::Q8_0x16;
        case DType::Q2_K: return DType::Q2_Kx16;
        case DType::Q3_K: return DType::Q3_Kx16;
        case DType::Q4_K: return DType::Q4_Kx16;
        case DType::Q5_K: return DType::Q5_Kx16;
        case DType::Q6_K: return DType::Q6_Kx16;
        default: return t;
    }
}
// gemm_i8's repacked panel: per 32-weight block, kI8Rows x 32 quants as unsigned bytes
// ([4-quant group][row][4]: one 512-bit vpdpbusd operand per group), kI8Rows f32 scales and
// kI8Rows f32 mins (K-quants: w = scale * q + min per 32-weight sub-block; 0 otherwise), then
// kI8Rows int32 "half terms". The halves types (Q6_K, whose 16-weight sub-blocks have a scale
// each, and the lattice types, a factor per 16 weights: i8_is_halves) store signed quants, the
// first half's factor in scales, the second half's in mins, and in the half terms
// -128 * sum(q) of each half ([half][row] int32: x86 dots them with x + 128). Q2_K (sc_h q,
// 0..45) keeps d in scales, its first half's min in mins, its second half's in the half terms
// (kI8Rows f32).
constexpr int kI8Rows = 16;
constexpr int64_t kI8PanelScales = kI8Rows * FG_QK, kI8PanelMins = kI8PanelScales + kI8Rows * 4;
constexpr int64_t kI8PanelHalfTerms = kI8PanelMins + kI8Rows * 4;
constexpr int64_t kI8PanelBlockBytes = kI8PanelHalfTerms + kI8Rows * 2 * 4;
// gemm_i8 converts a thread's weight rows in groups of panels, each panel once per call, and
// runs the tokens through a group in passes (kernels_x86_int8.inc): a group is at most
// kI8GroupBytes of panels (at least one), so `work` holds one group, then the min terms of
// one pass (i8_min_term_floats).
constexpr int64_t kI8GroupBytes = 1 << 19;
constexpr int64_t i8_group_panels(int64_t nb) {
    return kI8GroupBytes / (nb * kI8PanelBlockBytes) > 1 ? kI8GroupBytes / (nb * kI8PanelBlockBytes) : 1;
}
// Tokens per pass over a group of panels, a multiple of the kernel's token tile: a pass's
// activations (~1 MB) stay in L2 while every panel of the group reads them, instead of
// streaming all n_tok tokens from L3 once per panel (at least 64: a pass re-reads the group's
// converted panels).
constexpr int64_t i8_token_chunk(int64_t nb, int tile) {
    constexpr int64_t kBudget = 1 << 20;
    const int64_t t = kBudget / (nb * (int64_t)sizeof(BlockQ8Act) + 8 * nb);
    return t / tile * tile > 64 ? t / tile * tile : 64;
}
// A pass's min terms, up to two floats per (token, block) (kernels_x86_int8.inc's I8MinTerms; NEON's
// after its one panel).
constexpr int64_t i8_min_term_floats(int64_t nb) { return 2 * nb * i8_token_chunk(nb, 1); }
// The 256-bit sets' int16 panel (kernels_x86_i16_256.inc: Q8_0 / Q6_K, and Q4_K / Q5_K on plain
// AVX2): per block, kI8Rows x 32 int16 quants and two sets of kI8Rows f32 factors.
constexpr int64_t kI16PanelBlockBytes = kI8Rows * FG_QK * 2 + 2 * kI8Rows * 4;
// Q2_K's int16 panel: a third set of factors (d, then its two halves' mins).
constexpr int64_t kI16Q2PanelBlockBytes = kI16PanelBlockBytes + kI8Rows * 4;
constexpr int64_t gemm_i8_work_bytes(int64_t cols) {
    const int64_t nb = cols / FG_QK, panels = i8_group_panels(nb) * nb * kI8PanelBlockBytes + 4 * i8_min_term_floats(nb);
    return panels > nb * kI16Q2PanelBlockBytes ? panels : nb * kI16Q2PanelBlockBytes;
}

constexpr int kMaxHeadDim = 576;  // latent attention's cached rows (DeepSeek: 512 latent + 64 rope)
constexpr int kPanelRows = 12;   // weight rows per gemm_panel tile (12 x 2 vector accumulators)
constexpr int kMaxPanelTokens = 32;
constexpr int64_t kPanelMinTokens = 16;  // fewer: the int8 GEMM wastes less of its token tile
constexpr int64_t gemm_panel_work_floats(int64_t cols) { return kPanelRows * cols + kPanelRows * kMaxPanelTokens; }
constexpr int kAttnChunk = 64;  // keys converted to f32 at a time
constexpr int kMaxGroupQueries = 64;  // nq bound of attention_group
constexpr int kMaxQueryBlock = 4;  // queries scored together against one key chunk
// attention_group on x86: calls of fewer queries take the row kernels (whose scores sum in
// another order), calls of this many or more the query-block kernels.
constexpr int kAttnBlockMinQueries = 8;
constexpr int64_t attention_work_floats(int hd) {
    return 2 * (int64_t)kAttnChunk * hd + kMaxQueryBlock * kAttnChunk + 2 * kMaxHeadDim;
}

// Per-ISA entry points; each returns nullptr where that file was not built.
const KernelSet* kernels_generic();
const KernelSet* kernels_avx2();
const KernelSet* kernels_avx512();
const KernelSet* kernels_neon();
const KernelSet* kernels_neon_i8mm();  // neon-dotprod with gemm_i8 on SMMLA (FEAT_I8MM)
// AVX2 with the prefill int8 GEMM on AVX-VNNI (kernels_avxvnni.cpp), and whether the CPU has it.
const KernelSet* kernels_avxvnni();
bool cpu_has_avx_vnni();
// AVX-512 VNNI with the prefill int8 GEMM on AMX tiles (kernels_amx.cpp).
const KernelSet* kernels_amx();
// avx512-vnni with kernels_amx's few-token decode run on emulated tiles (loops): that path's
// test on CPUs without AMX (tests/cpp/kernel_sets_check.cpp); never chosen to run a model.
const KernelSet* kernels_amx_emulated();
// Whether AMX-INT8 works here: the CPU has it, Linux granted the tile state to this process
// (arch_prctl), and a tile instruction ran in a child process without faulting.
bool cpu_has_amx_int8();
void amx_probe();  // the tile instructions that probe runs (kernels_amx.cpp)

// How the panel GEMVs (Q4_0x16 ... Q6_Kx16 decode, kernels_x86_panels16*.inc) and the float GEMV
// prefetch their weight stream for n_tok tokens: far, every line 8 KB ahead into L2 (Intel: 1B
// Q4_0 decode 1.25-1.45x on the lent Xeon, whose fill buffers alone did not cover DRAM latency);
// far-nta, the same lines non-temporal (AMD puts them in L1 and not L2); near, one line ~1 KB
// ahead into L1; or off, the hardware's prefetchers alone. By CPU: far on Intel and Zen 3
// (SmolLM2 Q4_0 decode 1.13-1.2x, Q8_0 1.03-1.06x, a 56 MB panel stream 1.1-1.35x); far-nta on
// Zen 5 and later (far alone: SmolLM2 decode 1.17-1.47x; non-temporal 1.05-1.08x faster again;
// on the Xeon it read 0.41-0.76x of far); on Zen 4, off for one token (with the weights in huge
// pages, near cost ~20% of a one-thread panel stream, and both near and far 5-25% of SmolLM2
// decode) and far for two or more (a batch step, a draft's verification: 1B shapes, 4 and 8
// sequences, 1.15-1.5x tokens per CPU second; bench/results/batch_prefetch_vm2core.md); off for
// one token on other CPUs. FORGERT_CPU_PANEL_PREFETCH=far|far-nta|near|off overrides both, for
// measuring. docs/design.md "Repacked weights".
enum class PanelPrefetch { Off, Near, Far, FarNta };
PanelPrefetch panel_prefetch(int64_t n_tok = 1);
const char* panel_prefetch_name(PanelPrefetch p);

// Most tokens one pass of the 512-bit small-block panel GEMV (kernels_x86_panels16.inc) takes
// over a panel: 8 (a tile of 8 first: each panel block unpacked once for 8 tokens, their
// accumulators past the registers; the default) or 4 (tiles of 4, 2 and 1 only: the panel
// unpacked twice for 8 tokens). FORGERT_CPU_PANEL_TOKENS=8|4, read once, for measuring; the
// same bits either way (per token, the same steps).
int panel_tokens();
// The same for the K-quant panels (Q2_Kx16 ... Q6_Kx16): FORGERT_CPU_PANEL_TOKENS where set, else 4
// on Zen 5 and later (where measured faster), 8 elsewhere. The same bits either way.
int kquant_panel_tokens();

// An on / off switch from the environment variable `name`: "1" or unset / empty on, "0" off;
// another value throws InputError naming the variable (FORGERT_CPU_REPACK, FORGERT_CPU_KQUANT_PANELS).
bool switch_from_env(const char* name);

// The layout a model's load gives weights of file type t on set k: packed_type(k, t), except the
// K-quants (Q2_K ... Q6_K) on the 256-bit sets where kquant_panels_256() is false (they then
// stay in the file's layout, which every kernel also reads).
DType load_layout(const KernelSet& k, DType t);
// Whether the 256-bit sets (avx2, avx2-vnni) repack K-quants at load: yes unless
// FORGERT_CPU_KQUANT_PANELS=0 (1 or unset: yes; another value throws InputError), read once.
// Measured against the file's layout, 1B Q4_K_M decode: a Zen 3 (avx2) 1.16-1.24x; the lent Xeon
// with the sets forced (two leases), avx2-vnni 1.22x (1 thread) and 1.28-1.31x (4), avx2 1.04-1.05x
// and 1.11-1.14x (bench/results/kquant_panels_256_vm2core.md, kquant_panels_gpuhost.md). The knob is for
// measuring; the AVX-512 sets repack either way.
bool kquant_panels_256();

// Activation parts of the prefill int8 GEMM, from FORGERT_CPU_PREFILL: "int8x2" 2, decode's
// two-part activations; "int8" 1, one int8 per value as llama.cpp (faster, coarser: design.md
// "Numerics"); "f32" 0, the f32 GEMM over dequantized panels for every type. Unset or empty:
// `parts`, the model's activation format (activations="int16": 2, "int8": 1).
int prefill_int8_parts(int parts = 2);

// Every kernel set this build has that this CPU runs: generic, then each SIMD set whose CPU check
// passed. A set's getter is called only after its check, here and in select_kernels: a set's code,
// its construction included, may use the instructions it is for (kernels_amx() copies the
// AVX-512 set through zmm registers), so merely asking an AVX2-only CPU for it faults.
std::vector<const KernelSet*> runnable_kernel_sets();

// The best set this CPU supports; FORGERT_CPU_ISA=generic|avx2|avx2vnni|avx512|amx|neon overrides.
const KernelSet& select_kernels();

}  // namespace forgert::cpu
