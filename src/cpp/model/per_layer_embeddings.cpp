// Gemma 4's per-layer embeddings (E2B / E4B): a second, wide embedding gives every token a small
// input per layer, mixed with a projection of its ordinary embedding, which each layer gates into
// its residual stream after the feed-forward (ModelConfig::ple_dim); Gemma 3n's into its AltUp
// streams other than the active one (altup.cpp).
#include <cmath>

#include "llama_model.h"

namespace forgert {

void LlamaModel::per_layer_inputs(const Tensor& ids, const Tensor& x, int n) {
    Backend& be = *be_;
    const Tensor ple = ple_.slice_rows(0, n), proj = ple_proj_.slice_rows(0, n);  // [n, n_layers * ple_dim]
    Tensor rows = ids;
    if (cfg_.ple_rows() < cfg_.vocab) {  // ids past the table (Gemma 3n's multimodal tokens) look up row 0
        rows = make_tensor(ple_ids_.buf, 0, DType::I32, n, 1);
        be.clamp_ids(rows, ids, cfg_.ple_rows());
    }
    be.get_rows(ple, w_.per_layer_token_embd, rows);  // the token's rows of the wide table (any weight type)
    be.scale(ple, cfg_.ple_embed_scale);               // times sqrt(ple_dim)
    be.matmul(proj, w_.per_layer_model_proj, x, rows_);  // of the scaled embeddings
    be.scale(proj, 1.0f / std::sqrt((float)cfg_.dim));
    be.head_rms_norm(proj, w_.per_layer_proj_norm, cfg_.rms_eps);  // each layer's ple_dim slice normed
    be.add(ple, ple, proj);
    be.scale(ple, 1.0f / std::sqrt(2.0f));
}

Tensor LlamaModel::per_layer_input(const LayerWeights& L, int layer, const Tensor& in, int n) {
    Backend& be = *be_;
    const int64_t p = cfg_.ple_dim;
    const Tensor gate = ple_gate_.slice_rows(0, n), proj = proj_.slice_rows(0, n);
    be.matmul(gate, L.ple_inp_gate, in, rows_);  // [n, ple_dim]
    be.gelu(gate);                                // tanh GELU (the model's hidden_activation)
    be.mul(gate, gate, ple_.slice_rows(0, n).slice_cols(layer * p, p));  // times this layer's inputs
    be.matmul(proj, L.ple_proj, gate, rows_);     // [n, dim]
    return proj;
}

}  // namespace forgert
