// How a host range is wrapped zero-copy as Metal buffers (pure arithmetic, testable on
// any OS). newBufferWithBytesNoCopy needs a page-aligned start and length, and one
// MTLBuffer may not exceed the device's maxBufferLength; longer ranges (big model files)
// become views that start every `step` bytes and are 2 * step long, so that any range of
// up to `step` bytes (any one tensor) lies entirely inside one view.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace forgert::metal {

struct BufferView {
    size_t begin = 0;   // offset from the page-aligned start
    size_t length = 0;  // page multiple, <= max_len
};

struct ViewPlan {
    uintptr_t start = 0;  // page-aligned address the views are relative to
    size_t shift = 0;     // host pointer - start
    std::vector<BufferView> views;
};

ViewPlan plan_buffer_views(const void* ptr, size_t bytes, size_t page, size_t max_len);

// The view holding bytes [offset, offset + bytes) of the wrapped range (offset counted from
// the host pointer), and the offset inside that view. Returns -1 when no view holds the
// whole range (a tensor larger than the overlap).
int locate_in_views(const ViewPlan& plan, size_t offset, size_t bytes, size_t* offset_in_view);

}  // namespace forgert::metal
