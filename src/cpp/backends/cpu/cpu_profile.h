// Per-op wall times of the CPU backend (FORGERT_CPU_PROFILE=1, or Engine.set_profiling):
// which op kinds a forward pass spends its time in, beside the pool's region count and
// busyness (PoolStats). Each op is timed whole, its serial parts and its regions together.
#pragma once

#include <chrono>
#include <cstdint>

namespace forgert::cpu {

enum class CpuOp : int {
    GetRows, RmsNorm, Matmul, MatmulAdd, MatmulGlu, RopeKvWrite, Attention, Elementwise, Argmax, Moe, kCount
};

inline const char* cpu_op_name(CpuOp op) {
    static const char* const names[] = {"get_rows",     "rms_norm",  "matmul",      "matmul_add",
                                        "matmul_glu",   "rope_kv",   "attention",   "elementwise",
                                        "argmax",       "moe"};
    return names[(int)op];
}

struct CpuOpProfile {
    double seconds[(int)CpuOp::kCount] = {};
    int64_t calls[(int)CpuOp::kCount] = {};
    int depth = 0;  // ops running now: an op called by another op counts as part of it
};

// Adds the scope's wall time to one op kind when `on` and no other op encloses it; a
// branch otherwise.
class CpuOpTimer {
public:
    CpuOpTimer(bool on, CpuOpProfile& p, CpuOp op) : p_(on ? &p : nullptr), op_(op) {
        if (!p_) return;
        outer_ = p_->depth++ == 0;
        if (outer_) t0_ = std::chrono::steady_clock::now();
    }
    ~CpuOpTimer() {
        if (!p_) return;
        p_->depth--;
        if (!outer_) return;
        p_->seconds[(int)op_] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
        p_->calls[(int)op_]++;
    }
    CpuOpTimer(const CpuOpTimer&) = delete;
    CpuOpTimer& operator=(const CpuOpTimer&) = delete;

private:
    CpuOpProfile* p_;
    CpuOp op_;
    bool outer_ = false;
    std::chrono::steady_clock::time_point t0_;
};

}  // namespace forgert::cpu
