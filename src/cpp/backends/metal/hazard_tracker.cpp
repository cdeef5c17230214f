#include "hazard_tracker.h"

namespace forgert::metal {

namespace {
bool any_overlap(const std::vector<ByteRange>& a, const std::vector<ByteRange>& b) {
    for (const ByteRange& x : a)
        for (const ByteRange& y : b)
            if (x.overlaps(y)) return true;
    return false;
}
}  // namespace

bool HazardTracker::conflicts(const std::vector<ByteRange>& reads, const std::vector<ByteRange>& writes) const {
    return any_overlap(reads, written_) || any_overlap(writes, written_) || any_overlap(writes, read_);
}

void HazardTracker::record(const std::vector<ByteRange>& reads, const std::vector<ByteRange>& writes) {
    read_.insert(read_.end(), reads.begin(), reads.end());
    written_.insert(written_.end(), writes.begin(), writes.end());
}

void HazardTracker::clear() {
    read_.clear();
    written_.clear();
}

}  // namespace forgert::metal
