// The library's C interface (emu_api.h): the kernel table filled by the translated
// files' registrars, argument checks, and dispatch over the worker pool.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "emu_api.h"
#include "threadgroup_runner.h"
#include "worker_pool.h"

#define FG_EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace fgemu {

namespace {

struct KernelTable {
    std::vector<const KernelInfo*> kernels;
    std::unordered_map<std::string, const KernelInfo*> by_name;
    std::string error;
};

KernelTable& kernel_table() {
    static KernelTable table;
    return table;
}

const char* param_kind_name(int kind) { return kind == kThreadgroup ? "threadgroup" : "buffer"; }

// Checks what the encoder bound against what the kernel's parameters need.
bool check_bindings(const KernelInfo& k, const fg_emu_bindings& b, std::string* error) {
    size_t tg_total = 0;
    for (int i = 0; i < k.n_params; ++i) {
        const ParamSpec& p = k.params[i];
        if (p.kind != kBuffer && p.kind != kThreadgroup) continue;
        const std::string what = "kernel '" + std::string(k.name) + "': [[" + param_kind_name(p.kind) + "(" +
                                 std::to_string(p.slot) + ")]] (parameter " + std::to_string(i) + ")";
        if (p.slot < 0 || p.slot >= int(kMaxSlots)) {
            *error = what + " is outside the 31 argument slots";
            return false;
        }
        if (p.kind == kBuffer) {
            if (!b.buffers[p.slot]) {
                *error = what + " is not bound (set_buffer / set_bytes missing)";
                return false;
            }
            if (p.bytes && b.buffer_bytes[p.slot] && b.buffer_bytes[p.slot] < p.bytes) {
                *error = what + " reads a " + std::to_string(p.bytes) + "-byte struct but only " +
                         std::to_string(b.buffer_bytes[p.slot]) +
                         " bytes are bound (host and shader argument structs differ?)";
                return false;
            }
        } else {
            if (!b.threadgroup_bytes[p.slot]) {
                *error = what + " has no memory (set_threadgroup_memory missing)";
                return false;
            }
            tg_total += (b.threadgroup_bytes[p.slot] + 15) & ~size_t(15);
        }
    }
    if (tg_total > kThreadgroupMemoryLimit) {
        *error = "kernel '" + std::string(k.name) + "': " + std::to_string(tg_total) +
                 " bytes of [[threadgroup]] memory exceed the " + std::to_string(kThreadgroupMemoryLimit) +
                 " bytes of an Apple GPU";
        return false;
    }
    return true;
}

#ifndef FGEMU_TRAFFIC_BUILD
#define FGEMU_TRAFFIC_BUILD 0
#endif

struct LastTraffic {
    bool valid = false;
    fg_emu_traffic totals{};
};
LastTraffic& last_traffic() {
    static LastTraffic t;
    return t;
}

unsigned default_workers() {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw ? hw : 1;
}

void copy_error(const std::string& msg, char* error, size_t error_bytes) {
    if (!error || !error_bytes) return;
    const size_t n = std::min(msg.size(), error_bytes - 1);
    std::memcpy(error, msg.data(), n);
    error[n] = '\0';
}

}  // namespace

KernelRegistrar::KernelRegistrar(const KernelInfo* info) {
    KernelTable& t = kernel_table();
    auto inserted = t.by_name.emplace(info->name, info);
    if (!inserted.second) {
        t.error += "kernel name '" + std::string(info->name) + "' is defined twice (" +
                   inserted.first->second->source + " and " + info->source + "); ";
        return;
    }
    t.kernels.push_back(info);
}

int32_t dispatch(const KernelInfo* k, const fg_emu_constant* constants, int32_t n_constants,
                 const fg_emu_bindings* bindings, fg_emu_size3 groups, fg_emu_size3 threads,
                 const fg_emu_options* options, std::string* error) {
    if (!k || !bindings) {
        *error = "fg_emu_dispatch: no kernel or no bindings";
        return 1;
    }
    const uint64_t n_threads = uint64_t(threads.x) * threads.y * threads.z;
    if (n_threads == 0 || n_threads > kMaxThreadsPerThreadgroup) {
        *error = "kernel '" + std::string(k->name) + "': " + std::to_string(threads.x) + "x" +
                 std::to_string(threads.y) + "x" + std::to_string(threads.z) +
                 " threads per threadgroup; Metal allows 1 to 1024";
        return 1;
    }
    const uint64_t n_groups = uint64_t(groups.x) * groups.y * groups.z;
    if (!check_bindings(*k, *bindings, error)) return 1;
    if (n_groups == 0) return 0;

    DispatchPlan plan;
    plan.kernel = k;
    plan.bindings = bindings;
    for (int32_t i = 0; i < n_constants; ++i) {
        const int idx = constants[i].index;
        if (idx < 0 || idx >= int(kMaxFunctionConstants)) {
            *error = "kernel '" + std::string(k->name) + "': function constant index " + std::to_string(idx) +
                     " outside 0.." + std::to_string(kMaxFunctionConstants - 1);
            return 1;
        }
        plan.constants[idx] = &constants[i];
    }
    plan.groups = {groups.x, groups.y, groups.z};
    plan.threads = {threads.x, threads.y, threads.z};
    fg_emu_options defaults{};
    defaults.poison_threadgroup_memory = 1;
    const fg_emu_options& o = options ? *options : defaults;
    plan.schedule = o.schedule;
    plan.seed = o.seed;
    plan.poison = o.poison_threadgroup_memory != 0;
    TrafficRecorder traffic;
    if (o.traffic) {
        if (!FGEMU_TRAFFIC_BUILD) {
            *error = "kernel '" + std::string(k->name) + "': traffic counting needs the traffic build of the "
                     "kernel library (*_traffic.so)";
            return 1;
        }
        // Device memory: what pointer parameters see; `constant T&` argument structs are left out.
        for (int i = 0; i < k->n_params; ++i) {
            const ParamSpec& p = k->params[i];
            if (p.kind != kBuffer || p.bytes) continue;
            const uintptr_t begin = uintptr_t(bindings->buffers[p.slot]);
            const size_t n = bindings->buffer_bytes[p.slot] ? bindings->buffer_bytes[p.slot] : (size_t(1) << 40);
            traffic.device_ranges.push_back({begin, begin + n, uint8_t(p.slot)});
        }
        traffic.set_shape(uint32_t(n_threads), uint32_t(n_groups));
        plan.traffic = &traffic;
    }

    // Traffic counting runs on one worker: its hooks are the bulk of the time anyway.
    const unsigned workers = o.traffic ? 1u
        : unsigned(std::min<uint64_t>(n_groups, o.workers > 0 ? unsigned(o.workers) : default_workers()));
    std::atomic<uint64_t> next{0};
    std::mutex error_mu;
    std::string first_error;
    auto job = [&](unsigned) {
        ThreadgroupRunner& runner = ThreadgroupRunner::for_this_thread();
        std::string err;
        for (;;) {
            const uint64_t g = next.fetch_add(1, std::memory_order_relaxed);
            if (g >= n_groups) return;
            const U3 gid = {uint32_t(g % groups.x), uint32_t((g / groups.x) % groups.y),
                            uint32_t(g / (uint64_t(groups.x) * groups.y))};
            bool ok;
            try {
                ok = runner.run(plan, gid, &err);
            } catch (const std::exception& e) {
                err = "kernel '" + std::string(k->name) + "': " + e.what();
                ok = false;
            }
            if (!ok) {
                std::lock_guard<std::mutex> lock(error_mu);
                if (first_error.empty()) first_error = err;
                next.store(n_groups);  // the others stop after their current threadgroup
                return;
            }
        }
    };
    // One dispatch at a time: the pool and the per-thread runners are shared.
    static std::mutex dispatch_mu;
    std::lock_guard<std::mutex> lock(dispatch_mu);
    WorkerPool::instance().run(workers, job);
    if (o.traffic) last_traffic() = {true, traffic.totals()};
    if (!first_error.empty()) {
        *error = first_error;
        return 1;
    }
    return 0;
}

}  // namespace fgemu

// ---- C interface ----

FG_EMU_EXPORT uint32_t fg_emu_abi_version(void) { return FG_EMU_ABI_VERSION; }

FG_EMU_EXPORT int32_t fg_emu_kernel_count(void) { return int32_t(fgemu::kernel_table().kernels.size()); }

FG_EMU_EXPORT const char* fg_emu_kernel_name(int32_t i) {
    const auto& ks = fgemu::kernel_table().kernels;
    return i >= 0 && size_t(i) < ks.size() ? ks[size_t(i)]->name : nullptr;
}

FG_EMU_EXPORT const fg_emu_kernel* fg_emu_find_kernel(const char* name) {
    if (!name) return nullptr;
    const auto& by_name = fgemu::kernel_table().by_name;
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : reinterpret_cast<const fg_emu_kernel*>(it->second);
}

FG_EMU_EXPORT int32_t fg_emu_traffic_supported(void) { return FGEMU_TRAFFIC_BUILD; }

FG_EMU_EXPORT int32_t fg_emu_last_traffic(fg_emu_traffic* out) {
    const fgemu::LastTraffic& t = fgemu::last_traffic();
    if (!t.valid || !out) return 1;
    *out = t.totals;
    return 0;
}

FG_EMU_EXPORT const char* fg_emu_library_error(void) { return fgemu::kernel_table().error.c_str(); }

FG_EMU_EXPORT int32_t fg_emu_dispatch(const fg_emu_kernel* kernel, const fg_emu_constant* constants,
                                      int32_t n_constants, const fg_emu_bindings* bindings, fg_emu_size3 groups,
                                      fg_emu_size3 threads, const fg_emu_options* options, char* error,
                                      size_t error_bytes) {
    std::string msg;
    int32_t rc;
    try {
        rc = fgemu::dispatch(reinterpret_cast<const fgemu::KernelInfo*>(kernel), constants, n_constants, bindings,
                             groups, threads, options, &msg);
    } catch (const std::exception& e) {
        msg = e.what();
        rc = 1;
    }
    if (rc) fgemu::copy_error(msg, error, error_bytes);
    return rc;
}
