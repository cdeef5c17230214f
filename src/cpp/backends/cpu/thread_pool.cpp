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
    claimed_.reset(new std::atomic<uint64_t>[n_threads_]);
    finished_.reset(new std::atomic<uint64_t>[n_threads_]);
    for (int i = 0; i < n_threads_; i++) claimed_[i] = finished_[i] = 0;
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

bool ThreadPool::claim(int i, uint64_t e) {
    uint64_t old = claimed_[i].load(std::memory_order_acquire);
    return old < e && claimed_[i].compare_exchange_strong(old, e, std::memory_order_acq_rel);
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
    if (n_threads_ == 1) {
        fn(0, 1);
        return;
    }
    std::lock_guard<std::mutex> one_job(run_mu_);
    job_ = &fn;
    uint64_t e;
    {
        // Publishing under the lock pairs with the sleepers' predicate check.
        std::lock_guard<std::mutex> lock(mu_);
        e = epoch_.fetch_add(1, std::memory_order_acq_rel) + 1;
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    // Our own share first, then every share that no worker has claimed yet.
    for (int i = 0; i < n_threads_; i++) {
        const int share = i == 0 ? 0 : n_threads_ - i;  // workers start from their own index
        if (claim(share, e)) {
            fn(share, n_threads_);
            finished_[share].store(e, std::memory_order_release);
        }
    }
    // Shares claimed by workers: wait for them, yielding if a worker was preempted.
    for (int i = 0; i < n_threads_; i++) {
        for (int spin = 0; finished_[i].load(std::memory_order_acquire) != e; spin++) {
            if (spin < kJoinSpinRounds) FG_CPU_RELAX();
            else std::this_thread::yield();
        }
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
        // job_ is stable while share ith of epoch e is claimed and unfinished: run()
        // cannot return before it is finished.
        if (claim(ith, e)) {
            (*job_)(ith, n_threads_);
            finished_[ith].store(e, std::memory_order_release);
        }
    }
}

}  // namespace forgert::cpu
