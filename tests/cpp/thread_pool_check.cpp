// Several threads calling run() on one ThreadPool at once: every call must run each of its
// shares exactly once and return only after all of them. Then the pool's sleeping paths: the
// workers asleep between regions further apart than their spin, and the caller asleep in the
// join while a worker's share runs longer than the caller spins. Prints "ok" or the first
// failure. Built and run by tests/test_thread_safety.py (a hang there, a lost wake-up, is a
// failure by timeout).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "backends/cpu/thread_pool.h"

int main() {
    constexpr int kPoolThreads = 4, kCallers = 4, kCallsEach = 20000;
    forgert::cpu::ThreadPool pool(kPoolThreads);
    std::atomic<int> failures{0};
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; c++) {
        callers.emplace_back([&] {
            for (int k = 0; k < kCallsEach && failures.load() == 0; k++) {
                std::atomic<int> runs[kPoolThreads] = {};
                pool.run([&](int ith, int nth) {
                    if (nth != kPoolThreads || ith < 0 || ith >= nth) failures++;
                    else runs[ith]++;
                    for (volatile int spin = 0; spin < 200; spin = spin + 1) {}  // long enough to overlap
                });
                for (int i = 0; i < kPoolThreads; i++)
                    if (runs[i].load() != 1) failures++;  // a share run twice, never, or after return
            }
        });
    }
    for (auto& t : callers) t.join();
    // One caller; regions 1 ms apart (the workers sleep between them), and in every other one
    // share 0 takes 0.2 ms (time for the woken workers to claim theirs) and the others 2 ms
    // (the caller, done with share 0, sleeps in the join).
    for (int k = 0; k < 40 && failures.load() == 0; k++) {
        std::atomic<int> runs[kPoolThreads] = {};
        pool.run([&](int ith, int) {
            runs[ith]++;
            if (k % 2) std::this_thread::sleep_for(std::chrono::microseconds(ith == 0 ? 200 : 2000));
        });
        for (int i = 0; i < kPoolThreads; i++)
            if (runs[i].load() != 1) failures++;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // parallel_for_ith with a region's own units per thread (the prefill GEMM's 16; 1; 64 and
    // past it, clamped): every index of [0, n) in exactly one range, ranges starting on a grain.
    for (int64_t upt : {1, 16, 64, 100})
        for (int64_t n : {1, 7, 64, 130, 1000}) {
            std::vector<std::atomic<int>> seen(n);
            pool.parallel_for_ith(n, 2, upt, [&](int ith, int64_t b, int64_t e) {
                if (ith < 0 || ith >= kPoolThreads || b % 2 || b >= e || e > n) failures++;
                for (int64_t i = b; i < e; i++) seen[i]++;
            });
            for (int64_t i = 0; i < n; i++)
                if (seen[i].load() != 1) failures++;
        }
    if (failures.load()) {
        std::printf("%d shares run other than exactly once\n", failures.load());
        return 1;
    }
    std::printf("ok\n");
    return 0;
}
