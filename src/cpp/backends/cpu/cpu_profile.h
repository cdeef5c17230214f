// Per-op wall times of the CPU backend (FORGERT_CPU_PROFILE=1, or Engine.set_profiling):
// which op kinds a forward pass spends its time in, and per kind the pool's regions and the
// threads' busyness in them (PoolStats). Each op is timed whole, its serial parts and its
// regions together.
#pragma once

#include <chrono>
#include <cstdint>

#include "thread_pool.h"

namespace forgert::cpu {

enum class CpuOp : int {
    GetRows, RmsNorm, Matmul, MatmulAdd, MatmulGlu, RopeKvWrite, Attention, Elementwise, Argmax, Moe, Recurrent, kCount
};

inline const char* cpu_op_name(CpuOp op) {
    static const char* const names[] = {"get_rows",     "rms_norm",  "matmul",      "matmul_add",
                                        "matmul_glu",   "rope_kv",   "attention",   "elementwise",
                                        "argmax",       "moe",       "recurrent"};
    return names[(int)op];
}

struct CpuOpProfile {
    double seconds[(int)CpuOp::kCount] = {};
    int64_t calls[(int)CpuOp::kCount] = {};
    PoolStats regions[(int)CpuOp::kCount];  // the pool's regions forked inside each kind's ops
    int depth = 0;  // ops running now: an op called by another op counts as part of it
};

// Adds the scope's wall time to one op kind when `on` and no other op encloses it; a
// branch otherwise.
class CpuOpTimer {
public:
    CpuOpTimer(bool on, CpuOpProfile& p, const ThreadPool& pool, CpuOp op) : p_(on ? &p : nullptr), pool_(pool), op_(op) {
        if (!p_) return;
        outer_ = p_->depth++ == 0;
        if (!outer_) return;
        pool0_ = pool_.stats();
        t0_ = std::chrono::steady_clock::now();
    }
    ~CpuOpTimer() {
        if (!p_) return;
        p_->depth--;
        if (!outer_) return;
        p_->seconds[(int)op_] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
        p_->calls[(int)op_]++;
        const PoolStats s = pool_.stats();
        PoolStats& r = p_->regions[(int)op_];
        r.regions += s.regions - pool0_.regions;
        r.wall_s += s.wall_s - pool0_.wall_s;
        r.busy_s += s.busy_s - pool0_.busy_s;
        r.capacity_s += s.capacity_s - pool0_.capacity_s;
    }
    CpuOpTimer(const CpuOpTimer&) = delete;
    CpuOpTimer& operator=(const CpuOpTimer&) = delete;

private:
    CpuOpProfile* p_;
    const ThreadPool& pool_;
    CpuOp op_;
    PoolStats pool0_;
    bool outer_ = false;
    std::chrono::steady_clock::time_point t0_;
};

}  // namespace forgert::cpu
