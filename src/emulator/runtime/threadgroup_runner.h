// Runs one threadgroup of a dispatch: one fiber per GPU thread, resumed in forward,
// reverse or random order until each blocks at a rendezvous (threadgroup_barrier,
// simd_* collective) or returns; then releases whatever rendezvous is complete and
// reports what can never complete (divergent barriers, early exit before a barrier,
// spinning with no way forward).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "../include/msl/kernel_abi.h"
#include "fiber.h"
#include "traffic.h"

namespace fgemu {

// What every threadgroup of one dispatch shares (read-only while it runs).
struct DispatchPlan {
    const KernelInfo* kernel = nullptr;
    const fg_emu_bindings* bindings = nullptr;
    const fg_emu_constant* constants[kMaxFunctionConstants] = {};  // by index; null = unset
    U3 groups{1, 1, 1};
    U3 threads{1, 1, 1};
    int schedule = FG_EMU_FORWARD;
    uint64_t seed = 0;
    bool poison = true;
    TrafficRecorder* traffic = nullptr;  // counting memory traffic (traffic builds)
};

enum class LaneState : uint8_t { Ready, AtBarrier, AtSimd, Spinning, Done };

struct Lane {
    FiberContext ctx;
    void* stack = nullptr;
    LaneState state = LaneState::Done;
    Site site{};          // where it waits
    uint32_t spins = 0;   // atomic loads since it last made progress
    uint32_t deposit_bytes = 0;
    uint32_t memo_index = 0;  // matrix operations since its last rendezvous
    uint64_t epoch = 0;       // names its last rendezvous; lanes released together share it
    ThreadIds ids{};
    std::unordered_map<uintptr_t, uint32_t> visits;  // traffic: executions per instruction
    alignas(16) unsigned char deposit[kLaneBytes];
};

struct SimdgroupSlot {
    alignas(16) unsigned char values[kSimdWidth][kLaneBytes];
    alignas(16) unsigned char shared[kSharedBytes];
    bool shared_ready = false;
    uint32_t mask = 0;
};

struct MemoEntry {
    uint64_t epoch = 0;
    Site site{};
    uint64_t value = 0;  // result handle (holds a reference)
    alignas(16) unsigned char key[kMemoKeyBytes];
};

// Storage of simdgroup_matrix values (kernel_abi.h): slots with a reference count; a
// handle is (generation << 24) | (slot + 1), so a handle is never reused.
struct MatrixSlot {
    uint32_t refs = 0;
    uint64_t generation = 0;
    alignas(32) unsigned char data[kMatrixBytes];
};

class ThreadgroupRunner {
public:
    ThreadgroupRunner();
    ~ThreadgroupRunner();
    ThreadgroupRunner(const ThreadgroupRunner&) = delete;
    ThreadgroupRunner& operator=(const ThreadgroupRunner&) = delete;

    // Runs threadgroup `group`; false with *error set when the kernel faulted.
    bool run(const DispatchPlan& plan, U3 group, std::string* error);

    // The runner of the calling OS thread (created on first use).
    static ThreadgroupRunner& for_this_thread();
    // The runner whose fiber is running on this OS thread, or null outside a dispatch.
    static ThreadgroupRunner* active();

    // Hooks for kernel code (kernel_abi.h), called from the running fiber.
    void barrier(Site s);
    SimdExchange simd(const void* value, unsigned bytes, Site s);
    [[noreturn]] void fault(const std::string& what, Site s);
    void* local(const void* key, size_t bytes, size_t align, Site s);
    void atomic_op(bool wrote, Site s);
    const fg_emu_constant* constant(int index, const char* name, bool required, Site s);
    MatrixMemo memo(Site s);
    uint64_t matrix_alloc(unsigned char** data);
    unsigned char* matrix_data(uint64_t handle, Site s);
    void matrix_retain(uint64_t handle);
    void matrix_release(uint64_t handle);
    // A load or store of kernel code (traffic builds); kept if it is device or threadgroup memory.
    void record_access(uintptr_t addr, uint32_t bytes, bool write, uintptr_t pc);

private:
    static void lane_main(void* self);
    void block(LaneState state, Site s);
    void resume_next(FiberContext& from);
    bool setup_threadgroup_memory(std::string* error);
    bool release_simdgroups(unsigned n);
    bool resolve_barrier(unsigned n, std::string* error);
    std::string where() const;
    std::string lane_name(const Lane& l) const;

    std::vector<Lane> lanes_;
    std::vector<uint32_t> order_;
    size_t next_ = 0;  // position in order_ of the current round
    SimdgroupSlot simdgroups_[kMaxThreadsPerThreadgroup / kSimdWidth];
    std::vector<MemoEntry> memos_[kMaxThreadsPerThreadgroup / kSimdWidth];  // per simdgroup
    uint64_t last_epoch_ = 0;
    // Chunks of kMatrixChunk slots: addresses stay valid as the store grows.
    static constexpr unsigned kMatrixChunk = 256;
    std::vector<std::unique_ptr<MatrixSlot[]>> matrix_chunks_;
    std::vector<uint32_t> free_matrices_;
    size_t matrices_used_ = 0;
    uint64_t last_generation_ = 0;
    MatrixSlot* slot_of(uint64_t handle);
    FiberContext scheduler_;
    Lane* current_ = nullptr;
    const DispatchPlan* plan_ = nullptr;
    U3 group_{0, 0, 0};
    std::mt19937_64 rng_;
    bool aborted_ = false;
    bool progress_ = false;
    std::string error_;

    // Threadgroup memory: [[threadgroup(n)]] slots first, then `threadgroup` locals.
    std::vector<unsigned char> arena_;
    size_t arena_used_ = 0;
    void* tg_slots_[kMaxSlots] = {};
    struct Local {
        const void* key;
        void* ptr;
    };
    std::vector<Local> locals_;
    std::vector<Access> accesses_;  // traffic of the running threadgroup
};

}  // namespace fgemu
