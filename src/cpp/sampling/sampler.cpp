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
    // Tempered relative to the best logit, so that a tiny temperature takes the others to -inf
    // and the best to 0 (e == 1) rather than to inf - inf. check_logits made the best finite;
    // every filter keeps it (top-k's survivors include it).
    const double t = p_.temperature, lmax = best;
    Candidates& c = cand_;
    if (p_.top_k > 0 && p_.top_k < vocab) {
        top_k_ids(logits, vocab, p_.top_k, par, &c.ids);
        const size_t n = c.ids.size();
        c.x.resize(n);
        c.e.resize(n);
        for (size_t i = 0; i < n; ++i) c.x[i] = ((double)logits[c.ids[i]] - lmax) / t;
        exp_rows(c.x.data(), c.e.data(), n);
        chunk_sums(c.e.data(), n, &sums_);
    } else {  // the whole vocabulary, a chunk at a time
        c.resize(vocab);
        const RowChunks rc{(size_t)vocab, par};
        sums_.resize(rc.count());
        rc.each([&](size_t ch, size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) c.ids[i] = (int32_t)i, c.x[i] = ((double)logits[i] - lmax) / t;
            exp_rows(c.x.data() + b, c.e.data() + b, e - b);
            sums_[ch] = sum4(c.e.data() + b, e - b);
        });
    }
    // e = p * Z / p_max: the most likely token has e == 1. The top-p mass is that of the top-k
    // survivors (as HF renormalizes), measured before min-p cuts.
    double mass = 0;
    for (double s : sums_) mass += s;
    if (p_.min_p > 0) c.keep_if([&](size_t i) { return c.e[i] >= p_.min_p; }, par);
    if (p_.top_p < 1) top_p_cut(&c, mass, p_.top_p, par);
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
    chunk_sums(cand_.e.data(), cand_.size(), &sums_);
    double z = 0;
    for (double s : sums_) z += s;
    probs->resize(cand_.size());
    for (size_t i = 0; i < cand_.size(); ++i) (*probs)[i] = cand_.e[i] / z;
    *ids = cand_.ids;
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
    chunk_sums(cand_.e.data(), cand_.size(), &sums_);
    return cand_.ids[draw_index(cand_.e.data(), cand_.size(), sums_, u)];
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
