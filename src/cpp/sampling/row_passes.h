// The sampler's passes over a whole logits row (check + max, top-k selection, weights, the draw),
// cut into fixed chunks of kChunk logits that may run on several threads. A sampled token over a
// 128256-token vocabulary costs ~0.35 ms on one core: as much as a 16-core decode step's matmuls
// of 16 layers, while the other 15 cores wait (and fall asleep, to be woken by the next step).
//
// The chunks are fixed by the row, not by the threads: every reduction is done per chunk, then over
// the chunks in order, so a draw is the same token whatever runs the chunks, one thread or sixteen,
// in any order.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace forgert {

// Calls fn(begin, end) over ranges that cover [0, n), on any threads in any order, and returns
// when all are done (the CPU backend's pool: Backend::host_parallel_for); empty: inline.
using ParallelFor = std::function<void(int64_t n, const std::function<void(int64_t, int64_t)>& fn)>;

// A row of `len` elements cut into chunks of kChunk; each(f) calls f(c, begin, end) for every
// chunk c, through par when there is more than one chunk.
struct RowChunks {
    static constexpr size_t kChunk = 8192;  // 32 KB of floats: an L1's worth, a 16th of a 128K row
    size_t len;
    const ParallelFor& par;
    size_t count() const { return (len + kChunk - 1) / kChunk; }
    template <class F>
    void each(F&& f) const {
        ranges([&](size_t c0, size_t c1) {
            for (size_t c = c0; c < c1; ++c) f(c, c * kChunk, std::min(len, (c + 1) * kChunk));
        });
    }
    // f(c0, c1) over ranges of whole chunks [c0, c1) that cover the row: [0, count()) at once when
    // there is no par (a selection then keeps one heap over the row, not one a chunk).
    template <class F>
    void ranges(F&& f) const {
        const size_t n = count();
        if (par && n > 1) {
            par((int64_t)n, [&](int64_t c0, int64_t c1) { f((size_t)c0, (size_t)c1); });
        } else {
            f(size_t(0), n);
        }
    }
};

// The row's largest logit, after refusing (std::invalid_argument) a NaN or +inf logit (the model's
// arithmetic overflowed: no order to filter by) and a row of -inf (nothing to draw).
float check_logits(const float* logits, int vocab, const ParallelFor& par);

// A sampler's candidates, in increasing id order: ids [n], x [n] (tempered logits less the best
// one's: <= 0, the best's exactly 0) and e [n] = exp(x), their weights.
struct Candidates {
    std::vector<int32_t> ids;
    std::vector<double> x, e;
    size_t size() const { return ids.size(); }
    void resize(size_t n) { ids.resize(n), x.resize(n), e.resize(n); }
    // Keeps the candidates i for which keep(i) holds, in order: a chunk's count, then its writes
    // from the counts' prefix sum (both through par; keep reads the arrays as they were).
    template <class Keep>
    void keep_if(Keep keep, const ParallelFor& par) {
        const RowChunks rc{size(), par};
        std::vector<size_t> at(rc.count() + 1, 0);
        rc.each([&](size_t c, size_t b, size_t e) {
            size_t k = 0;
            for (size_t i = b; i < e; ++i) k += keep(i) ? 1 : 0;
            at[c + 1] = k;
        });
        for (size_t c = 0; c < rc.count(); ++c) at[c + 1] += at[c];
        ids2_.resize(at.back()), x2_.resize(at.back()), e2_.resize(at.back());
        rc.each([&](size_t c, size_t b, size_t end) {
            // Written whether kept or not, the next one kept writing over it: no branch on keep
            // (unpredictable where half are kept), only on the chunk's slots running out.
            for (size_t i = b, o = at[c]; i < end && o < at[c + 1]; ++i) {
                ids2_[o] = ids[i], x2_[o] = x[i], e2_[o] = e[i];
                o += keep(i) ? 1 : 0;
            }
        });
        ids.swap(ids2_), x.swap(x2_), e.swap(e2_);
    }

    // top_p_cut's bins of the candidates' weights: a chunk's mass and count in each, each one's bin
    std::vector<double> bin_mass;
    std::vector<uint32_t> bin_count;
    std::vector<uint16_t> bins;

private:
    std::vector<int32_t> ids2_;
    std::vector<double> x2_, e2_;
};

// top-p: keeps the candidates whose mass before them, best first (the higher x, then the lower id),
// is below top_p x mass (mass: the weights' sum before any cut), and at least the best; in id order.
// In O(n), not a sort of the best, which took 64 ms over a flat row (a model unsure, or a high
// temperature: 112055 of 128256 kept at top_p 0.95): a peaked row's cut from the few candidates
// near the best, sorted; a flat row's from the weights summed into bins of x, the bin where the
// kept mass crosses found from the bins' sums, and only that bin's candidates sorted.
void top_p_cut(Candidates* c, double mass, double top_p, const ParallelFor& par);

// The k best ids of logits [vocab] (0 < k < vocab; better: the higher logit, then the lower id),
// in increasing id order.
void top_k_ids(const float* logits, int vocab, int k, const ParallelFor& par, std::vector<int32_t>* out);

// sum of w [n] in four interleaved partial sums (not one chain of n dependent additions).
double sum4(const double* w, size_t n);

// The chunks' sums of w [n] (sum4 of each kChunk), and the index the draw u in [0, 1) lands on:
// the first whose cumulative weight exceeds u x the total (NumPy's searchsorted "right" on the
// cumulative sum), found through the chunks' sums, then 256-element blocks', then one by one. A
// weight of 0 (a -inf logit) is never drawn: where the sums' rounding leaves u x total past the
// end, the last index of positive weight.
void chunk_sums(const double* w, size_t n, std::vector<double>* sums);
// The chunks' sums added in chunk order: the row's total, the same whatever ran the chunks.
double total_of(const std::vector<double>& sums);
size_t draw_index(const double* w, size_t n, const std::vector<double>& sums, double u);

}  // namespace forgert
