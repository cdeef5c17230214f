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
    // throws with Metal's message if a command buffer failed. Command buffers run in
    // the order committed, each seeing the memory writes of those before it.
    //
    // Lifetime: command buffers do not retain what they bind (Metal's unretained
    // references: no reference counting per binding on the hot path). Every Buffer
    // bound by set_buffer must stay alive until the command buffer that binds it has
    // completed (wait() / wait_until() returned), and until then also while it is
    // still being encoded. MetalBackend keeps that promise (metal_backend.h).
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
    // Blocks until the first n command buffers committed on this device (counted from 1)
    // are done; those committed later may still run. Throws as wait(). The default waits
    // for everything, which is correct, only slower.
    virtual void wait_until(uint64_t n) { (void)n; wait(); }

    // Buffers that live as long as the device and are used by most command buffers (the
    // model's weights, KV cache and activations): made resident once, not per command
    // buffer - an MTLResidencySet added to the queue on macOS 15+, useResources on each
    // encoder before. Buffers bound by set_buffer are resident during their command buffer
    // regardless; this saves the per-command-buffer work. Each buffer at most once; it must
    // outlive the device's last command buffer (it is never removed).
    virtual void make_resident(const Buffer* const* bufs, size_t n) { (void)bufs, (void)n; }
};

// Real Metal on macOS builds with FORGERT_METAL; the emulator where FORGERT_METAL_EMULATOR
// is built. Each returns nullptr (and fills `why`) when unavailable.
std::unique_ptr<Device> make_metal_device(std::string* why);
std::unique_ptr<Device> make_emulated_device(std::string* why);

}  // namespace forgert::metal
