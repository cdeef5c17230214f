#include "read_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace forgert::cpu {

namespace {
// Sum of n words with 8 independent accumulators (the loads, not the adds, bound it);
// the result is returned so that the reads cannot be dropped.
uint64_t sum_words(const uint64_t* p, size_t n) {
    uint64_t a[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    for (; i < n; i++) a[0] += p[i];
    uint64_t s = 0;
    for (uint64_t v : a) s += v;
    return s;
}
}  // namespace

double measure_read_bandwidth_gbs(int n_threads, int mib) {
    if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
    const size_t words = (size_t)mib << 17, bytes = words * 8;
    std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
    // Each thread first touches its own share: pages land near the thread that reads them.
    auto run = [&](bool init) {
        std::vector<std::thread> ts;
        std::vector<uint64_t> sink(n_threads);
        for (int t = 0; t < n_threads; t++)
            ts.emplace_back([&, t] {
                const size_t b = words * t / n_threads, e = words * (t + 1) / n_threads;
                if (init) std::memset(buf.get() + b, t + 1, (e - b) * 8);
                else sink[t] = sum_words(buf.get() + b, e - b);
            });
        for (auto& th : ts) th.join();
        volatile uint64_t keep = 0;
        for (uint64_t v : sink) keep = keep + v;
    };
    run(true);
    std::vector<double> secs;
    for (int rep = 0; rep < 5; rep++) {
        const auto a = std::chrono::steady_clock::now();
        run(false);
        secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(secs.begin(), secs.end());
    return bytes / secs[secs.size() / 2] / 1e9;
}

}  // namespace forgert::cpu
