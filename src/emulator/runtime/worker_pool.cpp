#include "worker_pool.h"

#include <pthread.h>

namespace fgemu {

namespace {
WorkerPool* g_pool = nullptr;
std::once_flag g_pool_once;

// A forked child has none of the parent's worker threads: start over with a fresh pool
// (the old one is abandoned, its mutex may be in any state).
void reset_pool_in_child() { g_pool = new WorkerPool(); }
}  // namespace

WorkerPool& WorkerPool::instance() {
    // Leaked on purpose: the threads outlive static destructors.
    std::call_once(g_pool_once, [] {
        g_pool = new WorkerPool();
        pthread_atfork(nullptr, nullptr, &reset_pool_in_child);
    });
    return *g_pool;
}

void WorkerPool::run(unsigned n, const std::function<void(unsigned)>& job) {
    if (n <= 1) {
        job(0);
        return;
    }
    {
        std::unique_lock<std::mutex> lock(mu_);
        while (threads_.size() < n - 1) {
            const unsigned index = unsigned(threads_.size()) + 1;
            threads_.emplace_back([this, index] { worker_loop(index); });
            threads_.back().detach();
        }
        job_ = &job;
        wanted_ = n - 1;
        pending_ = n - 1;
        ++generation_;
    }
    wake_.notify_all();
    job(0);
    std::unique_lock<std::mutex> lock(mu_);
    finished_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
}

void WorkerPool::worker_loop(unsigned index) {
    uint64_t seen = 0;
    for (;;) {
        const std::function<void(unsigned)>* job;
        {
            std::unique_lock<std::mutex> lock(mu_);
            wake_.wait(lock, [&] { return generation_ != seen && index <= wanted_; });
            seen = generation_;
            job = job_;
        }
        (*job)(index);
        std::lock_guard<std::mutex> lock(mu_);
        if (--pending_ == 0) finished_.notify_one();
    }
}

}  // namespace fgemu
