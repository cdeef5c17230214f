#include "sampling/sampler.h"

#include "sampling/exp_rows.h"
#include "sampling/row_passes.h"

#include "core/backend.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace forgert {
namespace {

// x = (logit - lmax) / t and its weight e = exp(x) over a whole row, a chunk at a time through par
// (x may be e: weighed in place), each chunk's sum of e into sums [chunks]; ids, when given, the
// row's indices 0..vocab-1.
void weigh_row(const float* logits, int vocab, double lmax, double t, int32_t* ids, double* x, double* e,
               std::vector<double>* sums, const ParallelFor& par) {
    const RowChunks rc{(size_t)vocab, par};
    sums->resize(rc.count());
    rc.each([&](size_t c, size_t b, size_t end) {
        for (size_t i = b; i < end; ++i) x[i] = ((double)logits[i] - lmax) / t;
        if (ids)
            for (size_t i = b; i < end; ++i) ids[i] = (int32_t)i;
        exp_rows(x + b, e + b, end - b);
        (*sums)[c] = sum4(e + b, end - b);
    });
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
    } else {  // the whole vocabulary
        c.resize(vocab);
        weigh_row(logits, vocab, lmax, t, c.ids.data(), c.x.data(), c.e.data(), &sums_, par);
    }
    // e = p * Z / p_max: the most likely token has e == 1. The top-p mass is that of the top-k
    // survivors (as HF renormalizes), measured before min-p cuts.
    const double mass = total_of(sums_);
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
    const double z = total_of(sums_);
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
        // No filter (the server's OpenAI defaults): candidates() would list every id and its
        // tempered logit; the same weights exp((l - best) / t) without those lists.
        e_.resize(vocab);
        weigh_row(logits, vocab, best, p_.temperature, nullptr, e_.data(), e_.data(), &sums_, par);
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
