#include "backends/metal/buffer_views.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/tensor.h"

namespace forgert::metal {

namespace {
size_t round_up(size_t n, size_t page) { return (n + page - 1) / page * page; }
}  // namespace

ViewPlan plan_buffer_views(const void* ptr, size_t bytes, size_t largest, size_t page, size_t max_len) {
    ViewPlan plan;
    const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
    plan.start = p & ~(uintptr_t)(page - 1);
    plan.shift = p - plan.start;
    plan.bytes = bytes;
    const size_t total = std::max(page, round_up(plan.shift + bytes, page));
    const size_t view_len = max_len / page * page;
    if (total <= view_len) {
        plan.views.push_back({0, total});
        return plan;
    }
    // A range of up to `overlap` bytes starting before view i's successor starts (at
    // begin_i + step) ends before begin_i + step + overlap = begin_i + view_len: inside view i.
    const size_t overlap = round_up(std::max<size_t>(largest, 1), page);
    if (overlap >= view_len)
        throw InputError("a tensor of " + std::to_string(largest) + " bytes cannot be placed in one Metal buffer: " +
                         "this device's maxBufferLength is " + std::to_string(max_len) + " bytes, and wrapping " +
                         std::to_string(bytes) + " bytes of weights needs views that overlap by the largest " +
                         "tensor rounded up to a " + std::to_string(page) + "-byte page");
    const size_t step = view_len - overlap;
    for (size_t begin = 0;; begin += step) {
        const size_t len = std::min(view_len, total - begin);
        plan.views.push_back({begin, len});
        if (begin + len >= total) break;
    }
    return plan;
}

ViewPlan single_view(const void* ptr, size_t bytes) {
    ViewPlan plan;
    plan.start = reinterpret_cast<uintptr_t>(ptr);
    plan.bytes = bytes;
    plan.views.push_back({0, bytes});
    return plan;
}

int locate_in_views(const ViewPlan& plan, size_t offset, size_t bytes, size_t* offset_in_view) {
    const size_t at = plan.shift + offset;
    // The last view starting at or before `at` leaves the most room after it.
    for (int i = (int)plan.views.size() - 1; i >= 0; --i) {
        const BufferView& v = plan.views[i];
        if (v.begin > at) continue;
        if (at + bytes > v.begin + v.length) return -1;
        *offset_in_view = at - v.begin;
        return i;
    }
    return -1;
}

ViewBinding bind_range(const ViewPlan& plan, size_t offset, size_t bytes) {
    const std::string range = "bytes " + std::to_string(offset) + ".." + std::to_string(offset + bytes);
    if (offset > plan.bytes || bytes > plan.bytes - offset)
        throw std::runtime_error("Metal: binding " + range + " of a " + std::to_string(plan.bytes) +
                                 "-byte buffer: past its end");
    ViewBinding b;
    b.view = locate_in_views(plan, offset, bytes, &b.offset_in_view);
    if (b.view < 0)
        throw std::runtime_error("Metal: " + range + " of a " + std::to_string(plan.bytes) + "-byte buffer lie in " +
                                 "none of its " + std::to_string(plan.views.size()) + " views of at most " +
                                 std::to_string(plan.views[0].length) + " bytes (the views overlap by less than " +
                                 "this tensor)");
    const BufferView& v = plan.views[b.view];
    b.bytes_in_view = std::min(v.begin + v.length, plan.shift + plan.bytes) - (v.begin + b.offset_in_view);
    return b;
}

}  // namespace forgert::metal
