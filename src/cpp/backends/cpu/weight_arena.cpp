#include "weight_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace forgert::cpu {

struct WeightArena::Chunk {
    void* base = nullptr;
    explicit Chunk(size_t bytes) {
        if (posix_memalign(&base, kHugePage, bytes) != 0) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
        madvise(base, bytes, MADV_HUGEPAGE);  // advice only: fine if refused
#endif
    }
    ~Chunk() { std::free(base); }
};

namespace {

// A view of part of a chunk, keeping the chunk alive.
struct ArenaBuffer final : Buffer {
    std::shared_ptr<void> chunk;
};

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

std::unique_ptr<Buffer> WeightArena::alloc(size_t bytes) {
    bytes = round_up(std::max<size_t>(bytes, 1), 64);
    auto b = std::make_unique<ArenaBuffer>();
    b->size = bytes;
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes > kChunkBytes / 2) {  // a large matrix (an output projection): a chunk of its own
        auto c = std::make_shared<Chunk>(round_up(bytes, kHugePage));
        b->host = c->base;
        b->chunk = std::move(c);
        return b;
    }
    if (!open_ || used_ + bytes > kChunkBytes) {  // the open chunk's tail is left unused (never touched)
        open_ = std::make_shared<Chunk>(kChunkBytes);
        used_ = 0;
    }
    b->host = static_cast<uint8_t*>(open_->base) + used_;
    b->chunk = open_;
    used_ += bytes;
    return b;
}

}  // namespace forgert::cpu
