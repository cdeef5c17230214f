// Decides where a memory barrier must go inside one command buffer.
//
// Dispatches in a Metal compute encoder of the concurrent type may overlap; a barrier
// is needed only when a dispatch touches memory that an earlier dispatch since the last
// barrier wrote (read-after-write, write-after-write), or writes memory one of them read
// (write-after-read). Ranges are host byte addresses of shared-storage buffers, so two
// Buffer objects viewing the same memory (zero-copy weight views) are seen as one.
#pragma once

#include <cstdint>
#include <vector>

namespace forgert::metal {

struct ByteRange {
    uintptr_t begin = 0;
    uintptr_t end = 0;  // exclusive
    bool overlaps(const ByteRange& o) const { return begin < o.end && o.begin < end; }
};

class HazardTracker {
public:
    // True when a dispatch with these reads and writes must wait for the earlier ones.
    bool conflicts(const std::vector<ByteRange>& reads, const std::vector<ByteRange>& writes) const;
    void record(const std::vector<ByteRange>& reads, const std::vector<ByteRange>& writes);
    void clear();  // after a barrier or at the start of a command buffer

private:
    std::vector<ByteRange> read_;
    std::vector<ByteRange> written_;
};

}  // namespace forgert::metal
