// The seam between the Metal backend's C++ ops layer and the place Metal
// objects live. Two implementations:
//   device_metal.mm    - Objective-C++ over a real MTLDevice (macOS only)
//   device_emulated.cpp - the MSL emulator: kernels translated to C++ and run on
//                         the CPU with threadgroup/simdgroup semantics (any OS)
// Everything above this interface (argument structs, pipeline choice, dispatch
// geometry, barriers) is plain C++ compiled on every platform.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace forgert::metal {

struct Pipeline {
    std::string key;                 // kernel name
    int max_threads_per_threadgroup = 1024;
    void* handle = nullptr;          // MTLComputePipelineState / emulated kernel entry
    virtual ~Pipeline() = default;
};

struct Size3 {
    uint32_t x = 1, y = 1, z = 1;
};

class Device {
public:
    virtual ~Device() = default;
    virtual std::string name() const = 0;

    // Shared-storage buffer (CPU-visible `host`).
    virtual std::unique_ptr<Buffer> new_buffer(size_t bytes) = 0;
    // Zero-copy view of host memory (newBufferWithBytesNoCopy; page-aligned, split
    // into views that overlap by at least `largest` bytes past maxBufferLength:
    // buffer_views.h). `largest`: the longest range that will be bound from it (its
    // largest tensor). Throws InputError when such a range cannot fit one view.
    virtual std::unique_ptr<Buffer> wrap_host(void* ptr, size_t bytes, size_t largest) = 0;

    // Compiled on first use, cached by name; throws with the compiler's message.
    virtual Pipeline* pipeline(const std::string& kernel) = 0;

    // Encoder primitives. Between begin() and commit() everything goes into one
    // command buffer; commit() may be called several times (a new command buffer
    // starts after each), wait() blocks until all committed work is done and
    // throws with Metal's message if a command buffer failed.
    virtual void begin() = 0;
    virtual void set_pipeline(Pipeline* p) = 0;
    virtual void set_bytes(const void* data, size_t size, int slot) = 0;
    // Binds bytes [offset, offset + bytes) of buf: the view of buf that holds the whole
    // range (throws when none does).
    virtual void set_buffer(const Buffer* buf, size_t offset, size_t bytes, int slot) = 0;
    virtual void set_threadgroup_memory(size_t bytes, int slot) = 0;
    virtual void dispatch_threadgroups(Size3 grid, Size3 threads_per_threadgroup) = 0;
    virtual void memory_barrier() = 0;
    virtual void commit() = 0;
    virtual void wait() = 0;
};

// Real Metal on macOS builds with FORGERT_METAL; the emulator where FORGERT_METAL_EMULATOR
// is built. Each returns nullptr (and fills `why`) when unavailable.
std::unique_ptr<Device> make_metal_device(std::string* why);
std::unique_ptr<Device> make_emulated_device(std::string* why);

}  // namespace forgert::metal
