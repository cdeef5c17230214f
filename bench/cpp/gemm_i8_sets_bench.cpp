// The prefill int8 GEMM (KernelSet::gemm_i8) of the avx2 and avx2-vnni sets alone, SmolLM2-135M
// ffn shapes, 512 tokens, two activation parts: best process CPU time of N calls per case. On a CPU
// without VEX AVX-VNNI (Zen 4, Ice Lake) the avx2-vnni set is built as test_kernel_sets.py's
// test_avxvnni_set_through_evex builds it (EVEX vpdpbusd standing in for VEX's), outside CMake
// (C = src/cpp/backends/cpu):
//   g++ -std=c++17 -O3 -Isrc/cpp -mavx2 -mfma -mf16c -c $C/kernels_avx2.cpp -o a2.o
//   g++ -std=c++17 -O3 -Isrc/cpp -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni \
//       -D_mm256_dpbusd_avx_epi32=_mm256_dpbusd_epi32 -c $C/kernels_avxvnni.cpp -o vn.o
//   g++ -std=c++17 -O3 -Isrc/cpp -DFORGERT_HAVE_AVX2=1 -DFORGERT_HAVE_AVXVNNI=1 bench/cpp/gemm_i8_sets_bench.cpp \
//       $C/kernels_generic.cpp src/cpp/core/dtype.cpp $C/cpu_kernels.cpp a2.o vn.o -o gemm_i8_sets_bench
//   ./gemm_i8_sets_bench 40
// Weights are random bytes with a fixed scale (the time does not depend on the values); the
// printed checksum lets two builds' results be compared.
#include "backends/cpu/cpu_kernels.h"
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <ctime>
using namespace forgert; using namespace forgert::cpu;
static double cpu_now() { timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3; }
int main(int argc, char** argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 5;
    const int ntok = 512;
    std::mt19937 rng(1);
    struct Case { const KernelSet* k; DType t; int rows, cols; const char* name; };
    const std::vector<Case> cases = {
        {kernels_avx2(), DType::Q4_0, 1536, 576, "avx2 Q4_0 up 1536x576"},
        {kernels_avx2(), DType::Q4_0, 576, 1536, "avx2 Q4_0 down 576x1536"},
        {kernels_avxvnni(), DType::Q4_0, 1536, 576, "vnni Q4_0 up 1536x576"},
        {kernels_avxvnni(), DType::Q4_0, 576, 1536, "vnni Q4_0 down 576x1536"},
        {kernels_avxvnni(), DType::Q8_0, 1536, 576, "vnni Q8_0 up 1536x576"},
        {kernels_avxvnni(), DType::Q8_0, 576, 1536, "vnni Q8_0 down 576x1536"},
    };
    for (auto& c : cases) {
        const int64_t nb = c.cols / FG_QK, rb = row_bytes(c.t, c.cols);
        std::vector<uint8_t> w((size_t)rb * c.rows);
        for (auto& v : w) v = rng();
        const int bb = (c.t == DType::Q4_0) ? 18 : 34;
        for (size_t i = 0; i + bb <= w.size(); i += bb) { w[i] = 0x00; w[i + 1] = 0x20; }
        std::vector<float> xf((size_t)ntok * c.cols);
        std::normal_distribution<float> nd;
        for (auto& v : xf) v = nd(rng);
        std::vector<BlockQ8Act> xa((size_t)ntok * nb);
        for (int t = 0; t < ntok; t++) kernels_generic()->quantize_row_q8(&xf[(size_t)t * c.cols], &xa[t * nb], c.cols);
        std::vector<int32_t> sums(i8_act_sums_ints(ntok * nb));
        i8_act_sums(xa.data(), 0, ntok * nb, ntok * nb, sums.data());
        std::vector<uint8_t> work(gemm_i8_work_bytes(c.cols));
        std::vector<float> out((size_t)ntok * c.rows);
        double best = 1e30; double chk = 0;
        for (int r = 0; r < reps; r++) {
            const double t0 = cpu_now();
            c.k->gemm_i8(c.t, w.data(), rb, 0, c.rows, xa.data(), sums.data(), nb, ntok, 2, out.data(), c.rows, work.data());
            best = std::min(best, cpu_now() - t0);
        }
        for (float v : out) chk += v;
        std::printf("%-26s %8.0f us  (chk %.6g)\n", c.name, best, chk);
    }
}
