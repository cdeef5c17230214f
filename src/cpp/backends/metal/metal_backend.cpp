// MetalBackend: memory, the command stream and the encode step shared by every op
// (the ops themselves are in metal_ops.cpp).
#include "backends/metal/metal_backend.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "backends/cpu/thread_pool.h"

namespace forgert::metal {

std::unique_ptr<Backend> make_metal_backend(int n_threads) {
    std::string why_metal, why_emulated;
    std::unique_ptr<Device> dev = make_metal_device(&why_metal);
    if (!dev) dev = make_emulated_device(&why_emulated);
    if (!dev)
        throw InputError("the Metal backend is not available: " + why_metal + "; emulated Metal device: " +
                         why_emulated);
    return std::make_unique<MetalBackend>(std::move(dev), n_threads);
}

MetalBackend::MetalBackend(std::unique_ptr<Device> device, int host_threads)
    : dev_(std::move(device)),
      host_threads_(host_threads > 0 ? host_threads : (int)std::max(1u, std::thread::hardware_concurrency())) {}

void MetalBackend::host_parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    if (host_threads_ == 1) return fn(0, n);
    if (!host_pool_) host_pool_ = std::make_unique<cpu::ThreadPool>(host_threads_);
    host_pool_->parallel_for(n, 1, fn);
}

MetalBackend::~MetalBackend() {
    // Queued work may still reference buffers the caller is about to free.
    try {
        wait();
    } catch (...) {
    }
}

std::unique_ptr<Buffer> MetalBackend::alloc(size_t bytes) {
    return dev_->new_buffer(bytes == 0 ? 16 : bytes);  // Metal rejects zero-length buffers
}

std::unique_ptr<Buffer> MetalBackend::wrap_host(void* ptr, size_t bytes, size_t largest) {
    return dev_->wrap_host(ptr, bytes, largest);
}

void MetalBackend::write(const Tensor& dst, const void* src, size_t bytes) {
    if (bytes > dst.nbytes()) throw InputError("write of " + std::to_string(bytes) + " bytes into a tensor of " +
                                               std::to_string(dst.nbytes()));
    if (committed_ > completed_ || encoded_) wait();  // the GPU may still read what we overwrite
    std::memcpy(dst.data(), src, bytes);
}

void MetalBackend::write_before_commit(const Tensor& dst, const void* src, size_t bytes) {
    if (bytes > dst.nbytes()) throw InputError("write of " + std::to_string(bytes) + " bytes into a tensor of " +
                                               std::to_string(dst.nbytes()));
    std::memcpy(dst.data(), src, bytes);  // shared storage: seen by the GPU once committed
}

void MetalBackend::read(void* dst, const Tensor& src, size_t bytes) {
    if (bytes > src.nbytes()) throw InputError("read of " + std::to_string(bytes) + " bytes from a tensor of " +
                                               std::to_string(src.nbytes()));
    if (committed_ > completed_ || encoded_) wait();  // the GPU may still write what we read
    std::memcpy(dst, src.data(), bytes);
}

void MetalBackend::read_after(uint64_t ticket, void* dst, const Tensor& src, size_t bytes) {
    if (bytes > src.nbytes()) throw InputError("read of " + std::to_string(bytes) + " bytes from a tensor of " +
                                               std::to_string(src.nbytes()));
    if (ticket > committed_)
        throw std::logic_error("read_after ticket " + std::to_string(ticket) + " of " + std::to_string(committed_) +
                               " committed command buffers");
    wait_for(ticket);  // later command buffers keep running
    std::memcpy(dst, src.data(), bytes);
}

void MetalBackend::make_resident(const Buffer* const* bufs, size_t n) { dev_->make_resident(bufs, n); }

void MetalBackend::begin() {
    if (open_) return;
    hazards_.clear();
    open_ = true;
}

void MetalBackend::commit() {
    open_ = false;
    if (!encoded_) return;
    dev_->commit();
    encoded_ = false;
    ++committed_;
}

void MetalBackend::wait() {
    commit();
    wait_for(committed_);
}

void MetalBackend::wait_for(uint64_t ticket) {
    if (ticket <= completed_) return;
    completed_ = ticket;  // also when the device throws: a failed command buffer is over
    if (ticket == committed_)
        dev_->wait();  // throws with the device's message if a command buffer failed
    else
        dev_->wait_until(ticket);
    retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                  [&](const Retired& r) { return r.last_use <= completed_; }),
                   retired_.end());
}

void MetalBackend::encode(const std::string& kernel, const void* args, size_t args_bytes,
                          const std::vector<Binding>& binds, Size3 grid, Size3 threads, size_t threadgroup_bytes) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;  // nothing to do (e.g. zero tokens)
    Pipeline* p = dev_->pipeline(kernel);
    const uint32_t n_threads = threads.x * threads.y * threads.z;
    if ((int)n_threads > p->max_threads_per_threadgroup)
        throw std::runtime_error(kernel + ": " + std::to_string(n_threads) + " threads per threadgroup exceed the " +
                                 "pipeline's limit of " + std::to_string(p->max_threads_per_threadgroup));

    std::vector<ByteRange> rd, wr;
    for (const Binding& b : binds) {
        if (!b.buf) continue;
        const uintptr_t base = reinterpret_cast<uintptr_t>(b.buf->host) + b.offset;
        (b.written ? wr : rd).push_back({base, base + b.bytes});
    }

    begin();
    if (!encoded_) {
        dev_->begin();
        encoded_ = true;
    }
    if (hazards_.conflicts(rd, wr)) {
        dev_->memory_barrier();
        hazards_.clear();
        ++n_barriers_;
    }
    hazards_.record(rd, wr);

    dev_->set_pipeline(p);
    dev_->set_bytes(args, args_bytes, 0);
    for (size_t i = 0; i < binds.size(); i++)
        if (binds[i].buf) dev_->set_buffer(binds[i].buf, binds[i].offset, binds[i].bytes, (int)i + 1);
    if (threadgroup_bytes) dev_->set_threadgroup_memory((threadgroup_bytes + 15) & ~size_t(15), 0);
    dev_->dispatch_threadgroups(grid, threads);
    ++n_dispatches_;
}

Buffer* MetalBackend::attention_scratch(size_t bytes) { return grow_scratch(scratch_, bytes); }
Buffer* MetalBackend::moe_groups_scratch(size_t bytes) { return grow_scratch(moe_groups_, bytes); }

Buffer* MetalBackend::grow_scratch(std::unique_ptr<Buffer>& slot, size_t bytes) {
    if (!slot || slot->size < bytes) {
        // The old buffer may be bound by dispatches not yet finished, up to the open command
        // buffer's: keep it until that one is done.
        if (slot) retired_.push_back({committed_ + 1, std::move(slot)});
        slot = dev_->new_buffer(bytes + bytes / 2);
    }
    return slot.get();
}

}  // namespace forgert::metal
