#include "backend.h"

#include <cmath>

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
