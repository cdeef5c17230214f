// What a second thread buys a SmolLM2-135M-shaped decode, and what it costs: the thread
// pool's empty parallel region (fork + join round trip) and one decode GEMV, each at 1 and
// at N threads, measured in one process with the variants alternating round after round
// (a shared VM's minutes differ; alternating puts every variant in each minute).
//
//   cmake -S . -B build/bench -DFORGERT_BUILD_BENCH=ON -Dpybind11_DIR=$(python -m pybind11 --cmakedir)
//   cmake --build build/bench --target thread_pool_bench
//   build/bench/thread_pool_bench [threads (default 2)] [rounds (default 15)]
//
// First it checks what the machine gives: one dependent multiply chain per thread, each thread
// pinned to its own CPU, on CPU 0 alone and on CPUs 0..N-1 at once. N real cores (or SMT
// siblings: a dependent chain leaves a core's units idle) run N chains in the time of one; a
// VM whose vCPUs share host time, or a machine busy with other work, does not, and then no
// N-thread figure below can beat the 1-thread one by more than that ratio.
//
// GEMVs run "hot" (one matrix, called again and again: it stays in L2/L3) and "cold" (the
// call walks 96 copies, more than the last-level cache holds, as a decode token walks its
// layers' weights). Each line gives the median and the minimum over the rounds of the
// per-call time, the GEMVs' weight GB/s at the median (beside the machine's read bandwidth at
// 1 and N threads), and at N threads the 1-thread median over the N-thread median.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/read_bandwidth.h"
#include "backends/cpu/thread_pool.h"
#include "core/quant_blocks.h"

using namespace forgert;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

struct Stat {
    std::vector<double> per_call_s;
    double median() {
        std::sort(per_call_s.begin(), per_call_s.end());
        return per_call_s[per_call_s.size() / 2];
    }
    double min() { return *std::min_element(per_call_s.begin(), per_call_s.end()); }
};

// A quantized weight of random quants with small finite f16 scales (every block of the
// legacy types starts with its f16 scale d; Q4_1 also has its f16 min).
Tensor random_weight(Backend& be, std::vector<std::unique_ptr<Buffer>>& keep, DType t, int64_t rows, int64_t cols,
                     std::mt19937& rng) {
    const size_t bytes = (size_t)row_bytes(t, cols) * rows;
    keep.push_back(be.alloc(bytes));
    auto* p = static_cast<uint8_t*>(keep.back()->host);
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)rng();
    const int64_t bb = dtype_block_bytes(t), nblk = (int64_t)bytes / bb;
    const uint16_t d = 0x2000;  // ~0.0078
    for (int64_t i = 0; i < nblk; i++) {
        std::memcpy(p + i * bb, &d, 2);
        if (t == DType::Q4_1) std::memcpy(p + i * bb + 2, &d, 2);
    }
    return make_tensor(keep.back().get(), 0, t, rows, cols);
}

Tensor random_f32(Backend& be, std::vector<std::unique_ptr<Buffer>>& keep, int64_t rows, int64_t cols,
                  std::mt19937& rng) {
    keep.push_back(be.alloc((size_t)rows * cols * 4));
    float* p = static_cast<float*>(keep.back()->host);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t i = 0; i < rows * cols; i++) p[i] = nd(rng);
    return make_tensor(keep.back().get(), 0, DType::F32, rows, cols);
}

// Dependent arithmetic the compiler cannot drop: ~n cycles.
void spin_work(int n) {
    uint64_t x = 1;
    for (int i = 0; i < n; i++) x = x * 6364136223846793005ull + 1442695040888963407ull;
    static volatile uint64_t sink;
    sink = x;
}

// Chain steps per ns summed over `cpus` threads, each pinned to one of them (Linux).
double chain_rate(int cpus, int64_t steps) {
    std::vector<std::thread> th;
    const auto a = Clock::now();
    for (int c = 0; c < cpus; c++)
        th.emplace_back([c, steps] {
#if defined(__linux__)
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(c, &set);
            pthread_setaffinity_np(pthread_self(), sizeof set, &set);
#endif
            spin_work((int)steps);
        });
    for (auto& t : th) t.join();
    return (double)steps * cpus / seconds_since(a) / 1e9;
}

// One variant: a name, the threads it runs at, and a call to time (calls_per_round times a round).
struct Variant {
    std::string name;
    int threads;
    int calls_per_round;
    std::function<void()> call;
    Stat stat;
    double bytes = 0;  // weight bytes one call reads (GEMVs), for GB/s
};

}  // namespace

int main(int argc, char** argv) {
    const int nt = argc > 1 ? std::atoi(argv[1]) : 2;
    const int rounds = argc > 2 ? std::atoi(argv[2]) : 15;
    if (nt < 2 || rounds < 1) {
        std::fprintf(stderr, "usage: thread_pool_bench [threads >= 2] [rounds >= 1]\n");
        return 2;
    }
    {
        std::vector<double> one, all;
        for (int r = 0; r < 5; r++) one.push_back(chain_rate(1, 200000000)), all.push_back(chain_rate(nt, 200000000));
        std::sort(one.begin(), one.end());
        std::sort(all.begin(), all.end());
        std::printf("machine: a dependent chain on CPU 0: %.3f steps/ns; on CPUs 0..%d at once: %.3f steps/ns (%.2fx; "
                    "%d real cores: %dx)\n", one[2], nt - 1, all[2], all[2] / one[2], nt, nt);
    }
    cpu::CpuBackend be1(1), ben(nt);
    cpu::CpuBackend* bes[2] = {&be1, &ben};
    std::mt19937 rng(1);
    std::vector<std::unique_ptr<Buffer>> keep;
    std::vector<Variant> vs;

    // Empty regions: run() of a no-op, and a parallel_for over 96 units of no work (the
    // number of 16-row chunks of a 1536-row GEMV). The caller often runs every share before a
    // worker arrives, so these time the caller's side of a fork and join.
    cpu::ThreadPool pool1(1), pooln(nt);
    for (cpu::ThreadPool* pool : {&pool1, &pooln})
        vs.push_back({"empty run()", pool->size(), 2000, [pool] { pool->run([](int, int) {}); }, {}});
    for (cpu::ThreadPool* pool : {&pool1, &pooln})
        vs.push_back({"empty parallel_for(96)", pool->size(), 2000,
                      [pool] { pool->parallel_for(96, 1, [](int64_t, int64_t) {}); }, {}});
    // 96 units of ~0.4 us of arithmetic each (~35 us at one thread on the Zen 4 VM, a small
    // GEMV region's time without its memory traffic): the N-thread time less the 1-thread
    // time / N is the cost of forking, claiming and joining.
    for (cpu::ThreadPool* pool : {&pool1, &pooln})
        vs.push_back({"parallel_for(96 x ~0.4 us)", pool->size(), 500, [pool] {
                          pool->parallel_for(96, 1, [](int64_t b, int64_t e) {
                              for (int64_t i = b; i < e; i++) spin_work(300);
                          });
                      }, {}});

    // Decode GEMVs of SmolLM2-135M's shapes (repacked as the backend repacks them).
    struct Shape { const char* what; int64_t rows, cols; bool glu; };
    const Shape shapes[] = {{"ffn gate+up (glu)", 1536, 576, true},
                            {"ffn_down", 576, 1536, false},
                            {"attn_q", 576, 576, false},
                            {"logits", 49152, 576, false}};
    const int kCold = 96;  // copies the cold variant walks: 96 x 0.9 MB (Q8_0 ffn_up) > a 32 MB L3
    for (DType type : {DType::Q8_0, DType::Q4_0}) {
        for (const Shape& s : shapes) {
            const int copies = s.rows * s.cols > (1 << 24) ? 1 : kCold;  // logits: 28 MB alone
            auto ws = std::make_shared<std::vector<Tensor>>();
            auto ups = std::make_shared<std::vector<Tensor>>();
            for (int c = 0; c < copies; c++) {
                ws->push_back(be1.prepare_weight(random_weight(be1, keep, type, s.rows, s.cols, rng), keep));
                if (s.glu) ups->push_back(be1.prepare_weight(random_weight(be1, keep, type, s.rows, s.cols, rng), keep));
            }
            const Tensor x = random_f32(be1, keep, 1, s.cols, rng);
            const Tensor y = random_f32(be1, keep, 1, s.rows, rng), sc = random_f32(be1, keep, 1, s.rows, rng);
            for (bool cold : {false, true}) {
                for (cpu::CpuBackend* be : bes) {
                    if (cold && copies == 1) continue;
                    const int n = cold ? copies : 1;
                    auto call = [be, ws, ups, x, y, sc, n, glu = s.glu] {
                        for (int c = 0; c < n; c++) {
                            if (glu) be->matmul_swiglu(y, (*ws)[c], (*ups)[c], x, sc);
                            else be->matmul(y, (*ws)[c], x);
                        }
                    };
                    const std::string name = std::string(dtype_name(type)) + " " + s.what + (cold ? " cold" : " hot");
                    const int calls = cold ? 3 : (copies == 1 && s.rows > 10000 ? 20 : 300);
                    double bytes = (double)(*ws)[0].nbytes() * (s.glu ? 2 : 1);
                    vs.push_back({name, be->n_threads(), calls, call, {}, bytes * n});
                }
            }
        }
    }

    for (Variant& v : vs) v.call();  // warm-up: first touch, page faults
    for (int r = 0; r < rounds; r++) {
        for (Variant& v : vs) {
            v.call();  // the threads spinning again after the previous variant
            const auto a = Clock::now();
            for (int i = 0; i < v.calls_per_round; i++) v.call();
            v.stat.per_call_s.push_back(seconds_since(a) / v.calls_per_round);
        }
    }
    std::printf("read bandwidth: 1 thread %.1f GB/s, %d threads %.1f GB/s\n", cpu::measure_read_bandwidth_gbs(1),
                nt, cpu::measure_read_bandwidth_gbs(nt));
    std::printf("%-32s %7s %12s %12s %8s %8s\n", "what", "threads", "median_us", "min_us", "GB/s", "1t/Nt");
    double one_thread_median = 0;
    for (Variant& v : vs) {
        const double med = v.stat.median(), mn = v.stat.min();
        if (v.threads == 1) one_thread_median = med;
        const double per = v.name.find("cold") != std::string::npos ? 1.0 / kCold : 1.0;
        char gbs[16] = "";
        if (v.bytes > 0) std::snprintf(gbs, sizeof gbs, "%.1f", v.bytes / med / 1e9);
        std::printf("%-32s %7d %12.2f %12.2f %8s", v.name.c_str(), v.threads, med * 1e6 * per, mn * 1e6 * per, gbs);
        if (v.threads == 1) std::printf("\n");
        else std::printf(" %7.2fx\n", one_thread_median / med);
    }
    return 0;
}
