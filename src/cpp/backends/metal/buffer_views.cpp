#include "backends/metal/buffer_views.h"

#include <algorithm>

namespace forgert::metal {

ViewPlan plan_buffer_views(const void* ptr, size_t bytes, size_t page, size_t max_len) {
    ViewPlan plan;
    const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
    plan.start = p & ~(uintptr_t)(page - 1);
    plan.shift = p - plan.start;
    const size_t total = std::max<size_t>(page, (plan.shift + bytes + page - 1) / page * page);
    const size_t view_len = std::min(total, max_len / page * page);
    const size_t step = total <= view_len ? total : std::max(page, view_len / 2 / page * page);
    for (size_t begin = 0;; begin += step) {
        const size_t len = std::min(view_len, total - begin);
        plan.views.push_back({begin, len});
        if (begin + len >= total) break;
    }
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

}  // namespace forgert::metal
