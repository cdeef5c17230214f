// A fork-join pool for the CPU backend's ops. One forward pass of a small model
// runs hundreds of short parallel loops, so workers spin briefly on an epoch
// counter before sleeping, and the calling thread does a share of the work.
//
// Each call splits the work into size() shares that any thread may claim: the
// caller runs its own share, then claims every share no worker has started. A
// worker that is asleep or preempted (more runnable threads than cores) thus
// never stalls the caller; it only waits for shares a worker is running.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace forgert::cpu {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);  // n_threads <= 0: hardware concurrency
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(ith, nth) once for each share ith in [0, nth = size()), on any threads,
    // and returns when all are done. Callers on several threads take turns (run_mu_): the
    // epoch/share protocol assumes one job at a time. A pool belongs to one backend, so this
    // lock is uncontended unless a backend itself is shared.
    void run(const std::function<void(int ith, int nth)>& fn);

    // Splits [0, n) into contiguous chunks, each a multiple of `grain` (except the last).
    template <class F>
    void parallel_for(int64_t n, int64_t grain, F&& fn) {
        if (n <= 0) return;
        const int64_t chunks = (n + grain - 1) / grain;
        if (chunks == 1 || n_threads_ == 1) {
            fn(int64_t(0), n);
            return;
        }
        run([&](int ith, int nth) {
            const int64_t c0 = chunks * ith / nth, c1 = chunks * (ith + 1) / nth;
            const int64_t b = c0 * grain, e = std::min(n, c1 * grain);
            if (b < e) fn(b, e);
        });
    }

private:
    void worker(int ith);

    int n_threads_;
    std::vector<std::thread> threads_;
    // Claims share i for epoch e (compare-and-swap from an older epoch); false if taken.
    bool claim(int i, uint64_t e);

    const std::function<void(int, int)>* job_ = nullptr;
    std::atomic<uint64_t> epoch_{0};
    // Per share: the epoch it was last claimed in and the epoch it last finished in.
    std::unique_ptr<std::atomic<uint64_t>[]> claimed_, finished_;
    std::atomic<bool> stop_{false};
    std::mutex run_mu_;  // one run() at a time
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<int> sleepers_{0};
};

}  // namespace forgert::cpu
