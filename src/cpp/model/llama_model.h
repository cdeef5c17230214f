// The Llama-family forward pass, written once against the Backend interface:
// it serves decode (one token) and batched prefill (many tokens) alike.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <vector>

#include "config.h"
#include "core/backend.h"
#include "row_scores.h"
#include "weights.h"

namespace forgert {

// f16 key and value caches, one pair per layer, of n_slots sequences: slot s owns rows
// s * n_ctx .. (s + 1) * n_ctx - 1, its position p at row s * n_ctx + p.
struct KvCache {
    std::vector<std::unique_ptr<Buffer>> buffers;
    std::vector<Tensor> k, v;  // per layer: f16 [n_slots * n_ctx, kv_dim]
};

// One sequence's share of a batched pass: its n tokens at positions pos .. pos + n - 1 of
// KV slot `slot` (a decoding sequence: n = 1; a prefill chunk: n > 1).
struct BatchEntry {
    int slot = 0;
    const int32_t* tokens = nullptr;  // [n]
    int n = 0;
    int pos = 0;
    RowScores* scores = nullptr;  // or null: every row's logits score the token after it (a prompt's
                                  // logprobs), filled by the pass beside its other outputs
    bool prompt_prefix = false;   // a chunk of a prompt's prefix (K/V for later tokens) even when n == 1
    int scores_from = 0;          // the row of `scores` that this entry's first row is (a split entry's)
    // Every row a decode row, whatever its position: a sequence's next token and the draft
    // tokens after it, verified in one pass (LlamaModel::forward_rows_argmax), each row's bits
    // as if it had been decoded alone.
    bool decode_run = false;

    // The rows whose logits (or tokens) the pass gives back: a decode run's every row, any other
    // entry's last.
    int output_rows() const { return decode_run ? n : 1; }

    // How many of its leading rows are decode rows (core/backend.h RowClasses; docs/design.md
    // "Batch invariance"), the rest prefix rows. One token is a decode row (a sequence's next
    // token, or a prompt's last), unless it is a one-token prefix chunk; several tokens are a
    // prefix chunk, except its rows at positions below kMaxDecodeRun, which are decode rows as
    // well: a row's kernels depend only on its class and position, so a short prompt's prefix
    // keeps the decode kernels (the GEMM costs far more for a few rows) and K/V do not depend on
    // how a prompt was cut into chunks. Decode rows take the few-token kernels (bits as alone),
    // prefix rows the GEMM.
    int decode_rows() const {
        if (decode_run || (n == 1 && !prompt_prefix)) return n;
        return (int)std::min<int64_t>(n, std::max<int64_t>(0, kMaxDecodeRun - pos));
    }
};

class LlamaModel {
public:
    // max_batch: tokens evaluated per pass; longer inputs are split into passes.
    // n_slots: sequences the KV cache holds at once (n_ctx positions each).
    LlamaModel(const ModelConfig& cfg, ModelWeights weights, std::unique_ptr<Backend> backend, int max_batch = 512,
               int n_slots = 1);
    // Waits for the work in flight first: command buffers do not keep the buffers they bind alive.
    ~LlamaModel();

    const ModelConfig& config() const { return cfg_; }
    Backend& backend() { return *be_; }

    // Evaluates tokens[0..n) at positions pos..pos+n-1 (overwriting the KV cache
    // from pos on) and writes logits: of the last token ([vocab]) or, with
    // all_logits, of every token ([n, vocab]); logits == nullptr computes none (prefill
    // of the KV cache only). Throws InputError on bad ids or positions.
    void forward(const int32_t* tokens, int n, int pos, bool all_logits, float* logits);
    // The same pass, writing the final hidden states (after the output norm, the output
    // projection's input) instead of logits: of the last token ([dim]) or, with all_rows, of
    // every token ([n, dim]). What embedding models built on a decoder (Qwen3-Embedding,
    // gte-Qwen2, e5-mistral) pool.
    void forward_hidden(const int32_t* tokens, int n, int pos, bool all_rows, float* hidden);
    // The same, returning the argmax of the last token's logits computed on the device.
    int forward_argmax(const int32_t* tokens, int n, int pos);

    // One pass over several sequences, each in its own KV slot (distinct slots, at most
    // max_batch tokens in all): the projections and feed-forward run once over every entry's
    // rows, RoPE and attention per entry on its slot. Decode rows run first whatever the entries'
    // order (BatchEntry::decode_rows); outputs stay in entry order. Writes the logits of each entry's
    // output rows (BatchEntry::output_rows: a decode run's every row, another entry's last row),
    // [sum of output rows, vocab] (none when logits is null). forward() is this with the single
    // entry {slot 0}. Entries with scores get their rows scored too (kScoreBlock rows at a time:
    // the logits of a whole prompt chunk never exist at once).
    void forward_batch(const BatchEntry* entries, int n_entries, float* logits);
    // The same, writing the argmax of each output row's logits ([sum of output rows]).
    void forward_batch_argmax(const BatchEntry* entries, int n_entries, int32_t* best);
    // Slot 0's tokens at pos.. as decode rows (BatchEntry::decode_run), writing the argmax of
    // every row's logits ([n], n <= kMaxVerifyRows): a token and draft tokens after it checked in
    // one pass, row i's argmax the token greedy decoding would pick after tokens[0..i]. (A batch
    // verifies several sequences' drafts at once: forward_batch_argmax with decode-run entries.)
    static constexpr int kMaxVerifyRows = 16;
    void forward_rows_argmax(const int32_t* tokens, int n, int pos, int32_t* best);
    static constexpr int kScoreBlock = 64;  // rows whose logits are scored per output projection
    static constexpr int kMaxScoreTop = 64;  // the most alternatives a scored row lists
    int n_slots() const { return n_slots_; }
    int max_batch() const { return max_batch_; }

    // Pipelined decoding of slot 0 (decode_pipeline.cpp; docs/design.md "Pipelined decoding"):
    // the host never leaves the device idle while it waits for a step, streams its token and
    // checks for a stop.
    //   decode_begin(token, pos, greedy): commits the step that evaluates `token` at pos; no wait.
    //   decode_next(launch, sample): returns the next token (of the step in flight), having first
    //     committed, when `launch`, the step that evaluates that token at the next position.
    //     greedy: the token is the step's argmax, computed on the device and read as step t+1's
    //     input there, so step t+1 is committed before the host waits for step t. Otherwise
    //     sample(logits [vocab], vocab) draws it on the host: step t+1 is encoded before the wait
    //     for step t and committed once the token is written into its input.
    //   decode_end(): waits for the step in flight (a speculative one past a stop) and ends.
    // A step launched past a stop wrote K/V at a position the caller does not count as cached:
    // it is overwritten by the next evaluation there. Any other pass ends the pipeline.
    using SampleFn = std::function<int32_t(float* logits, int vocab)>;  // may overwrite logits
    void decode_begin(int32_t token, int pos, bool greedy);
    int32_t decode_next(bool launch, const SampleFn& sample = nullptr);
    void decode_end();
    bool decode_active() const { return pipe_.active; }

    // Copies of the KV cache rows 0..n (positions already evaluated), for prompt caches that
    // keep several sequences: f16 bits [n_layers][kv_planes()][n][max_kv_dim], layer-major; a layer
    // narrower than the widest (Gemma 4's) fills the first kv_dim_of(l) columns of its rows, zeros after.
    // A saved layer's planes: K and V, or K alone where V is read from K's rows (latent attention).
    int kv_planes() const { return cfg_.v_in_k_cache() ? 1 : 2; }
    size_t kv_bytes(int n) const {
        return (size_t)cfg_.n_layers * kv_planes() * n * cfg_.max_kv_dim() * sizeof(uint16_t);
    }
    void kv_save(int n, uint16_t* dst);
    void kv_load(int n, const uint16_t* src);
    // Rows 0..n of slot src's K and V caches (every layer) into slot dst, on the device: the
    // n > 1 choices of one prompt share its prefill. Throws InputError on bad slots or n.
    void kv_copy(int src, int dst, int n);

    // Recurrent models (cfg.has_recurrent()): a slot's recurrent state holds the tokens up to a
    // position and cannot rewind, so a sequence continues only from there (or starts again at 0):
    // state_position(slot) says where (-1: nothing valid). state_save / state_load copy a slot's
    // states (state_floats() of them: every recurrent layer's convolution inputs, then its delta
    // rule state), beside kv_save / kv_load's rows (slot 0's): a saved sequence of n tokens is
    // both at n. A state saved alone is a checkpoint: loaded as holding pos tokens into a slot
    // whose K/V rows hold the same first pos tokens, the slot continues from pos.
    int state_position(int slot) const;
    size_t state_floats() const;
    void state_save(float* dst, int slot = 0);
    void state_load(const float* src, int pos, int slot = 0);

    // Optional per-stage wall times of the last call (seconds), when profiling is on.
    struct Profile { double embed = 0, layers = 0, logits = 0; };
    void set_profiling(bool on) { profiling_ = on; }
    const Profile& last_profile() const { return profile_; }

private:
    void check_input(const int32_t* tokens, int n, int pos) const;
    void check_batch(const BatchEntry* entries, int n_entries) const;
    // One pass over the entries (<= max_batch tokens in all, their rows in entry order);
    // leaves the final hidden states in x_. device_ids: i32 [n, 1] token ids already on the
    // device (the entries' tokens are then unused; a single entry); commit_early: commit the
    // first layers while the rest is encoded (not when the ids are written just before commit).
    // Each entry all decode rows or all prefix rows, the decode entries first (decode_first).
    void run_layers(const BatchEntry* entries, int n_entries, const Tensor* device_ids = nullptr,
                    bool commit_early = true);
    // The entries as run_layers takes them, into ordered_ (returned; n_ordered_ of them): an entry
    // with both classes of rows split in two, the decode entries first (stable). last_of_[e]: the
    // ordered entry holding caller entry e's last row.
    const BatchEntry* decode_first(const BatchEntry* entries, int n_entries);
    template <class T>
    void to_caller_order(const T* ordered, const BatchEntry* given, int n_given, size_t width, T* dst) const;
    // decode_pipeline.cpp: encodes the decode step of the token in `ids` at pos (and its argmax
    // into `best` when greedy).
    void encode_decode_step(const Tensor& ids, const Tensor* best, int pos, bool commit_early);
    // Final norm and output projection of the entries' output rows (BatchEntry::output_rows), into
    // logits_ rows 0..output_rows_of(entries).
    Tensor output_row_logits(const BatchEntry* entries, int n_entries);
    static int output_rows_of(const BatchEntry* entries, int n_entries);
    // The model's pre-norm and final norm: RMSNorm, or LayerNorm for Cohere (cfg_.layer_norm).
    // b: the norm's bias, added after it where the model has one (rows == 0: none).
    void norm(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& b = Tensor{});
    void finish_logits(const Tensor& out);  // logit_scale, final_softcap on the output rows
    // The same rows' greedy tokens into best (i32 [output rows, 1]), where nobody reads their logits:
    // Backend::matmul_argmax, which may never write them (logits_ rows are its scratch).
    void output_row_argmax(const BatchEntry* entries, int n_entries, const Tensor& best);
    // The final norm of the entries' output rows: xn_ rows 0..output_rows_of(entries).
    Tensor output_rows_normed(const BatchEntry* entries, int n_entries);
    // logits_ rows 0..n, the buffer grown first where it holds fewer.
    Tensor logits_rows(int n);
    // forward() and forward_hidden(): the pass in max_batch chunks, then of the last chunk (of
    // every chunk with all_rows) the normed rows, made logits unless `hidden`, read into out.
    void forward_rows(const int32_t* tokens, int n, int pos, bool all_rows, bool hidden, float* out);
    // Their row classes: the output rows of the decode entries lead.
    static RowClasses output_row_classes(const BatchEntry* entries, int n_entries);
    // After the pass has been waited on: every row of the entries with scores through the final
    // norm and output projection, kScoreBlock rows at a time, each block scored on the host while
    // the device computes the next.
    void score_entries(const BatchEntry* entries, int n_entries);
    Tensor slot_rows(const Tensor& cache, int slot) const {  // f16 [n_ctx, kv_dim_of(layer)] of one slot
        return cache.slice_rows((int64_t)slot * cfg_.n_ctx, cfg_.n_ctx);
    }
    // x += the mixture-of-experts feed-forward of xn: the router's top-k experts, weighted, plus a
    // shared expert where the config has one.                                          x, xn [n, dim]
    void moe_feed_forward(const LayerWeights& L, const Tensor& x, const Tensor& xn, int n);
    // Gemma 4's MoE layer (cfg.moe_beside_dense; gemma4_moe.cpp): x += post_ffw_norm(post_ffw_norm_1(
    // dense MLP(ffn_norm x)) + post_ffw_norm_2(experts(pre_ffw_norm_2 x))).    x, xn [n, dim] (xn: scratch)
    void gemma4_moe_feed_forward(const LayerWeights& L, const Tensor& x, const Tensor& xn, int n);
    // Per-layer embeddings (cfg.ple_dim > 0; per_layer_embeddings.cpp). per_layer_inputs: every
    // layer's inputs of the pass's tokens into ple_, from their ids and scaled embeddings x.
    //                                                 ids i32 [n, 1]; x [n, dim]; ple_ [n, n_layers * ple_dim]
    void per_layer_inputs(const Tensor& ids, const Tensor& x, int n);
    // proj(gelu(inp_gate in) * layer l's inputs), un-normed, in proj_: Gemma 4 adds its post-norm to
    // x, Gemma 3n to its other AltUp streams.                          in [n, dim]; returns [n, dim]
    Tensor per_layer_input(const LayerWeights& L, int layer, const Tensor& in, int n);
    // Gemma 3n's AltUp and LAuReL (cfg.altup_n > 0; altup.cpp). altup_streams_in: the streams from the
    // scaled embeddings x (stream 0 = x, stream j = proj_j x at x's RMS). altup_predict: each layer's
    // predictions of the streams, the active one copied into x for the layer. laurel: its low-rank
    // residual of the attention input xn (xn + post_norm(r l xn)), in laurel_out_. altup_correct: the
    // streams corrected by the layer's output x, the per-layer input added to streams 1... And
    // altup_streams_out: x = the mean of stream 0 and the unembedded others at stream 0's RMS.
    void altup_streams_in(const Tensor& x, int n);
    void altup_predict(const LayerWeights& L, const Tensor& x, int n);
    Tensor laurel(const LayerWeights& L, const Tensor& xn, int n);
    void altup_correct(const LayerWeights& L, int layer, const Tensor& x, int n);
    void altup_streams_out(const Tensor& x, int n);
    // tanh(router(rms_norm(s) / dim)): the router's modalities of one stream, in altup_mod_.  s [n, dim]
    Tensor altup_modalities(const LayerWeights& L, const Tensor& s, int n);
    // A Gated DeltaNet layer's mixer (cfg.is_delta_net(l)) of xn: the projections, the convolution
    // and the delta rule (carrying slot states through `runs`, RecurrentState), the output's
    // per-head norm times silu(z). Returns its output, ready for ssm_out.  xn [n, dim]; out [n, ssm_value_width]
    Tensor delta_net(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& runs);
    // A short-convolution layer's mixer (cfg.is_short_conv(l), LFM2) of xn: B, C, x = in_proj xn,
    // C * conv(B * x) with the convolution carrying slot states through `runs`. Returns its output,
    // ready for out_proj.                                                  xn [n, dim]; out [n, dim]
    Tensor short_conv(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& runs);
    // A Mamba2 layer's mixer (cfg.is_mamba2(l), Granite 4.0-H) of xn: z | xBC | dt = ssm_in xn, the
    // convolution (bias, SiLU) over xBC and the scan (both carrying slot states through `runs`),
    // then rms_norm(y * silu(z)) per group. Returns its output, ready for ssm_out.
    //                                                          xn [n, dim]; out [n, ssm_value_width]
    Tensor mamba2_layer(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& runs);
    // The recurrent states' run table of a pass (see Backend::conv1d_state), written for
    // the entries (rows in entry order), and each slot's state position checked: an entry must
    // start at 0 or where its slot's state stands. state_pos_ of the slots becomes -1 until the
    // pass is encoded (a pass that throws leaves no slot claiming a state).
    Tensor recurrent_runs(const BatchEntry* entries, int n_entries, bool device_ids);
    void check_state_positions(const BatchEntry* entries, int n_entries) const;
    // The recurrent states, in state_save's order: per recurrent layer its convolution's last
    // inputs, then its delta-rule state where it has one; each f32 [n_slots, floats].
    std::vector<const Tensor*> recurrent_states() const;
    // Absorbed latent attention (cfg.is_mla()): q from xn (through its low-rank pair when the model
    // has one), the latent row z = wkv_a xn ([rope key | latent], the latent RMS-normed) cached in
    // kc (one row per token), each head's query absorbed through k_b_h, attention on kc as one KV
    // head, each head's latent output through v_b_h. Returns the values [n, n_heads * mla_v_head_dim]
    // for attn_output.                                     xn [n, dim]; kc the layer's cache (or slot's)
    Tensor latent_attention(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& kc,
                            const RowPositions& at);

    ModelConfig cfg_;
    std::unique_ptr<Backend> be_;  // declared before everything it allocated: destroyed last
    ModelWeights w_;
    int max_batch_;
    int n_slots_;
    KvCache kv_;
    Tensor freqs_;  // f32 [n_rope_tables, rope_dims / 2]
    Tensor ones_;   // f32 [max_head_dim] of 1: the weight of V's weightless RMSNorm (cfg.v_norm)
    // Activations for up to max_batch tokens (rows = tokens).
    std::vector<std::unique_ptr<Buffer>> bufs_;
    std::vector<int32_t> ids_host_, out_rows_host_;  // the batch's token ids; the entries' output rows
    std::vector<int32_t> row_pos_host_;  // a batch's row table: (position, slot's first cache row) per row
    std::vector<BatchEntry> ordered_;    // decode_first's entries, decode entries first
    int n_ordered_ = 0;
    std::vector<int> last_of_;           // caller entry e's last row is ordered_[last_of_[e]]'s last
    std::vector<int> out_first_;         // ordered_[o]'s first output row among the pass's output rows
    std::vector<float> logits_host_;     // forward_batch's logits of the ordered entries
    RowClasses rows_;                    // the pass's row classes (run_layers)
    Tensor score_logits_;                // f32 [2 * kScoreBlock, vocab]: two blocks, allocated on first use
    std::vector<float> score_host_;      // f32 [kScoreBlock, vocab]: a block read back for scoring
    Tensor row_pos_;                     // i32 [max_batch, 2]: the same on the device (RowPositions)
    Tensor ids_, out_rows_, x_, xn_, q_, k_, v_, att_, proj_, gate_, up_, logits_, argmax_;  // logits_ [>= output rows, vocab]; argmax_ i32 [max_batch]
    // Mixture of experts: router logits [B, n_expert], the chosen experts i32 [B, k] and their
    // weights [B, k]; per slot (token i's j-th expert is row i*k + j) the experts' gate and up
    // [B*k, expert_ffn_dim] and outputs [B*k, dim]; the shared expert's gate logit [B, 1].
    Tensor router_logits_, route_ids_, route_w_, exp_gate_, exp_up_, exp_out_, shared_scale_;
    // Gemma 4's MoE layers: the experts' weighted sum [B, dim], zeros to start it from [B, dim],
    // each slot's expert output scale [B*k, 1].
    Tensor moe_sum_, zeros_, route_scale_;
    // Nemotron 3 Super's latent MoE: the experts' input ffn_latent_down xn and their weighted sum, [B, moe_latent_dim]
    Tensor moe_latent_in_;
    // Gated attention (attn_output_gate): the q projection [B, 2 * q_dim] and the gates [B, q_dim].
    Tensor q_gated_, attn_gate_;
    // Gated DeltaNet: the projections (qkv before the convolution [B, C], z [B, value width], the
    // beta and alpha logits [B, ssm_v_heads]), the convolution's output [B, C], the mixer's output
    // [B, value width], the run table (i32 [2 * n_slots, 4]; a pipelined step's two fixed tables
    // [2, 4]: slot 0 continuing, slot 0 fresh).
    Tensor ssm_mixed_, ssm_z_, ssm_beta_, ssm_alpha_, ssm_conv_, ssm_o_, runs_, step_runs_;
    // Short convolution: in_proj's B | C | x [B, 3 dim] (B * x goes into x's columns) and the
    // convolution's output [B, dim] (then C times it).
    Tensor sc_bcx_, sc_conv_;
    // Mamba2: ssm_in's z | xBC | dt [B, value width + C + heads], the convolution's x | B | C [B, C]
    // and the scan's output [B, value width].
    Tensor mb_proj_, mb_conv_, mb_y_;
    // Per-layer embeddings: every layer's inputs [B, n_layers * ple_dim], the model projection's
    // [B, n_layers * ple_dim], one layer's gate [B, ple_dim].
    Tensor ple_, ple_proj_, ple_gate_;
    Tensor ple_ids_;  // i32 [B]: the ids clamped to the per-layer table (cfg.ple_vocab > 0)
    // Gemma 3n (altup_n = N streams): the streams and their predictions [B, N * dim] (stream j in
    // columns j * dim..), the router's modalities [B, N], the coefficients [B, N * N], a stream's
    // contiguous copy [B, dim], ones [1, N] (the correction's + 1); LAuReL's low rank [B, rank], output [B, dim].
    Tensor streams_, pred_, altup_mod_, altup_coef_, altup_tmp_, altup_ones_, laurel_low_, laurel_out_;
    std::vector<int32_t> runs_host_;
    // Per recurrent layer (empty tensors for attention layers): the convolution's last inputs
    // f32 [n_slots, (K - 1) * C] and the delta rule's (or Mamba2's) state f32 [n_slots, ssm_v_heads *
    // k_dim * v_dim] (empty for a short convolution's layer).
    std::vector<Tensor> conv_state_, ssm_state_;
    // Tokens each slot's recurrent state has absorbed (-1: none valid); a pass on a slot starts at
    // 0 or there. Attention-only models leave it unused.
    std::vector<int> state_pos_;
    // Latent attention: the latent rows [B, mla_kv_lora + rope_dim], Q's low-rank rows [B, mla_q_lora],
    // the attention's value parts packed for wo [B, n_heads * mla_v_head_dim].
    Tensor latent_, q_low_, att_values_;
    // Absorbed attention's queries and outputs [B, n_heads * (mla_kv_lora + rope_dim)], the per-head
    // matmuls' inputs and outputs [B * n_heads, ...], and the heads' ids (i32 [B, n_heads], 0..n_heads-1).
    Tensor mla_q_, mla_att_, mla_in_, mla_out_, head_ids_;
    bool profiling_ = false;
    Profile profile_;
    uint64_t passes_ = 0;  // run_layers calls: a pipeline notices a pass that was not its own
    struct Pipeline {
        bool active = false, greedy = false;
        int pos = 0;             // position of the step in flight
        uint64_t ticket = 0;     // backend ticket of the step in flight
        uint64_t passes = 0;     // passes_ after that step was encoded
        int cur = 0;             // greedy: ring row the step in flight writes its argmax to
        Tensor ring;             // greedy: i32 [2, 1], steps alternate rows
        std::vector<float> row;  // sampled: the logits row read back [vocab]
    } pipe_;
};

}  // namespace forgert
