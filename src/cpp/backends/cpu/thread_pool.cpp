#include "thread_pool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FG_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define FG_CPU_RELAX() asm volatile("yield")
#else
#define FG_CPU_RELAX() ((void)0)
#endif

namespace forgert::cpu {

namespace {
// Spin this many rounds waiting for work before sleeping on the condition variable:
// long enough to bridge the gap between consecutive ops of one forward pass.
constexpr int kSpinRounds = 1 << 16;
// Rounds the caller spins for stragglers before yielding its core.
constexpr int kJoinSpinRounds = 1 << 12;
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
    if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
    n_threads_ = n_threads;
    for (int i = 1; i < n_threads_; i++) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_.store(true);
        epoch_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
    if (n_threads_ == 1) {
        fn(0, 1);
        return;
    }
    job_ = &fn;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    {
        // Publishing under the lock pairs with the sleepers' predicate check.
        std::lock_guard<std::mutex> lock(mu_);
        epoch_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    fn(0, n_threads_);
    // A worker may have been preempted (more runnable threads than cores): after a
    // short spin, yield the core so it can finish instead of burning our time slice.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; spin++) {
        if (spin < kJoinSpinRounds) FG_CPU_RELAX();
        else std::this_thread::yield();
    }
    job_ = nullptr;
}

void ThreadPool::worker(int ith) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t e = epoch_.load(std::memory_order_acquire);
        for (int spin = 0; e == seen && spin < kSpinRounds; spin++) {
            FG_CPU_RELAX();
            e = epoch_.load(std::memory_order_acquire);
        }
        if (e == seen) {
            std::unique_lock<std::mutex> lock(mu_);
            sleepers_.fetch_add(1);
            cv_.wait(lock, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
            sleepers_.fetch_sub(1);
            e = epoch_.load(std::memory_order_acquire);
        }
        seen = e;
        if (stop_.load()) return;
        (*job_)(ith, n_threads_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

}  // namespace forgert::cpu
