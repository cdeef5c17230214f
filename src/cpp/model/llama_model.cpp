#include "llama_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace forgert {

namespace {
double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

LlamaModel::LlamaModel(const ModelConfig& cfg, ModelWeights weights, std::unique_ptr<Backend> backend, int max_batch,
                       int n_slots)
    : cfg_(cfg), be_(std::move(backend)), w_(std::move(weights)), max_batch_(max_batch), n_slots_(n_slots) {
    cfg_.validate();
    if (n_slots_ < 1) throw InputError("n_slots must be >= 1, got " + std::to_string(n_slots_));
    auto tensor = [&](DType t, int64_t rows, int64_t cols) {
        bufs_.push_back(be_->alloc((size_t)row_bytes(t, cols) * rows));
        return make_tensor(bufs_.back().get(), 0, t, rows, cols);
    };
    const int B = max_batch_;
    ids_ = tensor(DType::I32, 1, B);
    out_rows_ = tensor(DType::I32, 1, B);
    row_pos_ = tensor(DType::I32, B, 2);
    x_ = tensor(DType::F32, B, cfg_.dim);
    xn_ = tensor(DType::F32, B, cfg_.dim);
    // the widest layer's (each layer views its first rows at its own width)
    q_ = tensor(DType::F32, B, cfg_.max_q_dim());
    k_ = tensor(DType::F32, B, cfg_.max_kv_dim());
    v_ = tensor(DType::F32, B, cfg_.max_kv_dim());
    att_ = tensor(DType::F32, B, cfg_.max_q_dim());
    if (cfg_.v_norm) {  // the weight of V's weightless RMSNorm: ones (x * 1 is exact)
        ones_ = tensor(DType::F32, 1, cfg_.max_head_dim());
        const std::vector<float> ones(cfg_.max_head_dim(), 1.0f);
        be_->write(ones_, ones.data(), ones.size() * sizeof(float));
    }
    if (cfg_.is_mla()) {
        const int64_t H = cfg_.n_heads, row = cfg_.mla_kv_lora + cfg_.rope_dims(),
                      nope = cfg_.head_dim - cfg_.rope_dims();
        if (!be_->has_moe_ops())  // the per-head matmuls are matmul_id's, one "expert" per head
            throw InputError("the " + be_->name() + " backend cannot run latent attention (it has no matmul_id)");
        for (int l = 0; l < cfg_.n_layers; l++) {
            const LayerWeights& L = w_.layers[l];
            for (const auto* s : {&L.wk_b, &L.wv_b}) {
                const std::string why = be_->expert_stack_problem(s->data(), (int)s->size());
                if (!why.empty())
                    throw InputError("the " + be_->name() + " backend cannot read blk." + std::to_string(l) +
                                     "'s per-head latent expansions: " + why);
            }
        }
        latent_ = tensor(DType::F32, B, row);
        if (cfg_.mla_q_lora > 0) q_low_ = tensor(DType::F32, B, cfg_.mla_q_lora);
        att_values_ = tensor(DType::F32, B, H * cfg_.mla_v_head_dim);
        mla_q_ = tensor(DType::F32, B, H * row);
        mla_att_ = tensor(DType::F32, B, H * row);
        mla_in_ = tensor(DType::F32, B * H, std::max<int64_t>(nope, cfg_.mla_kv_lora));
        mla_out_ = tensor(DType::F32, B * H, cfg_.mla_kv_lora);
        head_ids_ = tensor(DType::I32, B, H);  // every row 0 .. n_heads - 1: slot (i, h) takes head h's matrix
        std::vector<int32_t> ids((size_t)B * H);
        for (size_t i = 0; i < ids.size(); i++) ids[i] = (int32_t)(i % H);
        be_->write(head_ids_, ids.data(), ids.size() * sizeof(int32_t));
    }
    if (cfg_.attn_output_gate) {
        q_gated_ = tensor(DType::F32, B, 2 * (int64_t)cfg_.q_dim());
        attn_gate_ = tensor(DType::F32, B, cfg_.q_dim());
    }
    state_pos_.assign(n_slots_, -1);
    if (cfg_.has_recurrent()) {
        if (!be_->has_recurrent_ops())
            throw InputError("the " + be_->name() + " backend cannot run recurrent (Gated DeltaNet, short convolution, "
                             "Mamba2) layers yet");
        const int64_t nv = cfg_.ssm_v_heads;
        if (cfg_.has_layer_kind(ModelConfig::LayerKind::GatedDeltaNet)) {
            const int64_t C = cfg_.ssm_conv_channels(), vw = cfg_.ssm_value_width();
            ssm_mixed_ = tensor(DType::F32, B, C);
            ssm_conv_ = tensor(DType::F32, B, C);
            ssm_z_ = tensor(DType::F32, B, vw);
            ssm_o_ = tensor(DType::F32, B, vw);
            ssm_beta_ = tensor(DType::F32, B, nv);
            ssm_alpha_ = tensor(DType::F32, B, nv);
        }
        if (cfg_.has_layer_kind(ModelConfig::LayerKind::Mamba2)) {
            const int64_t C = cfg_.ssm_conv_channels(), vw = cfg_.ssm_value_width();
            mb_proj_ = tensor(DType::F32, B, vw + C + nv);
            mb_conv_ = tensor(DType::F32, B, C);
            mb_y_ = tensor(DType::F32, B, vw);
        }
        if (cfg_.has_layer_kind(ModelConfig::LayerKind::ShortConv)) {
            sc_bcx_ = tensor(DType::F32, B, 3 * (int64_t)cfg_.dim);
            sc_conv_ = tensor(DType::F32, B, cfg_.dim);
        }
        runs_ = tensor(DType::I32, 2 * (int64_t)n_slots_, 4);  // a pass splits an entry in two at most
        step_runs_ = tensor(DType::I32, 2, 4);
        const int32_t steps[8] = {0, 0, 1, 0, 0, 0, 1, 1};
        be_->write(step_runs_, steps, sizeof steps);
        conv_state_.resize(cfg_.n_layers);
        ssm_state_.resize(cfg_.n_layers);
        for (int l = 0; l < cfg_.n_layers; l++) {
            if (!cfg_.is_recurrent(l)) continue;
            const int64_t C = cfg_.conv_channels(l);
            conv_state_[l] = tensor(DType::F32, n_slots_, std::max<int64_t>(1, (cfg_.ssm_conv_kernel - 1) * C));
            conv_state_[l].cols = (cfg_.ssm_conv_kernel - 1) * C;
            if (!cfg_.is_short_conv(l)) ssm_state_[l] = tensor(DType::F32, n_slots_, nv * cfg_.ssm_k_dim * cfg_.ssm_v_dim);
        }
    }
    proj_ = tensor(DType::F32, B, cfg_.dim);
    if (cfg_.ple_dim > 0) {  // per-layer embeddings: every layer's inputs, the projection's, one layer's gate
        const int64_t all = (int64_t)cfg_.n_layers * cfg_.ple_dim;
        ple_ = tensor(DType::F32, B, all);
        ple_proj_ = tensor(DType::F32, B, all);
        ple_gate_ = tensor(DType::F32, B, cfg_.ple_dim);
        if (cfg_.ple_rows() < cfg_.vocab) ple_ids_ = tensor(DType::I32, 1, B);
    }
    if (cfg_.altup_n > 0) {  // Gemma 3n's AltUp streams and LAuReL (altup.cpp)
        const int64_t N = cfg_.altup_n;
        streams_ = tensor(DType::F32, B, N * cfg_.dim);
        pred_ = tensor(DType::F32, B, N * cfg_.dim);
        altup_mod_ = tensor(DType::F32, B, N);
        altup_coef_ = tensor(DType::F32, B, N * N);
        altup_tmp_ = tensor(DType::F32, B, cfg_.dim);
        altup_ones_ = tensor(DType::F32, 1, N);
        const std::vector<float> ones(N, 1.0f);
        be_->write(altup_ones_, ones.data(), ones.size() * sizeof(float));
        laurel_low_ = tensor(DType::F32, B, cfg_.laurel_rank);
        laurel_out_ = tensor(DType::F32, B, cfg_.dim);
    }
    // The dense feed-forward's width: a dense model's, or an MoE model's shared expert and its
    // leading dense layers'.
    bool dense_layers = cfg_.n_dense_lead > 0;  // an MoE model's dense layers: leading, or named by layer_ffn
    for (int f : cfg_.layer_ffn) dense_layers |= f == 1;
    const int dense_ffn = !cfg_.is_moe() || cfg_.moe_beside_dense ? cfg_.max_ffn_dim()
                          : dense_layers ? std::max(cfg_.shared_ffn_dim, cfg_.ffn_dim)
                                         : std::max(cfg_.shared_ffn_dim, 1);
    gate_ = tensor(DType::F32, B, dense_ffn);
    up_ = tensor(DType::F32, B, dense_ffn);
    if (cfg_.is_moe()) {
        if (!be_->has_moe_ops()) throw InputError("the " + be_->name() + " backend cannot run mixture-of-experts models yet");
        for (int l = 0; l < cfg_.n_layers; l++) {
            if (!cfg_.layer_is_moe(l)) continue;
            const LayerWeights& L = w_.layers[l];
            const std::pair<const char*, const std::vector<Tensor>*> stacks[3] = {
                {"ffn_gate_exps", &L.gate_exps}, {"ffn_up_exps", &L.up_exps}, {"ffn_down_exps", &L.down_exps}};
            for (auto& [name, s] : stacks) {
                if (s->empty()) continue;  // ungated experts: no ffn_gate_exps (Nemotron 3)
                const std::string why = be_->expert_stack_problem(s->data(), (int)s->size());
                if (!why.empty())
                    throw InputError("the " + be_->name() + " backend cannot read blk." + std::to_string(l) + "." + name +
                                     ".weight: " + why + " (it needs each stack's experts at one stride in one file; "
                                     "the cpu backend has no such need)");
            }
        }
        const int k = cfg_.n_expert_used;
        router_logits_ = tensor(DType::F32, B, cfg_.n_expert);
        route_ids_ = tensor(DType::I32, B, k);
        route_w_ = tensor(DType::F32, B, k);
        exp_gate_ = tensor(DType::F32, (int64_t)B * k, cfg_.expert_ffn_dim);
        exp_up_ = tensor(DType::F32, (int64_t)B * k, cfg_.expert_ffn_dim);
        exp_out_ = tensor(DType::F32, (int64_t)B * k, cfg_.expert_io_dim());
        if (cfg_.moe_latent_dim > 0) {  // the latent input and the experts' sum from zeros
            moe_latent_in_ = tensor(DType::F32, B, cfg_.moe_latent_dim);
            moe_sum_ = tensor(DType::F32, B, cfg_.moe_latent_dim);
            zeros_ = tensor(DType::F32, B, cfg_.moe_latent_dim);
            const std::vector<float> zeros((size_t)B * cfg_.moe_latent_dim, 0.0f);
            be_->write(zeros_, zeros.data(), zeros.size() * sizeof(float));
        }
        shared_scale_ = tensor(DType::F32, B, 1);
        if (cfg_.moe_beside_dense) {  // the experts' sum, from zeros; each slot's expert scale
            moe_sum_ = tensor(DType::F32, B, cfg_.dim);
            zeros_ = tensor(DType::F32, B, cfg_.dim);
            const std::vector<float> zeros((size_t)B * cfg_.dim, 0.0f);
            be_->write(zeros_, zeros.data(), zeros.size() * sizeof(float));
            route_scale_ = tensor(DType::F32, (int64_t)B * k, 1);
        }
    }
    logits_ = tensor(DType::F32, 1, cfg_.vocab);  // grown on demand for all_logits
    argmax_ = tensor(DType::I32, 1, B);
    freqs_ = tensor(DType::F32, cfg_.n_rope_tables(), cfg_.rope_dims() / 2);  // one row per RoPE table
    be_->write(freqs_, cfg_.rope_freqs.data(), cfg_.rope_freqs.size() * sizeof(float));
    const int64_t kv_rows = (int64_t)n_slots_ * cfg_.n_ctx;
    for (int l = 0; l < cfg_.n_layers; l++) {
        if (!cfg_.keeps_kv(l)) {  // no K/V rows: its state is conv_state_ / ssm_state_, or another layer's rows
            kv_.k.emplace_back();
            kv_.v.emplace_back();
            continue;
        }
        const int kv_dim = cfg_.kv_dim_of(l);  // each layer's own width (Gemma 4's global layers differ)
        kv_.buffers.push_back(be_->alloc((size_t)kv_rows * kv_dim * 2));
        kv_.k.push_back(make_tensor(kv_.buffers.back().get(), 0, DType::F16, kv_rows, kv_dim));
        if (cfg_.v_in_k_cache()) {  // latent attention: V is read from the K rows, no rows of its own
            kv_.v.push_back(kv_.k.back());
            continue;
        }
        kv_.buffers.push_back(be_->alloc((size_t)kv_rows * kv_dim * 2));
        kv_.v.push_back(make_tensor(kv_.buffers.back().get(), 0, DType::F16, kv_rows, kv_dim));
    }
    // Weights, KV cache and activations serve every pass for the model's whole life: resident
    // once, here (a GPU would otherwise redo that work for every command buffer).
    std::vector<const Buffer*> resident;
    for (const auto* list : {&w_.buffers, &kv_.buffers, &bufs_})
        for (const auto& b : *list) resident.push_back(b.get());
    be_->make_resident(resident.data(), resident.size());
}

LlamaModel::~LlamaModel() {
    try {
        be_->wait();
    } catch (...) {
    }
}

void LlamaModel::check_input(const int32_t* tokens, int n, int pos) const {
    if (n <= 0) throw InputError("no tokens to evaluate");
    if (pos < 0) throw InputError("position must be >= 0, got " + std::to_string(pos));
    if ((int64_t)pos + n > cfg_.n_ctx)
        throw InputError("context overflow: " + std::to_string(pos) + " cached + " + std::to_string(n) +
                         " new tokens exceed the context length " + std::to_string(cfg_.n_ctx));
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= cfg_.vocab)
            throw InputError("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                             " is out of range [0, " + std::to_string(cfg_.vocab) + ")");
    }
}

void LlamaModel::check_batch(const BatchEntry* entries, int n_entries) const {
    if (n_entries <= 0) throw InputError("no sequences to evaluate");
    int64_t total = 0;
    std::vector<bool> seen(n_slots_, false);
    for (int e = 0; e < n_entries; e++) {
        const BatchEntry& b = entries[e];
        if (b.slot < 0 || b.slot >= n_slots_)
            throw InputError("slot " + std::to_string(b.slot) + " of entry " + std::to_string(e) +
                             " is out of range [0, " + std::to_string(n_slots_) + ")");
        // Two entries of one slot would write and read the same cache rows in one pass.
        if (seen[b.slot]) throw InputError("slot " + std::to_string(b.slot) + " appears twice in one batch");
        seen[b.slot] = true;
        check_input(b.tokens, b.n, b.pos);
        if (b.decode_run) {  // a token and its draft, verified row by row
            const std::string what = "entry " + std::to_string(e) + ": a decode run";
            if (b.n > kMaxVerifyRows)
                throw InputError(what + " of " + std::to_string(b.n) + " rows; at most " +
                                 std::to_string(kMaxVerifyRows) + " in one pass");
            if (b.prompt_prefix || b.scores) throw InputError(what + " is neither a prompt's prefix nor scored");
            if (cfg_.has_recurrent())
                throw InputError(what + " needs a cache that can drop rejected rows; this model's recurrent "
                                 "layers keep a state that cannot rewind");
        }
        if (b.scores) {
            const RowScores& sc = *b.scores;
            if (!sc.targets || !sc.logprob || (sc.top_k > 0 && (!sc.top_ids || !sc.top_logprob)))
                throw InputError("entry " + std::to_string(e) + ": scores without targets or outputs");
            if (sc.top_k < 0 || sc.top_k > std::min(kMaxScoreTop, cfg_.vocab))
                throw InputError("entry " + std::to_string(e) + ": top_k " + std::to_string(sc.top_k) +
                                 " is outside 0.." + std::to_string(std::min(kMaxScoreTop, cfg_.vocab)));
            for (int i = 0; i < b.n; i++)
                if (sc.targets[i] < 0 || sc.targets[i] >= cfg_.vocab)
                    throw InputError("entry " + std::to_string(e) + ": target token id " + std::to_string(sc.targets[i]) +
                                     " at index " + std::to_string(i) + " is out of range [0, " +
                                     std::to_string(cfg_.vocab) + ")");
        }
        total += b.n;
    }
    if (total > max_batch_)
        throw InputError("batch of " + std::to_string(total) + " tokens exceeds max_batch " +
                         std::to_string(max_batch_));
}

void LlamaModel::run_layers(const BatchEntry* entries, int n_entries, const Tensor* device_ids, bool commit_early) {
    Backend& be = *be_;
    const double t0 = profiling_ ? now_s() : 0;
    ++passes_;
    // Row classes: the leading decode entries' rows are decode rows, the rest prefix rows.
    int n = 0, n_decode = 0;
    for (int e = 0; e < n_entries; e++) {
        const int d = entries[e].decode_rows();
        if ((d != 0 && d != entries[e].n) || (d > 0 && n_decode < n))
            throw std::logic_error("run_layers: entries of one class each, decode entries first");
        n += entries[e].n;
        if (d > 0) n_decode = n;
    }
    rows_ = RowClasses::decode(n_decode);
    const RowClasses rc = rows_;
    Tensor ids = make_tensor(ids_.buf, 0, DType::I32, n, 1);  // [n] as a column
    if (device_ids) {
        ids = *device_ids;  // a pipelined decode step: one entry, its id already on the device
    } else {
        ids_host_.clear();
        for (int e = 0; e < n_entries; e++)
            ids_host_.insert(ids_host_.end(), entries[e].tokens, entries[e].tokens + entries[e].n);  // rows in entry order
        be.write(ids, ids_host_.data(), (size_t)n * sizeof(int32_t));
        // The entries' output rows, for output_row_logits: written now, before anything is encoded
        // (a write to a device buffer waits for the work in flight).
        out_rows_host_.clear();
        for (int e = 0, r0 = 0; e < n_entries; r0 += entries[e].n, e++)
            for (int r = entries[e].n - entries[e].output_rows(); r < entries[e].n; r++) out_rows_host_.push_back(r0 + r);
        be.write(make_tensor(out_rows_.buf, 0, DType::I32, (int64_t)out_rows_host_.size(), 1), out_rows_host_.data(),
                 out_rows_host_.size() * sizeof(int32_t));
    }
    // Where each row sits, for RoPE and attention: a single sequence at its position, or
    // (a batch) a table of (position, first cache row of its slot) per row.
    const bool batched = n_entries > 1;
    const Tensor row_table = row_pos_.slice_rows(0, n);
    RowPositions at(entries[0].pos);
    if (batched) {
        row_pos_host_.clear();
        int max_len = 0, max_run = 0;
        for (int e = 0; e < n_entries; e++) {
            const BatchEntry& b = entries[e];
            for (int i = 0; i < b.n; i++) {
                row_pos_host_.push_back(b.pos + i);
                row_pos_host_.push_back(b.slot * cfg_.n_ctx);
            }
            max_len = std::max(max_len, b.pos + b.n);
            max_run = std::max(max_run, b.n);  // entries are distinct slots: a run is at most one entry
        }
        be.write(row_table, row_pos_host_.data(), row_pos_host_.size() * sizeof(int32_t));
        at = RowPositions(row_table, max_len, max_run);
    }
    at.classes = rc;  // attention's query rows: decode rows alone, prefix rows whatever their block
    const Tensor runs = cfg_.has_recurrent() ? recurrent_runs(entries, n_entries, device_ids != nullptr) : Tensor{};
    Tensor x = x_.slice_rows(0, n), xn = xn_.slice_rows(0, n), proj = proj_.slice_rows(0, n);

    be.get_rows(x, w_.token_embd, ids);
    if (cfg_.embed_scale != 1.0f) be.scale(x, cfg_.embed_scale);  // Gemma: embeddings times sqrt(dim)
    if (cfg_.ple_dim > 0) per_layer_inputs(ids, x, n);  // Gemma 4 E2B / E4B, Gemma 3n
    if (cfg_.altup_n > 0) altup_streams_in(x, n);       // Gemma 3n
    if (profiling_) { be.wait(); profile_.embed += now_s() - t0; }
    const double t1 = profiling_ ? now_s() : 0;

    RopeKvParams rp{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim, cfg_.rope_neox, cfg_.rope_dim, false,
                    cfg_.rope_attn_factor, cfg_.attn_temp_beta, cfg_.attn_temp_floor};
    AttentionParams ap{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim, cfg_.attention_scale(0), 0, cfg_.attn_softcap};
    // x += w in, through the fused projection-and-add; a post-norm (Gemma's sandwich) sits
    // between the projection and the add, so there the projection goes to scratch first and
    // the norm carries the add.
    auto add_projection = [&](const Tensor& w, const Tensor& in, const Tensor& post_norm) {
        if (cfg_.residual_scale != 1.0f) {  // Granite: x += residual_scale (w in)
            be.matmul(proj, w, in, rc);
            be.scale(proj, cfg_.residual_scale);
            return be.add(x, x, proj);
        }
        if (!post_norm.rows) return be.matmul_add(x, w, in, proj, rc);
        be.matmul(proj, w, in, rc);
        be.add_rms_norm(x, proj, post_norm, cfg_.rms_eps);  // x += rms_norm(proj) * post_norm
    };
    for (int l = 0; l < cfg_.n_layers; l++) {
        const LayerWeights& L = w_.layers[l];
        // this layer's attention shapes: q, k, v and att view the scratch buffers' first rows at its widths
        const int hd = cfg_.head_dim_of(l), n_kv = cfg_.n_kv_heads_of(l);
        const Tensor q = make_tensor(q_.buf, 0, DType::F32, n, cfg_.q_dim_of(l)),
                     k = make_tensor(k_.buf, 0, DType::F32, n, cfg_.kv_dim_of(l)),
                     v = make_tensor(v_.buf, 0, DType::F32, n, cfg_.kv_dim_of(l)),
                     att = make_tensor(att_.buf, 0, DType::F32, n, cfg_.q_dim_of(l));
        // the dense feed-forward's [n, ffn_dim_of(l)] (gate_ and up_ may be wider: an MoE model's
        // shared expert, a wider layer's)
        const Tensor gate = make_tensor(gate_.buf, 0, DType::F32, n, cfg_.ffn_dim_of(l)),
                     up = make_tensor(up_.buf, 0, DType::F32, n, cfg_.ffn_dim_of(l));
        rp.n_kv_heads = ap.n_kv_heads = n_kv;
        rp.head_dim = ap.head_dim = hd;
        ap.scale = cfg_.attention_scale(l);
        if (cfg_.altup_n > 0) altup_predict(L, x, n);  // Gemma 3n: x = the active stream's prediction
        // attention block; without pre-norms (OLMo 2, EXAONE 4) the projections read x itself
        if (cfg_.pre_norms) norm(xn, x, L.attn_norm, L.attn_norm_b);
        const Tensor laurel_out = cfg_.laurel_rank > 0 ? laurel(L, xn, n) : Tensor{};  // Gemma 3n, beside attention
        const Tensor& attn_in = cfg_.pre_norms ? xn : x;
        if (cfg_.is_delta_net(l)) {  // a Gated DeltaNet layer in place of attention
            add_projection(L.ssm_out, delta_net(L, l, attn_in, n, runs), L.attn_post_norm);
        } else if (cfg_.is_short_conv(l)) {  // a short convolution in place of attention
            add_projection(L.sc_out_proj, short_conv(L, l, attn_in, n, runs), L.attn_post_norm);
        } else if (cfg_.is_mamba2(l)) {  // Mamba2 in place of attention
            add_projection(L.ssm_out, mamba2_layer(L, l, attn_in, n, runs), L.attn_post_norm);
        } else if (cfg_.is_mla()) {  // absorbed latent attention on the cached latent rows
            const Tensor kc = batched ? kv_.k[l] : slot_rows(kv_.k[l], entries[0].slot);
            add_projection(L.wo, latent_attention(L, l, attn_in, n, kc, at), L.attn_post_norm);
            if (L.bo.rows) be.add_bias(x, L.bo);  // x += bo, as after any attention's wo
        } else {
            if (cfg_.attn_output_gate) {  // Qwen3.5: each head's query, then its gate
                const Tensor qg = q_gated_.slice_rows(0, n), outs[3] = {qg, k, v}, ws[3] = {L.wq, L.wk, L.wv};
                be.matmul_many(outs, ws, 3, attn_in, rc);
                if (L.bq.rows) be.add_bias(qg, L.bq);
                // [n, n_heads * 2 * head_dim] as [n * n_heads, head_dim] rows 2 * head_dim apart: queries, then gates
                const int64_t heads = (int64_t)n * cfg_.n_heads;
                Tensor queries = qg;
                queries.rows = heads;
                queries.cols = hd;
                queries.stride = 2 * hd * sizeof(float);
                Tensor gates = queries;
                gates.offset += hd * sizeof(float);
                be.copy(make_tensor(q_.buf, 0, DType::F32, heads, hd), queries);
                be.copy(make_tensor(attn_gate_.buf, 0, DType::F32, heads, hd), gates);
            } else if (cfg_.shares_kv(l)) {  // Gemma 4's KV sharing: queries only, on another layer's cache
                be.matmul(q, L.wq, attn_in, rc);
            } else if (cfg_.v_is_k(l)) {  // Gemma 4's attention_k_eq_v: V is K's projection, before k_norm
                const Tensor qk_out[2] = {q, k}, qk_w[2] = {L.wq, L.wk};
                be.matmul_many(qk_out, qk_w, 2, attn_in, rc);
                be.copy(v, k);
            } else {
                const Tensor qkv_out[3] = {q, k, v}, qkv_w[3] = {L.wq, L.wk, L.wv};
                be.matmul_many(qkv_out, qkv_w, 3, attn_in, rc);
            }
            // Biases wherever the file has them (Qwen2 always, Llama with attention_bias).
            if (L.bq.rows && !cfg_.attn_output_gate) be.add_bias(q, L.bq);
            if (L.bk.rows) be.add_bias(k, L.bk);
            if (L.bv.rows) be.add_bias(v, L.bv);
            const bool own_kv = !cfg_.shares_kv(l);
            if (cfg_.qk_norm == ModelConfig::QkNorm::PerHead) {  // QK-norm: each head normalised before RoPE
                be.head_rms_norm(q, L.q_norm, cfg_.rms_eps);
                if (own_kv) be.head_rms_norm(k, L.k_norm, cfg_.rms_eps);
            } else if (cfg_.qk_norm == ModelConfig::QkNorm::Whole) {  // OLMo 2: each row of q, of k, normalised whole
                be.rms_norm(q, q, L.q_norm, cfg_.rms_eps);
                be.rms_norm(k, k, L.k_norm, cfg_.rms_eps);
            }
            if (cfg_.v_norm && own_kv) be.head_rms_norm(v, ones_.slice_cols(0, hd), cfg_.rms_eps);  // Gemma 4: V normed, no weight
            const int table = cfg_.rope_table_of(l);  // -1: a NoPE layer
            rp.nope = table < 0;
            rp.attn_factor = cfg_.rope_attn_factor_of(table);
            ap.window = cfg_.window_of(l);
            ap.sinks = L.attn_sinks.rows ? &L.attn_sinks : nullptr;  // gpt-oss
            // RoPE, the cache write and attention: one call each for every sequence's rows. One
            // sequence reads its slot's cache from its position; several, the whole layer's cache
            // through the row table (each row's position and its slot's first cache row).
            const int src = cfg_.kv_source_of(l);  // the layer whose cache this one reads (itself, or a KV-sharing source)
            const Tensor kc = batched ? kv_.k[src] : slot_rows(kv_.k[src], entries[0].slot),
                         vc = batched ? kv_.v[src] : slot_rows(kv_.v[src], entries[0].slot);
            // its table's first rope_dims_of(l) / 2 frequencies (tables are as wide as the widest head)
            const Tensor freqs = freqs_.slice_rows(std::max(table, 0), 1).slice_cols(0, cfg_.rope_dims_of(l) / 2);
            if (own_kv) {
                be.rope_kv_write(q, k, v, kc, vc, freqs, at, rp);
            } else {  // RoPE on the queries only (n_kv_heads 0): the source layer wrote this position's K/V
                RopeKvParams q_only = rp;
                q_only.n_kv_heads = 0;
                be.rope_kv_write(q, Tensor{}, Tensor{}, Tensor{}, Tensor{}, freqs, at, q_only);
            }
            be.attention(att, q, kc, vc, at, ap);
            if (cfg_.attn_output_gate) be.mul_sigmoid(att, attn_gate_.slice_rows(0, n));
            add_projection(L.wo, att, L.attn_post_norm);  // x += wo att (post-normed for Gemma)
            if (L.bo.rows) be.add_bias(x, L.bo);  // x += bo (once per row, as wo att + bo)
        }
        if (laurel_out.rows) {  // Gemma 3n: x = (x + laurel) / sqrt(2)
            be.add(x, x, laurel_out);
            be.scale(x, 1.0f / std::sqrt(2.0f));
        }
        if (!cfg_.has_ffn(l)) {  // a mixer alone (Nemotron-H: the next layer is another mixer)
            if (l == 1 && commit_early) be.commit();
            continue;
        }
        // feed-forward block; in a parallel block (Cohere) it reads the attention's normed input,
        // still in xn, and adds to x beside the attention's output
        if (cfg_.pre_norms && !cfg_.parallel_block) norm(xn, x, L.ffn_norm, L.ffn_norm_b);
        const Tensor& ffn_in = cfg_.pre_norms ? xn : x;
        const bool moe = cfg_.layer_is_moe(l);
        if (moe && cfg_.moe_beside_dense) {
            gemma4_moe_feed_forward(L, x, xn, n);  // x += post_norm(dense MLP + experts)
        } else if (moe) {
            moe_feed_forward(L, x, xn, n);  // x += the selected experts (and a shared one)
        } else if (!cfg_.ffn_gated) {  // gate = act(w_up xn + b_up), no gate matrix: StarCoder2's GELU, Arcee's ReLU^2
            be.matmul(gate, L.w_up, ffn_in, rc);
            if (L.b_up.rows) be.add_bias(gate, L.b_up);
            if (cfg_.ffn_relu_sq)
                be.relu_sq(gate);
            else
                be.gelu(gate);
        } else if (cfg_.sparsity_of(l) > 0.0f) {  // Gemma 3n: the gate cut at mean + std * sparsity first
            const Tensor outs[2] = {gate, up}, ws[2] = {L.w_gate, L.w_up};
            be.matmul_many(outs, ws, 2, ffn_in, rc);
            be.gaussian_topk(gate, cfg_.sparsity_of(l));
            be.gelu_mul(gate, gate, up);
        } else if (cfg_.ffn_gelu)
            be.matmul_geglu(gate, L.w_gate, L.w_up, ffn_in, up, rc);   // gate = gelu_tanh(w_gate xn) * (w_up xn)
        else
            be.matmul_swiglu(gate, L.w_gate, L.w_up, ffn_in, up, rc);  // gate = silu(w_gate xn) * (w_up xn)
        if (!moe) add_projection(L.w_down, gate, L.ffn_post_norm);  // x += w_down gate
        if (L.b_down.rows) be.add_bias(x, L.b_down);  // (+ b_down, once per row)
        if (cfg_.altup_n > 0)  // Gemma 3n: the streams corrected, the per-layer input into the others
            altup_correct(L, l, x, n);
        else if (cfg_.ple_dim > 0)  // Gemma 4 E2B / E4B: x += rms_norm(the per-layer input) * post_norm
            be.add_rms_norm(x, per_layer_input(L, l, x, n), L.ple_post_norm, cfg_.rms_eps);
        if (cfg_.out_scale_of(l) != 1.0f) be.scale(x, cfg_.out_scale_of(l));  // Gemma 4's layer_scalar
        if (l == 1 && commit_early) be.commit();  // a GPU starts on the first layers while the rest is encoded
    }
    if (cfg_.altup_n > 0) altup_streams_out(x, n);  // Gemma 3n: the streams back into one
    if (cfg_.has_recurrent())  // every state now holds its entries' tokens
        for (int e = 0; e < n_entries; e++)
            state_pos_[entries[e].slot] = std::max(state_pos_[entries[e].slot], entries[e].pos + entries[e].n);
    if (profiling_) { be.wait(); profile_.layers += now_s() - t1; }
}

void LlamaModel::check_state_positions(const BatchEntry* entries, int n_entries) const {
    if (!cfg_.has_recurrent()) return;
    std::vector<int> at(state_pos_);  // where each slot's state stands as the entries are taken in order
    for (int e = 0; e < n_entries; e++) {
        const BatchEntry& b = entries[e];
        if (b.pos != 0 && b.pos != at[b.slot])
            throw InputError("slot " + std::to_string(b.slot) + ": this model's recurrent layers hold " +
                             (at[b.slot] < 0 ? std::string("no state") : "the state after " + std::to_string(at[b.slot]) +
                                                                              " tokens") +
                             " and cannot continue from position " + std::to_string(b.pos) +
                             " (a recurrent state cannot rewind: evaluate the sequence again from position 0)");
        at[b.slot] = b.pos + b.n;
    }
}

Tensor LlamaModel::recurrent_runs(const BatchEntry* entries, int n_entries, bool device_ids) {
    check_state_positions(entries, n_entries);
    for (int e = 0; e < n_entries; e++) state_pos_[entries[e].slot] = -1;  // until the pass is encoded
    if (device_ids)  // a pipelined step of slot 0: a fixed table, no upload while work is in flight
        return step_runs_.slice_rows(entries[0].pos == 0 ? 1 : 0, 1);
    runs_host_.clear();
    for (int e = 0, r0 = 0; e < n_entries; r0 += entries[e].n, e++)
        runs_host_.insert(runs_host_.end(), {entries[e].slot, r0, entries[e].n, entries[e].pos == 0 ? 1 : 0});
    const Tensor runs = runs_.slice_rows(0, n_entries);
    be_->write(runs, runs_host_.data(), runs_host_.size() * sizeof(int32_t));
    return runs;
}

Tensor LlamaModel::delta_net(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& runs) {
    Backend& be = *be_;
    const RowClasses rc = rows_;
    const int64_t qk = cfg_.ssm_qk_width(), vw = cfg_.ssm_value_width();
    const Tensor mixed = ssm_mixed_.slice_rows(0, n), z = ssm_z_.slice_rows(0, n), beta = ssm_beta_.slice_rows(0, n),
                 alpha = ssm_alpha_.slice_rows(0, n), conv = ssm_conv_.slice_rows(0, n), out = ssm_o_.slice_rows(0, n);
    const Tensor outs[4] = {mixed, z, beta, alpha}, ws[4] = {L.ssm_qkv, L.ssm_gate, L.ssm_beta, L.ssm_alpha};
    be.matmul_many(outs, ws, 4, xn, rc);
    be.conv1d_state(conv, mixed, L.ssm_conv1d, Tensor{}, conv_state_[layer], runs, true);
    const Backend::DeltaNetParams p{cfg_.ssm_k_heads, cfg_.ssm_v_heads, cfg_.ssm_k_dim, cfg_.ssm_v_dim, cfg_.ssm_v_tiled,
                                    1e-6f};  // transformers' (and FLA's) L2-norm eps
    // q, k and v: column ranges of the convolution's rows
    be.gated_delta_rule(out, conv.slice_cols(0, qk), conv.slice_cols(qk, qk), conv.slice_cols(2 * qk, vw), alpha, beta,
                        L.ssm_a, L.ssm_dt_bias, ssm_state_[layer], runs, p);
    be.head_rms_norm(out, L.ssm_norm, cfg_.rms_eps);  // each value head's output normed,
    be.silu_mul(out, z, out);                          // times silu(z)
    return out;
}

Tensor LlamaModel::short_conv(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& runs) {
    Backend& be = *be_;
    const int64_t d = cfg_.dim;
    const Tensor bcx = sc_bcx_.slice_rows(0, n), conv = sc_conv_.slice_rows(0, n);
    be.matmul(bcx, L.sc_in_proj, xn, rows_);
    // B, C and x: the projection's thirds
    const Tensor b = bcx.slice_cols(0, d), c = bcx.slice_cols(d, d), x = bcx.slice_cols(2 * d, d);
    be.mul(x, b, x);  // B * x, in x's columns
    be.conv1d_state(conv, x, L.sc_conv, Tensor{}, conv_state_[layer], runs, false);
    be.mul(conv, c, conv);  // C * conv(B * x)
    return conv;
}

Tensor LlamaModel::mamba2_layer(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& runs) {
    Backend& be = *be_;
    const int64_t C = cfg_.ssm_conv_channels(), vw = cfg_.ssm_value_width(), nh = cfg_.ssm_v_heads;
    const int64_t ng = cfg_.ssm_k_heads, bw = ng * cfg_.ssm_k_dim, gs = vw / ng;
    const Tensor proj = mb_proj_.slice_rows(0, n), conv = mb_conv_.slice_rows(0, n), y = mb_y_.slice_rows(0, n);
    be.matmul(proj, L.ssm_in, xn, rows_);
    // z, xBC and dt: column ranges of the projection's rows
    const Tensor z = proj.slice_cols(0, vw), xbc = proj.slice_cols(vw, C), dt = proj.slice_cols(vw + C, nh);
    be.conv1d_state(conv, xbc, L.ssm_conv1d, L.ssm_conv1d_b, conv_state_[layer], runs, true);
    const Backend::Mamba2Params p{cfg_.ssm_v_heads, cfg_.ssm_v_dim, cfg_.ssm_k_heads, cfg_.ssm_k_dim};
    // x, B and C: column ranges of the convolution's rows
    be.mamba2_scan(y, conv.slice_cols(0, vw), conv.slice_cols(vw, bw), conv.slice_cols(vw + bw, bw), dt, L.ssm_a,
                   L.ssm_d, L.ssm_dt_bias, ssm_state_[layer], runs, p);
    be.silu_mul(y, z, y);  // y * silu(z), then the norm over each group's columns with its own weights
    for (int64_t g = 0; g < ng; g++) {
        const Tensor part = y.slice_cols(g * gs, gs);
        be.rms_norm(part, part, L.ssm_norm.slice_rows(g, 1), cfg_.rms_eps);
    }
    return y;
}

Tensor LlamaModel::latent_attention(const LayerWeights& L, int layer, const Tensor& xn, int n, const Tensor& kc,
                                    const RowPositions& at) {
    Backend& be = *be_;
    const RowClasses rc = rows_;
    const int64_t H = cfg_.n_heads, hd = cfg_.head_dim, rope = cfg_.rope_dims(), nope = hd - rope,
                  lora = cfg_.mla_kv_lora, row = lora + rope, vd = cfg_.mla_v_head_dim, nh = (int64_t)n * H;
    constexpr size_t F = sizeof(float);
    // [n * H, cols] views of per-head columns: rows `width` floats apart from column `col` of t
    auto heads = [&](const Tensor& t, int64_t width, int64_t col, int64_t cols) {
        Tensor v = t;
        v.rows = nh;
        v.cols = cols;
        v.stride = (size_t)width * F;
        v.offset += (size_t)col * F;
        return v;
    };
    const Tensor q = make_tensor(q_.buf, 0, DType::F32, n, H * hd);  // each head [rope part, nope part]
    const Tensor z = latent_.slice_rows(0, n);  // [n, row]: the shared rope key, then the latent
    if (cfg_.mla_q_lora > 0) {  // q = wq_b rms_norm(wq_a xn)
        const Tensor qa = q_low_.slice_rows(0, n), outs[2] = {qa, z}, ws[2] = {L.wq_a, L.wkv_a};
        be.matmul_many(outs, ws, 2, xn, rc);
        be.rms_norm(qa, qa, L.q_a_norm, cfg_.rms_eps);
        be.matmul(q, L.wq_b, qa, rc);
    } else {
        const Tensor outs[2] = {q, z}, ws[2] = {L.wq, L.wkv_a};
        be.matmul_many(outs, ws, 2, xn, rc);
    }
    const Tensor latent = z.slice_cols(rope, lora);  // normed in place
    be.rms_norm(latent, latent, L.kv_a_norm, cfg_.rms_eps);
    // The absorbed queries [n, H * row]: head h's [rope part | k_b_h^T nope part], so that its
    // score against a cached row [roped key | latent] is q_rope . k_rope + q_nope . (k_b_h latent).
    const Tensor qa = make_tensor(mla_q_.buf, 0, DType::F32, n, H * row), ids = head_ids_.slice_rows(0, n);
    const Tensor head_in = make_tensor(mla_in_.buf, 0, DType::F32, nh, nope),
                 head_out = make_tensor(mla_out_.buf, 0, DType::F32, nh, lora);
    be.copy(head_in, heads(q, hd, rope, nope));
    be.matmul_id(head_out, L.wk_b.data(), (int)H, head_in, ids, rc);  // slot (i, h): head h's k_b^T
    be.copy(heads(qa, row, 0, rope), heads(q, hd, 0, rope));
    be.copy(heads(qa, row, rope, lora), head_out);
    // RoPE on the queries' and the key's first rope dims, the row cached (V is read from it)
    const int table = cfg_.rope_table_of(layer);
    RopeKvParams rp{(int)H, 1, (int)row, cfg_.rope_neox, (int)rope, false, cfg_.rope_attn_factor_of(table),
                    cfg_.attn_temp_beta, cfg_.attn_temp_floor};
    rp.v_from_k = true;
    const Tensor freqs = freqs_.slice_rows(std::max(table, 0), 1).slice_cols(0, rope / 2);
    be.rope_kv_write(qa, z, Tensor{}, kc, Tensor{}, freqs, at, rp);
    // One KV head of `row` dims shared by all heads, V the same rows: each head's output is
    // [its rope columns' weighted sum (unused) | the latent's], the scale DeepSeek's (head_dim's).
    const AttentionParams ap{(int)H, 1, (int)row, cfg_.attention_scale(layer), cfg_.window_of(layer), cfg_.attn_softcap};
    const Tensor att = make_tensor(mla_att_.buf, 0, DType::F32, n, H * row);
    be.attention(att, qa, kc, kc, at, ap);
    // Each head's latent output through v_b_h: [n * H, vd], packed [n, H * vd] for wo.
    const Tensor att_in = make_tensor(mla_in_.buf, 0, DType::F32, nh, lora);
    be.copy(att_in, heads(att, row, rope, lora));
    be.matmul_id(make_tensor(att_values_.buf, 0, DType::F32, nh, vd), L.wv_b.data(), (int)H, att_in, ids, rc);
    return make_tensor(att_values_.buf, 0, DType::F32, n, H * vd);
}

void LlamaModel::moe_feed_forward(const LayerWeights& L, const Tensor& x, const Tensor& xn, int n) {
    Backend& be = *be_;
    // the shared expert's [n, shared_ffn_dim] (gate_ and up_ may be wider: the leading dense layers')
    const int sh = std::max(cfg_.shared_ffn_dim, 1);
    const Tensor gate = make_tensor(gate_.buf, 0, DType::F32, n, sh), up = make_tensor(up_.buf, 0, DType::F32, n, sh),
                 proj = proj_.slice_rows(0, n);
    const int k = cfg_.n_expert_used, ne = cfg_.n_expert;
    const Tensor logits = router_logits_.slice_rows(0, n), ids = route_ids_.slice_rows(0, n),
                 w = route_w_.slice_rows(0, n), eg = exp_gate_.slice_rows(0, (int64_t)n * k),
                 eu = exp_up_.slice_rows(0, (int64_t)n * k), ey = exp_out_.slice_rows(0, (int64_t)n * k);
    const RowClasses rc = rows_;
    be.matmul(logits, L.router, xn, rc);                 // [n, n_expert]
    if (L.router_b.rows) be.add_bias(logits, L.router_b);
    // Top-k ids and weights, on the device. Granite MoE's residual multiplier scales the experts'
    // sum as it enters x, the same as scaling each weight.
    const Backend::MoeRouting routing{cfg_.router_sigmoid, cfg_.expert_norm_topk,
                                      cfg_.expert_weights_scale * cfg_.residual_scale, cfg_.expert_groups,
                                      cfg_.expert_groups_used};
    be.moe_route(w, ids, logits, routing, L.router_select_b);
    // The experts' input: xn, or its latent ffn_latent_down xn (Nemotron 3 Super).
    const bool latent = cfg_.moe_latent_dim > 0;
    const Tensor xe = latent ? moe_latent_in_.slice_rows(0, n) : xn;
    if (latent) be.matmul(xe, L.latent_down, xn, rc);
    if (cfg_.experts_relu_sq) {  // ungated (Nemotron 3): eg = max(up_j xe, 0)^2
        be.matmul_id(eg, L.up_exps.data(), ne, xe, ids, rc);  // [n*k, expert_ffn_dim]
        be.relu_sq(eg);
    } else {
        be.matmul_id(eg, L.gate_exps.data(), ne, xe, ids, rc);  // [n*k, expert_ffn_dim]
        be.matmul_id(eu, L.up_exps.data(), ne, xe, ids, rc);
        if (L.gate_exps_b.rows) be.add_bias_id(eg, L.gate_exps_b, ids);  // each slot's expert's bias (gpt-oss)
        if (L.up_exps_b.rows) be.add_bias_id(eu, L.up_exps_b, ids);
        if (cfg_.swiglu_limit > 0.0f)
            be.swiglu_oai(eg, eg, eu, cfg_.swiglu_alpha, cfg_.swiglu_limit);  // gpt-oss's clamped SwiGLU
        else
            be.silu_mul(eg, eg, eu);
    }
    be.matmul_id(ey, L.down_exps.data(), ne, eg, ids, rc);  // [n*k, expert_io_dim]
    if (L.down_exps_b.rows) be.add_bias_id(ey, L.down_exps_b, ids);
    if (latent) {  // x += latent_up (sum_j w[:, j] expert_j), the sum started from zeros
        const Tensor sum = moe_sum_.slice_rows(0, n);
        be.copy(sum, zeros_.slice_rows(0, n));
        be.moe_sum_add(sum, ey, w);
        be.matmul_add(x, L.latent_up, sum, proj, rc);
    } else {
        be.moe_sum_add(x, ey, w);                        // x += sum_j w[:, j] expert_j
    }
    if (cfg_.shared_ffn_dim > 0 && cfg_.experts_relu_sq) {  // x += shared_down max(shared_up xn, 0)^2
        be.matmul(gate, L.shared_up, xn, rc);
        be.relu_sq(gate);
        return be.matmul_add(x, L.shared_down, gate, proj, rc);
    }
    if (cfg_.shared_ffn_dim > 0) {  // x += shared(xn), times sigmoid(g xn) where gated (Qwen2-MoE)
        be.matmul_swiglu(gate, L.shared_gate, L.shared_up, xn, up, rc);
        if (!cfg_.shared_expert_gated && cfg_.residual_scale == 1.0f)
            return be.matmul_add(x, L.shared_down, gate, proj, rc);
        if (!cfg_.shared_expert_gated) {  // Granite 4.0-H: the shared expert times the residual multiplier too
            be.matmul(proj, L.shared_down, gate, rc);
            be.scale(proj, cfg_.residual_scale);
            return be.add(x, x, proj);
        }
        const Tensor scale = shared_scale_.slice_rows(0, n);
        be.matmul(proj, L.shared_down, gate, rc);
        be.matmul(scale, L.shared_gate_inp, xn, rc);
        be.scale_sigmoid(proj, scale);
        be.add(x, x, proj);
    }
}

void LlamaModel::forward(const int32_t* tokens, int n, int pos, bool all_logits, float* logits) {
    forward_rows(tokens, n, pos, all_logits, false, logits);
}

void LlamaModel::forward_hidden(const int32_t* tokens, int n, int pos, bool all_rows, float* hidden) {
    if (!hidden) throw std::logic_error("forward_hidden: no output");
    forward_rows(tokens, n, pos, all_rows, true, hidden);
}

void LlamaModel::forward_rows(const int32_t* tokens, int n, int pos, bool all_rows, bool hidden, float* out) {
    check_input(tokens, n, pos);
    profile_ = Profile{};
    const int width = hidden ? cfg_.dim : cfg_.vocab;  // floats an output row
    for (int done = 0; done < n; done += max_batch_) {
        const int m = std::min(max_batch_, n - done);
        const bool last_chunk = done + m == n;
        BatchEntry chunk{0, tokens + done, m, pos + done};
        chunk.prompt_prefix = !out;  // K/V only: a prefix chunk even of one token
        // Its decode rows (positions below kMaxDecodeRun) and prefix rows as two entries; the rows
        // stay in position order.
        const BatchEntry* parts = decode_first(&chunk, 1);
        const int n_parts = n_ordered_;
        if (!out || (!all_rows && !last_chunk)) {  // only the KV cache of this chunk is needed
            be_->begin();
            run_layers(parts, n_parts);
            be_->commit();
            be_->wait();
            continue;
        }
        be_->begin();
        run_layers(parts, n_parts);
        const double t0 = profiling_ ? now_s() : 0;
        // Rows out of every row of this chunk, or of its last row only.
        const int r0 = all_rows ? 0 : m - 1, nr = all_rows ? m : 1;
        Tensor h = x_.slice_rows(r0, nr), hn = xn_.slice_rows(r0, nr);
        norm(hn, h, w_.output_norm, w_.output_norm_b);
        Tensor rows = hn;
        if (!hidden) {
            rows = logits_rows(nr);
            be_->matmul(rows, w_.output, hn, RowClasses::decode(std::max(0, chunk.decode_rows() - r0)));
            finish_logits(rows);
        }
        be_->commit();
        be_->wait();
        be_->read(out + (all_rows ? (size_t)done * width : 0), rows, (size_t)nr * width * sizeof(float));
        if (profiling_) profile_.logits += now_s() - t0;
    }
}

int LlamaModel::forward_argmax(const int32_t* tokens, int n, int pos) {
    check_input(tokens, n, pos);
    profile_ = Profile{};
    // The chunks before the last: KV cache only, cut and split into decode and prefix rows as
    // forward cuts them (forward_rows without an output; it starts the profile afresh, as here).
    const int done = (n - 1) / max_batch_ * max_batch_;
    if (done > 0) forward_rows(tokens, done, pos, false, false, nullptr);
    const BatchEntry last{0, tokens + done, n - done, pos + done};
    int32_t best = 0;
    forward_batch_argmax(&last, 1, &best);
    return best;
}

void LlamaModel::forward_rows_argmax(const int32_t* tokens, int n, int pos, int32_t* best) {
    BatchEntry run{0, tokens, n, pos};
    run.decode_run = true;
    forward_batch_argmax(&run, 1, best);
}

Tensor LlamaModel::logits_rows(int n) {
    if (logits_.rows < n) {
        bufs_.push_back(be_->alloc((size_t)n * cfg_.vocab * sizeof(float)));
        logits_ = make_tensor(bufs_.back().get(), 0, DType::F32, n, cfg_.vocab);
    }
    return logits_.slice_rows(0, n);
}

int LlamaModel::output_rows_of(const BatchEntry* entries, int n_entries) {
    int n = 0;
    for (int e = 0; e < n_entries; e++) n += entries[e].output_rows();
    return n;
}

Tensor LlamaModel::output_rows_normed(const BatchEntry* entries, int n_entries) {
    const int n_out = output_rows_of(entries, n_entries);
    Tensor hn = xn_.slice_rows(0, n_out);
    if (n_entries == 1) {  // one sequence: its output rows are the last rows of x
        norm(hn, x_.slice_rows(entries[0].n - n_out, n_out), w_.output_norm, w_.output_norm_b);
    } else {  // gather the output rows (x_ as an f32 table; indices staged by run_layers)
        be_->get_rows(hn, x_, make_tensor(out_rows_.buf, 0, DType::I32, n_out, 1));
        norm(hn, hn, w_.output_norm, w_.output_norm_b);
    }
    return hn;
}

RowClasses LlamaModel::output_row_classes(const BatchEntry* entries, int n_entries) {
    int n_decode = 0;  // output rows of the entries whose rows are decode rows: they lead (run_layers)
    for (int e = 0; e < n_entries && entries[e].decode_rows() > 0; e++) n_decode += entries[e].output_rows();
    return RowClasses::decode(n_decode);
}

void LlamaModel::norm(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& b) {
    if (cfg_.layer_norm)
        be_->layer_norm(out, x, w, cfg_.rms_eps);
    else
        be_->rms_norm(out, x, w, cfg_.rms_eps);
    if (b.rows) be_->add_bias(out, b);  // StarCoder2's LayerNorm biases
}

// The output projection's rows made logits: Granite's division, Gemma 2's soft cap.
void LlamaModel::finish_logits(const Tensor& out) {
    if (cfg_.logit_scale != 1.0f) be_->scale(out, 1.0f / cfg_.logit_scale);
    if (cfg_.final_softcap > 0.0f) be_->softcap(out, cfg_.final_softcap);
}

Tensor LlamaModel::output_row_logits(const BatchEntry* entries, int n_entries) {
    const Tensor hn = output_rows_normed(entries, n_entries), out = logits_rows(hn.rows);
    be_->matmul(out, w_.output, hn, output_row_classes(entries, n_entries));
    finish_logits(out);  // ties as the capped logits have them
    return out;
}

void LlamaModel::output_row_argmax(const BatchEntry* entries, int n_entries, const Tensor& best) {
    if (cfg_.final_softcap > 0.0f || cfg_.logit_scale != 1.0f) {
        // the argmax of the finished logits (tanh can merge near values into ties; the scaled
        // logits are what the fused kernel's scratch row would otherwise hold unscaled)
        be_->argmax(best, output_row_logits(entries, n_entries));
        return;
    }
    const Tensor hn = output_rows_normed(entries, n_entries);
    be_->matmul_argmax(best, w_.output, hn, logits_rows(hn.rows), output_row_classes(entries, n_entries));
}

const BatchEntry* LlamaModel::decode_first(const BatchEntry* entries, int n_entries) {
    ordered_.clear();
    last_of_.assign(n_entries, -1);
    for (int e = 0; e < n_entries; e++) {  // decode entries and decode parts, in the given order
        const int d = entries[e].decode_rows();
        if (d == 0) continue;
        BatchEntry part = entries[e];
        part.n = d;
        ordered_.push_back(part);
        if (d == entries[e].n) last_of_[e] = (int)ordered_.size() - 1;
    }
    for (int e = 0; e < n_entries; e++) {  // then the prefix entries and parts
        const BatchEntry& b = entries[e];
        const int d = b.decode_rows();
        if (d == b.n) continue;
        BatchEntry part = b;
        part.tokens = b.tokens ? b.tokens + d : nullptr;
        part.n = b.n - d;
        part.pos = b.pos + d;
        part.scores_from = b.scores_from + d;
        ordered_.push_back(part);
        last_of_[e] = (int)ordered_.size() - 1;
    }
    n_ordered_ = (int)ordered_.size();
    out_first_.assign(n_ordered_, 0);
    for (int o = 1; o < n_ordered_; o++) out_first_[o] = out_first_[o - 1] + ordered_[o - 1].output_rows();
    return ordered_.data();
}

// The ordered entries' outputs (rows of `width` values, as output_rows_of(ordered_) lists them)
// in the caller's order: each caller entry's output rows are its last part's.
template <class T>
void LlamaModel::to_caller_order(const T* ordered, const BatchEntry* given, int n_given, size_t width, T* dst) const {
    for (int e = 0; e < n_given; e++) {
        const int o = last_of_[e], rows = given[e].output_rows();
        std::memcpy(dst, ordered + (size_t)out_first_[o] * width, (size_t)rows * width * sizeof(T));
        dst += (size_t)rows * width;
    }
}

void LlamaModel::forward_batch(const BatchEntry* given, int n_given, float* logits) {
    check_batch(given, n_given);
    const BatchEntry* entries = decode_first(given, n_given);
    const int n_entries = n_ordered_;
    profile_ = Profile{};
    be_->begin();
    run_layers(entries, n_entries);
    const double t0 = profiling_ ? now_s() : 0;
    const Tensor out = logits ? output_row_logits(entries, n_entries) : Tensor{};
    be_->commit();
    be_->wait();
    bool reordered = n_entries != n_given;
    for (int e = 0; e < n_given; e++) reordered = reordered || last_of_[e] != e;
    const size_t vocab = cfg_.vocab;
    if (logits && !reordered) be_->read(logits, out, (size_t)out.rows * vocab * sizeof(float));
    if (logits && reordered) {  // each caller entry's output rows, in the caller's order
        logits_host_.resize((size_t)out.rows * vocab);
        be_->read(logits_host_.data(), out, (size_t)out.rows * vocab * sizeof(float));
        to_caller_order(logits_host_.data(), given, n_given, vocab, logits);
    }
    score_entries(entries, n_entries);
    if (profiling_) profile_.logits += now_s() - t0;
}

void LlamaModel::score_entries(const BatchEntry* entries, int n_entries) {
    struct Block {
        const RowScores* scores;
        int x_row, first, m;  // rows x_row .. x_row + m - 1 of x_ score rows first .. of the entry
        bool decode;          // the entry's row class
    };
    std::vector<Block> blocks;
    for (int e = 0, r0 = 0; e < n_entries; r0 += entries[e].n, e++)
        for (int done = 0; entries[e].scores && done < entries[e].n; done += kScoreBlock)
            blocks.push_back({entries[e].scores, r0 + done, entries[e].scores_from + done,
                              std::min(kScoreBlock, entries[e].n - done), entries[e].decode_rows() > 0});
    if (blocks.empty()) return;
    const int vocab = cfg_.vocab;
    if (!score_logits_.buf) {  // two blocks' logits: the device computes one while the host scores the other
        bufs_.push_back(be_->alloc((size_t)2 * kScoreBlock * vocab * sizeof(float)));
        score_logits_ = make_tensor(bufs_.back().get(), 0, DType::F32, 2 * kScoreBlock, vocab);
        score_host_.resize((size_t)kScoreBlock * vocab);
    }
    // Block b's logits go to half b % 2; its normed rows to its own rows of xn_ (free once the
    // pass's outputs were read), so two blocks in flight share no scratch.
    auto encode = [&](size_t b) {
        const Block& k = blocks[b];
        const Tensor hn = xn_.slice_rows(k.x_row, k.m), out = score_logits_.slice_rows((b % 2) * kScoreBlock, k.m);
        be_->begin();
        norm(hn, x_.slice_rows(k.x_row, k.m), w_.output_norm, w_.output_norm_b);
        be_->matmul(out, w_.output, hn, k.decode ? RowClasses::decode(k.m) : RowClasses::prefix());
        finish_logits(out);
        be_->commit();
        return be_->committed();
    };
    uint64_t ticket = encode(0);
    for (size_t b = 0; b < blocks.size(); b++) {
        const uint64_t next = b + 1 < blocks.size() ? encode(b + 1) : 0;  // block b + 1 runs on
        const Block& k = blocks[b];
        be_->read_after(ticket, score_host_.data(), score_logits_.slice_rows((b % 2) * kScoreBlock, k.m),
                        (size_t)k.m * vocab * sizeof(float));
        be_->host_parallel_for(k.m, [&](int64_t r0, int64_t r1) {  // rows split over the host's threads
            score_rows(score_host_.data() + r0 * vocab, (int)(r1 - r0), vocab, *k.scores, k.first + (int)r0);
        });
        ticket = next;
    }
    be_->wait();
}

void LlamaModel::forward_batch_argmax(const BatchEntry* given, int n_given, int32_t* best) {
    check_batch(given, n_given);
    const BatchEntry* entries = decode_first(given, n_given);
    const int n_entries = n_ordered_, n_out = output_rows_of(entries, n_entries);
    profile_ = Profile{};
    be_->begin();
    run_layers(entries, n_entries);
    const double t0 = profiling_ ? now_s() : 0;
    const Tensor best_ids = make_tensor(argmax_.buf, 0, DType::I32, n_out, 1);  // [n_out] as a column
    output_row_argmax(entries, n_entries, best_ids);
    be_->commit();
    be_->wait();
    std::vector<int32_t> ordered_best(n_out);
    be_->read(ordered_best.data(), best_ids, (size_t)n_out * sizeof(int32_t));
    to_caller_order(ordered_best.data(), given, n_given, 1, best);
    score_entries(entries, n_entries);
    if (profiling_) profile_.logits += now_s() - t0;
}

void LlamaModel::kv_save(int n, uint16_t* dst) {
    if (n < 0 || n > cfg_.n_ctx) throw InputError("kv_save: " + std::to_string(n) + " rows of a cache of " +
                                                  std::to_string(cfg_.n_ctx));
    const size_t width = cfg_.max_kv_dim(), rows = (size_t)n * width;
    std::fill(dst, dst + kv_bytes(n) / sizeof(uint16_t), uint16_t{0});  // recurrent layers, narrower layers' padding
    std::vector<uint16_t> narrow;
    for (int l = 0; l < cfg_.n_layers && n > 0; l++) {
        if (!cfg_.keeps_kv(l)) continue;  // no rows: its state goes through state_save, or another layer's rows
        const size_t kv_dim = cfg_.kv_dim_of(l);
        for (int kind = 0; kind < kv_planes(); kind++) {
            const Tensor src = (kind == 0 ? kv_.k[l] : kv_.v[l]).slice_rows(0, n);
            uint16_t* out = dst + (kv_planes() * l + kind) * rows;
            if (kv_dim == width) {
                be_->read(out, src, rows * sizeof(uint16_t));
                continue;
            }
            narrow.resize((size_t)n * kv_dim);  // a narrower layer's rows, spread to the saved width
            be_->read(narrow.data(), src, narrow.size() * sizeof(uint16_t));
            for (int r = 0; r < n; r++) std::copy_n(&narrow[r * kv_dim], kv_dim, out + r * width);
        }
    }
}

void LlamaModel::kv_load(int n, const uint16_t* src) {
    if (n < 0 || n > cfg_.n_ctx) throw InputError("kv_load: " + std::to_string(n) + " rows of a cache of " +
                                                  std::to_string(cfg_.n_ctx));
    const size_t width = cfg_.max_kv_dim(), rows = (size_t)n * width;
    be_->wait();  // no pass in flight may still read the rows being replaced
    state_pos_[0] = -1;  // a recurrent model's state comes with state_load
    std::vector<uint16_t> narrow;
    for (int l = 0; l < cfg_.n_layers && n > 0; l++) {
        if (!cfg_.keeps_kv(l)) continue;
        const size_t kv_dim = cfg_.kv_dim_of(l);
        for (int kind = 0; kind < kv_planes(); kind++) {
            const Tensor dst = (kind == 0 ? kv_.k[l] : kv_.v[l]).slice_rows(0, n);
            const uint16_t* in = src + (kv_planes() * l + kind) * rows;
            if (kv_dim == width) {
                be_->write(dst, in, rows * sizeof(uint16_t));
                continue;
            }
            narrow.resize((size_t)n * kv_dim);  // the layer's own columns of each saved row
            for (int r = 0; r < n; r++) std::copy_n(in + r * width, kv_dim, &narrow[r * kv_dim]);
            be_->write(dst, narrow.data(), narrow.size() * sizeof(uint16_t));
        }
    }
}

void LlamaModel::kv_copy(int src, int dst, int n) {
    auto bad_slot = [&](int s) { return s < 0 || s >= n_slots_; };
    if (bad_slot(src) || bad_slot(dst) || src == dst)
        throw InputError("kv_copy: slots must be distinct and in 0.." + std::to_string(n_slots_ - 1) + ", got " +
                         std::to_string(src) + " -> " + std::to_string(dst));
    if (n < 0 || n > cfg_.n_ctx)
        throw InputError("kv_copy: " + std::to_string(n) + " rows of a cache of " + std::to_string(cfg_.n_ctx));
    if (cfg_.has_recurrent() && n > 0 && state_pos_[src] != n)
        throw InputError("kv_copy: slot " + std::to_string(src) + "'s recurrent state holds " +
                         std::to_string(state_pos_[src]) + " tokens, not the " + std::to_string(n) + " copied");
    if (n == 0) return;
    // Its own command buffer, after the passes committed before it (which wrote src's rows)
    // and before the next (which reads dst's): no wait.
    be_->begin();
    for (const Tensor* t : recurrent_states())  // the states of the n tokens
        be_->copy(t->slice_rows(dst, 1), t->slice_rows(src, 1));
    for (int l = 0; l < cfg_.n_layers; l++) {
        if (!cfg_.keeps_kv(l)) continue;
        be_->copy(slot_rows(kv_.k[l], dst).slice_rows(0, n), slot_rows(kv_.k[l], src).slice_rows(0, n));
        if (!cfg_.v_in_k_cache())  // else V's rows are K's, just copied
            be_->copy(slot_rows(kv_.v[l], dst).slice_rows(0, n), slot_rows(kv_.v[l], src).slice_rows(0, n));
    }
    be_->commit();
    if (cfg_.has_recurrent()) state_pos_[dst] = n;
}

int LlamaModel::state_position(int slot) const {
    if (slot < 0 || slot >= n_slots_)
        throw InputError("state_position: slot " + std::to_string(slot) + " is outside 0.." + std::to_string(n_slots_ - 1));
    return cfg_.has_recurrent() ? state_pos_[slot] : -1;
}

std::vector<const Tensor*> LlamaModel::recurrent_states() const {
    std::vector<const Tensor*> out;
    for (int l = 0; l < cfg_.n_layers; l++) {
        if (!cfg_.is_recurrent(l)) continue;
        out.push_back(&conv_state_[l]);
        if (ssm_state_[l].buf) out.push_back(&ssm_state_[l]);  // a short convolution's layer has none
    }
    return out;
}

size_t LlamaModel::state_floats() const {
    size_t n = 0;
    for (const Tensor* t : recurrent_states()) n += (size_t)t->cols;
    return n;
}

void LlamaModel::state_save(float* dst, int slot) {
    const std::vector<const Tensor*> states = recurrent_states();
    if (states.empty()) return;
    state_position(slot);  // checks the slot
    if (state_pos_[slot] < 0)
        throw InputError("state_save: slot " + std::to_string(slot) + " holds no valid recurrent state");
    be_->wait();
    for (const Tensor* t : states) {
        be_->read(dst, t->slice_rows(slot, 1), (size_t)t->cols * sizeof(float));
        dst += t->cols;
    }
}

void LlamaModel::state_load(const float* src, int pos, int slot) {
    const std::vector<const Tensor*> states = recurrent_states();
    if (states.empty()) return;
    state_position(slot);  // checks the slot
    if (pos < 0 || pos > cfg_.n_ctx)
        throw InputError("state_load: position " + std::to_string(pos) + " is outside 0.." + std::to_string(cfg_.n_ctx));
    be_->wait();  // no pass in flight may still read the state being replaced
    for (const Tensor* t : states) {
        be_->write(t->slice_rows(slot, 1), src, (size_t)t->cols * sizeof(float));
        src += t->cols;
    }
    state_pos_[slot] = pos;
}

}  // namespace forgert
