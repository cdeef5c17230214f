// The backend interface: memory plus the handful of ops a Llama-family forward
// pass needs. The model's forward pass is written once against it.
//
// Ops enqueue work; results are visible to the host only after wait(). A GPU
// backend records everything between begin() and commit() into one command
// buffer (or graph); the CPU backend runs each op immediately on its thread pool.
//
// Conventions: activations are f32 row-major [n_tokens, features]; weights are
// [out_features, in_features] of any weight dtype; the KV cache is f16
// [n_ctx, n_kv_heads * head_dim] per layer; token ids and argmax results are i32.
#pragma once

#include <cstdint>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace forgert {

struct RopeKvParams {
    int n_heads = 0;       // query heads
    int n_kv_heads = 0;    // key/value heads
    int head_dim = 0;
    bool neox = false;     // false: rotate adjacent pairs (x0,x1),(x2,x3)... (GGUF llama, permuted weights)
                           // true: rotate (x[i], x[i + rope_dim/2]) (HF checkpoints, Qwen2 GGUF)
    int rope_dim = 0;      // the first rope_dim dims of each head rotate, pairs as above taken within
                           // them (partial rotary, llama.cpp's n_rot); the rest pass through.
                           // 0: all of head_dim; even, <= head_dim
    bool nope = false;     // no rotation at all (SmolLM3's NoPE layers): k and v are only cached
    float attn_factor = 1.0f;  // multiplies cos and sin (YaRN's mscale, LongRoPE's scaling factor)
    // Llama 4 / Mistral 3 query temperature: each query row (all its dims, after the rotation)
    // times q_temperature(pos) = 1 + q_temp_beta ln(floor(pos / q_temp_floor) + 1), which is 1
    // below position q_temp_floor; off when q_temp_beta is 0.
    float q_temp_beta = 0.0f;
    int q_temp_floor = 0;
    // V is read from the K cache's rows (latent attention caches one row per token): v and
    // v_cache are unused and nothing is written for V.
    bool v_from_k = false;

    int rotated_dims() const { return nope ? 0 : (rope_dim > 0 ? rope_dim : head_dim); }
    float q_temperature(int64_t pos) const {
        if (q_temp_beta == 0.0f || pos < q_temp_floor) return 1.0f;
        return (float)(1.0 + (double)q_temp_beta * std::log((double)(pos / q_temp_floor) + 1.0));
    }
};

struct AttentionParams {
    int n_heads = 0;
    int n_kv_heads = 0;    // n_heads % n_kv_heads == 0 (GQA)
    int head_dim = 0;
    float scale = 1.0f;    // usually 1/sqrt(head_dim)
    int window = 0;        // > 0: sliding-window attention, the query at position p sees keys
                           // p - window + 1 .. p (Mistral); 0: all keys 0 .. p
    float softcap = 0.0f;  // > 0: each score s = scale * q.k becomes softcap * tanh(s / softcap)
                           // before the softmax (Gemma 2's attention-logit soft-capping); 0: none
    const Tensor* sinks = nullptr;  // f32 [n_heads] or null: a learned logit per head that joins
                                    // the softmax denominator only (gpt-oss's attention sinks)
};

// Which kernels the rows of a pass take (the matmul ops' input rows, attention's query rows),
// so that a row's result does not depend on the other rows of its pass (docs/design.md "Batch
// invariance"). Rows [0, n_decode) are decode rows (a sequence's next token, or a prompt's last
// token, evaluated as a decode step); the others are prompt-prefix rows (K/V for later tokens;
// their logits are not sampled). matmul_id counts
// tokens (rows of ids), so slots i*k + j with i < n_decode are decode slots.
// The CPU backend runs decode rows through its few-token kernels, in runs of at most
// kMaxDecodeRun rows (each row's bits those of the row alone), and prefix rows through its
// prefill GEMM whatever their number (each row's bits independent of the chunk it came in);
// its attention gives a prefix row's query the same kernel whatever its block of rows.
// The Metal backend runs decode rows through its GEMV and its decode attention kernel cut as for
// one query, prefix rows through its GEMM and its prefill attention kernel, whatever their number.
// By count (n_decode < 0, the default): the backend picks kernels by the number of rows alone.
struct RowClasses {
    int64_t n_decode = -1;  // < 0: by count

    static RowClasses by_count() { return {}; }
    static RowClasses decode(int64_t n) { return {n}; }  // rows [0, n) decode, the rest prefix
    static RowClasses prefix() { return {0}; }           // every row a prompt-prefix row
    bool by_row_count() const { return n_decode < 0; }
};
constexpr int64_t kMaxDecodeRun = 15;  // decode rows per few-token kernel call (the GEMM starts at 16)

// Where each query row of a pass sits: its position in its sequence and the first cache row
// of its sequence (its KV slot). rope_kv_write and attention take it, so one call serves the
// rows of every sequence in a batch, each row seeing only its own sequence's cache rows.
// One sequence is the degenerate table: rows at pos0, pos0 + 1, ... from cache row 0, no
// table at all (an int converts to it).
struct RowPositions {
    RowPositions(int pos0 = 0) : pos0(pos0) {}  // NOLINT: one sequence at pos0
    RowPositions(const Tensor& table, int max_len, int max_run)
        : table(&table), max_len(max_len), max_run(max_run) {}

    int pos0 = 0;                   // without a table: row i at position pos0 + i, cache base 0
    const Tensor* table = nullptr;  // i32 [n, 2]: row i's (position, first cache row of its sequence);
                                    // query row i sees cache rows base .. base + position (causal in
                                    // its sequence) and its k, v go to row base + position
    int max_len = 0;                // with a table: 1 + its largest position (sizes work on a GPU)
    int max_run = 0;                // with a table: the most consecutive rows of one sequence at
                                    // consecutive positions (a prompt chunk; a GPU picks kernels by it)
    RowClasses classes;             // which rows are decode rows (by count by default)
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;

    // --- memory ---
    virtual std::unique_ptr<Buffer> alloc(size_t bytes) = 0;
    // Zero-copy view of host memory that outlives the buffer (the mmap'd model). `largest`:
    // the bytes of the largest tensor that will be read from it (a GPU that must split the
    // range into several buffers overlaps them by that much).
    virtual std::unique_ptr<Buffer> wrap_host(void* ptr, size_t bytes, size_t largest) = 0;
    // Host <-> buffer copies; call between wait() and the next op.
    virtual void write(const Tensor& dst, const void* src, size_t bytes) = 0;
    virtual void read(void* dst, const Tensor& src, size_t bytes) = 0;

    // --- command stream ---
    virtual void begin() {}
    virtual void commit() {}   // may be called several times: lets a GPU start early
    virtual void wait() {}

    // --- host work beside the device ---
    // Calls fn(begin, end) for ranges covering [0, n), on the backend's host threads where it has
    // them (the CPU backend's pool), else once on this thread: host reductions of results read
    // back (a scored prompt's rows). Not a device op: it runs now.
    virtual void host_parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
        if (n > 0) fn(0, n);
    }

    // --- pipelining (a GPU encodes the next step while the last one runs) ---
    // True when ops are only recorded until commit (a GPU): an input written after its ops
    // were encoded but before commit is what they read. False: each op runs when called.
    virtual bool encodes_ahead() const { return false; }
    // A ticket for the work committed so far (0 on a backend that runs ops at once).
    virtual uint64_t committed() const { return 0; }
    // Copies src once the work up to `ticket` is done, without waiting for work committed
    // after it (or committing what is encoded): the caller promises that no later work
    // writes src.
    virtual void read_after(uint64_t ticket, void* dst, const Tensor& src, size_t bytes) {
        (void)ticket;
        read(dst, src, bytes);
    }
    // Writes dst for work encoded but not yet committed (which reads dst only once it is
    // committed), without committing it: the caller promises that no committed work still
    // reads or writes dst. This is how a token sampled on the host reaches a step encoded
    // before it was known.
    virtual void write_before_commit(const Tensor& dst, const void* src, size_t bytes) { write(dst, src, bytes); }
    // Buffers that live as long as the model and serve every pass (weights, KV cache,
    // activations): a GPU makes them resident once rather than per command buffer.
    virtual void make_resident(const Buffer* const* bufs, size_t n) { (void)bufs, (void)n; }
    // A 2-D weight as this backend's kernels read it best, called once per weight at load:
    // w itself (the default, and for types the backend reads as the file lays them out), or a
    // repacked copy in a buffer appended to `owned` (then w's bytes are never read again, and
    // the backend may release their pages). Every op of the backend reads the returned tensor.
    virtual Tensor prepare_weight(const Tensor& w, std::vector<std::unique_ptr<Buffer>>& owned) {
        (void)owned;
        return w;
    }

    // --- ops ---
    // dst[i, :] = src[i, :], bytes as they are (any dtype, both the same type and shape; the
    // two may not overlap). A KV slot's rows copied to another (n > 1 choices of one prompt).
    virtual void copy(const Tensor& dst, const Tensor& src) = 0;
    // out[i, :] = f32(table[ids[i], :]); table of any weight dtype; zeros for an id outside the
    // table (the engine refuses such ids from the host; a pipelined greedy step reads its token
    // from the device, where a previous argmax may have left a negative sentinel).  out [n, dim]
    virtual void get_rows(const Tensor& out, const Tensor& table, const Tensor& ids) = 0;
    // out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w                     x, out [n, dim]; w [dim]
    // out may alias x (a row is read whole before it is written; OLMo 2's QK-norm runs in place).
    virtual void rms_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) = 0;
    // LayerNorm without a bias (Cohere): m = mean(x[i, :]),
    // out[i, :] = (x[i, :] - m) / sqrt(mean((x[i, :] - m)^2) + eps) * w       x, out [n, dim]; w [dim]
    virtual void layer_norm(const Tensor& out, const Tensor& x, const Tensor& w, float eps) = 0;
    // out[i, r] = sum_c w[r, c] * x[i, c]                    w [rows, cols]; x [n, cols]; out [n, rows]
    // Accuracy: as with f32 activations (a backend that rounds x for integer dot
    // products must keep ~16 bits of it, see cpu_kernels.h BlockQ8Act).
    // rc: which rows are decode rows (RowClasses above); every matmul op below takes one.
    virtual void matmul(const Tensor& out, const Tensor& w, const Tensor& x, RowClasses rc = {}) = 0;
    // Several matmuls of one input (Q, K and V; gate and up): outs[i] = ws[i] x^T.
    // A backend may share the input's preparation and one parallel region among them.
    virtual void matmul_many(const Tensor* outs, const Tensor* ws, int n, const Tensor& x, RowClasses rc = {}) {
        for (int i = 0; i < n; i++) matmul(outs[i], ws[i], x, rc);
    }
    // out += w x^T: a projection with the residual add fused in.  out [n, rows]; w [rows, cols]; x [n, cols]
    // scratch [n, rows] may be overwritten: a backend without the fused form computes into it.
    virtual void matmul_add(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& scratch,
                            RowClasses rc = {}) {
        matmul(scratch, w, x, rc);
        add(out, out, scratch);
    }
    // out = silu(w_gate x^T) * (w_up x^T): the first half of a SwiGLU feed-forward.
    // out, scratch [n, rows]; w_gate, w_up [rows, cols]; x [n, cols]; scratch may be overwritten.
    virtual void matmul_swiglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                               const Tensor& scratch, RowClasses rc = {}) {
        const Tensor outs[2] = {out, scratch}, ws[2] = {w_gate, w_up};
        matmul_many(outs, ws, 2, x, rc);
        silu_mul(out, out, scratch);
    }
    // out = gelu_tanh(w_gate x^T) * (w_up x^T): the first half of a GeGLU feed-forward (Gemma).
    // Shapes and scratch as matmul_swiglu.
    virtual void matmul_geglu(const Tensor& out, const Tensor& w_gate, const Tensor& w_up, const Tensor& x,
                              const Tensor& scratch, RowClasses rc = {}) {
        const Tensor outs[2] = {out, scratch}, ws[2] = {w_gate, w_up};
        matmul_many(outs, ws, 2, x, rc);
        gelu_mul(out, out, scratch);
    }
    // x[i, :] += b                                                              x [n, dim]; b f32 [dim]
    virtual void add_bias(const Tensor& x, const Tensor& b) = 0;
    // x += rms_norm(y) * w: a post-norm with its residual add (Gemma's sandwich norms), where the
    // fused projection-and-add cannot go.  x, y [n, dim]; w f32 [dim]; y may be overwritten.
    virtual void add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, float eps) {
        rms_norm(y, y, w, eps);
        add(x, x, y);
    }
    // RMSNorm over each head of x, in place, before RoPE (Qwen3's QK-norm): x viewed as
    // [n * heads, head_dim] rows, each row r of it x[r] / sqrt(mean(x[r]^2) + eps) * w.
    // x f32 [n, heads * head_dim], rows contiguous; w f32 [head_dim]. The rows of a head are
    // rms_norm's rows, so every backend's rms_norm serves (in place is safe there: a row is
    // read whole before it is written); see docs/design.md for why it is not fused into RoPE.
    void head_rms_norm(const Tensor& x, const Tensor& w, float eps);

    // Everything between the QKV projection and attention, fused: rotate each head of q and
    // k (in place) by RoPE, row i's pair j by angle (pos_i * freqs[j]) with cos and sin
    // times p.attn_factor, then store k and v as f16 at cache row base_i + pos_i
    // (k_cache[base_i + pos_i, :] = f16(k[i, :]) after the rotation); pos_i, base_i from `at`.
    // One dispatch on a GPU; one parallel region on the CPU, for all the sequences of a batch.
    // q [n, n_heads * head_dim]; k, v [n, kv_dim]; caches f16 [n_ctx (x slots), kv_dim];
    // freqs f32 [p.rotated_dims() / 2] (unused when p.nope). p.n_kv_heads == 0: q alone is
    // rotated, k, v and the caches unused (a Gemma 4 layer reading another layer's K/V).
    // p.v_from_k: k alone is cached, v and v_cache unused (latent attention, whose V is K's rows).
    virtual void rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& k_cache,
                               const Tensor& v_cache, const Tensor& freqs, const RowPositions& at,
                               const RopeKvParams& p) = 0;
    // Causal attention: query i (at position pos_i of the sequence whose cache rows start at
    // base_i) attends to cache rows base_i + 0 .. base_i + pos_i (the last p.window of them
    // with a sliding window).
    // q, out [n, n_heads * head_dim]; k_cache, v_cache f16 [n_ctx (x slots), n_kv_heads * head_dim].
    virtual void attention(const Tensor& out, const Tensor& q, const Tensor& k_cache,
                           const Tensor& v_cache, const RowPositions& at, const AttentionParams& p) = 0;
    // out = silu(gate) * up, elementwise                              all [n, dim]
    virtual void silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) = 0;
    // out = a + b, elementwise (out may alias a)                      all [n, dim]
    virtual void add(const Tensor& out, const Tensor& a, const Tensor& b) = 0;
    // out = a * b, elementwise (out may alias a or b; a and b may be strided column views of one
    // tensor, as LFM2's short convolution gates its projection; b may be one row repeated, stride
    // 0, as Gemma 3n scales its corrected stream by a weight)    all f32 [n, dim]
    virtual void mul(const Tensor& out, const Tensor& a, const Tensor& b) = 0;
    // out = gelu_tanh(gate) * up, elementwise (GeGLU: Gemma's feed-forward), with
    // gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))        all [n, dim]
    virtual void gelu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) = 0;
    // x = gelu_tanh(x), in place (a plain GELU feed-forward: StarCoder2)     x [n, dim]
    virtual void gelu(const Tensor& x) = 0;
    // x = max(x, 0)^2, in place (a plain ReLU-squared feed-forward: Arcee)   x [n, dim]
    virtual void relu_sq(const Tensor& x) = 0;
    // Gemma 3n's activation sparsity (its first layers' gate): with m, sd the mean and the population
    // standard deviation of row i, x[i, :] = max(x[i, :] - (m + sd * std_mult), 0), in place.
    // std_mult is the normal distribution's quantile of the target sparsity.        x f32 [n, dim]
    virtual void gaussian_topk(const Tensor& x, float std_mult) = 0;
    // Gemma 3n's AltUp magnitude matching: out[i, :] = x[i, :] * sqrt(mean(target[i, :]^2)) /
    // sqrt(max(mean(x[i, :]^2), 1e-5)). out may alias x; any of them strided column views.
    //                                                                   all f32 [n, dim]
    virtual void rms_match(const Tensor& out, const Tensor& x, const Tensor& target) = 0;
    // Gemma 3n's AltUp mixing of streams: out[i, c] = base[i, c] + sum_k coefs[i, k] * xs[i, k * dim + c]
    // for k < K (xs holds K streams side by side per row). out may alias base, not xs.
    // out, base f32 [n, dim]; xs f32 [n, K * dim]; coefs f32 [n, K] (a column view of a wider row)
    virtual void altup_mix(const Tensor& out, const Tensor& xs, const Tensor& coefs, const Tensor& base) = 0;
    // out[i] = ids[i] if 0 <= ids[i] < limit else 0: token ids for a table of `limit` rows (Gemma 3n's
    // per-layer embeddings cover the text vocabulary only; transformers looks its other ids up as 0).
    //                                                               ids, out i32 [n, 1] (contiguous)
    virtual void clamp_ids(const Tensor& out, const Tensor& ids, int32_t limit) = 0;
    // x *= s, in place (Gemma's embeddings times sqrt(dim))             x [n, dim]
    virtual void scale(const Tensor& x, float s) = 0;
    // x = cap * tanh(x / cap), in place (Gemma 2's final-logit soft-capping)  x [n, dim]
    virtual void softcap(const Tensor& x, float cap) = 0;
    // out[i] = argmax_j x[i, j]: the first index of the largest, -inf never winning; but a negative
    // sentinel for a row without a token to pick: kArgmaxNaN if it holds a NaN, else kArgmaxInf if
    // it holds +inf, else kArgmaxNone if nothing is above -inf. Such logits mean the arithmetic
    // overflowed or a weight is broken; +inf is refused too (not taken as a sure winner) because the
    // samplers refuse it, and a greedy token should not exist where a sampled one cannot. The host
    // turns a sentinel into an error naming it (forgert/greedy.py). The check is an OR of bit tests
    // folded into the reduction: free beside the row's read.     x [n, vocab]; out i32 [n]
    static constexpr int32_t kArgmaxNaN = -1, kArgmaxInf = -2, kArgmaxNone = -3;
    virtual void argmax(const Tensor& out, const Tensor& x) = 0;
    // out = argmax(w x^T) row by row (argmax's rule and sentinels): greedy tokens whose logits nobody
    // reads. A backend may fuse the two and never write the logits (Metal's decode rows); logits is scratch either way (its
    // contents after the call unspecified).   out i32 [n, 1]; w [vocab, dim]; x f32 [n, dim]; logits f32 [n, vocab]
    virtual void matmul_argmax(const Tensor& out, const Tensor& w, const Tensor& x, const Tensor& logits,
                               RowClasses rc = {}) {
        matmul(logits, w, x, rc);
        argmax(out, logits);
    }

    // --- mixture of experts (a backend without them refuses MoE models by name) ---
    virtual bool has_moe_ops() const { return false; }
    // Why matmul_id cannot read this expert stack, or "" when it can (checked once at load).
    virtual std::string expert_stack_problem(const Tensor* experts, int n_expert) const { return ""; }
    // An expert stack (one view per expert) as matmul_id reads it, called once per stack at load:
    // the views as they are (the default), or, where this backend's kernels cannot read them as
    // they lie (expert_stack_problem), copies in a buffer appended to `owned`. HF checkpoints
    // store each expert as its own tensor in name order (expert 10 before expert 2) and may split
    // a layer's experts across shards; a GPU that finds expert e at one stride copies those.
    virtual void prepare_experts(std::vector<Tensor>& experts, std::vector<std::unique_ptr<Buffer>>& owned) {
        (void)experts, (void)owned;
    }
    // The router after its matmul. Per token i, each expert's score s_e: p = softmax(logits[i, :])
    // (Mixtral, Qwen-MoE, ERNIE 4.5), or p_e = sigmoid(logits[i, e]) with routing.sigmoid
    // (DeepSeek V3, GLM-4.5). Choice c_e = s_e + select_bias[e] (a learned bias steering the choice
    // only; none when select_bias has no rows). With routing.n_group > 1 the experts fall in n_group equal
    // groups, each scored by the sum of its two largest c_e, and only the topk_group groups of
    // largest score (the lower group first on ties) are chosen from. ids[i, :] = the k = ids.cols
    // experts of largest c, largest first (the lower id first on ties); weights[i, j] =
    // s[ids[i, j]] (unbiased), divided by the k weights' sum when routing.renormalize (which for
    // the softmax is Mixtral's softmax over the selected logits), times routing.scale.
    // logits f32 [n, n_expert]; ids i32 [n, k]; weights f32 [n, k]; k <= n_expert; select_bias f32 [n_expert]
    struct MoeRouting {
        bool sigmoid = false;
        bool renormalize = true;
        float scale = 1.0f;
        int n_group = 1, topk_group = 1;  // n_group <= 64
    };
    virtual void moe_route(const Tensor& weights, const Tensor& ids, const Tensor& logits, const MoeRouting& routing,
                           const Tensor& select_bias = Tensor{}) {
        no_moe();
    }
    // A matmul per selected expert: out[i*k + j, :] = experts[ids[i, j]] x[r, :]^T with r = i
    // when x has n rows (gate, up: each selected expert reads the token's row) and r = i*k + j
    // when x has n*k rows (down: each slot reads its own row). Reads only the selected experts'
    // weights; many tokens are grouped by expert, one matmul per used expert over the gathered rows.
    // experts: n_expert tensors [rows, cols] of one type; ids i32 [n, k] (each in 0..n_expert);
    // x f32 [n or n*k, cols]; out f32 [n*k, rows]
    virtual void matmul_id(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x,
                           const Tensor& ids, RowClasses rc = {}) {
        no_moe();
    }
    // out[i, :] += sum_j weights[i, j] * y[i*k + j, :]      out [n, dim]; y [n*k, dim]; weights [n, k]
    virtual void moe_sum_add(const Tensor& out, const Tensor& y, const Tensor& weights) { no_moe(); }
    // x[i, :] *= sigmoid(gate[i, 0])                         x [n, dim]; gate [n, 1] (Qwen2-MoE's shared expert)
    virtual void scale_sigmoid(const Tensor& x, const Tensor& gate) { no_moe(); }
    // gpt-oss's clamped SwiGLU (transformers' GptOssExperts._apply_gate), elementwise:
    // g = min(gate, limit), u = clamp(up, -limit, limit), out = (u + 1) * g * sigmoid(alpha * g).
    // all f32 [n, dim]; out may alias gate or up
    virtual void swiglu_oai(const Tensor& out, const Tensor& gate, const Tensor& up, float alpha, float limit) {
        no_moe();
    }
    // Each slot's expert bias: x[i*k + j, :] += b[ids[i, j], :]    x f32 [n*k, dim]; b f32 [n_expert, dim]; ids i32 [n, k]
    virtual void add_bias_id(const Tensor& x, const Tensor& b, const Tensor& ids) { no_moe(); }

    // --- recurrent layers: Gated DeltaNet (Qwen3.5, Qwen3-Next), short convolutions (LFM2) ---
    // Both ops walk each sequence's rows in order, carrying a per-sequence state between passes
    // in one row of a state tensor per layer (its KV slot's row). `runs` i32 [n_runs, 4]: run r is
    // (state row, first row of the pass, rows, fresh); rows row0 .. row0 + n - 1 are one sequence's
    // consecutive tokens, oldest first; fresh != 0: the sequence starts here (position 0) and its
    // state starts at zero, else from the state row. Several runs may share a state row (a prompt
    // split into its decode and prefix parts): they continue each other in table order. The
    // table lives in the backend's memory (a GPU reads it); its host copy is not consulted.
    //
    // Causal depthwise convolution carrying the last K - 1 inputs: for run r and channel c, with
    // the window h = [state (K - 1 rows, zeros when fresh); x's rows of the run],
    // out[row0 + t, c] = act(sum_j w[c, j] h[t + j, c] + bias[c]) for t < n, act = SiLU (Qwen3.5,
    // Mamba2) or none (silu false: LFM2), and the state becomes the window's last K - 1 rows.
    // x, out f32 [rows, C] (rows strided; out may not alias x); w f32 [C, K]; bias f32 [C] (Mamba2's
    // conv1d.bias) or empty (rows 0: none); state f32 [n_slots, (K - 1) * C] (a row: K - 1 inputs
    // of C channels, oldest first)
    virtual void conv1d_state(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                              const Tensor& state, const Tensor& runs, bool silu) {
        no_recurrent();
    }
    // The gated delta rule (transformers' torch_recurrent_gated_delta_rule with the QK L2-norm in
    // the kernel), per run, value head h and token t of the run, h's key head being
    // kh = h / (n_v_heads / n_k_heads) (HF's grouped value heads) or h % n_k_heads (v_tiled: the
    // order llama.cpp's converter writes):
    //   qh = q[t, kh] / sqrt(sum q^2 + eps) / sqrt(k_dim);  kk = k[t, kh] / sqrt(sum k^2 + eps)
    //   decay = exp(A[h] * softplus(alpha[t, h] + dt_bias[h]));  b = sigmoid(beta[t, h])
    //   S = decay S;  S += kk (b (v[t, h] - S^T kk))^T;  out[t, h] = S^T qh
    // with S h's state, [k_dim, v_dim] row-major (HF's recurrent_state[b, h]).
    // q, k f32 [rows, n_k_heads * k_dim]; v, out f32 [rows, n_v_heads * v_dim] (strided views of
    // one convolution output may serve; out its own); alpha, beta f32 [rows, n_v_heads] (the raw
    // projections); A, dt_bias f32 [n_v_heads]; state f32 [n_slots, n_v_heads * k_dim * v_dim]
    struct DeltaNetParams {
        int n_k_heads = 0, n_v_heads = 0, k_dim = 0, v_dim = 0;  // n_v_heads % n_k_heads == 0
        bool v_tiled = false;
        float eps = 1e-6f;  // the L2-norm's
    };
    virtual void gated_delta_rule(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& alpha, const Tensor& beta, const Tensor& A, const Tensor& dt_bias,
                                  const Tensor& state, const Tensor& runs, const DeltaNetParams& p) {
        no_recurrent();
    }
    // Mamba2's selective state scan (transformers' mamba2 torch_forward / segment-sum path, one
    // token at a time), per run, head h and token t, h's group being g = h / (n_heads / n_groups)
    // (HF's repeat_interleave of B and C over the heads):
    //   d = softplus(dt[t, h] + dt_bias[h]);  S = exp(d A[h]) S + d x[t, h] B[t, g]^T
    //   out[t, h] = S C[t, g] + D[h] x[t, h]
    // with S h's state, [head_dim, d_state] row-major (HF's ssm_states[b, h]); A is the negative
    // decay rate (-exp(A_log): what llama.cpp's converter stores).
    // x, out f32 [rows, n_heads * head_dim] (x and B, C may be strided views of one convolution
    // output; out its own); B, C f32 [rows, n_groups * d_state]; dt f32 [rows, n_heads] (the raw
    // projection); A, D, dt_bias f32 [n_heads]; state f32 [n_slots, n_heads * head_dim * d_state]
    struct Mamba2Params {
        int n_heads = 0, head_dim = 0, n_groups = 0, d_state = 0;  // n_heads % n_groups == 0
    };
    virtual void mamba2_scan(const Tensor& out, const Tensor& x, const Tensor& B, const Tensor& C, const Tensor& dt,
                             const Tensor& A, const Tensor& D, const Tensor& dt_bias, const Tensor& state,
                             const Tensor& runs, const Mamba2Params& p) {
        no_recurrent();
    }
    // x *= sigmoid(gate), elementwise (Qwen3.5's gated attention output)   x f32 [n, d]; gate f32 [n, d] (strided)
    virtual void mul_sigmoid(const Tensor& x, const Tensor& gate) { no_recurrent(); }
    virtual bool has_recurrent_ops() const { return false; }

private:
    [[noreturn]] void no_recurrent() const {
        throw InputError("the " + name() + " backend has no recurrent-layer (Gated DeltaNet, short convolution, Mamba2) ops");
    }
    [[noreturn]] void no_moe() const {
        throw InputError("the " + name() + " backend has no mixture-of-experts ops");
    }
};

// Why a router choosing k of n_expert experts by `routing` cannot run, or "" when it can: a
// positive scale; n_group (at most 64) dividing n_expert, topk_group in 1..n_group, and with
// groups, 2+ experts a group and the chosen groups holding k. The one statement of these rules,
// for the op and for a model's config alike.
std::string moe_routing_problem(const Backend::MoeRouting& routing, int64_t n_expert, int64_t k);

// Throws InputError unless moe_route's arguments fit together: k in 1..n_expert, the shapes,
// moe_routing_problem's rules and the selection bias (f32 [n_expert]).
void check_moe_route(const Tensor& weights, const Tensor& ids, const Tensor& logits, const Backend::MoeRouting& routing,
                     const Tensor& select_bias);

// Throws InputError unless the recurrent ops' arguments fit together: the run table (i32 [n_runs, 4],
// state rows in range, runs within x's rows and disjoint), the shapes above, K >= 1. Shared by
// every backend's conv1d_state / gated_delta_rule / mamba2_scan. host_runs: the table's host copy where the
// backend has one (the CPU's), to check its contents; null skips that.
void check_conv1d_state(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& state,
                        const Tensor& runs, const int32_t* host_runs);
void check_mamba2_scan(const Tensor& out, const Tensor& x, const Tensor& B, const Tensor& C, const Tensor& dt,
                       const Tensor& A, const Tensor& D, const Tensor& dt_bias, const Tensor& state, const Tensor& runs,
                       const Backend::Mamba2Params& p, const int32_t* host_runs);
void check_delta_rule(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& alpha,
                      const Tensor& beta, const Tensor& A, const Tensor& dt_bias, const Tensor& state, const Tensor& runs,
                      const Backend::DeltaNetParams& p, const int32_t* host_runs);

// Throws InputError unless copy(dst, src) applies: the same dtype and shape, no overlap.
void check_copy(const Tensor& dst, const Tensor& src);

// Creates a backend by name ("cpu", "metal"); n_threads <= 0 means all cores.
// Throws InputError naming the available backends for an unknown name.
std::unique_ptr<Backend> make_backend(const std::string& name, int n_threads);

}  // namespace forgert
