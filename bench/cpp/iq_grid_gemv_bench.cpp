// The IQ lattice types' decode GEMV (KernelSet::gemm_q) alone, on one thread, every kernel set
// this CPU runs (generic = the portable code): ns per 32-weight sub-block and token for a
// 2048 x 8192 matrix of random valid blocks, 1, 2, 4 and 8 tokens, and whether each set's bits
// equal the generic set's. Build and run:
//   cmake -S . -B build/bench -DFORGERT_BUILD_BENCH=ON -Dpybind11_DIR=$(python -m pybind11 --cmakedir)
//   cmake --build build/bench --target iq_grid_gemv_bench
//   build/bench/iq_grid_gemv_bench [tokens...]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cpu/cpu_kernels.h"
#include "core/quant_blocks.h"

using namespace forgert;

namespace {

// Random blocks with a small f16 d (each type's first two bytes; IQ1_M's top nibbles of its
// four scale words): every byte pattern is a valid block of these types.
std::vector<uint8_t> random_matrix(DType t, int64_t rows, int64_t cols, std::mt19937& g) {
    const int64_t bb = dtype_block_bytes(t), n = rows * cols / FG_QK_K;
    std::vector<uint8_t> w((size_t)(n * bb));
    for (auto& b : w) b = (uint8_t)g();
    for (int64_t i = 0; i < n; i++) {
        uint8_t* blk = w.data() + i * bb;
        if (t == DType::IQ1_M) {
            for (int k = 0; k < 4; k++) blk[bb - 8 + 2 * k + 1] &= 0x0f;
            blk[bb - 1] |= 0x20;  // d = 2^-7
        } else {
            blk[0] = 0, blk[1] = 0x20;
        }
    }
    return w;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<int> toks;
    for (int i = 1; i < argc; i++) toks.push_back(std::atoi(argv[i]));
    if (toks.empty()) toks = {1, 2, 4, 8};
    const int64_t rows = 2048, cols = 8192, nb = cols / FG_QK;
    const auto sets = cpu::runnable_kernel_sets();
    std::printf("%-8s %3s", "type", "n");
    for (const cpu::KernelSet* k : sets) std::printf(" %14s", k->name);
    std::printf("   (ns per sub-block and token, 1 thread; * = bits differ from generic)\n");
    std::mt19937 g(1);
    for (DType t : {DType::IQ3_S, DType::IQ3_XXS, DType::IQ2_XXS, DType::IQ2_XS, DType::IQ2_S, DType::IQ1_S,
                    DType::IQ1_M}) {
        const std::vector<uint8_t> w = random_matrix(t, rows, cols, g);
        const size_t stride = (size_t)(dtype_block_bytes(t) * cols / FG_QK_K);
        for (int n : toks) {
            std::vector<float> x((size_t)(n * cols));
            std::normal_distribution<float> nd;
            for (float& v : x) v = nd(g);
            std::vector<cpu::BlockQ8Act> xq((size_t)(n * nb));
            for (int tk = 0; tk < n; tk++) sets[0]->quantize_row_q8(x.data() + tk * cols, &xq[tk * nb], cols);
            std::vector<float> ref((size_t)(n * rows)), out((size_t)(n * rows));
            std::printf("%-8s %3d", dtype_name(t), n);
            for (const cpu::KernelSet* k : sets) {
                double best = 1e9;
                for (int it = 0; it < (std::strcmp(k->name, "generic") ? 9 : 2); it++) {
                    const auto t0 = std::chrono::steady_clock::now();
                    k->gemm_q(t, w.data(), stride, 0, rows, xq.data(), nb, n, out.data(), rows, 2);
                    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
                }
                if (k == sets[0]) ref = out;
                const bool same = !std::memcmp(out.data(), ref.data(), out.size() * sizeof(float));
                std::printf(" %13.2f%s", best * 1e9 / ((double)rows * cols / FG_QK) / n, same ? " " : "*");
            }
            std::printf("\n");
        }
    }
}
