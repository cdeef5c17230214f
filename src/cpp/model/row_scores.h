// Scoring a prompt against the model (prompt logprobs: echo, lm-eval's log-likelihood tasks):
// each evaluated row's logits judge the token that follows it. Reduced on the host, in C++, as
// the rows come off the device: the caller never sees the [n, vocab] logits.
#pragma once

#include <cstdint>

namespace forgert {

// One batch entry's scoring: row i of its n rows scores targets[i]. The pass fills the outputs.
struct RowScores {
    const int32_t* targets = nullptr;  // [n]: the token after each row (the prompt shifted by one)
    int top_k = 0;                     // alternatives listed per row, most likely first
    double* logprob = nullptr;         // [n]: log-softmax of the row at its target
    int32_t* top_ids = nullptr;        // [n, top_k]: the row's top_k tokens, ties to the lower id
    double* top_logprob = nullptr;     // [n, top_k]: their log-softmax values
};

// Scores rows [r0, r0 + n) of `scores` from their logits, f32 [n, vocab]. The log-sum-exp is
// summed in f64 over f32 exponentials (as forgert/logprobs.py does for a sampled token).
void score_rows(const float* logits, int n, int vocab, const RowScores& scores, int r0);

}  // namespace forgert
