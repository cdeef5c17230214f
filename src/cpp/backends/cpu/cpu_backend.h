// The CPU backend: every op runs immediately on a thread pool, with the SIMD
// kernel set chosen for this CPU at start-up.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "cpu_kernels.h"
#include "cpu_profile.h"
#include "thread_pool.h"
#include "weight_arena.h"

namespace forgert::cpu {

// The RoPE cos / sin of one position (rope_angles, cpu_backend.cpp), kept while the position, the
// frequencies and the factor stay the same: a decode token's layers share them.
struct RopeAngleCache {
    int64_t pos = -1;
    float factor = 0;
    std::vector<float> freqs, cs, sn;  // [half] each
    void fill(int64_t pos, const float* freqs, int half, float factor);
};

class CpuBackend final : public Backend {
public:
    // The work split comes from FORGERT_CPU_SPLIT, the pool's spin from FORGERT_CPU_SPIN_US and
    // profiling from FORGERT_CPU_PROFILE (see thread_pool.h, cpu_profile.h); a bad value of any
    // throws InputError.
    explicit CpuBackend(int n_threads);
    // The activation format of the int8 paths (cpu_kernels.h): parts = 2 (activations="int16",
    // the default) or 1 ("int8", llama.cpp's); decode rows take it, and prefill unless
    // FORGERT_CPU_PREFILL says otherwise (prefill_int8_parts). Before the first op.
    void set_activation_parts(int parts);
    int activation_parts() const { return decode_parts_; }
    int prefill_parts() const { return prefill_parts_; }
    std::string name() const override;
    int n_threads() const { return pool_.size(); }
    WorkSplit work_split() const { return pool_.split(); }
    int64_t units_per_thread() const { return pool_.units_per_thread(); }
    // The prefill int8 GEMM's split of n_panels kI8Rows-row panels (matmul_i8's, shared with
    // cpu_ops_bench so the kernel is timed as a model runs it): runs of whole panel pairs,
    // kI8UnitsPerThread units a thread; fn(ith, p0, p1), ith the running thread's index.
    void for_i8_panels(int64_t n_panels, const std::function<void(int, int64_t, int64_t)>& fn);

    // Per-op times and the pool's regions and busyness, accumulated while profiling is on.
    void set_profiling(bool on);
    bool profiling() const { return profiling_; }
    void reset_profile();
    const CpuOpProfile& op_profile() const { return ops_; }
    PoolStats pool_stats() const { return pool_.stats(); }

    std::unique_ptr<Buffer> alloc(size_t bytes) override;
    std::unique_ptr<Buffer> wrap_host(void* ptr, size_t bytes, size_t largest) override;
    // Q4_0 / Q8_0 weights repacked into the kernel set's panels (cpu_weight_prep.cpp), unless
    // FORGERT_CPU_REPACK=0 or the set reads the file's layout.
    Tensor prepare_weight(const Tensor& w, std::vector<std::unique_ptr<Buffer>>& owned) override;
    double repack_seconds() const { return repack_s_; }  // summed over prepare_weight calls
    void write(const Tensor& dst, const void* src, size_t bytes) override;
    void read(void* dst, const Tensor& src, size_t bytes) override;

    void get_rows(const Tensor& out, const Tensor& table, const Tensor& ids) override;
    void rms_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) override;
    void layer_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) override;
    void add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, float eps) override;
    // The matmul ops run x's decode rows (RowClasses) through the few-token kernels in runs of
    // at most kMaxDecodeRun rows and its prefix rows through the prefill GEMM.
    void matmul(const Tensor& out, const Tensor& w, const Tensor& x, RowClasses rc = {}) override;
    void matmul_many(const Tensor* outs, const Tensor* ws, int n, const Tensor& x, RowClasses rc = {}) override;
    void matmul_add(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& scratch,
                    RowClasses rc = {}) override;
    void matmul_swiglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                       const Tensor& scratch, RowClasses rc = {}) override;
    void matmul_geglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                      const Tensor& scratch, RowClasses rc = {}) override;
    void add_bias(const Tensor& x, const Tensor& b) override;
    void rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                       const Tensor& freqs, const RowPositions& at, const RopeKvParams& p) override;
    void attention(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                   const RowPositions& at, const AttentionParams& p) override;
    void silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) override;
    void add(const Tensor& out, const Tensor& a, const Tensor& b) override;
    void mul(const Tensor& out, const Tensor& a, const Tensor& b) override;
    void copy(const Tensor& dst, const Tensor& src) override;
    void gelu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) override;
    void gelu(const Tensor& x) override;
    void relu_sq(const Tensor& x) override;
    void scale(const Tensor& x, float s) override;
    void softcap(const Tensor& x, float cap) override;
    void gaussian_topk(const Tensor& x, float std_mult) override;  // cpu_altup.cpp
    void rms_match(const Tensor& out, const Tensor& x, const Tensor& target) override;
    void altup_mix(const Tensor& out, const Tensor& xs, const Tensor& coefs, const Tensor& base) override;
    void clamp_ids(const Tensor& out, const Tensor& ids, int32_t limit) override;
    void argmax(const Tensor& out, const Tensor& x) override;

    // Mixture of experts (cpu_moe.cpp).
    void host_parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) override {
        pool_.parallel_for(n, 1, fn);
    }
    bool has_moe_ops() const override { return true; }
    void moe_route(const Tensor& weights, const Tensor& ids, const Tensor& logits, const MoeRouting& routing,
                   const Tensor& select_bias) override;
    void matmul_id(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x, const Tensor& ids,
                   RowClasses rc = {}) override;
    void moe_sum_add(const Tensor& out, const Tensor& y, const Tensor& weights) override;
    void scale_sigmoid(const Tensor& x, const Tensor& gate) override;
    void swiglu_oai(const Tensor& out, const Tensor& gate, const Tensor& up, float alpha, float limit) override;
    void add_bias_id(const Tensor& x, const Tensor& b, const Tensor& ids) override;

    // Recurrent layers (cpu_recurrent.cpp).
    bool has_recurrent_ops() const override { return true; }
    void conv1d_state(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& state,
                      const Tensor& runs, bool silu) override;
    void gated_delta_rule(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& alpha,
                          const Tensor& beta, const Tensor& A, const Tensor& dt_bias, const Tensor& state,
                          const Tensor& runs, const DeltaNetParams& p) override;
    void mamba2_scan(const Tensor& out, const Tensor& x, const Tensor& B, const Tensor& C, const Tensor& dt,
                     const Tensor& A, const Tensor& D, const Tensor& dt_bias, const Tensor& state, const Tensor& runs,
                     const Mamba2Params& p) override;
    void mul_sigmoid(const Tensor& x, const Tensor& gate) override;

private:
    // The GEMV / few-token path: rows [r0, r1) of w times x as prepared by prepare_input.
    void gemv_rows(const Tensor& out, const Tensor& w, const void* xin, bool quantized, const Tensor& x, int64_t r0,
                   int64_t r1);
    // How many leading rows of x take the few-token kernels (gemv_rows); the rest take the GEMM.
    // By count: all of them below kPanelMinTokens rows, else none.
    int64_t decode_rows(const Tensor& x, RowClasses rc) const;
    // Few-token rows (x.rows <= kMaxDecodeRun): one parallel region over the rows of all the weights.
    void gemv_many(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x);
    // Prefix rows: the int8 GEMM or the f32 panel GEMM (the GEMV where the set has neither).
    void gemm_many(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x);
    // matmul_swiglu / matmul_geglu: for few-token rows, gate and up rows and their product in one region.
    void matmul_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                    const Tensor& scratch, bool gelu, RowClasses rc);
    void gemv_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                  const Tensor& scratch, bool gelu);
    // out = rms_norm(x) * w, or out += it with accumulate; with center the LayerNorm (no bias).
    void rms_norm_rows(const Tensor& out, const Tensor& x, const Tensor& w, float eps, bool accumulate,
                       bool center = false);
    // Decode attention with the keys of each KV head split into n_splits ranges (more work
    // items than KV heads, so every thread gets some), merged by their log-sum-exps.
    void attention_split_keys(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              int64_t first, int64_t n_keys, int n_splits, const AttentionParams& p);
    // Many tokens: f32 GEMM over dequantized weight panels (gemm_panel).
    void matmul_panel(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x);
    // Many tokens, Q8_0 / Q4_0 weights: int8 GEMM (gemm_i8) on prefill_parts_ activation parts.
    void matmul_i8(const Tensor* outs, const Tensor* ws, int n_mm, const Tensor& x);
    // Units per thread of matmul_i8's regions (the dynamic split; the other regions take the
    // pool's, default_units_per_thread or FORGERT_CPU_UNITS): a prefill GEMM unit is long (whole
    // panel pairs through every token).
    static constexpr int64_t kI8UnitsPerThread = 16;
    // x as the kernels read it: quantized blocks for quantized weights (in xq_, in decode_parts_
    // parts), else dense f32.
    const void* prepare_input(const Tensor& x, bool quantized, std::vector<float>& dense);
    // One row of n floats as decode's activation blocks, in decode_parts_ parts.
    void quantize_decode_row(const float* x, BlockQ8Act* y, int64_t n) const;

    ThreadPool pool_;
    bool profiling_ = false;
    CpuOpProfile ops_;
    const KernelSet& k_;
    bool repack_;        // FORGERT_CPU_REPACK (default 1): prepare_weight repacks
    double repack_s_ = 0;
    WeightArena arena_;  // the repacked weights' memory
    int decode_parts_ = 2;  // activation parts of the few-token kernels (gemm_q): 2 or 1
    int prefill_parts_;  // prefill_int8_parts(): 2, 1 (gemm_i8's activation parts) or 0 (f32 panels)
    std::vector<int32_t> xs_;             // integer sums of xq_'s parts (i8_act_sums: gemm_i8's zero-point terms)
    std::vector<BlockQ8Act> xq_;          // activations quantized for the current matmul
    std::vector<std::vector<float>> scratch_;  // per-thread work: attention chunks, GEMM panels
    std::vector<float> split_out_, split_lse_;  // split-K decode attention partials
    RopeAngleCache rope_angles_;                // a decode row's RoPE angles, shared by a token's layers
    std::vector<std::vector<float>> split_work_;  // per thread: a batch's decode row's key-range partials
    std::vector<std::pair<int64_t, int64_t>> blocks_;  // attention's row blocks [t0, t1), one sequence each
    struct AttnItem {
        int64_t block;  // index into blocks_
        int kvh0, n_kv;  // KV heads kvh0 .. kvh0 + n_kv
    };
    std::vector<AttnItem> attn_items_;  // attention's work items over blocks_
    std::vector<float> xt_;                    // activations transposed for gemm_panel
    std::unique_ptr<Buffer> gathered_x_, gathered_y_;  // matmul_id: one expert's rows, in and out
};

// The user's activation format (forgert.Model's `activations`) on backend be: "int16" (two int8
// parts, the default) or "int8" (one) on a CPU backend; another backend has its own numerics and
// takes only "int16". Anything else: InputError naming the value.
void set_activations(Backend& be, const std::string& activations);

}  // namespace forgert::cpu
