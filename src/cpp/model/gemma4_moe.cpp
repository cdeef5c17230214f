// Gemma 4's mixture-of-experts layers (26B-A4B): a dense GeGLU MLP and the routed GeGLU experts side
// by side, each behind its own norms, their sum post-normed into the residual stream
// (ModelConfig::moe_beside_dense).
#include <cmath>

#include "llama_model.h"

namespace forgert {

void LlamaModel::gemma4_moe_feed_forward(const LayerWeights& L, const Tensor& x, const Tensor& xn, int n) {
    Backend& be = *be_;
    const RowClasses rc = rows_;
    const float eps = cfg_.rms_eps;
    const int k = cfg_.n_expert_used, ne = cfg_.n_expert;
    const Tensor gate = make_tensor(gate_.buf, 0, DType::F32, n, cfg_.ffn_dim),
                 up = make_tensor(up_.buf, 0, DType::F32, n, cfg_.ffn_dim), dense = proj_.slice_rows(0, n),
                 experts = moe_sum_.slice_rows(0, n);
    // the dense MLP: post_ffw_norm_1(w_down (gelu(w_gate xn) * (w_up xn))), xn = ffn_norm(x) (the caller's)
    be.matmul_geglu(gate, L.w_gate, L.w_up, xn, up, rc);
    be.matmul(dense, L.w_down, gate, rc);
    be.rms_norm(dense, dense, L.ffn_post_norm_1, eps);
    // the router: softmax over W (rms_norm(x) * scale / sqrt(dim)), the top k renormalised, each
    // chosen weight times its expert's output scale (gathered by the chosen ids)
    const Tensor logits = router_logits_.slice_rows(0, n), ids = route_ids_.slice_rows(0, n),
                 w = route_w_.slice_rows(0, n);
    be.rms_norm(xn, x, L.router_in_scale, eps);
    be.scale(xn, 1.0f / std::sqrt((float)cfg_.dim));
    be.matmul(logits, L.router, xn, rc);
    be.moe_route(w, ids, logits, Backend::MoeRouting{false, true, 1.0f, 1, 1}, Tensor{});
    const Tensor slots = make_tensor(ids.buf, ids.offset, DType::I32, (int64_t)n * k, 1),  // [n*k] as a column
                 slot_w = make_tensor(w.buf, w.offset, DType::F32, (int64_t)n * k, 1),
                 slot_scale = route_scale_.slice_rows(0, (int64_t)n * k);
    Tensor table = L.expert_out_scale;  // f32 [1, n_expert] as the table [n_expert, 1]
    table.rows = ne;
    table.cols = 1;
    table.stride = sizeof(float);
    be.get_rows(slot_scale, table, slots);
    be.mul(slot_w, slot_w, slot_scale);
    // the experts: post_ffw_norm_2(sum_j w_j down_j(gelu(gate_j xn) * (up_j xn))), xn = pre_ffw_norm_2(x)
    const Tensor eg = exp_gate_.slice_rows(0, (int64_t)n * k), eu = exp_up_.slice_rows(0, (int64_t)n * k),
                 ey = exp_out_.slice_rows(0, (int64_t)n * k);
    be.rms_norm(xn, x, L.ffn_pre_norm_2, eps);
    be.matmul_id(eg, L.gate_exps.data(), ne, xn, ids, rc);
    be.matmul_id(eu, L.up_exps.data(), ne, xn, ids, rc);
    be.gelu_mul(eg, eg, eu);
    be.matmul_id(ey, L.down_exps.data(), ne, eg, ids, rc);
    be.copy(experts, zeros_.slice_rows(0, n));
    be.moe_sum_add(experts, ey, w);
    be.rms_norm(experts, experts, L.ffn_post_norm_2, eps);
    // x += post_ffw_norm(dense + experts)
    be.add(dense, dense, experts);
    be.add_rms_norm(x, dense, L.ffn_post_norm, eps);
}

}  // namespace forgert
