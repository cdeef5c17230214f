// A fork-join pool for the CPU backend's ops. One forward pass of a small model
// runs hundreds of short parallel loops, so workers spin briefly on an epoch
// counter before sleeping, and the calling thread does a share of the work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
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

    // Calls fn(ith, nth) once on each of the nth = size() threads and returns when all are done.
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
    const std::function<void(int, int)>* job_ = nullptr;
    std::atomic<uint64_t> epoch_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<int> sleepers_{0};
};

}  // namespace forgert::cpu
