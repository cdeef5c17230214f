// Device over the MSL emulator: buffers are host memory, a pipeline is a translated
// kernel looked up by name in libforgert_msl_kernels.so (dlopened once; its C interface
// is src/emulator/runtime/emu_api.h) plus its function-constant values, and commit()
// runs the recorded dispatches on the emulator's fibers. A correctness tool, not a fast
// backend: see src/emulator/README.md.
#include "backends/metal/device_emulated.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../../../emulator/runtime/emu_api.h"
#include "backends/metal/buffer_views.h"

namespace forgert::metal {

namespace {

constexpr const char* kLibraryName = "libforgert_msl_kernels.so";
constexpr const char* kTrafficLibraryName = "libforgert_msl_kernels_traffic.so";
constexpr const char* kHowToEnable = "install clang (apt-get install clang) and reinstall forgert";

// ---- the kernel library's C interface ----
struct KernelLibrary {
    std::string path;
    uint32_t (*abi_version)();
    int32_t (*kernel_count)();
    const char* (*kernel_name)(int32_t);
    const fg_emu_kernel* (*find_kernel)(const char*);
    const char* (*library_error)();
    int32_t (*dispatch)(const fg_emu_kernel*, const fg_emu_constant*, int32_t, const fg_emu_bindings*, fg_emu_size3,
                        fg_emu_size3, const fg_emu_options*, char*, size_t);
    int32_t (*last_traffic)(fg_emu_traffic*);  // null: a library without traffic counting
};

template <class F> bool load_symbol(void* dl, const char* name, F* out) {
    *out = reinterpret_cast<F>(dlsym(dl, name));
    return *out != nullptr;
}

// Loaded once per path and never unloaded: its worker threads live as long as the process.
const KernelLibrary* open_library(const std::string& path, std::string* why) {
    static std::mutex mu;
    static std::unordered_map<std::string, KernelLibrary*> libraries;
    std::lock_guard<std::mutex> lock(mu);
    auto it = libraries.find(path);
    if (it != libraries.end()) return it->second;
    void* dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char* err = dlerror();
        *why = "cannot load the MSL kernel library " + path + " (" + (err ? err : "unknown error") + "); " +
               kHowToEnable;
        return nullptr;
    }
    auto* lib = new KernelLibrary{};
    lib->path = path;
    const bool ok = load_symbol(dl, "fg_emu_abi_version", &lib->abi_version) &&
                    load_symbol(dl, "fg_emu_kernel_count", &lib->kernel_count) &&
                    load_symbol(dl, "fg_emu_kernel_name", &lib->kernel_name) &&
                    load_symbol(dl, "fg_emu_find_kernel", &lib->find_kernel) &&
                    load_symbol(dl, "fg_emu_library_error", &lib->library_error) &&
                    load_symbol(dl, "fg_emu_dispatch", &lib->dispatch);
    load_symbol(dl, "fg_emu_last_traffic", &lib->last_traffic);
    int32_t (*traffic_supported)() = nullptr;
    if (!load_symbol(dl, "fg_emu_traffic_supported", &traffic_supported) || !traffic_supported())
        lib->last_traffic = nullptr;
    if (!ok || lib->abi_version() != FG_EMU_ABI_VERSION) {
        *why = path + " is not an MSL kernel library of this forgert version; " + kHowToEnable;
        delete lib;
        return nullptr;
    }
    if (*lib->library_error()) {
        *why = path + ": " + lib->library_error();
        delete lib;
        return nullptr;
    }
    libraries[path] = lib;
    return lib;
}

// The library next to the module that contains this code (forgert/_core*.so); the traffic
// build of it when counting traffic.
std::string default_library_path(bool traffic) {
    if (const char* env = std::getenv(traffic ? "FORGERT_MSL_KERNELS_TRAFFIC" : "FORGERT_MSL_KERNELS")) return env;
    const char* name = traffic ? kTrafficLibraryName : kLibraryName;
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&default_library_path), &info) && info.dli_fname) {
        std::string self = info.dli_fname;
        const size_t slash = self.rfind('/');
        return (slash == std::string::npos ? std::string(".") : self.substr(0, slash)) + "/" + name;
    }
    return name;
}

// ---- process-wide emulator settings ----
struct Settings {
    std::mutex mu;
    int32_t schedule = FG_EMU_FORWARD;
    uint64_t seed = 0;
    int32_t threads = 0;
    size_t max_buffer_length = SIZE_MAX;
    bool traffic = false;
    std::vector<DispatchTraffic> traffic_log;
};

int32_t parse_schedule(const std::string& s, uint64_t* seed) {
    const std::string name = s.substr(0, s.find(':'));
    if (s.find(':') != std::string::npos) {
        const std::string tail = s.substr(s.find(':') + 1);
        char* end = nullptr;
        const unsigned long long v = std::strtoull(tail.c_str(), &end, 10);
        if (tail.empty() || *end) throw InputError("emulator schedule '" + s + "': the seed must be a number");
        *seed = v;
    }
    if (name == "forward") return FG_EMU_FORWARD;
    if (name == "reverse") return FG_EMU_REVERSE;
    if (name == "random") return FG_EMU_RANDOM;
    throw InputError("unknown emulator schedule '" + s + "' (expected forward, reverse or random[:seed])");
}

Settings& settings() {
    static Settings* s = [] {
        auto* st = new Settings();
        if (const char* env = std::getenv("FORGERT_EMU_SCHEDULE")) {
            try {
                st->schedule = parse_schedule(env, &st->seed);
            } catch (const InputError&) {
                // A bad variable must not make every import fail; the first device creation reports it.
                st->schedule = -1;
            }
        }
        if (const char* env = std::getenv("FORGERT_EMU_THREADS")) st->threads = std::max(0, std::atoi(env));
        if (const char* env = std::getenv("FORGERT_EMU_TRAFFIC")) st->traffic = std::atoi(env) != 0;
        if (const char* env = std::getenv("FORGERT_EMU_MAX_BUFFER_LENGTH")) {
            const unsigned long long n = std::strtoull(env, nullptr, 10);
            if (n > 0) st->max_buffer_length = (size_t)n;
        }
        return st;
    }();
    return *s;
}

fg_emu_options current_options() {
    Settings& s = settings();
    std::lock_guard<std::mutex> lock(s.mu);
    fg_emu_options o{};
    o.schedule = s.schedule;
    o.seed = s.seed;
    o.workers = s.threads;
    o.poison_threadgroup_memory = 1;
    return o;
}

// ---- buffers and pipelines ----
// Wrapped host memory is seen through views planned as on a real device (buffer_views.h).
struct HostBuffer final : Buffer {
    bool owned = false;
    ViewPlan plan;
    ~HostBuffer() override {
        if (owned) std::free(host);
    }
};

struct EmulatedPipeline final : Pipeline {
    const fg_emu_kernel* kernel = nullptr;
};

size_t max_buffer_length() {
    Settings& s = settings();
    std::lock_guard<std::mutex> lock(s.mu);
    return s.max_buffer_length;
}

// set_bytes copies the data at call time (as Metal does); 16-byte aligned.
using Bytes = std::shared_ptr<std::vector<std::max_align_t>>;

struct Command {
    bool barrier = false;
    EmulatedPipeline* pipeline = nullptr;
    fg_emu_bindings bindings{};
    std::vector<Bytes> keep;  // set_bytes storage the bindings point into
    fg_emu_size3 groups{};
    fg_emu_size3 threads{};
};

class EmulatedDevice final : public Device {
public:
    explicit EmulatedDevice(const KernelLibrary* lib) : lib_(lib) {}

    std::string name() const override {
        return "emulated Metal (MSL emulator, " + std::to_string(lib_->kernel_count()) + " kernels, schedule " +
               emulator_schedule() + ")";
    }

    std::unique_ptr<Buffer> new_buffer(size_t bytes) override {
        auto b = std::make_unique<HostBuffer>();
        const size_t rounded = (std::max<size_t>(bytes, 1) + 4095) & ~size_t(4095);
        b->host = std::aligned_alloc(4096, rounded);
        if (!b->host) throw std::bad_alloc();
        std::memset(b->host, 0, rounded);
        b->size = bytes;
        b->owned = true;
        b->plan = single_view(b->host, rounded);
        return b;
    }

    // The views a Mac with maxBufferLength = set_emulator_max_buffer_length() would make.
    std::unique_ptr<Buffer> wrap_host(void* ptr, size_t bytes, size_t largest) override {
        auto b = std::make_unique<HostBuffer>();
        b->plan = plan_buffer_views(ptr, bytes, largest, (size_t)getpagesize(), max_buffer_length());
        b->host = ptr;
        b->size = bytes;
        return b;
    }

    Pipeline* pipeline(const std::string& kernel) override {
        auto it = pipelines_.find(kernel);
        if (it != pipelines_.end()) return it->second.get();
        const fg_emu_kernel* k = lib_->find_kernel(kernel.c_str());
        if (!k) throw std::runtime_error(missing_kernel_message(kernel));
        auto p = std::make_unique<EmulatedPipeline>();
        p->key = kernel;
        p->kernel = k;
        p->handle = const_cast<fg_emu_kernel*>(k);
        Pipeline* raw = p.get();
        pipelines_[kernel] = std::move(p);
        return raw;
    }

    // A new command buffer and encoder: nothing bound yet.
    void begin() override { reset_bindings(); }

    void set_pipeline(Pipeline* p) override { current_ = static_cast<EmulatedPipeline*>(p); }

    void set_bytes(const void* data, size_t size, int slot) override {
        check_slot(slot, "set_bytes");
        auto bytes = std::make_shared<std::vector<std::max_align_t>>((size + sizeof(std::max_align_t) - 1) /
                                                                     sizeof(std::max_align_t) + 1);
        std::memcpy(bytes->data(), data, size);
        state_.bindings.buffers[slot] = bytes->data();
        state_.bindings.buffer_bytes[slot] = size;
        slot_bytes_[slot] = std::move(bytes);
    }

    // As on a Mac: the kernel sees the one view that holds the bound range, from its offset in
    // that view to the view's end.
    void set_buffer(const Buffer* buf, size_t offset, size_t bytes, int slot) override {
        check_slot(slot, "set_buffer");
        if (!buf || !buf->host) throw std::invalid_argument("emulated Metal: set_buffer with no buffer");
        const ViewPlan& plan = static_cast<const HostBuffer*>(buf)->plan;
        const ViewBinding b = bind_range(plan, offset, bytes);
        state_.bindings.buffers[slot] = reinterpret_cast<char*>(plan.start + plan.views[b.view].begin + b.offset_in_view);
        state_.bindings.buffer_bytes[slot] = b.bytes_in_view;
        slot_bytes_[slot].reset();
    }

    void set_threadgroup_memory(size_t bytes, int slot) override {
        check_slot(slot, "set_threadgroup_memory");
        state_.bindings.threadgroup_bytes[slot] = bytes;
    }

    void dispatch_threadgroups(Size3 grid, Size3 threads) override {
        if (!current_) throw std::logic_error("emulated Metal: dispatch without set_pipeline");
        Command c = state_;
        c.pipeline = current_;
        c.groups = {grid.x, grid.y, grid.z};
        c.threads = {threads.x, threads.y, threads.z};
        for (const Bytes& b : slot_bytes_)
            if (b) c.keep.push_back(b);
        encoding_.push_back(std::move(c));
    }

    void memory_barrier() override {
        Command c;
        c.barrier = true;
        encoding_.push_back(std::move(c));
    }

    // Runs the command buffer now; an error is kept for wait() (Metal reports a failed
    // command buffer through its status) and skips the rest.
    void commit() override {
        std::vector<Command> commands;
        commands.swap(encoding_);
        reset_bindings();
        ++command_buffers_;
        if (!error_.empty()) return;
        const fg_emu_options opt = current_options();
        if (opt.schedule < 0) {
            error_ = "FORGERT_EMU_SCHEDULE is not forward, reverse or random[:seed]";
            return;
        }
        std::mt19937_64 rng(opt.seed + 0x51ED270B27u * command_buffers_);
        size_t begin = 0;
        while (begin < commands.size() && error_.empty()) {
            size_t end = begin;
            while (end < commands.size() && !commands[end].barrier) ++end;
            // Dispatches between barriers may run in any order on a concurrent encoder.
            std::vector<size_t> order;
            for (size_t i = begin; i < end; ++i) order.push_back(i);
            if (opt.schedule == FG_EMU_REVERSE) std::reverse(order.begin(), order.end());
            if (opt.schedule == FG_EMU_RANDOM) std::shuffle(order.begin(), order.end(), rng);
            for (size_t i : order) {
                if (!run(commands[i], opt)) break;
            }
            begin = end + 1;
        }
    }

    void wait() override {
        if (error_.empty()) return;
        std::string e;
        e.swap(error_);
        throw std::runtime_error("emulated Metal command buffer failed: " + e);
    }

    // Command buffers run at commit, in order: the first n are done; a failure is reported
    // by the first wait after it, as on a Mac by the wait on that command buffer or a later one.
    void wait_until(uint64_t n) override {
        if (n > command_buffers_)
            throw std::logic_error("emulated Metal: wait_until(" + std::to_string(n) + ") with " +
                                   std::to_string(command_buffers_) + " command buffers committed");
        wait();
    }

    // Nothing to map on the CPU; checks the contract a residency set relies on (each buffer
    // once, a buffer of this kind).
    void make_resident(const Buffer* const* bufs, size_t n) override {
        for (size_t i = 0; i < n; i++) {
            if (!bufs[i] || !bufs[i]->host) throw std::invalid_argument("emulated Metal: make_resident of no buffer");
            if (!resident_.insert(bufs[i]).second)
                throw std::logic_error("emulated Metal: a buffer made resident twice");
        }
    }

private:
    void reset_bindings() {
        state_ = Command{};
        for (Bytes& b : slot_bytes_) b.reset();
        current_ = nullptr;
    }

    static void check_slot(int slot, const char* what) {
        if (slot < 0 || slot >= FG_EMU_MAX_SLOTS)
            throw std::invalid_argument(std::string("emulated Metal: ") + what + " slot " + std::to_string(slot) +
                                        " outside 0.." + std::to_string(FG_EMU_MAX_SLOTS - 1));
    }

    bool run(const Command& c, const fg_emu_options& opt) {
        char err[2048] = {};
        const EmulatedPipeline& p = *c.pipeline;
        fg_emu_options o = opt;
        o.traffic = lib_->last_traffic ? 1 : 0;  // devices made while counting was on count
        const int32_t rc = lib_->dispatch(p.kernel, nullptr, 0, &c.bindings, c.groups, c.threads, &o, err, sizeof err);
        if (rc != 0) error_ = err;
        if (rc == 0 && o.traffic) {
            DispatchTraffic d;
            d.kernel = p.key;
            if (lib_->last_traffic(&d.totals) == 0) {
                Settings& s = settings();
                std::lock_guard<std::mutex> lock(s.mu);
                s.traffic_log.push_back(std::move(d));
            }
        }
        return rc == 0;
    }

    std::string missing_kernel_message(const std::string& kernel) const {
        std::string msg = "emulated Metal: no kernel named '" + kernel + "' in " + lib_->path;
        std::string similar;
        const std::string stem = kernel.substr(0, kernel.find('_'));
        for (int32_t i = 0; i < lib_->kernel_count(); ++i) {
            const std::string name = lib_->kernel_name(i);
            if (name.compare(0, stem.size(), stem) == 0) similar += (similar.empty() ? "" : ", ") + name;
        }
        msg += similar.empty() ? " (" + std::to_string(lib_->kernel_count()) + " kernels)"
                               : " (similar: " + similar + ")";
        return msg;
    }

    const KernelLibrary* lib_;
    std::unordered_map<std::string, std::unique_ptr<EmulatedPipeline>> pipelines_;
    EmulatedPipeline* current_ = nullptr;
    Command state_;              // bindings as set so far
    Bytes slot_bytes_[FG_EMU_MAX_SLOTS];
    std::vector<Command> encoding_;
    std::string error_;
    uint64_t command_buffers_ = 0;  // committed so far
    std::unordered_set<const Buffer*> resident_;
};

}  // namespace

std::unique_ptr<Device> make_emulated_device_from(const std::string& library_path, std::string* why) {
    std::string reason;
    const KernelLibrary* lib = open_library(library_path, &reason);
    if (!lib) {
        if (why) *why = reason;
        return nullptr;
    }
    if (settings().schedule < 0) {
        if (why) *why = "FORGERT_EMU_SCHEDULE must be forward, reverse or random[:seed]";
        return nullptr;
    }
    return std::make_unique<EmulatedDevice>(lib);
}

std::unique_ptr<Device> make_emulated_device(std::string* why) {
    bool traffic;
    {
        Settings& s = settings();
        std::lock_guard<std::mutex> lock(s.mu);
        traffic = s.traffic;
    }
    return make_emulated_device_from(default_library_path(traffic), why);
}

void set_emulator_traffic(bool on) {
    Settings& st = settings();
    std::lock_guard<std::mutex> lock(st.mu);
    st.traffic = on;
}

bool emulator_traffic() {
    Settings& st = settings();
    std::lock_guard<std::mutex> lock(st.mu);
    return st.traffic;
}

std::vector<DispatchTraffic> take_emulator_traffic() {
    Settings& st = settings();
    std::lock_guard<std::mutex> lock(st.mu);
    std::vector<DispatchTraffic> out;
    out.swap(st.traffic_log);
    return out;
}

void set_emulator_schedule(const std::string& schedule, uint64_t seed) {
    uint64_t parsed_seed = seed;
    const int32_t s = parse_schedule(schedule, &parsed_seed);
    Settings& st = settings();
    std::lock_guard<std::mutex> lock(st.mu);
    st.schedule = s;
    st.seed = parsed_seed;
}

std::string emulator_schedule() {
    Settings& st = settings();
    std::lock_guard<std::mutex> lock(st.mu);
    switch (st.schedule) {
        case FG_EMU_FORWARD: return "forward";
        case FG_EMU_REVERSE: return "reverse";
        case FG_EMU_RANDOM: return "random:" + std::to_string(st.seed);
    }
    return "invalid";
}

void set_emulator_threads(int n) {
    Settings& st = settings();
    std::lock_guard<std::mutex> lock(st.mu);
    st.threads = std::max(0, n);
}

void set_emulator_max_buffer_length(size_t bytes) {
    Settings& st = settings();
    std::lock_guard<std::mutex> lock(st.mu);
    st.max_buffer_length = bytes == 0 ? SIZE_MAX : bytes;
}

}  // namespace forgert::metal
