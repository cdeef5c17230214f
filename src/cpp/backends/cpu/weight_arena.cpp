#include "weight_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace forgert::cpu {

struct WeightArena::Chunk {
    void* base = nullptr;
    // `advised` bytes from the start are advised as huge pages (a multiple of kHugePage).
    Chunk(size_t bytes, size_t advised) {
        if (posix_memalign(&base, kHugePage, bytes) != 0) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
        if (advised) madvise(base, advised, MADV_HUGEPAGE);  // advice only: fine if refused
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
    if (bytes > kChunkBytes / 2) {  // a large matrix (an output projection, an 8B FFN): a chunk of its own
        // Its partial last 2 MB stays in small pages: advised, the first touch of that tail
        // would fault a whole huge page, up to 2 MB a matrix that nothing uses (an 8B model has
        // ~100 such matrices, against the RSS rule's 64 MB).
        auto c = std::make_shared<Chunk>(bytes, bytes / kHugePage * kHugePage);
        b->host = c->base;
        b->chunk = std::move(c);
        return b;
    }
    if (!open_ || used_ + bytes > kChunkBytes) {  // the open chunk's tail is left unused (never touched)
        // Wholly advised: only the huge page that the last buffer ends in can hold bytes no
        // buffer uses (under 2 MB per 32 MB chunk); the pages past it are never touched.
        open_ = std::make_shared<Chunk>(kChunkBytes, kChunkBytes);
        used_ = 0;
    }
    b->host = static_cast<uint8_t*>(open_->base) + used_;
    b->chunk = open_;
    used_ += bytes;
    return b;
}

}  // namespace forgert::cpu
