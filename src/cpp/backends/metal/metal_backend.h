// The Metal backend: every Backend op as plain C++ over metal::Device. Each op checks
// its tensors, fills the kernel's argument struct (src/shaders/kernel_args.h), picks
// the pipeline and dispatch geometry and binds buffers; the device behind it is real
// Metal on macOS or the MSL emulator elsewhere.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backends/metal/hazard_tracker.h"
#include "backends/metal/metal_device.h"
#include "core/backend.h"

namespace forgert::cpu {
class ThreadPool;
}

namespace forgert::metal {

// Real Metal where built, else the emulated device; throws InputError with both
// reasons when neither exists. The GPU (or the emulator's own worker pool) decides the ops'
// parallelism; n_threads (<= 0: the hardware's) is the host's, for host_parallel_for.
std::unique_ptr<Backend> make_metal_backend(int n_threads);

class MetalBackend final : public Backend {
public:
    // host_threads: host_parallel_for's (<= 0: the hardware's).
    explicit MetalBackend(std::unique_ptr<Device> device, int host_threads = 1);
    ~MetalBackend() override;
    std::string name() const override { return "metal"; }
    Device& device() { return *dev_; }

    std::unique_ptr<Buffer> alloc(size_t bytes) override;
    std::unique_ptr<Buffer> wrap_host(void* ptr, size_t bytes, size_t largest) override;
    void write(const Tensor& dst, const void* src, size_t bytes) override;
    void read(void* dst, const Tensor& src, size_t bytes) override;

    void begin() override;
    void commit() override;
    void wait() override;
    bool encodes_ahead() const override { return true; }
    uint64_t committed() const override { return committed_; }
    void read_after(uint64_t ticket, void* dst, const Tensor& src, size_t bytes) override;
    void write_before_commit(const Tensor& dst, const void* src, size_t bytes) override;
    void make_resident(const Buffer* const* bufs, size_t n) override;
    // On a pool of the host's threads, made on first use: a sampler's passes over the logits row
    // run there while the GPU waits for the drawn token (decode_pipeline.cpp), and a prompt's
    // rows are scored there.
    void host_parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) override;

    void get_rows(const Tensor& out, const Tensor& table, const Tensor& ids) override;
    void rms_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) override;
    void layer_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) override;
    void add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, float eps) override;
    // The matmul ops and attention take RowClasses (core/backend.h): decode rows through the GEMV
    // and the decode attention kernel cut as for one query, prefix rows through the GEMM and the
    // prefill attention kernel, so a row's bits do not depend on the other rows of its pass
    // (docs/design.md "Batch invariance"); by count, the kernels are picked by the number of rows.
    void matmul(const Tensor& out, const Tensor& w, const Tensor& x, RowClasses rc = {}) override;
    void add_bias(const Tensor& x, const Tensor& b) override;
    void matmul_add(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& scratch,
                    RowClasses rc = {}) override;
    void matmul_swiglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                       const Tensor& scratch, RowClasses rc = {}) override;
    void matmul_geglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                      const Tensor& scratch, RowClasses rc = {}) override;
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
    void gaussian_topk(const Tensor& x, float std_mult) override;  // Gemma 3n (altup.metal)
    void rms_match(const Tensor& out, const Tensor& x, const Tensor& target) override;
    void altup_mix(const Tensor& out, const Tensor& xs, const Tensor& coefs, const Tensor& base) override;
    void clamp_ids(const Tensor& out, const Tensor& ids, int32_t limit) override;
    void argmax(const Tensor& out, const Tensor& x) override;
    // Decode rows: the staged GEMV with the argmax fused on (mul_mv_argmax_staged_*, then
    // argmax_partials; the logits are never written), unless FORGERT_METAL_FUSED_ARGMAX=0 or the
    // direct GEMVs are chosen; prefix rows: matmul, then argmax.
    void matmul_argmax(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& logits,
                       RowClasses rc = {}) override;

    // Mixture of experts: router top-k, expert GEMV and weighted sum, all on the device.
    bool has_moe_ops() const override { return true; }
    std::string expert_stack_problem(const Tensor* experts, int n_expert) const override;
    void prepare_experts(std::vector<Tensor>& experts, std::vector<std::unique_ptr<Buffer>>& owned) override;
    void moe_route(const Tensor& weights, const Tensor& ids, const Tensor& logits, const MoeRouting& routing,
                   const Tensor& select_bias) override;
    void matmul_id(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x, const Tensor& ids,
                   RowClasses rc = {}) override;
    void moe_sum_add(const Tensor& out, const Tensor& y, const Tensor& weights) override;
    void scale_sigmoid(const Tensor& x, const Tensor& gate) override;
    void swiglu_oai(const Tensor& out, const Tensor& gate, const Tensor& up, float alpha, float limit) override;
    void add_bias_id(const Tensor& x, const Tensor& b, const Tensor& ids) override;

    // Recurrent layers (Gated DeltaNet, short convolutions, Mamba2): the run table stays on the device;
    // each state row's runs are walked in table order by the threadgroups of its first run
    // (deltanet.metal, mamba.metal).
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

    // Dispatches encoded and barriers inserted since construction (for tests and benchmarks).
    int64_t dispatch_count() const { return n_dispatches_; }
    int64_t barrier_count() const { return n_barriers_; }

    // One buffer bound to a kernel slot (slot = position in the list + 1; slot 0 holds
    // the argument struct) and whether the kernel writes it.
    struct Binding {
        const Buffer* buf = nullptr;
        size_t offset = 0;
        size_t bytes = 0;
        bool written = false;
    };
    static Binding reads(const Tensor& t) { return {t.buf, t.offset, t.nbytes(), false}; }
    static Binding writes(const Tensor& t) { return {t.buf, t.offset, t.nbytes(), true}; }

private:
    void encode(const std::string& kernel, const void* args, size_t args_bytes, const std::vector<Binding>& binds,
                Size3 grid, Size3 threads, size_t threadgroup_bytes = 0);
    uint32_t thread_cap(const char* kernel);  // threads per threadgroup for kernels that loop
    // out = w x, or out += w x with accumulate: the GEMV rows (gemv_rows in metal_ops.cpp) through
    // encode_gemv, the rest through encode_gemm.
    void encode_matmul(const Tensor& out, const Tensor& w, const Tensor& x, bool accumulate, RowClasses rc);
    void encode_gemv(const Tensor& out, const Tensor& w, const Tensor& x, bool accumulate);
    void encode_gemm(const Tensor& out, const Tensor& w, const Tensor& x, bool accumulate);
    // out = argmax(w x^T) by the fused GEMV, its candidates in `partials` (f32 rows of at least
    // 2 words per threadgroup: the logits' rows serve).
    void encode_gemv_argmax(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& partials);
    // matmul_swiglu (gelu false) and matmul_geglu.
    void matmul_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                    const Tensor& scratch, RowClasses rc, bool gelu);
    // matmul_id's GEMV tokens (a GEMV per slot) and GEMM tokens (slots grouped by expert, a GEMM each).
    void encode_matmul_id_gemv(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x,
                               const Tensor& ids);
    void encode_matmul_id_gemm(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x,
                               const Tensor& ids);
    // moe_group_i32 over ids into the groups scratch; the binding of the groups for the kernels that read them.
    Binding encode_moe_groups(const Tensor& ids, int n_expert);
    // ids i32 [n, k] mapped to the places of their experts in a stack stored out of order
    // (slot[e]: expert e's place): an i32 [n, k] scratch, valid until the next such call.
    Tensor encode_expert_places(const Tensor& ids, const std::vector<int32_t>& slot);
    // attention's decode kernel for a call's heads and caches: latent attention's
    // (attention_latent_f16) or the GQA kernel (attention_f16_d*), its query heads per
    // threadgroup and the fewest keys a split takes.
    struct DecodeHeads {
        bool latent = false;
        int per_threadgroup = 1;
        int32_t min_split_len = 0;
    };
    DecodeHeads decode_heads(const AttentionParams& p, const Tensor& k_cache, const Tensor& v_cache);
    // attention's two kernels over rows `at` (q, out: those rows): the decode kernel, each query's
    // keys cut into at most max_splits splits (kernel_args.h fg_attn_splits), and the prefill kernel.
    void encode_attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                 const RowPositions& at, const AttentionParams& p, const DecodeHeads& heads,
                                 int32_t max_splits);
    void encode_attention_prefill(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                  const RowPositions& at, const AttentionParams& p);
    // out = a (op) b elementwise over [n, dim] rows: silu_mul_f32, add_f32 or mul_f32.
    void encode_binary(const char* kernel, const char* op, const char* a_name, const char* b_name, const Tensor& out,
                       const Tensor& a, const Tensor& b);
    // GEMV rows: the gate and up projections and the activation in one mul_mv_swiglu pass
    // (gelu: GeGLU); false where that kernel does not apply (the caller falls back).
    bool encode_fused_glu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x, bool gelu);
    // out = rms_norm(x) * w, or out += it with accumulate; the LayerNorm with center: rms_norm_f32.
    void encode_rms_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps, bool accumulate,
                         bool center = false);
    // x = f(x, value) in place over [n, dim] rows: scale_f32 or softcap_f32.
    void encode_unary(const char* kernel, const Tensor& x, float value);
    // A device buffer of at least `bytes` for attention partials, alive until the next wait().
    Buffer* attention_scratch(size_t bytes);
    // The same for matmul_id's slots grouped by expert (moe_group_i32's output).
    Buffer* moe_groups_scratch(size_t bytes);
    Buffer* grow_scratch(std::unique_ptr<Buffer>& slot, size_t bytes);
    // Blocks until the command buffers up to `ticket` are done; frees the scratch they used.
    void wait_for(uint64_t ticket);

    std::unique_ptr<Device> dev_;
    int host_threads_;
    std::unique_ptr<cpu::ThreadPool> host_pool_;  // host_parallel_for's, made on first use
    HazardTracker hazards_;
    // begin() opens a command buffer only here; the device's starts with its first dispatch,
    // so host writes between begin() and the first op (the decode step's token upload) need
    // not wait for anything, and an empty command buffer is never committed.
    bool open_ = false;      // between begin() and commit()
    bool encoded_ = false;   // the device's command buffer holds dispatches not yet committed
    // Command buffers committed so far, and how many of them are known to be done (the
    // device's commits are counted the same way: wait_until takes this number).
    uint64_t committed_ = 0, completed_ = 0;
    // Lifetimes (the device's command buffers do not retain their buffers): the model owns
    // every buffer it binds for its whole life and waits before freeing them; scratch owned
    // here is replaced only by retiring the old buffer until the last command buffer that can
    // bind it (the open one: committed_ + 1) is done.
    std::unique_ptr<Buffer> scratch_;
    std::unique_ptr<Buffer> moe_groups_;
    std::unique_ptr<Buffer> expert_places_;  // encode_expert_places' output
    std::map<std::vector<int32_t>, std::unique_ptr<Buffer>> expert_place_tables_;  // i32 [n_expert] per stored order
    struct Retired {
        uint64_t last_use;  // ticket of the last command buffer that may bind it
        std::unique_ptr<Buffer> buf;
    };
    std::vector<Retired> retired_;
    int64_t n_dispatches_ = 0;
    int64_t n_barriers_ = 0;
};

}  // namespace forgert::metal
