#include "threadgroup_runner.h"

#include <algorithm>
#include <cstring>
#include <memory>

namespace fgemu {

namespace {

constexpr size_t kStackBytes = 128 * 1024;
// A lane that performs this many atomic loads (or failed compare-exchanges) without
// writing anything yields, so the lanes it may be waiting for can run.
constexpr uint32_t kSpinsBeforeYield = 256;
// Scheduling rounds in which only spinning lanes ran and nothing changed: a deadlock.
constexpr int kIdleRoundsBeforeDeadlock = 2000;

// Read by every hook call; initial-exec avoids a __tls_get_addr call each time (the
// library needs 8 bytes of the static TLS surplus glibc keeps for dlopened libraries).
__attribute__((tls_model("initial-exec"))) thread_local ThreadgroupRunner* t_active = nullptr;

std::string site_text(Site s) {
    return std::string(s.file ? s.file : "?") + ":" + std::to_string(s.line);
}

// Lane values are small (a float, a float4): 16-byte chunks the compiler inlines beat a
// call to memcpy with a run-time size.
inline void copy_lane_value(unsigned char* dst, const void* src, unsigned bytes) {
    const unsigned char* s = static_cast<const unsigned char*>(src);
    unsigned k = 0;
    for (; k + 16 <= bytes; k += 16) std::memcpy(dst + k, s + k, 16);
    for (; k < bytes; ++k) dst[k] = s[k];
}

bool same_site(Site a, Site b) {
    return a.line == b.line && a.column == b.column && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

// Earlier in the source first: lanes waiting at different collectives of one
// simdgroup are divergent branches, and the earlier one reconverges sooner.
bool site_before(Site a, Site b) {
    if (a.line != b.line) return a.line < b.line;
    return a.column < b.column;
}

}  // namespace

ThreadgroupRunner::ThreadgroupRunner() : arena_(2 * kThreadgroupMemoryLimit) {}

ThreadgroupRunner::~ThreadgroupRunner() {
    for (Lane& l : lanes_)
        if (l.stack) stack_free(l.stack, kStackBytes);
}

ThreadgroupRunner& ThreadgroupRunner::for_this_thread() {
    thread_local std::unique_ptr<ThreadgroupRunner> runner;
    if (!runner) runner = std::make_unique<ThreadgroupRunner>();
    return *runner;
}

ThreadgroupRunner* ThreadgroupRunner::active() { return t_active; }

std::string ThreadgroupRunner::where() const {
    return "kernel '" + std::string(plan_->kernel->name) + "', threadgroup (" + std::to_string(group_.x) + "," +
           std::to_string(group_.y) + "," + std::to_string(group_.z) + ")";
}

std::string ThreadgroupRunner::lane_name(const Lane& l) const {
    return "thread " + std::to_string(l.ids.thread_index_in_threadgroup) + " (simdgroup " +
           std::to_string(l.ids.simdgroup_index_in_threadgroup) + " lane " +
           std::to_string(l.ids.thread_index_in_simdgroup) + ")";
}

void ThreadgroupRunner::lane_main(void* self) {
    auto* r = static_cast<ThreadgroupRunner*>(self);
    Lane& lane = *r->current_;
    r->plan_->kernel->entry(*r->plan_->bindings, lane.ids, r->tg_slots_);
    lane.state = LaneState::Done;
    r->progress_ = true;
    r->resume_next(lane.ctx);  // never resumed: the next thread re-inits this fiber
    __builtin_trap();
}

// Hands the OS thread to the next runnable lane of this round, or back to the scheduler
// when the round is over. Lanes pass control directly to each other: one switch per
// rendezvous instead of two.
void ThreadgroupRunner::resume_next(FiberContext& from) {
    while (next_ < order_.size()) {
        Lane& l = lanes_[order_[next_++]];
        if (l.state != LaneState::Ready && l.state != LaneState::Spinning) continue;
        l.state = LaneState::Ready;
        current_ = &l;
        if (&l.ctx != &from) fiber_switch(from, l.ctx);
        return;
    }
    fiber_switch(from, scheduler_);
}

bool ThreadgroupRunner::setup_threadgroup_memory(std::string* error) {
    const fg_emu_bindings& b = *plan_->bindings;
    size_t used = 0;
    for (unsigned s = 0; s < kMaxSlots; ++s) {
        tg_slots_[s] = nullptr;
        if (!b.threadgroup_bytes[s]) continue;
        used = (used + 15) & ~size_t(15);
        if (used + b.threadgroup_bytes[s] > kThreadgroupMemoryLimit) {
            *error = where() + ": [[threadgroup]] memory of " + std::to_string(used + b.threadgroup_bytes[s]) +
                     " bytes exceeds the " + std::to_string(kThreadgroupMemoryLimit) + " bytes of an Apple GPU";
            return false;
        }
        tg_slots_[s] = arena_.data() + used;
        used += b.threadgroup_bytes[s];
    }
    arena_used_ = used;
    // Uninitialised on the GPU: 0xFF reads as NaN for floats and halves, -1 for integers.
    if (plan_->poison) std::memset(arena_.data(), 0xFF, used);
    locals_.clear();
    return true;
}

bool ThreadgroupRunner::run(const DispatchPlan& plan, U3 group, std::string* error) {
    plan_ = &plan;
    group_ = group;
    aborted_ = false;
    const U3 tg = plan.threads;
    const unsigned n = tg.x * tg.y * tg.z;
    const unsigned n_simdgroups = (n + kSimdWidth - 1) / kSimdWidth;
    if (!setup_threadgroup_memory(error)) return false;

    if (lanes_.size() < n) lanes_.resize(n);
    // Matrix values and memos of the previous threadgroup are dead (even after a fault).
    for (std::vector<MemoEntry>& log : memos_) log.clear();
    free_matrices_.clear();
    matrices_used_ = 0;
    unsigned tx = 0, ty = 0, tz = 0;
    const uint64_t start_epoch = ++last_epoch_;
    for (unsigned i = 0; i < n; ++i) {
        Lane& l = lanes_[i];
        if (!l.stack) l.stack = stack_alloc(kStackBytes);
        ThreadIds& ids = l.ids;
        ids.thread_position_in_threadgroup = {tx, ty, tz};
        ids.threadgroup_position_in_grid = group;
        ids.threads_per_threadgroup = tg;
        ids.threadgroups_per_grid = plan.groups;
        ids.threads_per_grid = {plan.groups.x * tg.x, plan.groups.y * tg.y, plan.groups.z * tg.z};
        ids.thread_position_in_grid = {group.x * tg.x + tx, group.y * tg.y + ty, group.z * tg.z + tz};
        ids.thread_index_in_threadgroup = i;
        ids.thread_index_in_simdgroup = i % kSimdWidth;
        ids.simdgroup_index_in_threadgroup = i / kSimdWidth;
        ids.simdgroups_per_threadgroup = n_simdgroups;
        l.state = LaneState::Ready;
        l.spins = 0;
        l.epoch = start_epoch;
        l.memo_index = 0;
        if (plan.traffic) l.visits.clear();
        // Stacks are 132 KB apart, so their tops would all fall into the same cache sets;
        // shifting each by a different multiple of 64 bytes spreads them over a page.
        const size_t color = ((i * 37) % 64) * 64;
        fiber_init(l.ctx, l.stack, kStackBytes - color, &ThreadgroupRunner::lane_main, this);
        if (++tx == tg.x) {
            tx = 0;
            if (++ty == tg.y) {
                ty = 0;
                ++tz;
            }
        }
    }
    order_.resize(n);
    for (unsigned i = 0; i < n; ++i) order_[i] = plan.schedule == FG_EMU_REVERSE ? n - 1 - i : i;
    if (plan.schedule == FG_EMU_RANDOM) {
        // Seeded per threadgroup, so a run is reproducible whichever worker takes it.
        const uint64_t linear = (uint64_t(group.z) * plan.groups.y + group.y) * plan.groups.x + group.x;
        rng_.seed(plan.seed * 0x9E3779B97F4A7C15ull + linear);
    }

    ThreadgroupRunner* const outer = t_active;
    t_active = this;
    int idle_rounds = 0;
    bool ok = true;
    for (;;) {
        if (plan.schedule == FG_EMU_RANDOM) std::shuffle(order_.begin(), order_.end(), rng_);
        progress_ = false;
        next_ = 0;
        resume_next(scheduler_);  // returns when every runnable lane has blocked or returned
        if (aborted_) {
            *error = error_;
            ok = false;
            break;
        }
        unsigned done = 0, spinning = 0;
        for (unsigned i = 0; i < n; ++i) {
            done += lanes_[i].state == LaneState::Done;
            spinning += lanes_[i].state == LaneState::Spinning;
        }
        if (done == n) break;
        if (release_simdgroups(n)) {
            idle_rounds = 0;
            continue;
        }
        if (spinning) {
            idle_rounds = progress_ ? 0 : idle_rounds + 1;
            if (idle_rounds < kIdleRoundsBeforeDeadlock) continue;
            const Lane* spinner = nullptr;
            const Lane* waiter = nullptr;
            for (unsigned i = 0; i < n; ++i) {
                if (!spinner && lanes_[i].state == LaneState::Spinning) spinner = &lanes_[i];
                if (!waiter && lanes_[i].state == LaneState::AtBarrier) waiter = &lanes_[i];
            }
            *error = where() + ": deadlock: " + std::to_string(spinning) + " thread(s) spin on atomics (" +
                     lane_name(*spinner) + " at " + site_text(spinner->site) + ") and no thread can make progress" +
                     (waiter ? "; " + lane_name(*waiter) + " waits at threadgroup_barrier " + site_text(waiter->site)
                             : std::string()) +
                     (done ? "; " + std::to_string(done) + " thread(s) have returned" : std::string());
            ok = false;
            break;
        }
        if (!resolve_barrier(n, error)) {
            ok = false;
            break;
        }
    }
    t_active = outer;
    if (plan.traffic) plan.traffic->fold(accesses_, arena_used_);
    return ok;
}

void ThreadgroupRunner::record_access(uintptr_t addr, uint32_t bytes, bool write, uintptr_t pc) {
    TrafficRecorder* t = plan_ ? plan_->traffic : nullptr;
    if (!t || !current_) return;
    AccessKind kind;
    uint8_t device_slot = 0;
    const uintptr_t arena = uintptr_t(arena_.data());
    if (addr >= arena && addr < arena + arena_.size()) {
        kind = write ? kThreadgroupWrite : kThreadgroupRead;
    } else {
        int slot = -1;
        for (const auto& r : t->device_ranges)
            if (addr >= r.begin && addr < r.end) slot = r.slot;
        if (slot < 0) return;  // the lane's stack, runtime state, argument structs
        kind = write ? kDeviceWrite : kDeviceRead;
        device_slot = uint8_t(slot);
    }
    Lane& l = *current_;
    const uint32_t visit = l.visits[pc]++;
    accesses_.push_back(Access{l.ids.simdgroup_index_in_threadgroup, visit, pc, addr, bytes, kind, device_slot});
}

// For every simdgroup with lanes at a collective: release the lanes waiting at the
// earliest such call site together; the others of the simdgroup are inactive for it.
bool ThreadgroupRunner::release_simdgroups(unsigned n) {
    bool released = false;
    for (unsigned lo = 0; lo < n; lo += kSimdWidth) {
        const unsigned hi = std::min(n, lo + kSimdWidth);
        const Lane* first = nullptr;
        for (unsigned i = lo; i < hi; ++i) {
            const Lane& l = lanes_[i];
            if (l.state == LaneState::AtSimd && (!first || site_before(l.site, first->site))) first = &l;
        }
        if (!first) continue;
        SimdgroupSlot& g = simdgroups_[lo / kSimdWidth];
        const Site site = first->site;
        const uint64_t epoch = ++last_epoch_;
        uint32_t mask = 0;
        for (unsigned i = lo; i < hi; ++i) {
            Lane& l = lanes_[i];
            if (l.state != LaneState::AtSimd || !same_site(l.site, site)) continue;
            mask |= 1u << (i - lo);
            copy_lane_value(g.values[i - lo], l.deposit, l.deposit_bytes);
            l.state = LaneState::Ready;
            l.epoch = epoch;
            l.memo_index = 0;
        }
        g.mask = mask;
        g.shared_ready = false;
        released = true;
    }
    return released;
}

// Every live lane waits at a barrier: release them if they all wait at the same one
// and none has returned.
bool ThreadgroupRunner::resolve_barrier(unsigned n, std::string* error) {
    const Lane* first = nullptr;
    const Lane* exited = nullptr;
    unsigned n_exited = 0;
    for (unsigned i = 0; i < n; ++i) {
        const Lane& l = lanes_[i];
        if (l.state == LaneState::Done) {
            if (!exited) exited = &l;
            ++n_exited;
            continue;
        }
        if (!first) {
            first = &l;
        } else if (!same_site(l.site, first->site)) {
            *error = where() + ": barrier divergence: " + lane_name(*first) + " waits at threadgroup_barrier " +
                     site_text(first->site) + " but " + lane_name(l) + " waits at threadgroup_barrier " +
                     site_text(l.site);
            return false;
        }
    }
    if (!first) return true;
    if (n_exited) {
        *error = where() + ": early exit before a barrier: " + std::to_string(n_exited) + " thread(s) returned (first " +
                 lane_name(*exited) + ") while " + std::to_string(n - n_exited) +
                 " thread(s) wait at threadgroup_barrier " + site_text(first->site);
        return false;
    }
    const uint64_t epoch = ++last_epoch_;
    for (unsigned i = 0; i < n; ++i) {
        lanes_[i].state = LaneState::Ready;
        lanes_[i].epoch = epoch;
        lanes_[i].memo_index = 0;
    }
    return true;
}

void ThreadgroupRunner::block(LaneState state, Site s) {
    Lane& l = *current_;
    l.state = state;
    l.site = s;
    if (state != LaneState::Spinning) {
        l.spins = 0;
        progress_ = true;
    }
    resume_next(l.ctx);
}

void ThreadgroupRunner::barrier(Site s) { block(LaneState::AtBarrier, s); }

SimdExchange ThreadgroupRunner::simd(const void* value, unsigned bytes, Site s) {
    Lane& l = *current_;
    copy_lane_value(l.deposit, value, bytes);
    l.deposit_bytes = bytes;
    block(LaneState::AtSimd, s);
    SimdgroupSlot& g = simdgroups_[l.ids.simdgroup_index_in_threadgroup];
    return SimdExchange{&g.values[0][0], g.shared, &g.shared_ready, g.mask, l.ids.thread_index_in_simdgroup};
}

void ThreadgroupRunner::fault(const std::string& what, Site s) {
    Lane& l = *current_;
    error_ = where() + ", " + lane_name(l) + ": " + what + " at " + site_text(s);
    aborted_ = true;
    fiber_switch(l.ctx, scheduler_);
    __builtin_trap();  // an aborted threadgroup is never resumed
}

void* ThreadgroupRunner::local(const void* key, size_t bytes, size_t align, Site s) {
    for (const Local& e : locals_)
        if (e.key == key) return e.ptr;
    align = std::max<size_t>(align, 16);
    const size_t offset = (arena_used_ + align - 1) & ~(align - 1);
    if (offset + bytes > kThreadgroupMemoryLimit)
        fault("threadgroup memory of " + std::to_string(offset + bytes) + " bytes exceeds the " +
                  std::to_string(kThreadgroupMemoryLimit) + " bytes of an Apple GPU",
              s);
    void* p = arena_.data() + offset;
    if (plan_->poison) std::memset(p, 0xFF, bytes);
    arena_used_ = offset + bytes;
    locals_.push_back({key, p});
    return p;
}

void ThreadgroupRunner::atomic_op(bool wrote, Site s) {
    Lane& l = *current_;
    if (wrote) {
        progress_ = true;
        l.spins = 0;
        return;
    }
    if (++l.spins < kSpinsBeforeYield) return;
    l.spins = 0;
    block(LaneState::Spinning, s);
}

const fg_emu_constant* ThreadgroupRunner::constant(int index, const char* name, bool required, Site s) {
    if (index < 0 || index >= int(kMaxFunctionConstants))
        fault("function constant '" + std::string(name) + "' has index " + std::to_string(index) + " (0.." +
                  std::to_string(kMaxFunctionConstants - 1) + " supported)",
              s);
    const fg_emu_constant* c = plan_->constants[index];
    if (!c && required)
        fault("function constant '" + std::string(name) + "' (index " + std::to_string(index) +
                  ") is used but the pipeline was created without a value for it",
              s);
    return c;
}

MatrixMemo ThreadgroupRunner::memo(Site s) {
    Lane& l = *current_;
    std::vector<MemoEntry>& log = memos_[l.ids.simdgroup_index_in_threadgroup];
    const uint32_t index = l.memo_index++;
    if (index >= log.size()) log.resize(index + 1);
    MemoEntry& e = log[index];
    const bool recorded = e.epoch == l.epoch && same_site(e.site, s);
    if (!recorded) {
        matrix_release(e.value);
        e.value = 0;
        e.epoch = l.epoch;
        e.site = s;
    }
    return MatrixMemo{recorded, e.key, &e.value};
}

MatrixSlot* ThreadgroupRunner::slot_of(uint64_t handle) {
    const uint64_t index = (handle & 0xFFFFFF) - 1;
    if (handle == 0 || index >= matrices_used_) return nullptr;
    MatrixSlot& m = matrix_chunks_[index / kMatrixChunk][index % kMatrixChunk];
    return m.refs && m.generation == handle >> 24 ? &m : nullptr;
}

uint64_t ThreadgroupRunner::matrix_alloc(unsigned char** data) {
    uint32_t index;
    if (!free_matrices_.empty()) {
        index = free_matrices_.back();
        free_matrices_.pop_back();
    } else {
        if (matrices_used_ >= 0xFFFFFF) fault("more than 16M live simdgroup matrices", Site{"?", 0, 0});
        if (matrices_used_ == matrix_chunks_.size() * kMatrixChunk)
            matrix_chunks_.push_back(std::make_unique<MatrixSlot[]>(kMatrixChunk));
        index = uint32_t(matrices_used_++);
    }
    MatrixSlot& m = matrix_chunks_[index / kMatrixChunk][index % kMatrixChunk];
    m.refs = 1;
    m.generation = ++last_generation_;
    *data = m.data;
    return (m.generation << 24) | (index + 1);
}

unsigned char* ThreadgroupRunner::matrix_data(uint64_t handle, Site s) {
    MatrixSlot* m = slot_of(handle);
    if (!m) fault(handle ? "internal: stale simdgroup_matrix handle" : "uses an uninitialised simdgroup_matrix", s);
    return m->data;
}

void ThreadgroupRunner::matrix_retain(uint64_t handle) {
    if (MatrixSlot* m = slot_of(handle)) ++m->refs;
}

void ThreadgroupRunner::matrix_release(uint64_t handle) {
    MatrixSlot* m = slot_of(handle);
    if (m && --m->refs == 0) free_matrices_.push_back(uint32_t((handle & 0xFFFFFF) - 1));
}

// ---- kernel_abi.h hooks ----

namespace {
ThreadgroupRunner& runner_or_die() {
    ThreadgroupRunner* r = ThreadgroupRunner::active();
    if (!r) __builtin_trap();  // kernel code called outside a dispatch
    return *r;
}
}  // namespace

void threadgroup_barrier_wait(Site s) { runner_or_die().barrier(s); }
SimdExchange simd_exchange(const void* value, unsigned bytes, Site s) { return runner_or_die().simd(value, bytes, s); }
void kernel_fault(const char* what, Site s) { runner_or_die().fault(what, s); }
void* threadgroup_local(const void* key, size_t bytes, size_t align, Site s) {
    return runner_or_die().local(key, bytes, align, s);
}
void atomic_hook(bool wrote, Site s) { runner_or_die().atomic_op(wrote, s); }
MatrixMemo matrix_memo(Site s) { return runner_or_die().memo(s); }
uint64_t matrix_alloc(unsigned char** data) { return runner_or_die().matrix_alloc(data); }
unsigned char* matrix_data(uint64_t handle, Site s) { return runner_or_die().matrix_data(handle, s); }
void matrix_retain(uint64_t handle) {
    if (handle) runner_or_die().matrix_retain(handle);
}
void matrix_release(uint64_t handle) {
    if (handle) runner_or_die().matrix_release(handle);
}
const fg_emu_constant* function_constant(int index, const char* name, bool required, Site s) {
    return runner_or_die().constant(index, name, required, s);
}

}  // namespace fgemu
