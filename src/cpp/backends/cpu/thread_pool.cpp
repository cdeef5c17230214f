#include "thread_pool.h"

#include <chrono>
#include <cstdlib>

#include "core/tensor.h"

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
// Threads spin spin_ns_ (FORGERT_CPU_SPIN_US, default kDefaultSpinUs) waiting for a region, or
// the caller for a worker's share, before sleeping: long enough to bridge the serial work between
// two regions of a decode step (a norm, RoPE: a few us), short enough that a thread whose core is
// wanted elsewhere gives it up. A VM's vCPUs may share host cores, and a spinning vCPU then takes
// time from the one doing the work: on the 2-vCPU VM, busy with other work, a worker spinning
// 2.6 ms (65536 pauses) made a SmolLM2 decode token take ~24 ms at 2 threads, ~14-18 ms with
// 10-20 us spins; 1 thread: ~9-12 ms.
// Pause rounds between clock reads while spinning.
constexpr int kRoundsPerClockRead = 16;

// The pool whose share this thread is running, and which share: a region forked from
// inside one runs inline instead of waiting on the pool it occupies.
thread_local const ThreadPool* tl_pool = nullptr;
thread_local int tl_ith = 0;

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
}  // namespace

WorkSplit parse_work_split(const std::string& name) {
    if (name.empty() || name == "dynamic") return WorkSplit::Dynamic;
    if (name == "static") return WorkSplit::Static;
    throw InputError("FORGERT_CPU_SPLIT must be 'static' or 'dynamic', got '" + name + "'");
}

WorkSplit work_split_from_env() {
    const char* v = std::getenv("FORGERT_CPU_SPLIT");
    return parse_work_split(v ? v : "");
}

int64_t spin_us_from_env() {
    const char* v = std::getenv("FORGERT_CPU_SPIN_US");
    const std::string s = v ? v : "";
    if (s.empty()) return kDefaultSpinUs;
    const bool digits = s.size() <= 7 && s.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoll(s) > 1000000)
        throw InputError("FORGERT_CPU_SPIN_US must be a whole number of microseconds from 0 to 1000000, got '" + s +
                         "'");
    return std::stoll(s);
}

const char* work_split_name(WorkSplit s) { return s == WorkSplit::Static ? "static" : "dynamic"; }

int64_t units_per_thread_from_env() {
    const char* v = std::getenv("FORGERT_CPU_UNITS");
    const std::string s = v ? v : "";
    if (s.empty()) return 0;
    const bool digits = s.size() <= 2 && s.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoll(s) < 1 || std::stoll(s) > 64)
        throw InputError("FORGERT_CPU_UNITS must be a whole number of units per thread from 1 to 64, got '" + s + "'");
    return std::stoll(s);
}

int64_t default_units_per_thread(int n_threads) { return std::clamp<int64_t>(n_threads, 4, 16); }

ThreadPool::ThreadPool(int n_threads, WorkSplit split, int64_t spin_us, int64_t units_per_thread)
    : split_(split), spin_ns_(spin_us * 1000) {
    if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
    n_threads_ = n_threads;
    units_per_thread_ =
        units_per_thread <= 0 ? default_units_per_thread(n_threads) : std::clamp<int64_t>(units_per_thread, 1, 64);
    shares_.reset(new Share[n_threads_]);
    for (int i = 1; i < n_threads_; i++) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_.store(true);
        job_.epoch.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

bool ThreadPool::nested() const { return tl_pool == this; }
int ThreadPool::inline_ith() const { return tl_pool == this ? tl_ith : 0; }

PoolStats ThreadPool::stats() const {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
}

void ThreadPool::reset_stats() {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_ = PoolStats{};
}

bool ThreadPool::claim(int i, uint64_t e) {
    uint64_t old = shares_[i].claimed.load(std::memory_order_acquire);
    return old < e && shares_[i].claimed.compare_exchange_strong(old, e, std::memory_order_acq_rel);
}

int64_t ThreadPool::claim_unit(int& from) {
    for (int k = 0; k < n_threads_; k++) {
        Share& s = shares_[from];
        // Load first: a taken range is skipped without writing to its owner's line.
        if (s.next_unit.load(std::memory_order_relaxed) < s.end_unit) {
            const int64_t u = s.next_unit.fetch_add(1, std::memory_order_relaxed);
            if (u < s.end_unit) return u;
        }
        from = from + 1 == n_threads_ ? 0 : from + 1;
    }
    return -1;
}

void ThreadPool::run_share(int ith, uint64_t e) {
    const ThreadPool* outer_pool = tl_pool;
    const int outer_ith = tl_ith;
    tl_pool = this, tl_ith = ith;
    const bool profiled = job_.profiled;
    const int64_t t0 = profiled ? now_ns() : 0;
    try {
        job_.fn(job_.ctx, ith, n_threads_);
    } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu_);
        if (!error_) error_ = std::current_exception();
        has_error_.store(true, std::memory_order_relaxed);
    }
    if (profiled) job_busy_ns_.fetch_add(now_ns() - t0, std::memory_order_relaxed);
    tl_pool = outer_pool, tl_ith = outer_ith;
    shares_[ith].finished.store(e, std::memory_order_seq_cst);  // publishes the busy time and any error
    if (joiner_sleeps_.load(std::memory_order_seq_cst)) {
        { std::lock_guard<std::mutex> lock(mu_); }  // the caller between its check and its wait holds mu_
        join_cv_.notify_all();
    }
}

void ThreadPool::run_job(JobFn fn, void* ctx, int64_t units) {
    std::lock_guard<std::mutex> one_job(run_mu_);
    job_.fn = fn;
    job_.ctx = ctx;
    job_.profiled = profiling();
    for (int i = 0; units > 0 && i < n_threads_; i++) {
        shares_[i].next_unit.store(units * i / n_threads_, std::memory_order_relaxed);
        shares_[i].end_unit = units * (i + 1) / n_threads_;
    }
    if (job_.profiled) job_busy_ns_.store(0, std::memory_order_relaxed);
    const int64_t t0 = job_.profiled ? now_ns() : 0;
    // Publish (releasing the job and the unit ranges), then wake any sleeper. Both this store and
    // the sleepers' count are sequentially consistent: either we see a worker's increment and
    // notify it, or its predicate check (after the increment) sees the new epoch.
    const uint64_t e = job_.epoch.fetch_add(1, std::memory_order_seq_cst) + 1;
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lock(mu_); }  // a sleeper between its check and its wait holds mu_
        cv_.notify_all();
    }
    // Our own share first, then every share that no worker has claimed yet.
    const int64_t work_start = now_ns();
    for (int i = 0; i < n_threads_; i++) {
        const int share = i == 0 ? 0 : n_threads_ - i;  // workers start from their own index
        if (claim(share, e)) run_share(share, e);
    }
    // Shares claimed by workers: wait for them, sleeping if one takes long (a preempted worker):
    // longer than spin_ns_ and than our own shares took (a long region's shares end unevenly
    // by more than a short one's; waking from a sleep costs microseconds, more on a VM).
    int64_t spin_until = 0;
    for (int i = 0; i < n_threads_; i++) {
        for (int spin = 1; shares_[i].finished.load(std::memory_order_acquire) != e; spin++) {
            FG_CPU_RELAX();
            if (spin % kRoundsPerClockRead) continue;
            const int64_t now = now_ns();
            if (!spin_until) spin_until = now + std::max(spin_ns_, now - work_start);
            if (now < spin_until) continue;
            // As the workers' sleep: our flag and their `finished` are both sequentially
            // consistent, so either the worker sees the flag and notifies, or we see `finished`.
            std::unique_lock<std::mutex> lock(mu_);
            joiner_sleeps_.store(true, std::memory_order_seq_cst);
            join_cv_.wait(lock, [&] { return shares_[i].finished.load(std::memory_order_seq_cst) == e; });
            joiner_sleeps_.store(false, std::memory_order_relaxed);
        }
    }
    if (job_.profiled) {
        const double wall = (now_ns() - t0) * 1e-9;
        std::lock_guard<std::mutex> lock(stats_mu_);
        stats_.regions++;
        stats_.wall_s += wall;
        stats_.busy_s += job_busy_ns_.load(std::memory_order_relaxed) * 1e-9;
        stats_.capacity_s += wall * n_threads_;
    }
    if (has_error_.load(std::memory_order_relaxed)) {
        std::exception_ptr err;
        {
            std::lock_guard<std::mutex> lock(error_mu_);
            std::swap(err, error_);
            has_error_.store(false, std::memory_order_relaxed);
        }
        std::rethrow_exception(err);
    }
}

void ThreadPool::worker(int ith) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t e = job_.epoch.load(std::memory_order_acquire);
        const int64_t spin_until = e == seen ? now_ns() + spin_ns_ : 0;
        for (int spin = 1; e == seen; spin++) {
            FG_CPU_RELAX();
            e = job_.epoch.load(std::memory_order_acquire);
            if (spin % kRoundsPerClockRead == 0 && now_ns() >= spin_until) break;
        }
        if (e == seen) {
            std::unique_lock<std::mutex> lock(mu_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            cv_.wait(lock, [&] { return job_.epoch.load(std::memory_order_seq_cst) != seen; });
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
            e = job_.epoch.load(std::memory_order_acquire);
        }
        seen = e;
        if (stop_.load()) return;
        // The job is stable while share ith of epoch e is claimed and unfinished: run_job()
        // cannot return before it is finished.
        if (claim(ith, e)) run_share(ith, e);
    }
}

}  // namespace forgert::cpu
