#include "sampling/sampler.h"

#include "sampling/exp_rows.h"

#include "core/backend.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace forgert {
namespace {

// (logit, id), better first: higher logit, then the lower id.
struct Scored {
    float v;
    int32_t id;
};
inline bool better(const Scored& a, const Scored& b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

// The k best of logits [vocab] (0 < k < vocab), in no particular order. A heap of k for the
// usual small k: one comparison per logit against the k-th best so far; nth_element otherwise.
void top_k_ids(const float* logits, int vocab, int k, std::vector<int32_t>* out) {
    out->clear();
    if (k <= 1024) {
        std::vector<Scored> heap;  // worst of the k best on top
        heap.reserve(k);
        for (int i = 0; i < k; ++i) heap.push_back({logits[i], i});
        std::make_heap(heap.begin(), heap.end(), better);
        for (int i = k; i < vocab; ++i) {
            // A later id never beats an equal logit: strictly greater replaces the worst.
            if (logits[i] > heap.front().v) {
                std::pop_heap(heap.begin(), heap.end(), better);
                heap.back() = {logits[i], i};
                std::push_heap(heap.begin(), heap.end(), better);
            }
        }
        for (const Scored& s : heap) out->push_back(s.id);
        return;
    }
    std::vector<Scored> all(vocab);
    for (int i = 0; i < vocab; ++i) all[i] = {logits[i], i};
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), better);
    for (int i = 0; i < k; ++i) out->push_back(all[i].id);
}

// A NaN or +inf logit (the model's arithmetic overflowed) has no place in the order the filters
// sort by, and a row of -inf leaves nothing to draw: both are refused before any filter runs.
// Returns the largest logit. One pass in kLanes independent lanes (vectorizable, no chain of
// compares): it runs on every sampled token over the whole vocabulary (128256 logits for
// Llama 3), where the scalar check and std::max_element took 72 us at 49152 (Zen 3).
float check_logits(const float* logits, int vocab) {
    constexpr int kLanes = 8;
    float best[kLanes];
    bool bad[kLanes];
    for (int l = 0; l < kLanes; ++l) best[l] = -INFINITY, bad[l] = false;
    int i = 0;
    for (; i + kLanes <= vocab; i += kLanes)
        for (int l = 0; l < kLanes; ++l) {
            const float v = logits[i + l];
            bad[l] |= !(v <= FLT_MAX);           // NaN or +inf
            best[l] = v > best[l] ? v : best[l];  // a NaN never enters
        }
    for (; i < vocab; ++i) {
        bad[0] |= !(logits[i] <= FLT_MAX);
        best[0] = logits[i] > best[0] ? logits[i] : best[0];
    }
    bool any_bad = false;
    float m = -INFINITY;
    for (int l = 0; l < kLanes; ++l) any_bad |= bad[l], m = best[l] > m ? best[l] : m;
    if (any_bad) {
        int j = 0;
        while (logits[j] <= FLT_MAX) ++j;
        throw std::invalid_argument("logits[" + std::to_string(j) + "] is " + (std::isnan(logits[j]) ? "NaN" : "inf") +
                                    ": the model's arithmetic overflowed, there is no distribution to sample");
    }
    if (!(m > -INFINITY)) throw std::invalid_argument("every logit is -inf: no token can be sampled");
    return m;
}

// sum of w [n] in four interleaved partial sums: not a chain of n dependent additions (4 cycles
// each), which over a 128256-token vocabulary cost more than the weights' exp. The order differs
// from NumPy's pairwise sum as the sequential one did: within a few ulps of it.
double sum4(const double* w, size_t n) {
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; ++l) s[l] += w[i + l];
    for (; i < n; ++i) s[0] += w[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

// The first index whose cumulative weight exceeds target (NumPy's searchsorted "right" on the
// cumulative sum), n - 1 if none does: the weights summed a block at a time (sum4) until the block
// that crosses, then one by one inside it. A token of weight 0 (a -inf logit) is never the answer.
size_t first_crossing(const double* w, size_t n, double target) {
    constexpr size_t kBlock = 256;
    double c = 0;
    for (size_t b = 0; b < n; b += kBlock) {
        const size_t z = std::min(n, b + kBlock);
        const double s = sum4(w + b, z - b);
        if (c + s > target) {
            for (size_t i = b; i < z; ++i)
                if ((c += w[i]) > target) return i;
            // rounding inside the block fell short: the crossing is in a later one
        } else {
            c += s;
        }
    }
    return n - 1;
}

// The first id holding the largest logit m (std::max_element's answer, found in one compare a logit).
int first_of(const float* logits, int vocab, float m) { return (int)(std::find(logits, logits + vocab, m) - logits); }

}  // namespace

Sampler::Sampler(const SamplerParams& p, std::optional<uint64_t> seed) : p_(p) {
    auto bad = [](const std::string& name, const std::string& need) {
        throw std::invalid_argument(name + " must be " + need);
    };
    if (!std::isfinite(p.temperature) || p.temperature < 0) bad("temperature", "a finite number >= 0");
    if (p.top_k < 0) bad("top_k", "an integer >= 0 (0 disables it)");
    if (!(p.top_p > 0 && p.top_p <= 1)) bad("top_p", "a number in (0, 1]");
    if (!(p.min_p >= 0 && p.min_p <= 1)) bad("min_p", "a number in [0, 1]");
    if (!(p.repetition_penalty > 0) || !std::isfinite(p.repetition_penalty))
        bad("repetition_penalty", "a number > 0 (1.0 disables it)");
    if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty))
        bad("presence_penalty and frequency_penalty", "finite");
    if (seed) {
        rng_.seed(*seed);
    } else {
        std::random_device rd;
        rng_.seed(((uint64_t)rd() << 32) ^ rd());
    }
}

void Sampler::reset_history(const int32_t* ids, int n) {
    counts_.clear();
    for (int i = 0; i < n; ++i) ++counts_[ids[i]];
}

// Mirrors the NumPy arithmetic: the repetition and presence steps in float32, the frequency
// step in float64, the result rounded back to float32.
void Sampler::apply_penalties(float* logits, int vocab) const {
    const bool on = p_.repetition_penalty != 1.0 || p_.presence_penalty != 0.0 || p_.frequency_penalty != 0.0;
    if (!on) return;
    const float r = (float)p_.repetition_penalty, presence = (float)p_.presence_penalty;
    for (const auto& [id, count] : counts_) {
        if (id < 0 || id >= vocab)
            throw std::invalid_argument("history token id " + std::to_string(id) + " is outside the vocabulary of " +
                                        std::to_string(vocab));
        float v = logits[id];
        if (p_.repetition_penalty != 1.0) v = v > 0 ? v / r : v * r;
        v = v - presence;
        logits[id] = (float)((double)v - p_.frequency_penalty * count);
    }
}

void Sampler::candidates(const float* logits, int vocab, float best) {
    const double t = p_.temperature;
    if (p_.top_k > 0 && p_.top_k < vocab) {
        top_k_ids(logits, vocab, p_.top_k, &ids_);
    } else {
        ids_.resize(vocab);
        std::iota(ids_.begin(), ids_.end(), 0);
    }
    const size_t n = ids_.size();
    x_.resize(n);
    e_.resize(n);
    // Tempered relative to the best logit, so that a tiny temperature takes the others to -inf
    // and the best to 0 (e == 1 below) rather than to inf - inf. check_logits made the best finite;
    // every filter keeps it (top-k's survivors include it).
    const double lmax = best;
    for (size_t i = 0; i < n; ++i) x_[i] = ((double)logits[ids_[i]] - lmax) / t;
    // e = p * Z / p_max: the most likely token has e == 1. The top-p mass is that of the top-k
    // survivors (as HF renormalizes), measured before min-p cuts.
    double mass = 0;
    const bool need_e = p_.min_p > 0 || p_.top_p < 1;
    if (need_e) {
        exp_rows(x_.data(), e_.data(), n);
        mass = sum4(e_.data(), n);
    }
    size_t kept = n;
    if (p_.min_p > 0) {
        kept = 0;
        for (size_t i = 0; i < n; ++i) {
            if (e_[i] >= p_.min_p) {
                ids_[kept] = ids_[i];
                x_[kept] = x_[i];
                e_[kept] = e_[i];
                ++kept;
            }
        }
    }
    if (p_.top_p < 1) {
        // Sort only as many of the best as hold top_p of the mass: a growing partial sort.
        std::vector<int32_t> order(kept);
        std::iota(order.begin(), order.end(), 0);
        auto best_first = [&](int32_t a, int32_t b) {
            return x_[a] > x_[b] || (x_[a] == x_[b] && ids_[a] < ids_[b]);
        };
        const double target = p_.top_p * mass;
        size_t m = std::min(kept, (size_t)256);
        for (;;) {
            std::partial_sort(order.begin(), order.begin() + m, order.end(), best_first);
            double s = 0;
            for (size_t j = 0; j < m; ++j) s += e_[order[j]];
            if (m == kept || s >= target) break;
            m = std::min(kept, m * 4);
        }
        // Keep a token while the mass before it is below top_p (the NumPy expression: (c - e) / mass).
        size_t count = 0;
        double c = 0;
        for (size_t j = 0; j < m; ++j) {
            const double ej = e_[order[j]];
            c += ej;
            if ((c - ej) / mass < p_.top_p) ++count;
        }
        count = std::max(count, (size_t)1);
        std::vector<int32_t> ids(count);
        std::vector<double> xs(count);
        for (size_t j = 0; j < count; ++j) {
            ids[j] = ids_[order[j]];
            xs[j] = x_[order[j]];
        }
        ids_.assign(ids.begin(), ids.end());
        x_.assign(xs.begin(), xs.end());
        kept = count;
    }
    ids_.resize(kept);
    x_.resize(kept);
    // The draw runs over the survivors in id order (the order the tests' reference uses). Without
    // top-k and top-p they are already (the whole vocabulary, less min-p's cuts): no sort, which
    // cost 1.4 ms a token over 49152 ids (the server's default: temperature alone).
    if (std::is_sorted(ids_.begin(), ids_.end())) return;
    std::vector<int32_t> order(kept);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids_[a] < ids_[b]; });
    std::vector<int32_t> ids(kept);
    std::vector<double> xs(kept);
    for (size_t j = 0; j < kept; ++j) {
        ids[j] = ids_[order[j]];
        xs[j] = x_[order[j]];
    }
    ids_.swap(ids);
    x_.swap(xs);
}

void Sampler::filter(float* logits, int vocab, std::vector<int32_t>* ids, std::vector<double>* probs) {
    if (vocab <= 0) throw std::invalid_argument("logits must not be empty");
    apply_penalties(logits, vocab);
    const float best = check_logits(logits, vocab);
    if (p_.temperature == 0) {
        *ids = {first_of(logits, vocab, best)};
        *probs = {1.0};
        return;
    }
    candidates(logits, vocab, best);
    weights(probs);
    const double z = sum4(probs->data(), probs->size());
    for (double& q : *probs) q /= z;
    *ids = ids_;
}

int Sampler::sample(float* logits, int vocab, double u) {
    if (vocab <= 0) throw std::invalid_argument("logits must not be empty");
    if (u >= 1.0) throw std::invalid_argument("the uniform draw must be in [0, 1)");
    apply_penalties(logits, vocab);
    const float best = check_logits(logits, vocab);
    if (p_.temperature == 0) return first_of(logits, vocab, best);
    if (u < 0) u = (double)(rng_() >> 11) * 0x1.0p-53;  // 53 random bits in [0, 1)
    const bool whole_vocab = !(p_.top_k > 0 && p_.top_k < vocab) && p_.top_p >= 1 && p_.min_p <= 0;
    if (whole_vocab) {
        // No filter (the server's OpenAI defaults): candidates() would list every id in order and
        // its x_; the same weights exp((l - best) / t) without those lists, and the crossing found
        // through block sums (first_crossing) rather than a cumulative sum of the whole vocabulary.
        e_.resize(vocab);
        const double t = p_.temperature;
        for (int i = 0; i < vocab; ++i) e_[i] = ((double)logits[i] - (double)best) / t;
        exp_rows(e_.data(), e_.data(), e_.size());
        return (int)first_crossing(e_.data(), e_.size(), u * sum4(e_.data(), e_.size()));
    }
    candidates(logits, vocab, best);
    weights(&e_);
    return ids_[first_crossing(e_.data(), e_.size(), u * sum4(e_.data(), e_.size()))];
}

void Sampler::weights(std::vector<double>* w) const {
    double xmax = -INFINITY;
    for (double x : x_) xmax = std::max(xmax, x);
    w->resize(x_.size());
    for (size_t i = 0; i < x_.size(); ++i) (*w)[i] = x_[i] - xmax;
    exp_rows(w->data(), w->data(), w->size());
}

int32_t no_token_sentinel(const float* logits, int vocab) {
    bool nan = false, inf = false, any = false;
    for (int i = 0; i < vocab; ++i) {
        nan |= std::isnan(logits[i]);
        inf |= logits[i] == INFINITY;
        any |= logits[i] > -INFINITY;
    }
    return nan ? Backend::kArgmaxNaN : inf ? Backend::kArgmaxInf : !any ? Backend::kArgmaxNone : 0;
}

}  // namespace forgert
