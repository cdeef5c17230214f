// Memory for the CPU backend's repacked weights: 2 MB-aligned chunks advised as huge pages,
// each holding many matrices. Decode streams every weight once per token; on 4 KB pages each
// 4 KB costs a TLB miss, which in a VM is a two-level page walk. SmolLM2-135M's matrices are
// 0.1-1 MB apiece, so one huge-page buffer each (as the output matrix had) would waste most of
// every 2 MB page; packed side by side they share them. On the 2-vCPU Zen 4 VM a 76 MB Q4_0
// panel stream read 16-18 GB/s on 4 KB pages and 25-27 GB/s on 2 MB pages (the read probe:
// 16-18 and 26-28).
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>

#include "core/tensor.h"

namespace forgert::cpu {

class WeightArena {
public:
    // A buffer of `bytes` (64-byte aligned) inside a chunk; the chunk's memory lives until the
    // last buffer in it is destroyed (buffers may outlive the arena). Thread-safe.
    std::unique_ptr<Buffer> alloc(size_t bytes);

    static constexpr size_t kHugePage = size_t(2) << 20;
    static constexpr size_t kChunkBytes = size_t(32) << 20;  // small matrices share chunks this big

private:
    struct Chunk;
    std::mutex mu_;
    std::shared_ptr<Chunk> open_;  // the chunk small buffers are carved from
    size_t used_ = 0;              // bytes of open_ handed out
};

}  // namespace forgert::cpu
