// A fork-join pool for the CPU backend's ops. One forward pass of a small model
// runs hundreds of short parallel regions, so workers spin briefly on an epoch
// counter before sleeping, and the calling thread does a share of the work.
//
// Each region splits into size() shares that any thread may claim: the caller runs
// its own share, then claims every share no worker has started. A worker that is
// asleep or preempted (more runnable threads than cores) thus never stalls the
// caller; it only waits for shares a worker is running.
//
// parallel_for divides a range of rows among the shares in one of two ways (WorkSplit):
//   static:  share i takes the i-th contiguous 1/n of the rows;
//   dynamic: the rows are cut into contiguous units, several per thread, that the threads
//            claim from an atomic counter. On a shared host whose cores run unevenly a
//            slow core then takes fewer units instead of holding up the region.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace forgert::cpu {

enum class WorkSplit { Static, Dynamic };

// FORGERT_CPU_SPLIT: "static" or "dynamic"; unset or empty: dynamic. Any other value throws
// InputError naming the accepted ones.
WorkSplit work_split_from_env();
WorkSplit parse_work_split(const std::string& name);
const char* work_split_name(WorkSplit s);

// What the pool's regions cost, accumulated while profiling is on.
struct PoolStats {
    int64_t regions = 0;          // parallel regions forked (work run inline is not one)
    double wall_s = 0;            // their wall time, summed
    double busy_s = 0;            // time the threads spent inside the regions' work, summed over threads
    double capacity_s = 0;        // wall time x threads, summed: busy_s / capacity_s is the busyness
};

class ThreadPool {
public:
    // n_threads <= 0: hardware concurrency.
    explicit ThreadPool(int n_threads, WorkSplit split = WorkSplit::Dynamic);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    WorkSplit split() const { return split_; }

    // Calls fn(ith, nth) once for each share ith in [0, nth = size()), on any threads,
    // and returns when all are done. The first exception a share throws is rethrown here,
    // after every share has finished. Callers on several threads take turns (run_mu_): the
    // epoch/share protocol assumes one job at a time. A call from inside one of this pool's
    // regions (nested) runs every share in turn on the calling thread.
    void run(const std::function<void(int ith, int nth)>& fn);

    // Splits [0, n) into contiguous ranges, each a multiple of `grain` long (except the last),
    // by split(), and calls fn(ith, b, e) for each, ith being the running share (an index for
    // per-thread scratch: no two ranges with one ith run at once). One range [0, n) runs
    // inline when there is a single grain, a single thread, or the call is nested.
    template <class F>
    void parallel_for_ith(int64_t n, int64_t grain, F&& fn) {
        if (n <= 0) return;
        grain = std::max<int64_t>(1, grain);
        const int64_t chunks = (n + grain - 1) / grain;
        if (chunks == 1 || n_threads_ == 1 || nested()) {
            fn(inline_ith(), int64_t(0), n);
            return;
        }
        if (split_ == WorkSplit::Static) {
            run([&](int ith, int nth) {
                const int64_t c0 = chunks * ith / nth, c1 = chunks * (ith + 1) / nth;
                const int64_t b = c0 * grain, e = std::min(n, c1 * grain);
                if (b < e) fn(ith, b, e);
            });
            return;
        }
        // Units of whole grains, about kUnitsPerThread per thread: enough for a fast thread to
        // take a slow one's share, few enough that a unit stays long next to the claim.
        const int64_t per_unit = std::max<int64_t>(1, chunks / ((int64_t)n_threads_ * kUnitsPerThread));
        const int64_t units = (chunks + per_unit - 1) / per_unit;
        std::atomic<int64_t> next{0};
        run([&](int ith, int) {
            for (int64_t u = next.fetch_add(1, std::memory_order_relaxed); u < units;
                 u = next.fetch_add(1, std::memory_order_relaxed)) {
                const int64_t b = u * per_unit * grain, e = std::min(n, (u + 1) * per_unit * grain);
                fn(ith, b, e);
            }
        });
    }

    // parallel_for_ith for work that needs no per-thread scratch: fn(b, e).
    template <class F>
    void parallel_for(int64_t n, int64_t grain, F&& fn) {
        parallel_for_ith(n, grain, [&](int, int64_t b, int64_t e) { fn(b, e); });
    }

    // Profiling: regions and busyness (see PoolStats). Off by default; cheap when off.
    void set_profiling(bool on) { profiling_.store(on, std::memory_order_relaxed); }
    bool profiling() const { return profiling_.load(std::memory_order_relaxed); }
    PoolStats stats() const;
    void reset_stats();

    static constexpr int64_t kUnitsPerThread = 4;

private:
    void worker(int ith);
    // Runs share ith of the current job on this thread, catching what it throws.
    void run_share(int ith, uint64_t e);
    // True on a thread that is inside one of this pool's regions.
    bool nested() const;
    // The share index of this thread inside a region of this pool (nested calls), else 0.
    int inline_ith() const;

    int n_threads_;
    WorkSplit split_;
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

    // The current job's first exception (error_mu_ guards it; has_error_ makes the check cheap).
    std::mutex error_mu_;
    std::exception_ptr error_;
    std::atomic<bool> has_error_{false};

    std::atomic<bool> profiling_{false};
    bool job_profiled_ = false;            // profiling_ as the current job began
    std::atomic<int64_t> job_busy_ns_{0};  // the current job's busy time, when profiling
    mutable std::mutex stats_mu_;
    PoolStats stats_;
};

}  // namespace forgert::cpu
