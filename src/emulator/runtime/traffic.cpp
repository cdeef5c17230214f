#include "traffic.h"

#include <algorithm>
#include <tuple>

#include "threadgroup_runner.h"

namespace fgemu {

namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Distinct lines of `size` bytes that the accesses [b, e) touch.
uint64_t distinct_lines(const Access* b, const Access* e, uintptr_t size, std::vector<uintptr_t>* scratch) {
    scratch->clear();
    for (const Access* a = b; a != e; ++a)
        for (uintptr_t line = a->addr / size; line <= (a->addr + a->bytes - 1) / size; ++line) scratch->push_back(line);
    std::sort(scratch->begin(), scratch->end());
    return uint64_t(std::unique(scratch->begin(), scratch->end()) - scratch->begin());
}

// Distinct bytes of accesses sorted by address.
uint64_t distinct_bytes(const Access* b, const Access* e) {
    uint64_t n = 0;
    uintptr_t covered = 0;  // end of the union so far
    for (const Access* a = b; a != e; ++a) {
        const uintptr_t lo = std::max(a->addr, covered), hi = a->addr + a->bytes;
        if (hi > lo) n += hi - lo;
        covered = std::max(covered, hi);
    }
    return n;
}

}  // namespace

void TrafficRecorder::mark(std::unordered_map<uintptr_t, uint64_t>& touched, uintptr_t addr, uint32_t bytes,
                           uint64_t* needed) {
    for (uintptr_t p = addr; p < addr + bytes;) {
        const uintptr_t line = p / 64, first = p % 64;
        const uintptr_t n = std::min<uintptr_t>(64 - first, addr + bytes - p);
        const uint64_t bits = (n == 64 ? ~0ull : ((1ull << n) - 1)) << first;
        uint64_t& m = touched[line];
        *needed += uint64_t(__builtin_popcountll(bits & ~m));
        m |= bits;
        p += n;
    }
}

void TrafficRecorder::fold(std::vector<Access>& acc, uint64_t threadgroup_memory) {
    // One simdgroup access: same kind, simdgroup, instruction and visit; by address within.
    std::sort(acc.begin(), acc.end(), [](const Access& a, const Access& b) {
        return std::tie(a.kind, a.simdgroup, a.pc, a.visit, a.addr) < std::tie(b.kind, b.simdgroup, b.pc, b.visit, b.addr);
    });
    std::lock_guard<std::mutex> lock(mu_);
    t_.threadgroup_memory = std::max(t_.threadgroup_memory, threadgroup_memory);
    std::vector<uintptr_t> scratch;
    std::vector<uint32_t> per_bank;
    for (size_t i = 0; i < acc.size();) {
        size_t j = i + 1;
        while (j < acc.size() && acc[j].kind == acc[i].kind && acc[j].simdgroup == acc[i].simdgroup &&
               acc[j].pc == acc[i].pc && acc[j].visit == acc[i].visit)
            ++j;
        const Access* b = &acc[i];
        const Access* e = &acc[0] + j;
        const AccessKind kind = b->kind;
        if (kind == kDeviceRead || kind == kDeviceWrite) {
            const bool w = kind == kDeviceWrite;
            const uint64_t unique = distinct_bytes(b, e);
            (w ? t_.stores : t_.loads) += 1;
            (w ? t_.write_requested : t_.read_requested) += unique;
            if (!w) t_.slot_read_requested[b->slot] += unique;
            (w ? t_.store_lines64 : t_.load_lines64) += distinct_lines(b, e, 64, &scratch);
            (w ? t_.store_lines128 : t_.load_lines128) += distinct_lines(b, e, 128, &scratch);
            (w ? t_.store_lines64_min : t_.load_lines64_min) += ceil_div(unique, 64);
            (w ? t_.store_lines128_min : t_.load_lines128_min) += ceil_div(unique, 128);
            for (const Access* a = b; a != e; ++a) {
                uint64_t* needed = w ? &t_.write_needed : &t_.slot_read_needed[a->slot];
                const uint64_t before = *needed;
                mark(w ? write_bytes_ : read_bytes_, a->addr, a->bytes, needed);
                if (!w) t_.read_needed += *needed - before;
            }
            t_.lane_accesses += uint64_t(e - b);
        } else {
            // Words (4 bytes) touched; the same word read by many lanes is one broadcast.
            scratch.clear();
            for (const Access* a = b; a != e; ++a)
                for (uintptr_t w = a->addr / 4; w <= (a->addr + a->bytes - 1) / 4; ++w) scratch.push_back(w);
            std::sort(scratch.begin(), scratch.end());
            scratch.erase(std::unique(scratch.begin(), scratch.end()), scratch.end());
            per_bank.assign(32, 0);
            uint32_t worst = 0;
            for (uintptr_t w : scratch) worst = std::max(worst, ++per_bank[w % 32]);
            t_.tg_accesses += 1;
            t_.tg_wavefronts += worst;
            t_.tg_wavefronts_min += ceil_div(scratch.size(), 32);
        }
        i = j;
    }
    acc.clear();
}

fg_emu_traffic TrafficRecorder::totals() const { return t_; }

void traffic_access(const void* addr, uint32_t bytes, bool write, uintptr_t pc) {
    if (ThreadgroupRunner* r = ThreadgroupRunner::active()) r->record_access(uintptr_t(addr), bytes, write, pc);
}

}  // namespace fgemu

// ---- the hooks -fsanitize-coverage=trace-loads,trace-stores inserts into kernel code ----
#define FGEMU_HOOK(n)                                                                                   \
    extern "C" __attribute__((visibility("default"))) void __sanitizer_cov_load##n(void* p) {          \
        fgemu::traffic_access(p, n, false, uintptr_t(__builtin_return_address(0)));                     \
    }                                                                                                   \
    extern "C" __attribute__((visibility("default"))) void __sanitizer_cov_store##n(void* p) {         \
        fgemu::traffic_access(p, n, true, uintptr_t(__builtin_return_address(0)));                      \
    }
FGEMU_HOOK(1)
FGEMU_HOOK(2)
FGEMU_HOOK(4)
FGEMU_HOOK(8)
FGEMU_HOOK(16)
#undef FGEMU_HOOK
// -fsanitize-coverage=func,inline-bool-flag (which trace-loads needs): one flag per function.
extern "C" __attribute__((visibility("default"))) void __sanitizer_cov_bool_flag_init(bool*, bool*) {}
