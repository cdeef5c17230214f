// Memory-traffic counting (emu_api.h fg_emu_traffic): the traffic build compiles the
// translated kernels with -fsanitize-coverage=trace-loads,trace-stores, so every load and
// store of kernel code calls __sanitizer_cov_loadN / storeN (traffic.cpp) with its address;
// the running threadgroup keeps those that fall in device or threadgroup memory, tagged
// with simdgroup, instruction and the lane's execution count of that instruction, and
// folds them into simdgroup accesses when the threadgroup ends.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "emu_api.h"

namespace fgemu {

enum AccessKind : uint8_t { kDeviceRead, kDeviceWrite, kThreadgroupRead, kThreadgroupWrite };

// One lane's load or store.
struct Access {
    uint32_t simdgroup;
    uint32_t visit;   // how many times this lane ran this instruction before
    uintptr_t pc;     // the instruction (return address of the hook)
    uintptr_t addr;
    uint32_t bytes;
    AccessKind kind;
    uint8_t slot;     // device memory: the [[buffer(n)]] slot
};

// A dispatch's totals; threadgroups add theirs in fold() (under a lock: workers may share it).
class TrafficRecorder {
public:
    // Device memory: the ranges the kernel's pointer parameters see, and their slots.
    struct Range {
        uintptr_t begin, end;
        uint8_t slot;
    };
    std::vector<Range> device_ranges;

    // Sorts `accesses` and adds them to the totals; clears it.
    void fold(std::vector<Access>& accesses, uint64_t threadgroup_memory);
    fg_emu_traffic totals() const;
    void set_shape(uint32_t threads, uint32_t groups) {
        t_.threads_per_threadgroup = threads;
        t_.threadgroups = groups;
    }

private:
    void mark(std::unordered_map<uintptr_t, uint64_t>& touched, uintptr_t addr, uint32_t bytes, uint64_t* needed);
    std::mutex mu_;
    fg_emu_traffic t_{};
    // 64-byte line -> bytes touched (bit i: byte i), for reads and writes
    std::unordered_map<uintptr_t, uint64_t> read_bytes_, write_bytes_;
};

// Records one access of the running lane (no-op outside a traffic dispatch).
void traffic_access(const void* addr, uint32_t bytes, bool write, uintptr_t pc);

}  // namespace fgemu
