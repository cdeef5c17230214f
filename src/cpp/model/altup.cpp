// Gemma 3n's AltUp (alternating updates) and LAuReL (learned augmented residual). The residual
// stream is kept as altup_n parallel streams side by side in each row of streams_ (stream j in
// columns j * dim..); each layer runs on a prediction of the active stream 0 and corrects every
// stream with its output (transformers' Gemma3nTextAltUp, Gemma3nTextLaurelBlock).
#include <cmath>

#include "llama_model.h"

namespace forgert {

Tensor LlamaModel::altup_modalities(const LayerWeights& L, const Tensor& s, int n) {
    Backend& be = *be_;
    const Tensor in = altup_tmp_.slice_rows(0, n), mod = altup_mod_.slice_rows(0, n);
    be.rms_norm(in, s, L.altup_router_norm, cfg_.rms_eps);
    be.scale(in, 1.0f / (float)cfg_.dim);    // router_input_scale: hidden_size^-1
    be.matmul(mod, L.altup_router, in, rows_);  // [n, N]
    be.softcap(mod, 1.0f);                    // tanh
    return mod;
}

void LlamaModel::altup_streams_in(const Tensor& x, int n) {
    Backend& be = *be_;
    const int64_t d = cfg_.dim;
    const Tensor s = streams_.slice_rows(0, n), p = altup_tmp_.slice_rows(0, n);
    be.copy(s.slice_cols(0, d), x);
    for (int j = 1; j < cfg_.altup_n; j++) {  // stream j: altup_proj_j x, rescaled to x's RMS
        be.matmul(p, w_.altup_proj[j - 1], x, rows_);
        be.rms_match(s.slice_cols(j * d, d), p, x);
    }
}

void LlamaModel::altup_predict(const LayerWeights& L, const Tensor& x, int n) {
    Backend& be = *be_;
    const int N = cfg_.altup_n;
    const int64_t d = cfg_.dim;
    const Tensor s = streams_.slice_rows(0, n), pred = pred_.slice_rows(0, n), coef = altup_coef_.slice_rows(0, n);
    be.matmul(coef, L.altup_predict_coef, altup_modalities(L, s.slice_cols(0, d), n), rows_);  // [n, N * N]
    for (int j = 0; j < N; j++)  // pred_j = s_j + sum_k coef[j * N + k] s_k
        be.altup_mix(pred.slice_cols(j * d, d), s, coef.slice_cols(j * N, N), s.slice_cols(j * d, d));
    be.copy(x, pred.slice_cols(0, d));  // the layer runs on the active prediction
}

Tensor LlamaModel::laurel(const LayerWeights& L, const Tensor& xn, int n) {
    Backend& be = *be_;
    const Tensor low = laurel_low_.slice_rows(0, n), out = laurel_out_.slice_rows(0, n);
    be.matmul(low, L.laurel_l, xn, rows_);   // [n, rank]
    be.matmul(out, L.laurel_r, low, rows_);  // [n, dim]
    be.rms_norm(out, out, L.laurel_post_norm, cfg_.rms_eps);
    be.add(out, out, xn);                     // LAuReL's own residual: xn + post_norm(r l xn)
    return out;
}

void LlamaModel::altup_correct(const LayerWeights& L, int layer, const Tensor& x, int n) {
    Backend& be = *be_;
    const int N = cfg_.altup_n;
    const int64_t d = cfg_.dim;
    const Tensor s = streams_.slice_rows(0, n), pred = pred_.slice_rows(0, n), coef = altup_coef_.slice_rows(0, n),
                 innov = altup_tmp_.slice_rows(0, n);
    const Tensor c = coef.slice_cols(0, N);
    be.matmul(c, L.altup_correct_coef, altup_modalities(L, x, n), rows_);  // [n, N]
    be.add_bias(c, altup_ones_);                                          // + 1
    be.copy(innov, pred.slice_cols(0, d));  // the innovation: x - pred_0
    be.scale(innov, -1.0f);
    be.add(innov, innov, x);
    for (int j = 0; j < N; j++)  // s_j = pred_j + c_j * innovation
        be.altup_mix(s.slice_cols(j * d, d), innov, c.slice_cols(j, 1), pred.slice_cols(j * d, d));
    // the per-layer input, gated by the corrected active stream (times its scale), into streams 1..
    const Tensor active = x;  // x is free again: the corrected stream 0 (scaled) takes its place
    be.copy(active, s.slice_cols(0, d));
    if (cfg_.altup_correct_scale) {
        Tensor w = L.altup_correct_scale;  // f32 [dim] repeated over the rows (stride 0)
        w.rows = n;
        w.stride = 0;
        be.mul(active, active, w);
    }
    const Tensor proj = per_layer_input(L, layer, active, n);
    be.rms_norm(proj, proj, L.ple_post_norm, cfg_.rms_eps);
    for (int j = 1; j < N; j++) be.add(s.slice_cols(j * d, d), s.slice_cols(j * d, d), proj);
}

void LlamaModel::altup_streams_out(const Tensor& x, int n) {
    Backend& be = *be_;
    const int64_t d = cfg_.dim;
    const Tensor s = streams_.slice_rows(0, n), in = altup_tmp_.slice_rows(0, n), p = proj_.slice_rows(0, n);
    be.copy(x, s.slice_cols(0, d));
    for (int j = 1; j < cfg_.altup_n; j++) {  // x += altup_unembd_proj_j s_j, rescaled to stream 0's RMS
        be.copy(in, s.slice_cols(j * d, d));
        be.matmul(p, w_.altup_unembd_proj[j - 1], in, rows_);
        be.rms_match(p, p, s.slice_cols(0, d));
        be.add(x, x, p);
    }
    be.scale(x, 1.0f / (float)cfg_.altup_n);
}

}  // namespace forgert
