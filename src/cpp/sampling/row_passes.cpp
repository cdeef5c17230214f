#include "sampling/row_passes.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

namespace forgert {
namespace {

// (value, id), better first: the higher value, then the lower id; i: where it sits in its array.
template <class V>
struct Scored {
    V v;
    int32_t id;
    int32_t i;
};
template <class V>
inline bool better(const Scored<V>& a, const Scored<V>& b) {
    return a.v > b.v || (a.v == b.v && a.id < b.id);
}

// The k best of v [b, e) (k <= e - b), in no particular order, appended to out: a heap of k, the
// worst of the best on top, so that each later element costs one comparison against it.
template <class V, class IdOf>
void heap_best(const V* v, size_t b, size_t e, size_t k, IdOf id_of, std::vector<Scored<V>>* out) {
    std::vector<Scored<V>> heap;
    heap.reserve(k);
    for (size_t i = b; i < b + k; ++i) heap.push_back({v[i], id_of(i), (int32_t)i});
    std::make_heap(heap.begin(), heap.end(), better<V>);
    for (size_t i = b + k; i < e; ++i) {
        if (v[i] < heap.front().v) continue;  // most of a row: one compare
        const Scored<V> s{v[i], id_of(i), (int32_t)i};
        if (better(s, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), better<V>);
            heap.back() = s;
            std::push_heap(heap.begin(), heap.end(), better<V>);
        }
    }
    out->insert(out->end(), heap.begin(), heap.end());
}

// The k best of v [n]: each range of chunks' best k (one range, the whole row, without par), then
// the best k of those (the caller's selection). The set is the same however the ranges fall: the
// order `better` is total. A heap a range, not a chunk: each heap's replacements grow as k ln(len / k),
// and sixteen heaps of 256 over 8192 logits made 9x those of one over 128256 (top-p alone took
// 1.9 ms instead of 0.8 on one thread).
template <class V, class IdOf>
std::vector<Scored<V>> chunked_best(const V* v, size_t n, size_t k, IdOf id_of, const ParallelFor& par) {
    const RowChunks rc{n, par};
    std::mutex mu;
    std::vector<Scored<V>> all;
    rc.ranges([&](size_t c0, size_t c1) {
        const size_t b = c0 * RowChunks::kChunk, e = std::min(n, c1 * RowChunks::kChunk);
        std::vector<Scored<V>> mine;
        heap_best(v, b, e, std::min(k, e - b), id_of, &mine);
        std::lock_guard<std::mutex> lock(mu);
        all.insert(all.end(), mine.begin(), mine.end());
    });
    return all;
}

// One chunk's check: its largest logit and whether it holds a NaN or +inf, in kLanes independent
// lanes (vectorizable, no chain of compares).
void check_chunk(const float* x, size_t n, float* best_out, bool* bad_out) {
    constexpr int kLanes = 8;
    float best[kLanes];
    bool bad[kLanes];
    for (int l = 0; l < kLanes; ++l) best[l] = -INFINITY, bad[l] = false;
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int l = 0; l < kLanes; ++l) {
            const float v = x[i + l];
            bad[l] |= !(v <= FLT_MAX);           // NaN or +inf
            best[l] = v > best[l] ? v : best[l];  // a NaN never enters
        }
    for (; i < n; ++i) {
        bad[0] |= !(x[i] <= FLT_MAX);
        best[0] = x[i] > best[0] ? x[i] : best[0];
    }
    bool any_bad = false;
    float m = -INFINITY;
    for (int l = 0; l < kLanes; ++l) any_bad |= bad[l], m = best[l] > m ? best[l] : m;
    *best_out = m;
    *bad_out = any_bad;
}

}  // namespace

float check_logits(const float* logits, int vocab, const ParallelFor& par) {
    const RowChunks rc{(size_t)vocab, par};
    std::vector<float> best(rc.count());
    std::vector<char> bad(rc.count());
    rc.each([&](size_t c, size_t b, size_t e) {
        bool chunk_bad;
        check_chunk(logits + b, e - b, &best[c], &chunk_bad);
        bad[c] = chunk_bad;
    });
    float m = -INFINITY;
    for (size_t c = 0; c < best.size(); ++c) {
        if (bad[c]) {
            size_t j = c * RowChunks::kChunk;
            while (logits[j] <= FLT_MAX) ++j;
            throw std::invalid_argument("logits[" + std::to_string(j) + "] is " +
                                        (std::isnan(logits[j]) ? "NaN" : "inf") +
                                        ": the model's arithmetic overflowed, there is no distribution to sample");
        }
        m = std::max(m, best[c]);
    }
    if (!(m > -INFINITY)) throw std::invalid_argument("every logit is -inf: no token can be sampled");
    return m;
}

void top_k_ids(const float* logits, int vocab, int k, const ParallelFor& par, std::vector<int32_t>* out) {
    out->clear();
    auto id_of = [](size_t i) { return (int32_t)i; };
    std::vector<Scored<float>> all;
    if (k <= 1024) {
        all = chunked_best(logits, (size_t)vocab, (size_t)k, id_of, par);
    } else {  // a large k: a heap would replace often; one selection over the whole row
        all.resize(vocab);
        for (int i = 0; i < vocab; ++i) all[i] = {logits[i], i, i};
    }
    if (all.size() > (size_t)k) std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), better<float>);
    for (int i = 0; i < k; ++i) out->push_back(all[i].id);
    std::sort(out->begin(), out->end());  // id order: the survivors' sums do not depend on the chunks
}

void best_first(const double* x, const int32_t* ids, size_t n, size_t m, const ParallelFor& par,
                std::vector<int32_t>* out) {
    std::vector<Scored<double>> all = chunked_best(x, n, m, [ids](size_t i) { return ids[i]; }, par);
    std::partial_sort(all.begin(), all.begin() + m, all.end(), better<double>);
    out->resize(m);
    for (size_t j = 0; j < m; ++j) (*out)[j] = all[j].i;
}

// Four interleaved partial sums: a chain of n dependent additions (4 cycles each) over a
// 128256-token vocabulary cost more than the weights' exp. The order differs from NumPy's pairwise
// sum as a sequential one does: within a few ulps of it.
double sum4(const double* w, size_t n) {
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; ++l) s[l] += w[i + l];
    for (; i < n; ++i) s[0] += w[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

void chunk_sums(const double* w, size_t n, std::vector<double>* sums) {
    const RowChunks rc{n, ParallelFor()};
    sums->resize(rc.count());
    rc.each([&](size_t c, size_t b, size_t e) { (*sums)[c] = sum4(w + b, e - b); });
}

size_t draw_index(const double* w, size_t n, const std::vector<double>& sums, double u) {
    constexpr size_t kBlock = 256;
    double total = 0;
    for (double s : sums) total += s;
    const double target = u * total;
    double acc = 0;
    for (size_t c = 0; c < sums.size(); ++c) {
        if (!(acc + sums[c] > target)) {
            acc += sums[c];
            continue;
        }
        const size_t end = std::min(n, (c + 1) * RowChunks::kChunk);
        for (size_t b = c * RowChunks::kChunk; b < end; b += kBlock) {
            const size_t z = std::min(end, b + kBlock);
            const double s = sum4(w + b, z - b);
            if (!(acc + s > target)) {
                acc += s;
                continue;
            }
            for (size_t i = b; i < z; ++i)
                if ((acc += w[i]) > target) return i;
            // rounding inside the block fell short: the crossing is in a later one
        }
    }
    size_t last = n - 1;
    while (last > 0 && !(w[last] > 0)) --last;
    return last;
}

}  // namespace forgert
