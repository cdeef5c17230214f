#include "sampling/sampler.h"

#include "sampling/exp_rows.h"
#include "sampling/row_passes.h"

#include "core/backend.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace forgert {
namespace {

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

void Sampler::candidates(const float* logits, int vocab, float best, const ParallelFor& par) {
    const double t = p_.temperature;
    // Tempered relative to the best logit, so that a tiny temperature takes the others to -inf
    // and the best to 0 (e == 1 below) rather than to inf - inf. check_logits made the best finite;
    // every filter keeps it (top-k's survivors include it).
    const double lmax = best;
    // e = p * Z / p_max: the most likely token has e == 1. The top-p mass is that of the top-k
    // survivors (as HF renormalizes), measured before min-p cuts.
    const bool need_e = p_.min_p > 0 || p_.top_p < 1;
    double mass = 0;
    if (p_.top_k > 0 && p_.top_k < vocab) {
        top_k_ids(logits, vocab, p_.top_k, par, &ids_);
        const size_t n = ids_.size();
        x_.resize(n);
        e_.resize(n);
        for (size_t i = 0; i < n; ++i) x_[i] = ((double)logits[ids_[i]] - lmax) / t;
        sums_.clear();
        if (need_e) {
            exp_rows(x_.data(), e_.data(), n);
            chunk_sums(e_.data(), n, &sums_);
        }
    } else {  // the whole vocabulary, a chunk at a time
        ids_.resize(vocab);
        x_.resize(vocab);
        e_.resize(vocab);
        const RowChunks rc{(size_t)vocab, par};
        sums_.assign(need_e ? rc.count() : 0, 0.0);
        rc.each([&](size_t c, size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) ids_[i] = (int32_t)i, x_[i] = ((double)logits[i] - lmax) / t;
            if (need_e) {
                exp_rows(x_.data() + b, e_.data() + b, e - b);
                sums_[c] = sum4(e_.data() + b, e - b);
            }
        });
    }
    for (double s : sums_) mass += s;
    size_t kept = ids_.size();
    if (p_.min_p > 0) {
        kept = 0;
        for (size_t i = 0; i < ids_.size(); ++i) {
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
        const double target = p_.top_p * mass;
        std::vector<int32_t> order;
        size_t m = std::min(kept, (size_t)256);
        for (;;) {
            best_first(x_.data(), ids_.data(), kept, m, par, &order);
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
        // The draw runs over the survivors in id order (the order the tests' reference uses).
        order.resize(count);
        std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids_[a] < ids_[b]; });
        std::vector<int32_t> ids(count);
        std::vector<double> xs(count);
        for (size_t j = 0; j < count; ++j) {
            ids[j] = ids_[order[j]];
            xs[j] = x_[order[j]];
        }
        ids_.swap(ids);
        x_.swap(xs);
        kept = count;
    }
    // Without top-p the survivors are in id order already (top-k's come sorted; min-p keeps the
    // order).
    ids_.resize(kept);
    x_.resize(kept);
}

void Sampler::filter(float* logits, int vocab, std::vector<int32_t>* ids, std::vector<double>* probs,
                     const ParallelFor& par) {
    if (vocab <= 0) throw std::invalid_argument("logits must not be empty");
    apply_penalties(logits, vocab);
    const float best = check_logits(logits, vocab, par);
    if (p_.temperature == 0) {
        *ids = {first_of(logits, vocab, best)};
        *probs = {1.0};
        return;
    }
    candidates(logits, vocab, best, par);
    weights(probs);
    chunk_sums(probs->data(), probs->size(), &sums_);
    double z = 0;
    for (double s : sums_) z += s;
    for (double& q : *probs) q /= z;
    *ids = ids_;
}

int Sampler::sample(float* logits, int vocab, double u, const ParallelFor& par) {
    if (vocab <= 0) throw std::invalid_argument("logits must not be empty");
    if (u >= 1.0) throw std::invalid_argument("the uniform draw must be in [0, 1)");
    apply_penalties(logits, vocab);
    const float best = check_logits(logits, vocab, par);
    if (p_.temperature == 0) return first_of(logits, vocab, best);
    if (u < 0) u = (double)(rng_() >> 11) * 0x1.0p-53;  // 53 random bits in [0, 1)
    const bool whole_vocab = !(p_.top_k > 0 && p_.top_k < vocab) && p_.top_p >= 1 && p_.min_p <= 0;
    if (whole_vocab) {
        // No filter (the server's OpenAI defaults): candidates() would list every id in order and
        // its x_; the same weights exp((l - best) / t) without those lists, a chunk at a time.
        e_.resize(vocab);
        const double t = p_.temperature;
        const RowChunks rc{(size_t)vocab, par};
        sums_.resize(rc.count());
        rc.each([&](size_t c, size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) e_[i] = ((double)logits[i] - (double)best) / t;
            exp_rows(e_.data() + b, e_.data() + b, e - b);
            sums_[c] = sum4(e_.data() + b, e - b);
        });
        return (int)draw_index(e_.data(), e_.size(), sums_, u);
    }
    candidates(logits, vocab, best, par);
    weights(&e_);
    chunk_sums(e_.data(), e_.size(), &sums_);
    return ids_[draw_index(e_.data(), e_.size(), sums_, u)];
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
