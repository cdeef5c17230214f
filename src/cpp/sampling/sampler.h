// Token sampling on one row of float32 logits, where the engine wrote them: penalties over the
// token history -> temperature -> top-k -> top-p -> min-p -> a draw. The same order and
// definitions as the NumPy sampler (python/forgert/sampling.py), which is the reference the
// tests compare this one against.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <unordered_map>
#include <vector>

#include "sampling/row_passes.h"

namespace forgert {

struct SamplerParams {
    double temperature = 0.8;  // 0: greedy (argmax after penalties)
    int top_k = 40;            // 0 disables
    double top_p = 0.95;       // 1.0 disables
    double min_p = 0.05;       // 0.0 disables
    double repetition_penalty = 1.0;
    double presence_penalty = 0.0;
    double frequency_penalty = 0.0;
};

// One generation's sampler: not shared between threads (Model holds its lock for the stream).
class Sampler {
public:
    // No seed: seeded from std::random_device. Parameters are checked (std::invalid_argument).
    Sampler(const SamplerParams& p, std::optional<uint64_t> seed);

    // The token history the penalties look at (prompt + generated).
    void reset_history(const int32_t* ids, int n);
    void add_history(int32_t id) { ++counts_[id]; }

    // Samples from logits [vocab], which it overwrites (penalties are applied in place). u in
    // [0, 1) is the uniform draw; u < 0 takes the next one from the seeded RNG. par runs the passes
    // over the whole row on several threads (row_passes.h); the token is the same without it.
    int sample(float* logits, int vocab, double u = -1.0, const ParallelFor& par = {});

    // The filtered candidates of logits [vocab] (overwritten): ids in increasing order and their
    // probabilities, renormalized. Greedy: the argmax alone.
    void filter(float* logits, int vocab, std::vector<int32_t>* ids, std::vector<double>* probs,
                const ParallelFor& par = {});

private:
    void apply_penalties(float* logits, int vocab) const;
    // Fills cand_ with the survivors of top-k / min-p / top-p, in id order, and their weights;
    // best: the row's largest logit.
    void candidates(const float* logits, int vocab, float best, const ParallelFor& par);

    SamplerParams p_;
    std::mt19937_64 rng_;
    std::unordered_map<int32_t, int> counts_;  // token id -> times seen in the history
    Candidates cand_;                          // scratch, reused across tokens
    std::vector<double> e_;                    // the whole vocabulary's weights (no filter)
    std::vector<double> sums_;                 // the weights' sums a chunk (RowChunks)
};

// Logits [vocab] with no token to draw get core/backend.h's argmax sentinel: Backend::kArgmaxNaN if
// one is NaN, else kArgmaxInf if one is +inf, else kArgmaxNone if none is above -inf; 0 for logits
// that have a token. (A batch writes it for a row its sampler refused, so that the sequence alone
// fails, as a greedy row's: forgert/greedy.py.)
int32_t no_token_sentinel(const float* logits, int vocab);

}  // namespace forgert
