#include "row_scores.h"

#include <cmath>

namespace forgert {

namespace {

// The k largest entries of x [vocab], largest first, ties to the lower index: an entry enters
// only when strictly larger than the k-th kept, after the kept ones it equals.
void top_entries(const float* x, int vocab, int k, int32_t* ids, float* vals) {
    int kept = 0;
    for (int i = 0; i < vocab; i++) {
        const float v = x[i];
        if (kept == k && !(v > vals[k - 1])) continue;
        int j = kept < k ? kept++ : k - 1;  // the slot freed at the end, then shifted into place
        for (; j > 0 && v > vals[j - 1]; j--) {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
        }
        vals[j] = v;
        ids[j] = i;
    }
}

}  // namespace

void score_rows(const float* logits, int n, int vocab, const RowScores& scores, int r0) {
    const int k = scores.top_k;
    float vals[64];
    for (int r = 0; r < n; r++) {
        const float* x = logits + (size_t)r * vocab;
        float m = x[0];
        for (int i = 1; i < vocab; i++) m = x[i] > m ? x[i] : m;
        double sum = 0.0;
        for (int i = 0; i < vocab; i++) sum += std::exp(x[i] - m);
        const double lse = m + std::log(sum);
        const int row = r0 + r;
        scores.logprob[row] = x[scores.targets[row]] - lse;
        if (k == 0) continue;
        int32_t* ids = scores.top_ids + (size_t)row * k;
        top_entries(x, vocab, k, ids, vals);
        for (int j = 0; j < k; j++) scores.top_logprob[(size_t)row * k + j] = vals[j] - lse;
    }
}

}  // namespace forgert
