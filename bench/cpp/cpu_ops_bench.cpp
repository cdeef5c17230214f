// Microbenchmarks of the CPU backend's ops on the shapes of SmolLM2-135M and a
// 1B-class model: GB/s of weights streamed (decode GEMV) and GFLOP/s (prefill GEMM),
// with the machine's read bandwidth (measured with the backend's threads) for reference.
//
//   cmake -S . -B build/bench -DFORGERT_BUILD_BENCH=ON -Dpybind11_DIR=$(python -m pybind11 --cmakedir)
//   cmake --build build/bench --target cpu_ops_bench
//   build/bench/cpu_ops_bench [threads] [filter] [max tokens: 1 = decode only, 8 = and batched decode]
//                             [activations: int16 (default) or int8, forgert.Model's option]
//   FORGERT_AMX_DECODE_MIN_TOKENS=2 build/bench/cpu_ops_bench 0 gemm_q   # the few-token decode kernels
//                                       # alone, AMX beside AVX-512 VNNI (the tiles are off by default)
// The prefill int8 GEMM alone (KernelSet::gemm_i8, 1B shapes, 128, 256 and 512 tokens, both
// activation formats x2 / x1, ms per call; n = 0: the panels' repack alone, which a call runs once
// whatever its token count): the filter "gemm_i8" (e.g. `cpu_ops_bench 16 gemm_i8`,
// `cpu_ops_bench 1 "gemm_i8 Q4_Kx16"`, `cpu_ops_bench 2 "gemm_i8 IQ"`).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/read_bandwidth.h"
#include "backends/cpu/thread_pool.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"

using namespace forgert;
using Clock = std::chrono::steady_clock;

namespace {

double process_cpu_seconds() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Median wall time of f over reps calls, and (if cpu) the median process CPU time: on a shared,
// oversubscribed VM a call of a few ms is often preempted, which inflates its wall time but
// not its CPU time (one thread: the CPU time is the kernel's own).
template <class F>
double median_seconds(F&& f, int reps, double* cpu = nullptr) {
    std::vector<double> t, c;
    f();  // warm-up
    for (int i = 0; i < reps; i++) {
        const double c0 = process_cpu_seconds();
        const auto a = Clock::now();
        f();
        t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
        c.push_back(process_cpu_seconds() - c0);
    }
    std::sort(t.begin(), t.end());
    std::sort(c.begin(), c.end());
    if (cpu) *cpu = c[c.size() / 2];
    return t[t.size() / 2];
}

Tensor random_tensor(Backend& be, std::vector<std::unique_ptr<Buffer>>& keep, DType t, int64_t rows, int64_t cols,
                     std::mt19937& rng) {
    const size_t bytes = (size_t)row_bytes(t, cols) * rows;
    keep.push_back(be.alloc(bytes));
    auto* p = static_cast<uint8_t*>(keep.back()->host);
    std::uniform_int_distribution<int> u(0, 255);
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)u(rng);
    // Keep scales finite and small: every block starts with an f16 scale.
    if (t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
        t == DType::IQ4_NL) {
        const int64_t bb = dtype_block_bytes(t), nblk = (int64_t)bytes / bb;
        for (int64_t i = 0; i < nblk; i++) {
            uint16_t d = 0x2000;  // ~0.0078
            std::memcpy(p + i * bb, &d, 2);
            if (t == DType::Q4_1 || t == DType::Q5_1) std::memcpy(p + i * bb + 2, &d, 2);
        }
    } else if (t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K ||
               t == DType::IQ4_XS) {
        // K-quant super-blocks: the f16 factors d (and dmin) at their offsets in each layout.
        const int64_t bb = dtype_block_bytes(t), nblk = (int64_t)bytes / bb;
        const uint16_t d = 0x1800;  // ~0.002: times 6-bit scales, ~0.1
        size_t d_at = 0, dmin_at = SIZE_MAX;
        if (t == DType::Q2_K) d_at = offsetof(block_q2_K, d), dmin_at = offsetof(block_q2_K, dmin);
        else if (t == DType::Q3_K) d_at = offsetof(block_q3_K, d);
        else if (t == DType::Q4_K || t == DType::Q5_K) d_at = offsetof(block_q4_K, d), dmin_at = offsetof(block_q4_K, dmin);
        else if (t == DType::Q6_K) d_at = offsetof(block_q6_K, d);
        else d_at = offsetof(block_iq4_xs, d);
        for (int64_t i = 0; i < nblk; i++) {
            std::memcpy(p + i * bb + d_at, &d, 2);
            if (dmin_at != SIZE_MAX) std::memcpy(p + i * bb + dmin_at, &d, 2);
        }
    } else if (is_iq_lattice(t) && t != DType::IQ1_M) {  // f16 d first (IQ1_M's: nibbles of its scales)
        const int64_t bb = dtype_block_bytes(t), nblk = (int64_t)bytes / bb;
        const uint16_t d = 0x1800;
        for (int64_t i = 0; i < nblk; i++) std::memcpy(p + i * bb, &d, 2);
    } else if (t == DType::MXFP4) {  // E8M0 scales 2^(e - 128) near 2^-6: weights ~0.1
        for (size_t i = 0; i < bytes; i += sizeof(block_mxfp4)) p[i] = 122;
    } else if (t == DType::F16 || t == DType::BF16 || t == DType::F32) {
        // Real values (random bytes would include denormals, which stall the FPU).
        std::normal_distribution<float> nd(0.0f, 0.5f);
        for (size_t i = 0; i < bytes / dtype_block_bytes(t); i++) {
            const float v = nd(rng);
            uint32_t bits;
            std::memcpy(&bits, &v, 4);
            if (t == DType::F32) std::memcpy(p + 4 * i, &v, 4);
            else if (t == DType::BF16) { const uint16_t h = (uint16_t)(bits >> 16); std::memcpy(p + 2 * i, &h, 2); }
            else { const uint16_t h = f32_to_f16(v); std::memcpy(p + 2 * i, &h, 2); }
        }
    }
    return make_tensor(keep.back().get(), 0, t, rows, cols);
}

}  // namespace

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 0;
    const char* filter = argc > 2 ? argv[2] : "";  // run only ops whose name contains this
    const int64_t max_n = argc > 3 ? std::atoll(argv[3]) : 512;  // 1: decode matmuls only
    cpu::CpuBackend be(threads);
    cpu::set_activations(be, argc > 4 ? argv[4] : "int16");
    std::mt19937 rng(1);
    std::vector<std::unique_ptr<Buffer>> keep;
    // Read bandwidth with as many threads as the backend (one memcpy thread, the old reference,
    // is a fraction of what 16 cores read: it gave 557-2873% "of bandwidth" on a 16-core host).
    const double bw = cpu::measure_read_bandwidth_gbs(be.n_threads());
    std::printf("backend: %s, threads: %d, activations: %s, read bandwidth (%d threads): %.1f GB/s\n", be.name().c_str(),
                be.n_threads(), be.activation_parts() == 1 ? "int8" : "int16", be.n_threads(), bw);
    std::printf("%-28s %6s %6s %5s %10s %9s %9s %7s %10s\n", "op", "rows", "cols", "n", "time_us", "GB/s", "GFLOP/s", "%bw",
                "cpu_us");

    struct Shape { const char* what; int64_t rows, cols, max_tokens = 512; };
    // The smaller matrices (0.3-17 MB quantized) may stay in L2 / L3 from one call to the next, so
    // their GB/s can exceed the read bandwidth: the kernel's compute rate, not its streaming. The 1B
    // output head (128256 x 2048, 148-262 MB) fits no cache: its GB/s is what decode streams. It is
    // timed for decode and batched decode only (a 512-token call would take seconds, and 263 MB of
    // output).
    const Shape shapes[] = {{"smollm2 ffn_up", 1536, 576},  {"smollm2 ffn_down", 576, 1536},
                            {"smollm2 logits", 49152, 576}, {"1B ffn_up", 8192, 2048},
                            {"1B ffn_down", 2048, 8192},    {"1B logits", 128256, 2048, 8}};
    for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL, DType::Q2_K,
                    DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS, DType::IQ3_S, DType::IQ3_XXS,
                    DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ1_S, DType::IQ1_M, DType::MXFP4, DType::F16,
                    DType::BF16, DType::F32}) {
        for (const Shape& s : shapes) {
            for (int64_t n : {1, 4, 8, 512}) {  // decode, batched decode of 4 and 8 sequences, prefill
                if (n > std::min(max_n, s.max_tokens) || s.cols % dtype_block_elems(t)) continue;  // K-quants: whole super-blocks
                char name[64];
                std::snprintf(name, sizeof name, "matmul %s %s", dtype_name(t), s.what);
                if (!std::strstr(name, filter)) continue;
                const Tensor file_w = random_tensor(be, keep, t, s.rows, s.cols, rng);
                Tensor x = random_tensor(be, keep, DType::F32, n, s.cols, rng);
                keep.push_back(be.alloc((size_t)n * s.rows * 4));
                Tensor y = make_tensor(keep.back().get(), 0, DType::F32, n, s.rows);
                // The file's layout, then (where the kernel set repacks this type) its panels.
                const Tensor packed = be.prepare_weight(file_w, keep);
                for (const Tensor& w : {file_w, packed}) {
                    if (&w == &packed && packed.type == file_w.type) break;
                    std::snprintf(name, sizeof name, "matmul %s %s", dtype_name(w.type), s.what);
                    double cpu = 0;
                    const double sec = median_seconds([&] { be.matmul(y, w, x); }, n <= 8 ? 50 : 5, &cpu);
                    const double gbs = (double)w.nbytes() / sec / 1e9;  // weights streamed once per call
                    const double gflops = 2.0 * s.rows * s.cols * n / sec / 1e9;
                    std::printf("%-28s %6lld %6lld %5lld %10.1f %9.1f %9.1f %6.0f%% %10.1f\n", name, (long long)s.rows,
                                (long long)s.cols, (long long)n, sec * 1e6, gbs, gflops, 100.0 * gbs / bw, cpu * 1e6);
                }
                keep.clear();
            }
        }
    }
    // The few-token decode kernels alone (KernelSet::gemm_q: no activation quantization, no
    // backend): the AMX set beside the AVX-512 VNNI set it falls back to, on 1B shapes in the
    // layouts prepare_weight repacks to, 1-15 tokens, both activation formats (parts 2: int16,
    // 1: int8), 16-row panels split over the threads, and whether both sets gave the same bits
    // (the definition says they must). The AMX set takes the tiles from
    // FORGERT_AMX_DECODE_MIN_TOKENS tokens (default: never, so both columns time VNNI unless it is
// set; below it, the tiles column times VNNI again).
    // Without usable AMX its emulated tiles run instead: a check that the path runs and agrees,
    // not a timing (far slower), taken only when the filter names it: "gemm_q Q4_0x16 1B attn".
    // Llama-3.2-1B's matrix shapes for the kernel-alone cases below (gemm_q, gemm_i8).
    const Shape one_b[] = {{"1B attn_q", 2048, 2048}, {"1B ffn_up", 8192, 2048}, {"1B ffn_down", 2048, 8192}};
    // Sets asked for only where this CPU runs them (their construction may use their instructions).
    const cpu::KernelSet* vnni = nullptr;
    for (const cpu::KernelSet* k : cpu::runnable_kernel_sets())
        if (!std::strcmp(k->name, "avx512-vnni")) vnni = k;
    const bool amx = cpu::cpu_has_amx_int8() && cpu::kernels_amx();
    const cpu::KernelSet* tiles = !vnni ? nullptr : amx ? cpu::kernels_amx() : cpu::kernels_amx_emulated();
    if (vnni && tiles && (amx || std::strstr(filter, "gemm_q"))) {
        std::printf("%-30s %6s %6s %5s %5s %10s %10s %7s  (%s vs %s)\n", "gemm_q", "rows", "cols", "n", "parts",
                    "tiles_us", "vnni_us", "speedup", tiles->name, vnni->name);
        cpu::ThreadPool pool(be.n_threads());
        for (DType t : {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K}) {
            for (const Shape& s : one_b) {
                char name[64];
                std::snprintf(name, sizeof name, "gemm_q %s %s", dtype_name(cpu::packed_type(*tiles, t)), s.what);
                if (!std::strstr(name, filter)) continue;
                const Tensor w = be.prepare_weight(random_tensor(be, keep, t, s.rows, s.cols, rng), keep);
                std::snprintf(name, sizeof name, "gemm_q %s %s", dtype_name(w.type), s.what);
                const int64_t nb = s.cols / FG_QK, panels = (s.rows + 15) / 16;
                for (int n : {1, 2, 4, 8, 15}) {
                    const Tensor x = random_tensor(be, keep, DType::F32, n, s.cols, rng);
                    std::vector<cpu::BlockQ8Act> xq((size_t)n * nb);
                    for (int tk = 0; tk < n; tk++) vnni->quantize_row_q8(x.data<float>() + tk * s.cols, &xq[tk * nb], s.cols);
                    std::vector<float> out_t((size_t)n * s.rows), out_v((size_t)n * s.rows);
                    for (int parts : {2, 1}) {
                        if (parts == 1) cpu::drop_lo_parts(xq.data(), n * nb);
                        auto call = [&](const cpu::KernelSet* k, float* out) {
                            pool.run([&](int ith, int nth) {
                                const int64_t r0 = 16 * (panels * ith / nth), r1 = std::min(s.rows, 16 * (panels * (ith + 1) / nth));
                                if (r0 < r1) k->gemm_q(w.type, w.data<uint8_t>(), w.stride, r0, r1, xq.data(), nb, n, out, s.rows, parts);
                            });
                        };
                        const int reps = amx ? 100 : 1;
                        const double st = median_seconds([&] { call(tiles, out_t.data()); }, reps);
                        const double sv = median_seconds([&] { call(vnni, out_v.data()); }, reps);
                        const bool same = !std::memcmp(out_t.data(), out_v.data(), out_t.size() * sizeof(float));
                        std::printf("%-30s %6lld %6lld %5d %5d %10.1f %10.1f %6.2fx  %s\n", name, (long long)s.rows,
                                    (long long)s.cols, n, parts, st * 1e6, sv * 1e6, sv / st, same ? "same bits" : "BITS DIFFER");
                    }
                }
                keep.clear();
            }
        }
    }
    // The prefill int8 GEMM alone: the backend's kernel set's gemm_i8 (FORGERT_CPU_ISA picks
    // another, e.g. amx / avx512) on the weights as that set reads them (Q4_K_M's Q4_Kx16 and
    // Q6_Kx16, Q8_0x16, Q4_0x16 where it repacks), the rows split over the backend's threads as
    // CpuBackend::matmul_i8 splits them; the activations are quantized once, outside the time.
    const cpu::KernelSet& ks = cpu::select_kernels();
    for (DType t : {DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q4_0, DType::Q3_K, DType::Q2_K, DType::IQ3_S,
                    DType::IQ3_XXS, DType::IQ2_XXS,
                    DType::IQ2_XS, DType::IQ2_S, DType::IQ1_S, DType::IQ1_M}) {
        for (const Shape& s : one_b) {
            char name[64];
            std::snprintf(name, sizeof name, "gemm_i8 %s %s", dtype_name(cpu::packed_type(ks, t)), s.what);
            if (!std::strstr(name, filter) || !cpu::gemm_i8_takes(ks, t)) continue;
            const Tensor w = be.prepare_weight(random_tensor(be, keep, t, s.rows, s.cols, rng), keep);
            std::snprintf(name, sizeof name, "gemm_i8 %s %s", dtype_name(w.type), s.what);  // FORGERT_CPU_REPACK=0: t
            const int64_t nb = s.cols / FG_QK, panels = (s.rows + cpu::kI8Rows - 1) / cpu::kI8Rows;
            for (int64_t n : {0, 128, 256, 512}) {  // 0: the repack alone
                std::vector<float> xf((size_t)n * s.cols);
                std::normal_distribution<float> nd;
                for (auto& v : xf) v = nd(rng);
                std::vector<cpu::BlockQ8Act> xq((size_t)n * nb);
                std::vector<int32_t> xs((size_t)cpu::i8_act_sums_ints(n * nb));
                for (int64_t tk = 0; tk < n; tk++) ks.quantize_row_q8(&xf[(size_t)tk * s.cols], &xq[tk * nb], s.cols);
                cpu::i8_act_sums(xq.data(), 0, n * nb, n * nb, xs.data());
                std::vector<float> y((size_t)n * s.rows);
                std::vector<std::vector<uint8_t>> work(be.n_threads(), std::vector<uint8_t>(cpu::gemm_i8_work_bytes(s.cols)));
                for (int parts : {2, 1}) {
                    double cpu = 0;
                    const double sec = median_seconds([&] {
                        be.for_i8_panels(panels, [&](int ith, int64_t p0, int64_t p1) {
                            ks.gemm_i8(w.type, w.data<uint8_t>(), w.stride, p0 * cpu::kI8Rows,
                                       std::min(s.rows, p1 * cpu::kI8Rows), xq.data(), xs.data(), nb, n, parts, y.data(),
                                       s.rows, work[ith].data());
                        });
                    }, 7, &cpu);
                    std::printf("%-28s x%d %6lld %6lld %5lld %9.3f ms %8.1f GFLOP/s %9.3f cpu_ms  (%s)\n", name, parts,
                                (long long)s.rows, (long long)s.cols, (long long)n, sec * 1e3,
                                2.0 * s.rows * s.cols * n / sec / 1e9, cpu * 1e3, ks.name);
                }
            }
            keep.clear();
        }
    }
    // Decode GEMV as in a model: one token through 48 distinct matrices of SmolLM2's ffn_down
    // shape, more than L3 holds, so the weights stream from memory (the L2-resident figures
    // above time the kernel alone; a model's decode reads each matrix once per token).
    for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                    DType::Q8_0}) {
        char name[64];
        std::snprintf(name, sizeof name, "stream %s smollm2 ffn_down", dtype_name(t));
        if (!std::strstr(name, filter)) continue;
        const int L = 48;
        const int64_t rows = 576, cols = 1536;
        std::vector<Tensor> ws;
        for (int l = 0; l < L; l++) ws.push_back(be.prepare_weight(random_tensor(be, keep, t, rows, cols, rng), keep));
        Tensor x = random_tensor(be, keep, DType::F32, 1, cols, rng);
        keep.push_back(be.alloc((size_t)rows * 4));
        Tensor y = make_tensor(keep.back().get(), 0, DType::F32, 1, rows);
        double cpu = 0;
        const double sec = median_seconds([&] { for (const Tensor& w : ws) be.matmul(y, w, x); }, 21, &cpu) / L;
        const double gbs = (double)ws[0].nbytes() / sec / 1e9;
        std::printf("%-28s %6lld %6lld %5d %10.1f %9.1f %9s %6.0f%% %10.1f  (%s, per matrix)\n", name, (long long)rows,
                    (long long)cols, 1, sec * 1e6, gbs, "", 100.0 * gbs / bw, cpu / L * 1e6, dtype_name(ws[0].type));
        keep.clear();
    }
    // Decode GEMVs as a model runs them: SmolLM2's 30 layers (q, k, v as one matmul_many; o; gate
    // and up as one; down) and its output matrix, one token, in that order, the matrices
    // allocated in it: 143 MB in Q8_0, several times the L3. (The one-shape stream above, 45 MB,
    // is partly served from a 32 MB L3: on a Zen 5 VM it read 90% of the probe with its 48
    // matrices, 80% with 160, as this one did; the model's decode matmuls read the same 80%.)
    for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q8_0}) {  // (576 columns: no K-quant)
        char name[64];
        std::snprintf(name, sizeof name, "stream %s smollm2 layers", dtype_name(t));
        if (!std::strstr(name, filter)) continue;
        const int L = 30, D = 576, KV = 192, F = 1536, V = 49152;
        struct Layer { Tensor q, k, v, o, gate, up, down; };
        std::vector<Layer> ls;
        size_t bytes = 0;
        for (int l = 0; l < L; l++) {
            auto w = [&](int64_t r, int64_t c) {
                Tensor p = be.prepare_weight(random_tensor(be, keep, t, r, c, rng), keep);
                bytes += p.nbytes();
                return p;
            };
            Layer y;
            y.q = w(D, D), y.k = w(KV, D), y.v = w(KV, D), y.o = w(D, D), y.gate = w(F, D), y.up = w(F, D), y.down = w(D, F);
            ls.push_back(y);
        }
        const Tensor head = be.prepare_weight(random_tensor(be, keep, DType::Q8_0, V, D, rng), keep);
        bytes += head.nbytes();
        const Tensor xd = random_tensor(be, keep, DType::F32, 1, D, rng), xf = random_tensor(be, keep, DType::F32, 1, F, rng);
        auto out = [&](int64_t n) { keep.push_back(be.alloc((size_t)n * 4)); return make_tensor(keep.back().get(), 0, DType::F32, 1, n); };
        const Tensor yq = out(D), yk = out(KV), yv = out(KV), yo = out(D), yg = out(F), yu = out(F), yd = out(D), yl = out(V);
        double cpu = 0;
        const double sec = median_seconds([&] {
            for (const Layer& y : ls) {
                const Tensor qkv_out[3] = {yq, yk, yv}, qkv_w[3] = {y.q, y.k, y.v};
                be.matmul_many(qkv_out, qkv_w, 3, xd);
                be.matmul(yo, y.o, xd);
                const Tensor gu_out[2] = {yg, yu}, gu_w[2] = {y.gate, y.up};
                be.matmul_many(gu_out, gu_w, 2, xd);
                be.matmul(yd, y.down, xf);
            }
            be.matmul(yl, head, xd);
        }, 15, &cpu);
        const double gbs = (double)bytes / sec / 1e9;
        std::printf("%-28s %6d %6d %5d %10.1f %9.1f %9s %6.0f%% %10.1f  (%s, per token, %.0f MB)\n", name, L, D, 1,
                    sec * 1e6, gbs, "", 100.0 * gbs / bw, cpu * 1e6, dtype_name(ls[0].q.type), bytes / 1e6);
        keep.clear();
    }
    // Attention: SmolLM2 geometry (9 heads, 3 KV heads, head_dim 64); 32 and 64: a short decode's.
    for (int ctx : {32, 64, 128, 512, 2048}) {
        if (!std::strstr("attention", filter)) break;
        for (int n : {1, 512}) {
            if (n > ctx) continue;
            const int H = 9, KV = 3, hd = 64;
            Tensor q = random_tensor(be, keep, DType::F32, n, H * hd, rng);
            Tensor kc = random_tensor(be, keep, DType::F16, ctx, KV * hd, rng);
            Tensor vc = random_tensor(be, keep, DType::F16, ctx, KV * hd, rng);
            keep.push_back(be.alloc((size_t)n * H * hd * 4));
            Tensor o = make_tensor(keep.back().get(), 0, DType::F32, n, H * hd);
            const double sec = median_seconds([&] { be.attention(o, q, kc, vc, ctx - n, {H, KV, hd, 0.125f}); },
                                              n == 1 ? 200 : 5);
            std::printf("%-28s %6d %6d %5d %10.1f\n", "attention smollm2 ctx", ctx, H * hd, n, sec * 1e6);
            keep.clear();
        }
    }
    // Qwen3's QK-norm (two head_rms_norm calls) against the fused RoPE + cache-write step it
    // precedes and one layer's Q projection, Qwen3-0.6B geometry (16 heads, 8 KV heads, head_dim
    // 128, dim 1024, Q8_0 weights): what fusing the norm into rope_kv_write could save.
    for (int n : {1, 512}) {
        if (!std::strstr("qk_norm", filter)) break;
        const int H = 16, KV = 8, hd = 128, dim = 1024, ctx = 1024;
        Tensor q = random_tensor(be, keep, DType::F32, n, H * hd, rng);
        Tensor k = random_tensor(be, keep, DType::F32, n, KV * hd, rng);
        Tensor v = random_tensor(be, keep, DType::F32, n, KV * hd, rng);
        Tensor w = random_tensor(be, keep, DType::F32, 1, hd, rng);
        // Ones: the norm runs in place, call after call; weights below 1 would shrink some
        // elements into denormals (slow) over the repetitions.
        std::fill(w.data<float>(), w.data<float>() + hd, 1.0f);
        Tensor kc = random_tensor(be, keep, DType::F16, ctx, KV * hd, rng);
        Tensor vc = random_tensor(be, keep, DType::F16, ctx, KV * hd, rng);
        Tensor fr = random_tensor(be, keep, DType::F32, 1, hd / 2, rng);
        Tensor wq = random_tensor(be, keep, DType::Q8_0, H * hd, dim, rng);
        Tensor x = random_tensor(be, keep, DType::F32, n, dim, rng);
        const double norm = median_seconds([&] { be.head_rms_norm(q, w, 1e-6f); be.head_rms_norm(k, w, 1e-6f); }, 200);
        RopeKvParams rp{H, KV, hd, true};
        const double rope = median_seconds([&] { be.rope_kv_write(q, k, v, kc, vc, fr, 0, rp); }, 200);
        const double proj = median_seconds([&] { be.matmul(q, wq, x); }, n == 1 ? 200 : 5);
        std::printf("%-28s %6d %6d %5d %10.1f us; rope_kv_write %.1f us; q projection (Q8_0) %.1f us\n",
                    "qk_norm qwen3-0.6B", H + KV, hd, n, norm * 1e6, rope * 1e6, proj * 1e6);
        keep.clear();
    }
    // Decode attention as in a model: 30 layers' caches, more than the CPU caches hold, so the
    // K/V rows stream from memory (bytes: K and V of every position, every layer).
    for (int ctx : {1024, 4096}) {
        if (!std::strstr("attention", filter)) break;
        const int H = 9, KV = 3, hd = 64, L = 30;
        std::vector<Tensor> kcs, vcs;
        for (int l = 0; l < L; l++) {
            kcs.push_back(random_tensor(be, keep, DType::F16, ctx, KV * hd, rng));
            vcs.push_back(random_tensor(be, keep, DType::F16, ctx, KV * hd, rng));
        }
        Tensor q = random_tensor(be, keep, DType::F32, 1, H * hd, rng);
        keep.push_back(be.alloc((size_t)H * hd * 4));
        Tensor o = make_tensor(keep.back().get(), 0, DType::F32, 1, H * hd);
        const double sec = median_seconds([&] {
            for (int l = 0; l < L; l++) be.attention(o, q, kcs[l], vcs[l], ctx - 1, {H, KV, hd, 0.125f});
        }, 9);
        const double gbs = 2.0 * L * ctx * KV * hd * 2 / sec / 1e9;
        std::printf("%-28s %6d %6d %5d %10.1f %9.1f GB/s\n", "attention 30 layers decode", ctx, H * hd, 1, sec * 1e6, gbs);
        keep.clear();
    }
    return 0;
}
