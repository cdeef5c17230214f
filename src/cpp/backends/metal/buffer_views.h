// How a host range is wrapped zero-copy as Metal buffers, and which of those buffers a
// bound tensor is read through (pure arithmetic, shared by the real and the emulated
// device, testable on any OS). newBufferWithBytesNoCopy needs a page-aligned start and
// length, and one MTLBuffer may not exceed the device's maxBufferLength; longer ranges
// (big model files) become views maxBufferLength long that overlap by at least the
// largest tensor, so that every tensor lies entirely inside one view (as ggml-metal does).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace forgert::metal {

struct BufferView {
    size_t begin = 0;   // offset from the page-aligned start
    size_t length = 0;  // page multiple, <= the view length limit
};

struct ViewPlan {
    uintptr_t start = 0;  // page-aligned address the views are relative to
    size_t shift = 0;     // host pointer - start
    size_t bytes = 0;     // length of the wrapped range from the host pointer
    std::vector<BufferView> views;
};

// Views of [ptr, ptr + bytes) no longer than max_len, each placed so that any range of up
// to `largest` bytes lies in one of them. Throws InputError when no such views exist (a
// tensor that does not fit a view of max_len bytes).
ViewPlan plan_buffer_views(const void* ptr, size_t bytes, size_t largest, size_t page, size_t max_len);

// A plan of one view over a whole buffer the device allocated itself.
ViewPlan single_view(const void* ptr, size_t bytes);

// The view holding bytes [offset, offset + bytes) of the wrapped range (offset counted from
// the host pointer), and the offset inside that view. Returns -1 when no view holds the
// whole range.
int locate_in_views(const ViewPlan& plan, size_t offset, size_t bytes, size_t* offset_in_view);

// What a kernel slot is bound to: one view and the offset in it.
struct ViewBinding {
    int view = 0;
    size_t offset_in_view = 0;
    size_t bytes_in_view = 0;  // bytes of the wrapped range from there to the view's end
};

// locate_in_views, throwing std::runtime_error naming the range, the buffer and the views when
// the range lies outside the buffer or in no single view.
ViewBinding bind_range(const ViewPlan& plan, size_t offset, size_t bytes);

}  // namespace forgert::metal
