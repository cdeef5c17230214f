#include "read_bandwidth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FG_BW_X86 1
#endif

namespace forgert::cpu {

namespace {
constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kChunk = 2 * kMiB;  // threads' shares are whole huge pages

// Bytes the OS says could be handed out now (Linux MemAvailable); 0 if unknown.
size_t available_bytes() {
#if defined(__linux__)
    std::ifstream f("/proc/meminfo");
    std::string key;
    size_t kib = 0;
    std::string unit;
    while (f >> key >> kib >> unit)
        if (key == "MemAvailable:") return kib * 1024;
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return (size_t)pages * (size_t)page;
#endif
    return 0;
}

size_t l3_bytes() {
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) return (size_t)l3;
#endif
    return 32 * kMiB;
}

// Sums of 64-byte lines, 4 lines per step with independent accumulators so that several
// cache-line loads are in flight per core (the loads, not the adds, bound it). The sums
// are returned so that the reads cannot be dropped. n_bytes is a multiple of 256.
uint64_t sum_lines_portable(const uint64_t* p, size_t n_bytes) {
    uint64_t a[32] = {0};  // 4 lines x 8 words: the compiler vectorises to the baseline ISA
    for (size_t i = 0; i < n_bytes / 8; i += 32)
        for (int k = 0; k < 32; k++) a[k] += p[i + k];
    uint64_t s = 0;
    for (uint64_t v : a) s += v;
    return s;
}

#if FG_BW_X86
__attribute__((target("avx2"))) uint64_t sum_lines_avx2(const uint64_t* p, size_t n_bytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const __m256i* v = (const __m256i*)p;
    for (size_t i = 0; i < n_bytes / 32; i += 8) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + i + 0));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + i + 1));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + i + 2));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + i + 3));
        a4 = _mm256_add_epi64(a4, _mm256_load_si256(v + i + 4));
        a5 = _mm256_add_epi64(a5, _mm256_load_si256(v + i + 5));
        a6 = _mm256_add_epi64(a6, _mm256_load_si256(v + i + 6));
        a7 = _mm256_add_epi64(a7, _mm256_load_si256(v + i + 7));
    }
    const __m256i s = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)),
                                       _mm256_add_epi64(_mm256_add_epi64(a4, a5), _mm256_add_epi64(a6, a7)));
    alignas(32) uint64_t w[4];
    _mm256_store_si256((__m256i*)w, s);
    return w[0] + w[1] + w[2] + w[3];
}

__attribute__((target("avx512f"))) uint64_t sum_lines_avx512(const uint64_t* p, size_t n_bytes) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const __m512i* v = (const __m512i*)p;
    for (size_t i = 0; i < n_bytes / 64; i += 4) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(v + i + 0));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(v + i + 1));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(v + i + 2));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(v + i + 3));
    }
    return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
}
#endif

using SumFn = uint64_t (*)(const uint64_t*, size_t);

SumFn select_sum() {
#if FG_BW_X86
    if (__builtin_cpu_supports("avx512f")) return sum_lines_avx512;
    if (__builtin_cpu_supports("avx2")) return sum_lines_avx2;
#endif
    return sum_lines_portable;
}

// A 2 MiB-aligned anonymous buffer, huge pages requested (fewer TLB misses while
// streaming); the pages are not touched here, so each thread first-touches its own share.
struct Buffer {
    uint64_t* p = nullptr;
    size_t bytes = 0;
    explicit Buffer(size_t n) : bytes(n) {
        void* q = std::aligned_alloc(kChunk, n);
        if (!q) throw std::invalid_argument("cpu_read_bandwidth_gbs: cannot allocate " +
                                            std::to_string(n / kMiB) + " MiB");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        madvise(q, n, MADV_HUGEPAGE);  // advice only: fine if refused
#endif
        p = (uint64_t*)q;
    }
    ~Buffer() { std::free(p); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
};
}  // namespace

double measure_read_bandwidth_gbs(int n_threads, int mib) {
    if (n_threads < 0)
        throw std::invalid_argument("cpu_read_bandwidth_gbs: n_threads must be >= 0 (0: all cores), got " +
                                    std::to_string(n_threads));
    if (mib < 0)
        throw std::invalid_argument("cpu_read_bandwidth_gbs: mib must be >= 0 (0: automatic), got " +
                                    std::to_string(mib));
    if (n_threads == 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
    const size_t avail = available_bytes();
    size_t bytes;
    if (mib > 0) {
        bytes = (size_t)mib * kMiB;
        if (avail && bytes > avail / 2)
            throw std::invalid_argument("cpu_read_bandwidth_gbs: mib=" + std::to_string(mib) +
                                        " is more than half the available memory (" +
                                        std::to_string(avail / kMiB) + " MiB)");
    } else {
        // Many times the L3 so the caches hold a negligible part of it, bounded by memory.
        bytes = std::clamp(16 * l3_bytes(), 1024 * kMiB, 4096 * kMiB);
        if (avail) bytes = std::min(bytes, std::max(avail / 4, 64 * kMiB));
    }
    // Whole 2 MiB chunks, at least one per thread, split among the threads.
    const size_t chunks = std::max((bytes + kChunk - 1) / kChunk, (size_t)n_threads);
    bytes = chunks * kChunk;
    Buffer buf(bytes);
    const SumFn sum = select_sum();

    // Persistent threads (start-up is not timed): worker t runs step s once `go` reaches s.
    // Step 0 first-touches the thread's own share (its pages are faulted in, and land near
    // the thread, before any timing); later steps read it. Thread 0 is the calling thread.
    std::atomic<int> go{-1}, done{0};
    std::vector<uint64_t> sink(n_threads);
    auto share = [&](int t, size_t& off, size_t& len) {
        const size_t b = chunks * t / n_threads, e = chunks * (t + 1) / n_threads;
        off = b * kChunk;
        len = (e - b) * kChunk;
    };
    auto work = [&](int t, int step) {
        size_t off, len;
        share(t, off, len);
        uint64_t* p = buf.p + off / 8;
        if (step == 0) std::memset(p, t + 1, len);
        else sink[t] += sum(p, len);
    };
    const int warmup = 1, timed = 7, steps = 1 + warmup + timed;
    std::vector<std::thread> ts;
    for (int t = 1; t < n_threads; t++)
        ts.emplace_back([&, t] {
            for (int s = 0; s < steps; s++) {
                while (go.load(std::memory_order_acquire) < s) std::this_thread::yield();
                work(t, s);
                done.fetch_add(1, std::memory_order_acq_rel);
            }
        });
    double best = 0;
    for (int s = 0; s < steps; s++) {
        done.store(0, std::memory_order_relaxed);
        const auto a = std::chrono::steady_clock::now();
        go.store(s, std::memory_order_release);
        work(0, s);
        while (done.load(std::memory_order_acquire) < n_threads - 1) std::this_thread::yield();
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
        if (s > warmup && sec > 0) best = std::max(best, bytes / sec / 1e9);
    }
    for (auto& th : ts) th.join();
    volatile uint64_t keep = 0;
    for (uint64_t v : sink) keep = keep + v;
    return best;
}

}  // namespace forgert::cpu
