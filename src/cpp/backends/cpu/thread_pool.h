// A fork-join pool for the CPU backend's ops. One decode token of a small model runs
// ~150 short parallel regions (SmolLM2-135M: ~40 us apiece on one core), so a region's fork
// and join must cost well under a microsecond: workers spin briefly (tens of us) on the job's
// cache line before sleeping, the calling thread does a share of the work and spins as briefly
// for the workers' shares before sleeping until they finish, and every counter a region
// touches sits on a cache line of its own (the job line, written by the caller and read by the
// workers; one line per share, written by the thread running that share).
//
// Each region splits into size() shares that any thread may claim: the caller runs its own
// share, then claims every share no worker has started. A worker that is asleep or preempted
// (more runnable threads than cores) thus never stalls the caller; it only waits for shares a
// worker is running.
//
// parallel_for divides a range of rows among the shares in one of two ways (WorkSplit):
//   static:  share i takes the i-th contiguous 1/n of the rows;
//   dynamic: the rows are cut into contiguous units, several per thread; share i owns the i-th
//            contiguous 1/n of the units and takes them in order from a counter on its own
//            line, then takes units left in the other shares' ranges. On a shared host whose
//            cores run unevenly a slow core thus takes fewer units instead of holding up the
//            region, while on an even one each thread reads one contiguous block of rows and
//            claims without contention.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace forgert::cpu {

enum class WorkSplit { Static, Dynamic };

// FORGERT_CPU_SPLIT: "static" or "dynamic"; unset or empty: dynamic. Any other value throws
// InputError naming the accepted ones.
WorkSplit work_split_from_env();
// FORGERT_CPU_SPIN_US: how long pool threads spin waiting before they sleep, in whole
// microseconds from 0 to 1000000; unset or empty: kDefaultSpinUs. Another value throws InputError.
constexpr int64_t kDefaultSpinUs = 30;
int64_t spin_us_from_env();
// Units per thread of the dynamic split when nothing sets them: as many as threads, 4 to 16. With
// more threads, a region waits on the slowest of more of them (an SMT sibling's or another
// tenant's load slows one core at a time), and finer units let the others take its share. On
// the lent 16-core Xeon (1B Q4_0 / Q4_K_M, two leases of 2 rounds, separate processes) 16 a thread
// against 4: 8-sequence decode steps 0.89-1.30x, median 1.12x, 7 of 8 pairs above 1; one sequence
// 0.99-1.48x, median 1.07x (threads 80% -> 91-95% busy); at 4
// and 8 threads within noise; on the 2-vCPU Zen 4 VM (SmolLM2, 4-5 rounds) 16 a thread cost
// 0.78-0.94x, so few threads keep 4 (bench/results/pool_units.md).
int64_t default_units_per_thread(int n_threads);
// FORGERT_CPU_UNITS: units per thread of the dynamic split, a whole number from 1 to 64; unset or
// empty: 0, the pool's default_units_per_thread. Another value throws InputError. A region may
// set its own (parallel_for_ith's units_per_thread: the prefill GEMM's,
// CpuBackend::kI8UnitsPerThread).
int64_t units_per_thread_from_env();
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
    // n_threads <= 0: hardware concurrency. spin_us: how long a worker spins for the next region,
    // and the caller (at least) for the workers' shares, before sleeping. units_per_thread <= 0:
    // default_units_per_thread(n_threads).
    explicit ThreadPool(int n_threads, WorkSplit split = WorkSplit::Dynamic, int64_t spin_us = kDefaultSpinUs,
                        int64_t units_per_thread = 0);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    int64_t units_per_thread() const { return units_per_thread_; }  // the dynamic split's default
    WorkSplit split() const { return split_; }

    // Calls fn(ith, nth) once for each share ith in [0, nth = size()), on any threads,
    // and returns when all are done. The first exception a share throws is rethrown here,
    // after every share has finished. Callers on several threads take turns (run_mu_): the
    // epoch/share protocol assumes one job at a time. A call from inside one of this pool's
    // regions (nested) runs every share in turn on the calling thread.
    template <class F>
    void run(F&& fn) {
        if (n_threads_ == 1) {
            fn(0, 1);
            return;
        }
        if (nested()) {  // this thread holds a share of the running job: the workers are busy with it
            for (int i = 0; i < n_threads_; i++) fn(i, n_threads_);
            return;
        }
        run_job(&call_job<std::remove_reference_t<F>>, const_cast<void*>(static_cast<const void*>(&fn)), 0);
    }

    // Splits [0, n) into contiguous ranges, each a multiple of `grain` long (except the last),
    // by split(), and calls fn(ith, b, e) for each, ith being the running share (an index for
    // per-thread scratch: no two ranges with one ith run at once). One range [0, n) runs
    // inline when there is a single grain, a single thread, or the call is nested.
    template <class F>
    void parallel_for_ith(int64_t n, int64_t grain, F&& fn) {
        parallel_for_ith(n, grain, units_per_thread_, std::forward<F>(fn));
    }
    // The same with this region's units per thread of the dynamic split (clamped to 1..64)
    // instead of the pool's.
    template <class F>
    void parallel_for_ith(int64_t n, int64_t grain, int64_t units_per_thread, F&& fn) {
        if (n <= 0) return;
        units_per_thread = std::clamp<int64_t>(units_per_thread, 1, 64);
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
        // Units of whole grains, about units_per_thread per thread: enough for a fast thread to
        // take a slow one's share, few enough that a unit stays long next to the claim.
        const int64_t per_unit = std::max<int64_t>(1, chunks / ((int64_t)n_threads_ * units_per_thread));
        const int64_t units = (chunks + per_unit - 1) / per_unit;
        auto share = [&](int ith, int) {
            int from = ith;  // the share whose range this thread takes units from
            for (int64_t u = claim_unit(from); u >= 0; u = claim_unit(from)) {
                const int64_t b = u * per_unit * grain, e = std::min(n, (u + 1) * per_unit * grain);
                fn(ith, b, e);
            }
        };
        run_job(&call_job<decltype(share)>, &share, units);
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

private:
    using JobFn = void (*)(void* ctx, int ith, int nth);
    template <class F>
    static void call_job(void* ctx, int ith, int nth) { (*static_cast<F*>(ctx))(ith, nth); }
    // Runs fn(ctx, ith, nth) for every share, as run() says. units > 0: first gives share i
    // the units [units * i / n, units * (i + 1) / n) for claim_unit.
    void run_job(JobFn fn, void* ctx, int64_t units);
    // The next unit of the running region for a thread taking units from share `from`'s range:
    // that range's next unit, else (moving `from` on) the next range's; -1 when all are taken.
    int64_t claim_unit(int& from);
    void worker(int ith);
    // Runs share ith of the current job on this thread, catching what it throws.
    void run_share(int ith, uint64_t e);
    // True on a thread that is inside one of this pool's regions.
    bool nested() const;
    // The share index of this thread inside a region of this pool (nested calls), else 0.
    int inline_ith() const;

    // Claims share i for epoch e (compare-and-swap from an older epoch); false if taken.
    bool claim(int i, uint64_t e);

    // The current job: written by the caller before it publishes the epoch, read by the
    // workers after they see it; the workers spin on this line between regions.
    struct alignas(64) Job {
        std::atomic<uint64_t> epoch{0};
        JobFn fn = nullptr;
        void* ctx = nullptr;
        bool profiled = false;  // profiling_ as the job began
    };
    // One cache line per share, written by the thread running it (the caller also resets
    // the unit counter before each dynamic region and reads `finished` to join).
    struct alignas(64) Share {
        std::atomic<uint64_t> claimed{0};   // the epoch it was last claimed in
        std::atomic<uint64_t> finished{0};  // the epoch it last finished in
        std::atomic<int64_t> next_unit{0};  // dynamic split: the next unit of its range to take
        int64_t end_unit = 0;               // and the end of its range
    };

    int n_threads_;
    WorkSplit split_;
    int64_t spin_ns_;
    int64_t units_per_thread_;
    std::vector<std::thread> threads_;
    Job job_;
    std::unique_ptr<Share[]> shares_;
    std::atomic<bool> stop_{false};
    std::mutex run_mu_;  // one run() at a time
    std::mutex mu_;      // the sleepers' condition variables
    std::condition_variable cv_;       // workers waiting for a region
    std::atomic<int> sleepers_{0};
    std::condition_variable join_cv_;  // the caller waiting for a worker's share
    std::atomic<bool> joiner_sleeps_{false};

    // The current job's first exception (error_mu_ guards it; has_error_ makes the check cheap).
    std::mutex error_mu_;
    std::exception_ptr error_;
    std::atomic<bool> has_error_{false};

    std::atomic<bool> profiling_{false};
    std::atomic<int64_t> job_busy_ns_{0};  // the current job's busy time, when profiling
    mutable std::mutex stats_mu_;
    PoolStats stats_;
};

}  // namespace forgert::cpu
