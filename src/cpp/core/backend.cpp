#include "backend.h"

#include <cmath>
#include <string>
#include <vector>

namespace forgert {

void Backend::head_rms_norm(const Tensor& x, const Tensor& w, float eps) {
    const int64_t head_dim = w.cols;
    if (x.type != DType::F32 || w.type != DType::F32 || w.rows != 1 || head_dim <= 0 || x.cols % head_dim != 0)
        throw InputError("head_rms_norm: x must be f32 [n, heads * head_dim] and w f32 [head_dim], got x [" +
                         std::to_string(x.rows) + ", " + std::to_string(x.cols) + "], w [" + std::to_string(w.rows) +
                         ", " + std::to_string(head_dim) + "]");
    if (x.rows > 1 && x.stride != (size_t)x.cols * sizeof(float))
        throw InputError("head_rms_norm: x's rows must be contiguous");
    // [n, heads * head_dim] contiguous is [n * heads, head_dim]: one norm row per head.
    Tensor heads = x;
    heads.rows = x.rows * (x.cols / head_dim);
    heads.cols = head_dim;
    heads.stride = (size_t)head_dim * sizeof(float);
    rms_norm(heads, heads, w, eps);
}

void check_copy(const Tensor& dst, const Tensor& src) {
    if (dst.type != src.type || dst.rows != src.rows || dst.cols != src.cols)
        throw InputError(std::string("copy: dst and src must have the same dtype and shape, got ") + dtype_name(dst.type) + " [" +
                         std::to_string(dst.rows) + ", " + std::to_string(dst.cols) + "] and " +
                         dtype_name(src.type) + " [" + std::to_string(src.rows) + ", " + std::to_string(src.cols) + "]");
    const bool overlap = dst.buf == src.buf && dst.offset < src.offset + src.nbytes() &&
                         src.offset < dst.offset + dst.nbytes() && dst.rows > 0;
    if (overlap) throw InputError("copy: dst and src overlap");
}

std::string moe_routing_problem(const Backend::MoeRouting& r, int64_t ne, int64_t k) {
    if (!(std::isfinite(r.scale) && r.scale > 0.0f)) return "scale must be a positive number";
    if (!(r.n_group >= 1 && r.n_group <= 64 && ne % r.n_group == 0))
        return "n_group = " + std::to_string(r.n_group) + " must divide n_expert = " + std::to_string(ne) +
               " (at most 64 groups)";
    if (!(r.topk_group >= 1 && r.topk_group <= r.n_group))
        return "topk_group = " + std::to_string(r.topk_group) + " must be in 1..n_group = " + std::to_string(r.n_group);
    if (r.n_group > 1 && ne / r.n_group < 2)
        return "each expert group needs at least 2 experts (its score is its top-2 sum)";
    if (r.n_group > 1 && (int64_t)r.topk_group * (ne / r.n_group) < k)
        return std::to_string(r.topk_group) + " groups of " + std::to_string(ne / r.n_group) +
               " experts cannot hold k = " + std::to_string(k);
    return "";
}

void check_moe_route(const Tensor& weights, const Tensor& ids, const Tensor& logits, const Backend::MoeRouting& r,
                     const Tensor& select_bias) {
    auto need = [](bool ok, const std::string& what) {
        if (!ok) throw InputError("moe_route: " + what);
    };
    const int64_t n = logits.rows, ne = logits.cols, k = ids.cols;
    need(logits.buf && logits.type == DType::F32, "logits must be f32");
    need(ne > 0 && k >= 1 && k <= ne, "need 1 <= k <= n_expert, got k = " + std::to_string(k) +
                                          " of n_expert = " + std::to_string(ne));
    need(weights.buf && weights.type == DType::F32 && weights.rows == n && weights.cols == k,
         "weights must be f32 [" + std::to_string(n) + ", " + std::to_string(k) + "]");
    need(ids.buf && ids.type == DType::I32 && ids.rows == n, "ids must be i32 [" + std::to_string(n) + ", k]");
    const std::string why = moe_routing_problem(r, ne, k);
    need(why.empty(), why);
    if (select_bias.rows) {
        need(select_bias.buf && select_bias.type == DType::F32 && select_bias.rows == 1 && select_bias.cols == ne,
             "select_bias must be f32 [" + std::to_string(ne) + "]");
    }
}

}  // namespace forgert

namespace forgert {

namespace {
void need_rec(bool ok, const char* op, const std::string& what) {
    if (!ok) throw InputError(std::string(op) + ": " + what);
}

std::string shape(const Tensor& t) { return "[" + std::to_string(t.rows) + ", " + std::to_string(t.cols) + "]"; }

void need_f32(const Tensor& t, const char* op, const char* name, int64_t rows, int64_t cols) {
    need_rec(t.buf && t.type == DType::F32 && t.rows == rows && t.cols == cols && t.stride >= (size_t)cols * 4, op,
             std::string(name) + " must be f32 [" + std::to_string(rows) + ", " + std::to_string(cols) + "], got " +
                 dtype_name(t.type) + " " + shape(t));
}

// The run table's shape, and with its host copy its contents: state rows in range, each run inside
// the pass's rows, no row in two runs.
void check_runs(const Tensor& runs, int64_t rows, int64_t n_slots, const int32_t* host, const char* op) {
    need_rec(runs.buf && runs.type == DType::I32 && runs.cols == 4 && runs.rows >= 1 &&
                 runs.stride == 4 * sizeof(int32_t),
             op, "runs must be i32 [n_runs, 4] (state row, first row, rows, fresh), got " + shape(runs));
    if (!host) return;
    std::vector<bool> seen(rows, false);
    for (int64_t r = 0; r < runs.rows; r++) {
        const int32_t slot = host[4 * r], row0 = host[4 * r + 1], n = host[4 * r + 2];
        need_rec(slot >= 0 && slot < n_slots, op,
                 "run " + std::to_string(r) + "'s state row " + std::to_string(slot) + " is outside 0.." +
                     std::to_string(n_slots - 1));
        need_rec(n >= 1 && row0 >= 0 && (int64_t)row0 + n <= rows, op,
                 "run " + std::to_string(r) + " (rows " + std::to_string(row0) + " + " + std::to_string(n) +
                     ") is outside the pass's " + std::to_string(rows) + " rows");
        for (int32_t i = row0; i < row0 + n; i++) {
            need_rec(!seen[i], op, "row " + std::to_string(i) + " is in two runs");
            seen[i] = true;
        }
    }
}
}  // namespace

void check_conv1d_state(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& state,
                        const Tensor& runs, const int32_t* host_runs) {
    const char* op = "conv1d_state";
    const int64_t C = x.cols, K = w.cols;
    need_rec(K >= 1 && K <= 16, op, "the kernel width must be in 1..16, got " + std::to_string(K));
    need_f32(x, op, "x", x.rows, C);
    need_f32(out, op, "out", x.rows, C);
    need_f32(w, op, "w", C, K);
    if (bias.rows) need_f32(bias, op, "bias", 1, C);
    need_rec(state.buf && state.type == DType::F32 && state.rows >= 1 && state.cols == (K - 1) * C &&
                 (K == 1 || state.stride == (size_t)state.cols * 4),
             op, "state must be f32 [n_slots, (K - 1) * C = " + std::to_string((K - 1) * C) + "], got " + shape(state));
    need_rec(!(out.buf == x.buf && out.offset < x.offset + x.nbytes() && x.offset < out.offset + out.nbytes()), op,
             "out may not overlap x");
    check_runs(runs, x.rows, state.rows, host_runs, op);
}

void check_mamba2_scan(const Tensor& out, const Tensor& x, const Tensor& B, const Tensor& C, const Tensor& dt,
                       const Tensor& A, const Tensor& D, const Tensor& dt_bias, const Tensor& state, const Tensor& runs,
                       const Backend::Mamba2Params& p, const int32_t* host_runs) {
    const char* op = "mamba2_scan";
    need_rec(p.n_groups >= 1 && p.n_heads >= 1 && p.n_heads % p.n_groups == 0, op,
             "n_heads = " + std::to_string(p.n_heads) + " must be a multiple of n_groups = " + std::to_string(p.n_groups));
    need_rec(p.head_dim >= 1 && p.head_dim <= 1024 && p.d_state >= 1 && p.d_state <= 256, op,
             "head_dim must be in 1..1024 and d_state in 1..256, got " + std::to_string(p.head_dim) + ", " +
                 std::to_string(p.d_state));
    const int64_t n = x.rows, xw = (int64_t)p.n_heads * p.head_dim, bw = (int64_t)p.n_groups * p.d_state;
    need_f32(x, op, "x", n, xw);
    need_f32(out, op, "out", n, xw);
    need_f32(B, op, "B", n, bw);
    need_f32(C, op, "C", n, bw);
    need_f32(dt, op, "dt", n, p.n_heads);
    need_f32(A, op, "A", 1, p.n_heads);
    need_f32(D, op, "D", 1, p.n_heads);
    need_f32(dt_bias, op, "dt_bias", 1, p.n_heads);
    const int64_t per_slot = xw * p.d_state;
    need_rec(state.buf && state.type == DType::F32 && state.rows >= 1 && state.cols == per_slot &&
                 state.stride == (size_t)per_slot * 4,
             op, "state must be f32 [n_slots, n_heads * head_dim * d_state = " + std::to_string(per_slot) + "], got " +
                     shape(state));
    for (const Tensor* in : {&x, &B, &C, &dt})
        need_rec(!(out.buf == in->buf && out.offset < in->offset + in->nbytes() && in->offset < out.offset + out.nbytes()),
                 op, "out may not overlap an input");
    check_runs(runs, n, state.rows, host_runs, op);
}

void check_delta_rule(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& alpha,
                      const Tensor& beta, const Tensor& A, const Tensor& dt_bias, const Tensor& state, const Tensor& runs,
                      const Backend::DeltaNetParams& p, const int32_t* host_runs) {
    const char* op = "gated_delta_rule";
    need_rec(p.n_k_heads >= 1 && p.n_v_heads >= 1 && p.n_v_heads % p.n_k_heads == 0, op,
             "n_v_heads = " + std::to_string(p.n_v_heads) + " must be a multiple of n_k_heads = " +
                 std::to_string(p.n_k_heads));
    need_rec(p.k_dim >= 1 && p.k_dim <= 256 && p.v_dim >= 1 && p.v_dim <= 256, op,
             "k_dim and v_dim must be in 1..256, got " + std::to_string(p.k_dim) + ", " + std::to_string(p.v_dim));
    need_rec(std::isfinite(p.eps) && p.eps >= 0.0f, op, "eps must be finite and >= 0");
    const int64_t n = q.rows, kw = (int64_t)p.n_k_heads * p.k_dim, vw = (int64_t)p.n_v_heads * p.v_dim;
    need_f32(q, op, "q", n, kw);
    need_f32(k, op, "k", n, kw);
    need_f32(v, op, "v", n, vw);
    need_f32(out, op, "out", n, vw);
    need_f32(alpha, op, "alpha", n, p.n_v_heads);
    need_f32(beta, op, "beta", n, p.n_v_heads);
    need_f32(A, op, "A", 1, p.n_v_heads);
    need_f32(dt_bias, op, "dt_bias", 1, p.n_v_heads);
    const int64_t per_slot = (int64_t)p.n_v_heads * p.k_dim * p.v_dim;
    need_rec(state.buf && state.type == DType::F32 && state.rows >= 1 && state.cols == per_slot &&
                 state.stride == (size_t)per_slot * 4,
             op, "state must be f32 [n_slots, n_v_heads * k_dim * v_dim = " + std::to_string(per_slot) + "], got " +
                     shape(state));
    for (const Tensor* in : {&q, &k, &v, &alpha, &beta})
        need_rec(!(out.buf == in->buf && out.offset < in->offset + in->nbytes() && in->offset < out.offset + out.nbytes()),
                 op, "out may not overlap an input");
    check_runs(runs, n, state.rows, host_runs, op);
}

}  // namespace forgert
