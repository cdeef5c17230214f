// Checks every SIMD kernel set this CPU runs against the portable generic set
// (itself checked against NumPy by tests/test_cpu_ops.py with FORGERT_CPU_ISA=generic).
// Built and run by tests/test_kernel_sets.py, natively and, where a cross
// compiler and qemu are installed, for arm64 NEON.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <random>
#include <utility>
#include <vector>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/kernels_scalar.h"  // the portable dequantizer (reference)
#include "backends/cpu/weight_panels.h"
#include "core/fp16.h"

using namespace forgert;
using namespace forgert::cpu;

namespace {

// Whether the set of this name runs on this CPU: asked before the set's getter is called, as
// a set's construction may already use its instructions (runnable_kernel_sets in cpu_kernels.h).
bool runs_here(const char* name) {
#if defined(__x86_64__)
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (!std::strcmp(name, "avx2")) return avx2;
#if FG_CHECK_AVXVNNI_AS_EVEX  // kernels_avxvnni.cpp built with EVEX vpdpbusd for VEX's (test_kernel_sets.py)
    if (!std::strcmp(name, "avx2-vnni"))
        return avx2 && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    if (!std::strcmp(name, "avx2-vnni")) return cpu_has_avx_vnni();
    if (!std::strcmp(name, "avx512-vnni") || !std::strcmp(name, "avx512-amx-emulated"))
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (!std::strcmp(name, "avx512-amx")) return cpu_has_amx_int8();
#endif
    return true;  // neon, neon-i8mm: the test only runs them under qemu -cpu max (dotprod and i8mm)
}

std::mt19937 rng(7);
std::normal_distribution<float> normal;

// A lattice type's f16 d: the first two bytes, IQ1_M's the top nibbles of its four scale words.
void set_lattice_d(DType t, uint8_t* blk, uint16_t d) {
    if (t != DType::IQ1_M) return (void)std::memcpy(blk, &d, 2);
    for (int w = 0; w < 4; w++) {
        uint16_t sc;
        std::memcpy(&sc, blk + offsetof(block_iq1_m, scales) + 2 * w, 2);
        sc = (uint16_t)((sc & 0x0fff) | ((d >> (4 * w)) & 0xf) << 12);
        std::memcpy(blk + offsetof(block_iq1_m, scales) + 2 * w, &sc, 2);
    }
}

std::vector<uint8_t> random_weights(DType t, int rows, int cols) {
    const int64_t rb = row_bytes(t, cols);
    std::vector<uint8_t> w(rb * rows);
    for (auto& b : w) b = (uint8_t)(rng() & 0xff);
    for (int r = 0; r < rows; r++) {
        uint8_t* row = &w[r * rb];
        if (t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
            t == DType::IQ4_NL) {
            const int64_t bb = dtype_block_bytes(t);
            for (int b = 0; b < cols / FG_QK; b++) {
                const uint16_t d = f32_to_f16(0.01f + 0.001f * (float)(rng() % 16));
                std::memcpy(row + b * bb, &d, 2);
                if (t == DType::Q4_1 || t == DType::Q5_1) std::memcpy(row + b * bb + 2, &d, 2);
            }
        } else if (t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K) {
            // random quants and sub-block scales; super-block scales of order 1 / (max q * max sc)
            const int64_t bb = dtype_block_bytes(t);
            for (int b = 0; b < cols / FG_QK_K; b++) {
                const uint16_t d = f32_to_f16(0.0005f + 0.0001f * (float)(rng() % 16));
                if (t == DType::Q4_K || t == DType::Q5_K) {  // d and dmin lead both layouts
                    std::memcpy(row + b * bb + offsetof(block_q4_K, d), &d, 2);
                    std::memcpy(row + b * bb + offsetof(block_q4_K, dmin), &d, 2);
                } else if (t == DType::Q2_K) {
                    std::memcpy(row + b * bb + offsetof(block_q2_K, d), &d, 2);
                    std::memcpy(row + b * bb + offsetof(block_q2_K, dmin), &d, 2);
                } else if (t == DType::Q3_K) {
                    std::memcpy(row + b * bb + offsetof(block_q3_K, d), &d, 2);
                } else {
                    std::memcpy(row + b * bb + offsetof(block_q6_K, d), &d, 2);
                }
            }
        } else if (t == DType::MXFP4) {  // random codes, E8M0 scales 2^(e - 128) of 2^-7..2^-4 (w ~ 0.1)
            for (int b = 0; b < cols / FG_QK; b++) row[b * sizeof(block_mxfp4)] = (uint8_t)(121 + rng() % 4);
        } else if (is_iq_lattice(t)) {  // random indices, signs and scales; w ~ d * 31 * 62 at most
            for (int b = 0; b < cols / FG_QK_K; b++)
                set_lattice_d(t, row + b * dtype_block_bytes(t), f32_to_f16(0.0005f + 0.0001f * (float)(rng() % 16)));
        } else if (t == DType::IQ4_XS) {  // random indices and 6-bit scales; w ~ d * 32 * 127
            for (int b = 0; b < cols / FG_QK_K; b++) {
                const uint16_t d = f32_to_f16(0.0002f + 0.00002f * (float)(rng() % 16));
                std::memcpy(row + b * sizeof(block_iq4_xs) + offsetof(block_iq4_xs, d), &d, 2);
            }
        } else {
            for (int c = 0; c < cols; c++) {
                const float v = normal(rng);
                uint32_t bits;
                std::memcpy(&bits, &v, 4);
                if (t == DType::F32) std::memcpy(row + 4 * c, &v, 4);
                else {
                    const uint16_t h = t == DType::F16 ? f32_to_f16(v) : (uint16_t)(bits >> 16);
                    std::memcpy(row + 2 * c, &h, 2);
                }
            }
        }
    }
    return w;
}

// The weight types a row of `cols` weights can have (K-quants, IQ4_XS and the IQ lattice types:
// whole 256-weight super-blocks).
std::vector<DType> weight_types(int cols) {
    std::vector<DType> ts = {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL,
                             DType::MXFP4, DType::F16, DType::BF16, DType::F32};
    if (cols % FG_QK_K == 0)
        ts.insert(ts.end(), {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS,
                             DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S, DType::IQ1_S,
                             DType::IQ1_M});
    return ts;
}

int failures = 0;

void expect_close(const char* set, const char* what, const std::vector<float>& ref, const std::vector<float>& got,
                  double rel) {
    double err = 0, scale = 1e-30;
    for (size_t i = 0; i < ref.size(); i++) {
        err = std::max(err, (double)std::fabs(ref[i] - got[i]));
        scale = std::max(scale, (double)std::fabs(ref[i]));
    }
    const bool ok = err <= rel * scale;
    if (!ok) failures++;
    std::printf("%-12s %-28s max|diff| %.3g  max|ref| %.3g  %s\n", set, what, err, scale, ok ? "ok" : "FAIL");
}

// gemm_i8's inputs for n rows of activations: their blocks (the generic set's rounding) and
// their integer sums (i8_act_sums: each block's hi and lo parts, then each half's).
void quantize_i8_activations(const KernelSet* g, const std::vector<float>& xs_f, int n, int cols,
                             std::vector<BlockQ8Act>& xa, std::vector<int32_t>& sums) {
    const int nb = cols / FG_QK;
    xa.assign((size_t)n * nb, BlockQ8Act{});
    sums.assign((size_t)i8_act_sums_ints(n * nb), 0);
    for (int t = 0; t < n; t++) g->quantize_row_q8(&xs_f[(size_t)t * cols], &xa[(size_t)t * nb], cols);
    i8_act_sums(xa.data(), 0, n * nb, n * nb, sums.data());
}

void check_gemm_i8(const KernelSet* k, int cols, std::initializer_list<int> ns) {
    // Prefill int8 GEMM: bit for bit the generic set's (the same integer dots, the same f32
    // accumulation order), and within f32 rounding of an f64 product of the dequantized
    // weights and the activations' int8 parts (measured <= 2.3e-7 relative at 512 columns,
    // 5.4e-7 at 8192; K-quants, whose mins cancel part of the sum, 9.4e-7 -> 3e-6; Q4_1 9.6e-7).
    if (!k->gemm_i8) return;
    const KernelSet* g = kernels_generic();
    const int rows = 37, nb = cols / FG_QK;
    {
        for (int n : ns) {
            std::vector<float> xs_f(n * cols);
            for (auto& v : xs_f) v = normal(rng);
            std::vector<BlockQ8Act> xa;
            std::vector<int32_t> sums;
            quantize_i8_activations(g, xs_f, n, cols, xa, sums);
            std::vector<uint8_t> work(gemm_i8_work_bytes(cols));
            for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q2_K, DType::Q3_K, DType::Q4_K,
                            DType::Q5_K, DType::Q6_K,
                            DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S, DType::IQ1_S,
                            DType::IQ1_M}) {
                if (!gemm_i8_takes(*k, t) || cols % dtype_block_elems(t)) continue;
                auto w = random_weights(t, rows, cols);
                const int64_t rb = row_bytes(t, cols);
                std::vector<float> wdq((size_t)rows * cols);
                for (int r = 0; r < rows; r++) dequantize_row(t, w.data() + r * rb, wdq.data() + (size_t)r * cols, cols);
                for (int parts : {1, 2}) {
                    std::vector<float> a(n * rows), b(n * rows), c(n * rows), ref(n * rows);
                    // rows 3..rows: a range that starts inside a panel and ends with a short one
                    // (the AMX set's panel pairs: 16 + 16 rows, then 2 alone); c: 0..21 (a pair of
                    // 16 + 5 rows), 21..rows (16 rows alone)
                    g->gemm_i8(t, w.data(), rb, 0, rows, xa.data(), sums.data(), nb, n, parts, a.data(), rows, work.data());
                    k->gemm_i8(t, w.data(), rb, 3, rows, xa.data(), sums.data(), nb, n, parts, b.data(), rows, work.data());
                    k->gemm_i8(t, w.data(), rb, 0, 3, xa.data(), sums.data(), nb, n, parts, b.data(), rows, work.data());
                    k->gemm_i8(t, w.data(), rb, 0, 21, xa.data(), sums.data(), nb, n, parts, c.data(), rows, work.data());
                    k->gemm_i8(t, w.data(), rb, 21, rows, xa.data(), sums.data(), nb, n, parts, c.data(), rows, work.data());
                    for (int tk = 0; tk < n; tk++)
                        for (int r = 0; r < rows; r++) {
                            double acc = 0;
                            for (int c = 0; c < cols; c++) {
                                const BlockQ8Act& q = xa[tk * nb + c / FG_QK];
                                const double xv = parts == 2 ? (double)q.d * (256.0 * q.hi[c % FG_QK] + q.lo[c % FG_QK])
                                                             : (double)q.d * 256.0 * q.hi[c % FG_QK];
                                acc += (double)wdq[(size_t)r * cols + c] * xv;
                            }
                            ref[tk * rows + r] = (float)acc;
                        }
                    char what[64];
                    std::snprintf(what, sizeof what, "gemm_i8 %s x%d %dx%d n=%d", dtype_name(t), parts, rows, cols, n);
                    const bool same = !std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) &&
                                      !std::memcmp(a.data(), c.data(), a.size() * sizeof(float));
                    if (!same) failures++;
                    std::printf("%-12s %-28s bit-identical to generic %s\n", k->name, what, same ? "ok" : "FAIL");
                    expect_close(k->name, what, ref, b, 3e-6);
                }
            }
        }
    }
}

// gemm_i8 at the extremes the AVX2 sets' int16 sums are bounded for (kernels_x86_int8.inc's
// i8_dot_256, kernels_x86_i16_256.inc): every quant at its largest magnitude (Q2_K 3 x 15, Q3_K -4 x -32 folded
// to -128, Q4_K 15, Q5_0 / Q5_K 31,
// Q6_K -32, Q8_0 -128; Q4_0 / Q4_1 15; IQ3_XXS up to -62, the halves types' largest) against
// activations all +max or all -max, bit for bit the generic
// set's exact integers. Random weights stay far from these sums: a kernel that let an int16
// sum wrap would still pass the random cases.
void check_gemm_i8_extremes(const KernelSet* k) {
    if (!k->gemm_i8) return;
    const KernelSet* g = kernels_generic();
    const int rows = 19, cols = 512, nb = cols / FG_QK, n = 5;
    for (float sign : {1.0f, -1.0f}) {
        std::vector<float> xs_f((size_t)n * cols, sign);
        std::vector<BlockQ8Act> xa;
        std::vector<int32_t> sums;
        quantize_i8_activations(g, xs_f, n, cols, xa, sums);
        std::vector<uint8_t> work(gemm_i8_work_bytes(cols));
        for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0, DType::Q2_K, DType::Q3_K, DType::Q4_K,
                        DType::Q5_K, DType::Q6_K, DType::IQ3_XXS}) {
            if (!gemm_i8_takes(*k, t)) continue;
            auto w = random_weights(t, rows, cols);  // the factors stay random; the quants go to the edge
            const int64_t rb = row_bytes(t, cols), bb = dtype_block_bytes(t);
            for (int64_t at = 0; at < rows * rb; at += bb) {
                uint8_t* blk = w.data() + at;
                switch (t) {
                    case DType::Q4_0: std::memset(blk + 2, 0xff, 16); break;
                    case DType::Q4_1: std::memset(blk + 4, 0xff, 16); break;
                    case DType::Q5_0: std::memset(blk + 2, 0xff, 20); break;  // qh, qs: every quant 31
                    case DType::Q8_0: std::memset(blk + 2, 0x80, FG_QK); break;  // every quant -128
                    case DType::Q4_K: std::memset(blk + offsetof(block_q4_K, qs), 0xff, FG_QK_K / 2); break;
                    case DType::Q3_K:  // every quant -4, every scale -32: the folded -(s q) = -128
                        std::memset(blk, 0, offsetof(block_q3_K, d));  // hmask, qs, scales
                        break;
                    case DType::Q2_K:  // every quant 3, every scale and min 15: sc q = 45
                        std::memset(blk + offsetof(block_q2_K, scales), 0xff, FG_QK_K / 16 + FG_QK_K / 4);
                        break;
                    case DType::Q5_K:
                        std::memset(blk + offsetof(block_q5_K, qh), 0xff, FG_QK_K / 8 + FG_QK_K / 2);
                        break;
                    case DType::IQ3_XXS: {  // the lattice types' largest quants: grid entry 135 (36, 62, 44, 20),
                        // every sign negative (sign index 127), multiplier 31: |idot| per half 16 * 62 * 32512 at most
                        std::memset(blk + offsetof(block_iq3_xxs, qs), 135, FG_QK_K / 4);
                        const uint32_t sg = 15u << 28 | 127u | 127u << 7 | 127u << 14 | 127u << 21;
                        for (int j = 0; j < FG_QK_K / FG_QK; j++)
                            std::memcpy(blk + offsetof(block_iq3_xxs, qs) + FG_QK_K / 4 + 4 * j, &sg, 4);
                        break;
                    }
                    default:  // Q6_K: ql and qh zero, every quant -32
                        std::memset(blk + offsetof(block_q6_K, ql), 0, FG_QK_K / 2 + FG_QK_K / 4);
                }
            }
            for (int parts : {1, 2}) {
                std::vector<float> a(n * rows), b(n * rows);
                g->gemm_i8(t, w.data(), rb, 0, rows, xa.data(), sums.data(), nb, n, parts, a.data(), rows, work.data());
                k->gemm_i8(t, w.data(), rb, 0, rows, xa.data(), sums.data(), nb, n, parts, b.data(), rows, work.data());
                const bool same = !std::memcmp(a.data(), b.data(), a.size() * sizeof(float));
                if (!same) failures++;
                std::printf("%-12s gemm_i8 %s x%d extremes %+.0f bit-identical to generic %s\n", k->name, dtype_name(t),
                            parts, sign, same ? "ok" : "FAIL");
            }
        }
    }
}

// The f16 factors of a quantized weight type: where d and (if it has one) the min factor lie in its
// blocks; min_at < 0 when there is none.
void factor_offsets(DType t, int64_t& d_at, int64_t& min_at) {
    min_at = -1;
    switch (t) {
        case DType::Q2_K: d_at = offsetof(block_q2_K, d), min_at = offsetof(block_q2_K, dmin); break;
        case DType::Q3_K: d_at = offsetof(block_q3_K, d); break;
        case DType::Q4_K: d_at = offsetof(block_q4_K, d), min_at = offsetof(block_q4_K, dmin); break;
        case DType::Q5_K: d_at = offsetof(block_q5_K, d), min_at = offsetof(block_q5_K, dmin); break;
        case DType::Q6_K: d_at = offsetof(block_q6_K, d); break;
        case DType::IQ4_XS: d_at = offsetof(block_iq4_xs, d); break;
        case DType::Q4_1: case DType::Q5_1: d_at = 0, min_at = 2; break;
        default: d_at = 0;  // Q8_0, Q4_0, Q5_0, IQ4_NL: d leads the block
    }
}

// Decode GEMV (one token and a few) of the quantized types against an f64 product of the
// portable dequantizer's weights and the exact activations, on random weights and on extreme
// ones: every quant and sub-block scale at its largest (all bytes 0xff) or at 0x80, factors at
// f16's largest and subnormal; activations normal, large, and one outlier per block (the rest
// falls to the int8 low parts). The activations' two int8 parts err by at most a.d per element
// (the low part's rounding, or its clamp at 127), so |got - ref| <= sum |w_scale| a.d, where
// w_scale is the weight without its min term (Q4_K's mins see the exact sums; Q2_K's the
// quantized ones, so its bound counts them), plus f32 rounding, 1e-5 of sum |w x|: measured
// |diff| <= 0.14 of that bound; against the generic set <= 4.6e-7 of sum |w x| (x86 and NEON
// under qemu), bound 1e-5.
void check_gemv_reference(const KernelSet* k, int cols) {
    const int rows = 13, nb = cols / FG_QK;  // 13: passes of 4 rows and a remainder of 1
    const std::vector<DType> types = {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K,
                                      DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                                      DType::IQ4_XS, DType::IQ4_NL, DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S,
                                      DType::IQ3_XXS, DType::IQ3_S, DType::IQ1_S, DType::IQ1_M};
    const char* wkinds[] = {"random", "bytes ff", "bytes 80"};
    const float factors[] = {0.0f, 65504.0f, 6e-8f};  // 0: random_weights' own factors
    const char* xkinds[] = {"normal", "large", "outliers"};
    const int n = 3;
    for (DType t : types) {
        double worst = 0, worst_gen = 0;  // |diff| / bound against f64; |diff| / sum|w x| against generic
        if (cols % dtype_block_elems(t)) continue;
        const int64_t rb = row_bytes(t, cols), bb = dtype_block_bytes(t);
        int64_t d_at, min_at;
        factor_offsets(t, d_at, min_at);
        for (int wk = 0; wk < 3; wk++)
            for (float factor : factors) {
                if (wk == 0 && factor != 0.0f) continue;
                if (wk > 0 && factor == 0.0f) continue;
                std::vector<uint8_t> w = random_weights(t, rows, cols);
                if (wk > 0) {
                    std::fill(w.begin(), w.end(), wk == 1 ? 0xff : 0x80);
                    const uint16_t h = f32_to_f16(factor);
                    for (int64_t b = 0; b < (int64_t)w.size() / bb; b++) {
                        if (is_iq_lattice(t)) {
                            set_lattice_d(t, &w[b * bb], h);
                            continue;
                        }
                        std::memcpy(&w[b * bb + d_at], &h, 2);
                        if (min_at >= 0) std::memcpy(&w[b * bb + min_at], &h, 2);
                    }
                }
                // the weights, and their scale parts (the min factor zeroed)
                std::vector<float> wdq((size_t)rows * cols), wsc((size_t)rows * cols);
                std::vector<uint8_t> w0 = w;
                if (min_at >= 0)
                    for (int64_t b = 0; b < (int64_t)w0.size() / bb; b++) std::memset(&w0[b * bb + min_at], 0, 2);
                for (int r = 0; r < rows; r++) {
                    dequantize_row(t, w.data() + r * rb, wdq.data() + (size_t)r * cols, cols);
                    dequantize_row(t, w0.data() + r * rb, wsc.data() + (size_t)r * cols, cols);
                }
                for (int xk = 0; xk < 3; xk++) {
                    std::vector<float> x((size_t)n * cols);
                    for (int i = 0; i < n * cols; i++) {
                        const float v = normal(rng);
                        x[i] = xk == 0 ? v : xk == 1 ? 3e4f * v : (i % FG_QK == 5 ? 1000.0f * v : 1e-3f * v);
                    }
                    std::vector<BlockQ8Act> xq((size_t)n * nb);
                    for (int tk = 0; tk < n; tk++) k->quantize_row_q8(&x[tk * cols], &xq[tk * nb], cols);
                    std::vector<float> got(n * rows), gen(n * rows), ref(n * rows);
                    for (int nt : {1, n}) {  // one token (decode), then a few
                        k->gemm_q(t, w.data(), rb, 0, rows, xq.data(), nb, nt, got.data(), rows, 2);
                        if (k != kernels_generic())
                            kernels_generic()->gemm_q(t, w.data(), rb, 0, rows, xq.data(), nb, nt, gen.data(), rows, 2);
                        for (int tk = 0; tk < nt; tk++)
                            for (int r = 0; r < rows; r++) {
                                double acc = 0, mag = 0, xerr = 0;
                                for (int c = 0; c < cols; c++) {
                                    const double wv = wdq[(size_t)r * cols + c], xv = x[tk * cols + c];
                                    acc += wv * xv, mag += std::fabs(wv * xv);
                                    // Q2_K's mins see the quantized sums too (as its quants do)
                                    const double wq = std::fabs((double)wsc[(size_t)r * cols + c]) +
                                                      (t == DType::Q2_K ? std::fabs(wv - wsc[(size_t)r * cols + c]) : 0.0);
                                    xerr += wq * xq[tk * nb + c / FG_QK].d;
                                }
                                const double diff = std::fabs(got[tk * rows + r] - acc);
                                worst = std::max(worst, diff / (xerr + 1e-5 * mag));
                                const bool ok = std::isfinite(got[tk * rows + r]) && diff <= xerr + 1e-5 * mag;
                                bool same_as_generic = true;
                                if (k != kernels_generic()) {
                                    const double g = gen[tk * rows + r];
                                    same_as_generic = std::fabs(got[tk * rows + r] - g) <= 1e-5 * mag;
                                    worst_gen = std::max(worst_gen, std::fabs(got[tk * rows + r] - g) / std::max(mag, 1e-30));
                                }
                                if (!ok || !same_as_generic) {
                                    failures++;
                                    std::printf("%-12s gemv %s %s d=%g x %s n=%d row %d: got %.9g ref %.9g generic %.9g "
                                                "(bound %.3g) FAIL\n",
                                                k->name, dtype_name(t), wkinds[wk], factor, xkinds[xk], nt, r,
                                                got[tk * rows + r], acc, gen[tk * rows + r], xerr + 1e-5 * mag);
                                    return;
                                }
                            }
                    }
                }
            }
        char what[64];
        std::snprintf(what, sizeof what, "gemv %s vs f64 %d cols", dtype_name(t), cols);
        std::printf("%-12s %-28s |diff| <= %.3g of the bound, vs generic %.3g of sum|w x|  ok\n", k->name, what, worst,
                    worst_gen);
    }
}

// Continuous batching: a token's GEMV result must not depend on the tokens beside it, so
// that a request's greedy output is the same alone and in a batch. The x86 sets' few-token
// kernels (AVX-512: VNNI or AMX tiles; the K-quants on AVX2 and AVX-512) follow the one-token
// kernel's definition of the result: each row of an n-token product is bit-identical to that
// token's product alone, for every token count up to the prefill GEMM's (1..15), over every
// register tile and remainder. The NEON sets too: their integer block dots are exact and every
// tile runs the same float steps. Every quantized type (K-quants and IQ4_XS where the row holds
// whole super-blocks: one, two and three of them). In both activation formats: parts = 1
// (activations="int8": lo = 0, drop_lo_parts), where the kernels that skip the lo dots must also
// give the bits of parts = 2 on the same blocks (the zeros multiplied).
void check_batch_invariance(const KernelSet* k, int cols, int parts) {
    // x86 and NEON sets; generic: close (check()), not bit-identical
    if (std::strncmp(k->name, "avx", 3) && std::strncmp(k->name, "neon", 4)) return;
    const int rows = 37, nb = cols / FG_QK, ntok = 15;
    std::vector<float> x(ntok * cols);
    for (auto& v : x) v = normal(rng);
    std::vector<BlockQ8Act> xq(ntok * nb);
    for (int t = 0; t < ntok; t++) k->quantize_row_q8(&x[t * cols], &xq[t * nb], cols);
    if (parts == 1) drop_lo_parts(xq.data(), ntok * nb);
    std::vector<DType> types = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL,
                                DType::MXFP4};
    if (cols % FG_QK_K == 0)  // K-quants, IQ4_XS and the lattice types: whole super-blocks
        types.insert(types.end(), {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS,
                                   DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S,
                                   DType::IQ1_S, DType::IQ1_M});
    for (DType t : types) {
        auto w = random_weights(t, rows, cols);
        const int64_t rb = row_bytes(t, cols);
        std::vector<float> alone(ntok * rows), many(ntok * rows);
        for (int tk = 0; tk < ntok; tk++) k->gemm_q(t, w.data(), rb, 0, rows, &xq[tk * nb], nb, 1, &alone[tk * rows], rows, parts);
        bool same = true, zeros_same = true;
        for (int n = 2; n <= ntok; n++) {
            k->gemm_q(t, w.data(), rb, 0, rows, xq.data(), nb, n, many.data(), rows, parts);
            same &= !std::memcmp(many.data(), alone.data(), (size_t)n * rows * sizeof(float));
        }
        for (int n = 1; parts == 1 && n <= ntok; n++) {
            k->gemm_q(t, w.data(), rb, 0, rows, xq.data(), nb, n, many.data(), rows, 2);
            zeros_same &= !std::memcmp(many.data(), alone.data(), (size_t)n * rows * sizeof(float));
        }
        if (!same || !zeros_same) failures++;
        char what[64];
        std::snprintf(what, sizeof what, "gemm %s x%d n=2..15 %d cols", dtype_name(t), parts, cols);
        std::printf("%-12s %-28s bit-identical to n=1 %s\n", k->name, what, same ? "ok" : "FAIL");
        if (parts == 1)
            std::printf("%-12s %-28s bit-identical to x2 on lo = 0, n=1..15 %s\n", k->name, what, zeros_same ? "ok" : "FAIL");
        // One token over row ranges as threads take them (the K-quant GEMV reads a range as 4
        // streams a quarter of it apart, so where a row falls moves): each row as over all rows.
        bool split_same = true;
        std::vector<float> part(rows);
        for (int tk = 0; tk < ntok; tk++) {
            const int cuts[] = {0, 3, 8, 24, rows};
            for (int c = 0; c + 1 < 5; c++)
                k->gemm_q(t, w.data(), rb, cuts[c], cuts[c + 1], &xq[tk * nb], nb, 1, part.data(), rows, parts);
            split_same &= !std::memcmp(part.data(), &alone[tk * rows], rows * sizeof(float));
        }
        if (!split_same) failures++;
        std::snprintf(what, sizeof what, "gemv %s x%d 4 row ranges %d cols", dtype_name(t), parts, cols);
        std::printf("%-12s %-28s bit-identical to all rows %s\n", k->name, what, split_same ? "ok" : "FAIL");
    }
}

void check(const KernelSet* k, int cols) {
    const KernelSet* g = kernels_generic();
    // Shapes that are not multiples of any register tile; 3, 10 and 11 blocks per row
    // reach every block grouping (quads, a trailing pair, a trailing single block).
    const int rows = 37, ntok = 6, nb = cols / FG_QK;
    std::vector<float> x(ntok * cols);
    for (auto& v : x) v = normal(rng);
    std::vector<BlockQ8Act> xq(ntok * nb), xq2(ntok * nb);
    // the quantizers also on edge blocks: all zeros (d = 0), tiny and huge magnitudes, equal
    // values (every lane at the block's max)
    std::vector<float> x_edge = x;
    for (int i = 0; i < FG_QK; i++) {
        x_edge[i] = 0.0f;
        x_edge[cols + i] *= 1e-20f;
        x_edge[2 * cols + i] *= 1e20f;
        x_edge[3 * cols + i] = -2.5f;
    }
    std::vector<BlockQ8Act> eq(ntok * nb), eq2(ntok * nb);
    for (int t = 0; t < ntok; t++) {
        g->quantize_row_q8(&x[t * cols], &xq[t * nb], cols);
        k->quantize_row_q8(&x[t * cols], &xq2[t * nb], cols);
        g->quantize_row_q8(&x_edge[t * cols], &eq[t * nb], cols);
        k->quantize_row_q8(&x_edge[t * cols], &eq2[t * nb], cols);
    }
    bool same = true;  // identical parts; the float sum may differ in summation order
    auto same_block = [](const BlockQ8Act& a, const BlockQ8Act& b) {
        return a.d == b.d && std::fabs(a.sum - b.sum) <= 1e-5f * (1 + std::fabs(a.sum)) &&
               !std::memcmp(a.hi, b.hi, FG_QK) && !std::memcmp(a.lo, b.lo, FG_QK);
    };
    for (int i = 0; i < ntok * nb; i++) same &= same_block(xq[i], xq2[i]) && same_block(eq[i], eq2[i]);
    if (!same) failures++;
    std::printf("%-12s %-28s %s\n", k->name, "quantize_row_q8 identical", same ? "ok" : "FAIL");

    for (DType t : weight_types(cols)) {
        auto w = random_weights(t, rows, cols);
        const int64_t rb = row_bytes(t, cols);
        for (int n : {1, ntok}) {
            std::vector<float> a(n * rows), b(n * rows);
            if (t != DType::F16 && t != DType::BF16 && t != DType::F32) {
                g->gemm_q(t, w.data(), rb, 0, rows, xq.data(), nb, n, a.data(), rows, 2);
                k->gemm_q(t, w.data(), rb, 0, rows, xq.data(), nb, n, b.data(), rows, 2);
            } else {
                g->gemm_f(t, w.data(), rb, 0, rows, x.data(), cols, n, a.data(), rows);
                k->gemm_f(t, w.data(), rb, 0, rows, x.data(), cols, n, b.data(), rows);
            }
            char what[64];
            std::snprintf(what, sizeof what, "gemm %s %dx%d n=%d", dtype_name(t), rows, cols, n);
            expect_close(k->name, what, a, b, 1e-5);  // same math, other summation order
            if (is_iq_lattice(t)) {  // every set runs kernels_iq_grid.h's one definition
                const bool same = !std::memcmp(a.data(), b.data(), a.size() * sizeof(float));
                if (!same) failures++;
                std::printf("%-12s %-28s bit-identical to generic %s\n", k->name, what, same ? "ok" : "FAIL");
            }
        }
    }
    // Prefill GEMM over dequantized panels, against an f64 product of the generic set's
    // dequantized weights: f32 math, so only summation order differs.
    if (k->gemm_panel) {
        const int n = 37, tt = k->panel_tokens, n_pad = (n + tt - 1) / tt * tt;
        std::vector<float> xs(n * cols), xp((size_t)n_pad * cols, 0.0f), work(gemm_panel_work_floats(cols));
        for (auto& v : xs) v = normal(rng);
        for (int t = 0; t < n; t++)
            for (int c = 0; c < cols; c++) xp[(size_t)(t / tt) * cols * tt + (size_t)c * tt + t % tt] = xs[t * cols + c];
        for (DType t : weight_types(cols)) {
            auto w = random_weights(t, rows, cols);
            const int64_t rb = row_bytes(t, cols);
            std::vector<float> ref(n * rows), got(n * rows);
            std::vector<float> wdq((size_t)rows * cols);
            for (int r = 0; r < rows; r++) dequantize_row(t, w.data() + r * rb, wdq.data() + (size_t)r * cols, cols);
            for (int tk = 0; tk < n; tk++)
                for (int r = 0; r < rows; r++) {
                    double acc = 0;
                    for (int c = 0; c < cols; c++) acc += (double)wdq[(size_t)r * cols + c] * xs[tk * cols + c];
                    ref[tk * rows + r] = (float)acc;
                }
            k->gemm_panel(t, w.data(), rb, 0, rows, xp.data(), cols, n, got.data(), rows, work.data());
            char what[64];
            std::snprintf(what, sizeof what, "gemm_panel %s %dx%d n=%d", dtype_name(t), rows, cols, n);
            expect_close(k->name, what, ref, got, 1e-5);
            if (is_iq_lattice(t)) {  // the set's own row dequantization, bit for bit the portable one:
                // one-hot activations make each output one weight (w * 1 plus zeros)
                const int n1 = cols, n1_pad = (n1 + tt - 1) / tt * tt;
                std::vector<float> xo((size_t)n1_pad * cols, 0.0f), eye((size_t)n1 * rows);
                for (int c = 0; c < cols; c++) xo[(size_t)(c / tt) * cols * tt + (size_t)c * tt + c % tt] = 1.0f;
                k->gemm_panel(t, w.data(), rb, 0, rows, xo.data(), cols, n1, eye.data(), rows, work.data());
                bool same = true;
                for (int c = 0; c < cols; c++)
                    for (int r = 0; r < rows; r++) {
                        const float a = eye[(size_t)c * rows + r] + 0.0f, b = wdq[(size_t)r * cols + c] + 0.0f;
                        same &= !std::memcmp(&a, &b, 4);  // -0 as +0
                    }
                if (!same) failures++;
                std::printf("%-12s %-28s dequantized rows bit-identical %s\n", k->name, what, same ? "ok" : "FAIL");
            }
        }
    }
    check_gemm_i8(k, cols, {1, 8, 21});  // whole token tiles and remainders of every size
    check_gemm_i8_extremes(k);
    // attention: 1, 3, 5 and 7 queries (decode-sized groups: keys as rows, in passes of 2 or 4
    // queries on x86, the last pass short) and 11 (blocks of queries against transposed key
    // chunks, the last block short), causal lengths over two chunks;
    // head sizes of every vector path: 64, 128 (whole 64-dim passes), 48 (16-dim passes), 40
    // (8-dim groups, scalar weighted sums) and 6 (scalar); soft-capped scores (Gemma 2) on every
    // other case, alternating so that each head size and each query count has both
    const int head_sizes[] = {64, 128, 48, 40, 6}, query_counts[] = {1, 3, 5, 7, 11};
    for (int h = 0; h < 5; h++) {
        const int hd = head_sizes[h];
        const int ctx = 100;
        std::vector<uint16_t> kc(ctx * hd), vc(ctx * hd);
        for (auto& h : kc) h = f32_to_f16(normal(rng));
        for (auto& h : vc) h = f32_to_f16(normal(rng));
        for (int n = 0; n < 5; n++) {
            const int nq = query_counts[n];
            std::vector<float> q(nq * hd), oa(nq * hd), ob(nq * hd), work(attention_work_floats(hd)), lse_a(nq),
                lse_b(nq);
            for (auto& v : q) v = normal(rng);
            std::vector<const float*> qs(nq);
            std::vector<float*> oas(nq), obs(nq);
            std::vector<int64_t> len(nq);
            for (int i = 0; i < nq; i++) {
                qs[i] = &q[i * hd], oas[i] = &oa[i * hd], obs[i] = &ob[i * hd];
                len[i] = 1 + (i * 37) % ctx;
            }
            const float softcap = (h + n) % 2 ? 1.5f : 0.0f;
            g->attention_group(qs.data(), oas.data(), len.data(), nq, 1, kc.data(), vc.data(), hd, hd, 0.125f, softcap,
                               work.data(), lse_a.data());
            k->attention_group(qs.data(), obs.data(), len.data(), nq, 1, kc.data(), vc.data(), hd, hd, 0.125f, softcap,
                               work.data(), lse_b.data());
            char what[80];
            std::snprintf(what, sizeof what, "attention_group hd=%d nq=%d softcap=%g", hd, nq, softcap);
            expect_close(k->name, what, oa, ob, 1e-5);
            std::snprintf(what, sizeof what, "attention_group lse hd=%d nq=%d softcap=%g", hd, nq, softcap);
            expect_close(k->name, what, lse_a, lse_b, 1e-5);
        }
    }
    // Several KV heads in one call (decode's key ranges, rows of 3 heads): each query's bits as
    // with its head alone, and close to the portable set; groups of 1, 3 and 4 queries, two
    // causal lengths, over three chunks.
    for (const int hd : {64, 128, 40}) {
        for (const int group : {1, 3, 4}) {
            const int n_kv = 3, nq = n_kv * group, ctx = 150, stride = n_kv * hd;
            std::vector<uint16_t> kc(ctx * stride), vc(ctx * stride);
            for (auto& h : kc) h = f32_to_f16(normal(rng));
            for (auto& h : vc) h = f32_to_f16(normal(rng));
            std::vector<float> q(nq * hd), oa(nq * hd), ob(nq * hd), oc(nq * hd), work(attention_work_floats(hd));
            std::vector<float> lse_a(nq), lse_b(nq), lse_c(nq);
            for (auto& v : q) v = normal(rng);
            std::vector<const float*> qs(nq);
            std::vector<float*> oas(nq), obs(nq), ocs(nq);
            std::vector<int64_t> len(nq);
            for (int i = 0; i < nq; i++) {
                qs[i] = &q[i * hd], oas[i] = &oa[i * hd], obs[i] = &ob[i * hd], ocs[i] = &oc[i * hd];
                len[i] = ctx - (i % 2) * 23;
            }
            const float softcap = group == 3 ? 1.5f : 0.0f;
            g->attention_group(qs.data(), oas.data(), len.data(), nq, n_kv, kc.data(), vc.data(), stride, hd, 0.125f,
                               softcap, work.data(), lse_a.data());
            k->attention_group(qs.data(), obs.data(), len.data(), nq, n_kv, kc.data(), vc.data(), stride, hd, 0.125f,
                               softcap, work.data(), lse_b.data());
            for (int h = 0; h < n_kv; h++)
                k->attention_group(&qs[h * group], &ocs[h * group], &len[h * group], group, 1, kc.data() + h * hd,
                                   vc.data() + h * hd, stride, hd, 0.125f, softcap, work.data(), &lse_c[h * group]);
            char what[80];
            std::snprintf(what, sizeof what, "attention_group n_kv=3 hd=%d group=%d", hd, group);
            expect_close(k->name, what, oa, ob, 1e-5);
            const bool same = !std::memcmp(ob.data(), oc.data(), ob.size() * 4) &&
                              !std::memcmp(lse_b.data(), lse_c.data(), nq * 4);
            if (!same) failures++;
            std::printf("%-12s %-40s bit-identical to each head alone %s\n", k->name, what, same ? "ok" : "FAIL");
        }
    }
    std::vector<float> gs(1000), us(1000), sa(1000), sb(1000);
    for (int i = 0; i < 1000; i++) gs[i] = 8 * normal(rng), us[i] = normal(rng);
    g->silu_mul_row(gs.data(), us.data(), sa.data(), 1000);
    k->silu_mul_row(gs.data(), us.data(), sb.data(), 1000);
    expect_close(k->name, "silu_mul_row", sa, sb, 1e-6);
    g->gelu_mul_row(gs.data(), us.data(), sa.data(), 1000);
    k->gelu_mul_row(gs.data(), us.data(), sb.data(), 1000);
    expect_close(k->name, "gelu_mul_row", sa, sb, 1e-6);
}

// The decode definition of the small-block types (kernels_x86_quads.inc), written out in
// scalar code for Q4_0 / Q4_1 / Q5_0 / Q8_0 rows in the file's layout: per block the exact integer
// I_b = sum q_i (256 hi_i + lo_i), slot s = b % 4, acc_s = fma((float)I_b, dw * dx, acc_s),
// the zero point acc_s = fma(mw, x.sum, acc_s) (mw = -8 dw for Q4_0, -16 dw for Q5_0, the
// block's m for Q4_1),
// result (acc_0 + acc_1) + (acc_2 + acc_3).
float definition_dot(DType t, const uint8_t* row, const BlockQ8Act* x, int64_t nb) {
    const int64_t bb = dtype_block_bytes(t);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* blk = row + b * bb;
        uint16_t h;
        std::memcpy(&h, blk, 2);
        const float d = f16_to_f32(h);
        std::memcpy(&h, blk + 2, 2);  // Q4_1: m follows d
        const float m = f16_to_f32(h);
        uint32_t qh;  // Q5_0: bit i is quant i's bit 4
        std::memcpy(&qh, blk + 2, 4);
        const uint8_t* qs = blk + (t == DType::Q4_1 ? 4 : t == DType::Q5_0 ? 6 : 2);
        int32_t I = 0;
        for (int i = 0; i < FG_QK; i++) {
            int q = t == DType::Q8_0 ? (int)(int8_t)qs[i] : i < 16 ? qs[i] & 15 : qs[i - 16] >> 4;
            if (t == DType::Q5_0) q |= (int)((qh >> i) & 1) << 4;
            I += q * (256 * x[b].hi[i] + x[b].lo[i]);
        }
        float& a = acc[b % 4];
        a = std::fma((float)I, d * x[b].d, a);
        if (t == DType::Q4_0) a = std::fma(-8.0f * d, x[b].sum, a);
        if (t == DType::Q5_0) a = std::fma(-16.0f * d, x[b].sum, a);
        if (t == DType::Q4_1) a = std::fma(m, x[b].sum, a);
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// The K-quant panels' decode definition (kernels_x86_panels16_kquant.inc), in scalar code over
// Q4_K / Q5_K / Q6_K rows in the file's layout: per 32-weight block b (sub-block j = b % 8 of
// super-block b / 8) the exact integer dot I_b of its quants with 256 hi + lo, slot s = b % 4,
// Q4_K, Q5_K: acc_s = fma((float)I_b, (d sc_j) dx, acc_s), acc_s = fma(-(dmin m_j), x.sum, acc_s);
// Q6_K: per 16-weight half h (signed quants q - 32) acc_s = fma((float)I_bh, (d sc_2j+h) dx, acc_s);
// result (acc_0 + acc_1) + (acc_2 + acc_3).
float kquant_definition_dot(DType t, const uint8_t* row, const BlockQ8Act* x, int64_t nb) {
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t sb = 0; sb < nb / 8; sb++) {
        int q[FG_QK_K];
        float d, dmin = 0.0f;
        int sc[16], mn[8] = {}, mn16[16] = {};  // mn16: Q2_K's per-16 mins
        if (t == DType::Q4_K || t == DType::Q5_K) {
            uint8_t u[FG_QK_K];
            const uint8_t* scales;
            unpack_q45_K(t, row + sb * dtype_block_bytes(t), u, scales, d, dmin);
            for (int i = 0; i < FG_QK_K; i++) q[i] = u[i];
            for (int j = 0; j < 8; j++) q4_K_scale_min(scales, j, sc[j], mn[j]);
        } else if (t == DType::Q2_K) {
            const auto* b = reinterpret_cast<const block_q2_K*>(row) + sb;
            uint8_t u[FG_QK_K];
            q2_K_unpack(b, u);
            for (int i = 0; i < FG_QK_K; i++) q[i] = u[i];
            d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
            for (int i = 0; i < 16; i++) sc[i] = b->scales[i] & 15, mn16[i] = b->scales[i] >> 4;
        } else if (t == DType::Q3_K) {
            const auto* b = reinterpret_cast<const block_q3_K*>(row) + sb;
            int8_t v[FG_QK_K];
            q3_K_unpack(b, v, sc);
            for (int i = 0; i < FG_QK_K; i++) q[i] = v[i];
            d = f16_to_f32(b->d);
        } else {
            const auto* b = reinterpret_cast<const block_q6_K*>(row) + sb;
            int8_t v[FG_QK_K];
            q6_K_unpack(b, v);
            for (int i = 0; i < FG_QK_K; i++) q[i] = v[i];
            d = f16_to_f32(b->d);
            for (int i = 0; i < 16; i++) sc[i] = b->scales[i];
        }
        for (int j = 0; j < 8; j++) {
            const BlockQ8Act& a = x[8 * sb + j];
            float& s = acc[j % 4];
            int32_t I[2] = {0, 0}, S[2] = {0, 0};  // S: the halves' exact activation sums
            for (int i = 0; i < FG_QK; i++)
                I[i / 16] += q[FG_QK * j + i] * (256 * a.hi[i] + a.lo[i]), S[i / 16] += 256 * a.hi[i] + a.lo[i];
            if (t == DType::Q4_K || t == DType::Q5_K) {
                s = std::fma((float)(I[0] + I[1]), d * (float)sc[j] * a.d, s);
                s = std::fma(-(dmin * (float)mn[j]), a.sum, s);
            } else if (t == DType::Q6_K) {
                for (int h = 0; h < 2; h++) s = std::fma((float)I[h], d * (float)sc[2 * j + h] * a.d, s);
            } else {  // Q3_K, Q2_K: the halves combined in integers, then one step (Q2_K: and its min term)
                const int32_t J = sc[2 * j] * I[0] + sc[2 * j + 1] * I[1];
                s = std::fma((float)J, d * a.d, s);
                if (t == DType::Q2_K) {
                    const int32_t M = mn16[2 * j] * S[0] + mn16[2 * j + 1] * S[1];
                    s = std::fma(-(dmin * a.d), (float)M, s);
                }
            }
        }
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Weights repacked into 16-row panels (DType::Q4_0x16 / Q4_1x16 / Q5_0x16 / Q8_0x16, and Q2_Kx16 ... Q6_Kx16,
// whose definition is kquant_definition_dot's), on the sets that read them:
// every kernel that meets them gives the definition's bits (decode, 1-15 tokens, also from a
// panel boundary inside the matrix; so every set's panels give the same bits), and the prefill
// paths (gemm_i8, gemm_panel) the file layout's bits. The AVX-512 sets' file-layout decode
// follows the definition too: there the panels also give its bits. The 256-bit sets' file-layout
// decode sums in its own order (8 lanes per row, reduced at the end): the panels stay within
// f32 rounding of it (measured <= 8.4e-7 of the largest result, bound 3e-6), as do the K-quant
// panels of the file layout's K-quant decode (its own order on every set). Rows not a multiple of 16;
// rows of 1 to 128 blocks, odd block counts among them (K-quants: 1 to 16 super-blocks).
void check_panel16(const KernelSet* k) {
    for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K,
                    DType::Q6_K}) {
        const DType pt = packed_type(*k, t);
        if (pt == t) continue;
        const bool kq = is_kquant(t);
        for (int rows : {37, 5, 16}) {
            for (int cols : kq ? std::vector<int>{256, 768, 1536, 4096} : std::vector<int>{32, 96, 352, 1056, 4096}) {
                const int nb = cols / FG_QK, ntok = 15;
                auto w = random_weights(t, rows, cols);
                const int64_t rb = row_bytes(t, cols), panels = (rows + 15) / 16;
                if (t == DType::Q4_1)  // mins unlike the scales (random_weights makes m = d): a swap would show
                    for (int64_t i = 0; i < rows * rb; i += sizeof(block_q4_1)) {
                        const uint16_t m = f32_to_f16(-0.08f - 0.01f * (float)(rng() % 16));
                        std::memcpy(&w[i + 2], &m, 2);
                    }
                std::vector<uint8_t> p((size_t)panels * 16 * rb + 64);
                pack_panels16(t, w.data(), rb, rows, cols, 0, panels, p.data());
                std::vector<float> x((size_t)ntok * cols);
                for (auto& v : x) v = normal(rng);
                std::vector<BlockQ8Act> xq((size_t)ntok * nb);
                for (int tk = 0; tk < ntok; tk++) k->quantize_row_q8(&x[tk * cols], &xq[tk * nb], cols);
                std::vector<float> def((size_t)ntok * rows), file(ntok * rows), got(ntok * rows);
                for (int tk = 0; tk < ntok; tk++)
                    for (int r = 0; r < rows; r++)
                        def[tk * rows + r] = kq ? kquant_definition_dot(t, w.data() + r * rb, &xq[tk * nb], nb)
                                                : definition_dot(t, w.data() + r * rb, &xq[tk * nb], nb);
                const bool file_defines = !kq && !std::strncmp(k->name, "avx512", 6);  // quads: the definition
                bool same = true, file_same = true;
                double file_err = 0, file_scale = 1e-30;  // max |panels - file layout|, max |file layout|
                for (int n = 1; n <= ntok; n++) {
                    std::fill(got.begin(), got.end(), -1.0f);
                    if (rows > 16) {  // two calls that meet at a panel boundary, as the backend's row chunks
                        k->gemm_q(pt, p.data(), rb, 16, rows, xq.data(), nb, n, got.data(), rows, 2);
                        k->gemm_q(pt, p.data(), rb, 0, 16, xq.data(), nb, n, got.data(), rows, 2);
                    } else {
                        k->gemm_q(pt, p.data(), rb, 0, rows, xq.data(), nb, n, got.data(), rows, 2);
                    }
                    k->gemm_q(t, w.data(), rb, 0, rows, xq.data(), nb, n, file.data(), rows, 2);
                    same &= !std::memcmp(got.data(), def.data(), (size_t)n * rows * sizeof(float));
                    file_same &= !std::memcmp(got.data(), file.data(), (size_t)n * rows * sizeof(float));
                    for (int i = 0; i < n * rows; i++)
                        file_err = std::max(file_err, (double)std::fabs(got[i] - file[i])),
                        file_scale = std::max(file_scale, (double)std::fabs(file[i]));
                }
                char what[64];
                std::snprintf(what, sizeof what, "gemm %s %dx%d n=1..15", dtype_name(pt), rows, cols);
                if (file_defines) {
                    if (!same || !file_same) failures++;
                    std::printf("%-12s %-28s bit-identical to the definition %s, to %s %s\n", k->name, what,
                                same ? "ok" : "FAIL", dtype_name(t), file_same ? "ok" : "FAIL");
                } else {
                    const bool close = file_err <= 3e-6 * file_scale;
                    if (!same || !close) failures++;
                    std::printf("%-12s %-28s bit-identical to the definition %s, to %s %.2g rel %s\n", k->name, what,
                                same ? "ok" : "FAIL", dtype_name(t), file_err / file_scale, close ? "ok" : "FAIL");
                }
                // One-part activations (lo = 0, gemm_q's parts = 1): the definition's bits too.
                std::vector<BlockQ8Act> x1 = xq;
                drop_lo_parts(x1.data(), ntok * nb);
                for (int tk = 0; tk < ntok; tk++)
                    for (int r = 0; r < rows; r++)
                        def[tk * rows + r] = kq ? kquant_definition_dot(t, w.data() + r * rb, &x1[tk * nb], nb)
                                                : definition_dot(t, w.data() + r * rb, &x1[tk * nb], nb);
                bool one_same = true;
                for (int n = 1; n <= ntok; n++) {
                    std::fill(got.begin(), got.end(), -1.0f);
                    k->gemm_q(pt, p.data(), rb, 0, rows, x1.data(), nb, n, got.data(), rows, 1);
                    one_same &= !std::memcmp(got.data(), def.data(), (size_t)n * rows * sizeof(float));
                }
                if (!one_same) failures++;
                std::snprintf(what, sizeof what, "gemm %s x1 %dx%d n=1..15", dtype_name(pt), rows, cols);
                std::printf("%-12s %-28s bit-identical to the definition %s\n", k->name, what, one_same ? "ok" : "FAIL");
                // One row back (get_rows of a packed embedding): the file's dequantization.
                std::vector<float> a(cols), b(cols);
                bool rows_same = true;
                for (int r = 0; r < rows; r++) {
                    dequantize_row(t, w.data() + r * rb, a.data(), cols);
                    dequantize_panel16_row(pt, p.data(), rb, r, b.data(), cols);
                    rows_same &= !std::memcmp(a.data(), b.data(), cols * sizeof(float));
                }
                if (!rows_same) failures++;
                std::snprintf(what, sizeof what, "rows of %s %dx%d", dtype_name(pt), rows, cols);
                std::printf("%-12s %-28s equal to %s's dequantized rows %s\n", k->name, what, dtype_name(t),
                            rows_same ? "ok" : "FAIL");
                if (cols > 1056) continue;  // the prefill paths: the shapes above suffice
                const int n = 21, tt = k->panel_tokens, n_pad = (n + tt - 1) / tt * tt;
                std::vector<float> xs((size_t)n * cols), xp((size_t)n_pad * cols, 0.0f), work(gemm_panel_work_floats(cols));
                for (auto& v : xs) v = normal(rng);
                for (int tk = 0; tk < n; tk++)
                    for (int c = 0; c < cols; c++) xp[(size_t)(tk / tt) * cols * tt + (size_t)c * tt + tk % tt] = xs[tk * cols + c];
                std::vector<float> pa(n * rows), pb(n * rows);
                k->gemm_panel(t, w.data(), rb, 0, rows, xp.data(), cols, n, pa.data(), rows, work.data());
                k->gemm_panel(pt, p.data(), rb, 0, rows, xp.data(), cols, n, pb.data(), rows, work.data());
                const bool panel_same = !std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float));
                if (!panel_same) failures++;
                std::snprintf(what, sizeof what, "gemm_panel %s %dx%d", dtype_name(pt), rows, cols);
                std::printf("%-12s %-28s bit-identical to %s %s\n", k->name, what, dtype_name(t), panel_same ? "ok" : "FAIL");
                if (!gemm_i8_takes(*k, pt)) continue;
                std::vector<BlockQ8Act> xa((size_t)n * nb);
                std::vector<int32_t> sums((size_t)i8_act_sums_ints(n * nb));
                for (int tk = 0; tk < n; tk++) k->quantize_row_q8(&xs[tk * cols], &xa[tk * nb], cols);
                i8_act_sums(xa.data(), 0, n * nb, n * nb, sums.data());
                std::vector<uint8_t> wk(gemm_i8_work_bytes(cols));
                for (int parts : {1, 2}) {
                    k->gemm_i8(t, w.data(), rb, 0, rows, xa.data(), sums.data(), nb, n, parts, pa.data(), rows, wk.data());
                    k->gemm_i8(pt, p.data(), rb, 0, rows, xa.data(), sums.data(), nb, n, parts, pb.data(), rows, wk.data());
                    const bool i8_same = !std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float));
                    if (!i8_same) failures++;
                    std::snprintf(what, sizeof what, "gemm_i8 %s x%d %dx%d", dtype_name(pt), parts, rows, cols);
                    std::printf("%-12s %-28s bit-identical to %s %s\n", k->name, what, dtype_name(t), i8_same ? "ok" : "FAIL");
                }
            }
        }
    }
}

}  // namespace

int main() {
    int checked = 0;
    // avx512-amx-emulated: the AMX set's few-token decode on tiles emulated by loops (its
    // layouts and finishing checked here; only the instruction mapping needs an AMX CPU).
    const std::pair<const char*, const KernelSet* (*)()> sets[] = {
        {"generic", kernels_generic},         {"avx2", kernels_avx2},
        {"avx2-vnni", kernels_avxvnni},       {"avx512-vnni", kernels_avx512},
        {"avx512-amx", kernels_amx},          {"avx512-amx-emulated", kernels_amx_emulated},
        {"neon-dotprod", kernels_neon},       {"neon-i8mm", kernels_neon_i8mm}};
    for (const auto& [name, get] : sets) {
#if FORGERT_HAVE_AMX
        if (!std::strcmp(name, "avx512-amx") && !runs_here(name)) std::printf("avx512-amx: not run (no usable AMX-INT8 here)\n");
#endif
        if (!runs_here(name)) continue;
        const KernelSet* k = get();
        if (!k) continue;
        for (int cols : {96, 320, 352, 512}) check(k, cols);  // 512: two K-quant super-blocks
        for (int parts : {2, 1}) {  // activations "int16", "int8"
            // quads + a pair + a block, etc.; 1056: 33 blocks, the AMX decode's 8-block chunks 4 times and one block
            for (int cols : {96, 320, 352, 1056}) check_batch_invariance(k, cols, parts);
            for (int cols : {256, 512, 768}) check_batch_invariance(k, cols, parts);  // K-quant super-blocks
        }
        for (int cols : {256, 768}) check_gemv_reference(k, cols);
        check_gemm_i8(k, 8192, {70});  // wide rows: the tokens go through the panels in several passes
        check_panel16(k);
        checked++;
    }
    std::printf("%d kernel sets checked, %d failures\n", checked, failures);
    return failures ? 1 : 0;
}
