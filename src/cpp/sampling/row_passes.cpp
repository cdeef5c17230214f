#include "sampling/row_passes.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

namespace forgert {
namespace {

// (logit, id), better first: the higher logit, then the lower id (a function object, not a
// function pointer: the heap and selection calls inline it).
struct Scored {
    float v;
    int32_t id;
};
struct Better {
    bool operator()(const Scored& a, const Scored& b) const { return a.v > b.v || (a.v == b.v && a.id < b.id); }
};
constexpr Better better{};

// The k best of logits [b, e) (k <= e - b), in no particular order, appended to out: a heap of k,
// the worst of the best on top, so that each later logit costs one comparison against it.
void heap_best(const float* v, size_t b, size_t e, size_t k, std::vector<Scored>* out) {
    std::vector<Scored> heap;
    heap.reserve(k);
    for (size_t i = b; i < b + k; ++i) heap.push_back({v[i], (int32_t)i});
    std::make_heap(heap.begin(), heap.end(), better);
    auto consider = [&](size_t i) {
        const Scored s{v[i], (int32_t)i};
        if (better(s, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), better);
            heap.back() = s;
            std::push_heap(heap.begin(), heap.end(), better);
        }
    };
    // Most of a row is below the heap's worst: 16 at a time, one branch for the 16 (vectorized
    // compares) instead of a taken branch each, which made the 40 best of 128256 cost 140 us.
    constexpr size_t kBlock = 16;
    size_t i = b + k;
    for (; i + kBlock <= e; i += kBlock) {
        const float worst = heap.front().v;
        bool any = false;
        for (size_t j = 0; j < kBlock; ++j) any |= !(v[i + j] < worst);
        if (any)
            for (size_t j = i; j < i + kBlock; ++j) consider(j);
    }
    for (; i < e; ++i) consider(i);
    out->insert(out->end(), heap.begin(), heap.end());
}

// The k best of logits [n]: each range of chunks' best k (one range, the whole row, without par),
// for the caller to select the best k of. The set is the same however the ranges fall: `better`
// is a total order. A heap a range, not a chunk: a heap's replacements grow as k ln(len / k), and
// sixteen heaps of 256 over 8192 logits each made 9x those of one over 128256 (2x the time).
std::vector<Scored> ranges_best(const float* v, size_t n, size_t k, const ParallelFor& par) {
    const RowChunks rc{n, par};
    std::mutex mu;
    std::vector<Scored> all;
    rc.ranges([&](size_t c0, size_t c1) {
        const size_t b = c0 * RowChunks::kChunk, e = std::min(n, c1 * RowChunks::kChunk);
        std::vector<Scored> mine;
        heap_best(v, b, e, std::min(k, e - b), &mine);
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
    std::vector<Scored> all;
    if (k <= 1024) {
        all = ranges_best(logits, (size_t)vocab, (size_t)k, par);
    } else {  // a large k: a heap would replace often; one selection over the whole row
        all.resize(vocab);
        for (int i = 0; i < vocab; ++i) all[i] = {logits[i], i};
    }
    if (all.size() > (size_t)k) std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), better);
    for (int i = 0; i < k; ++i) out->push_back(all[i].id);
    std::sort(out->begin(), out->end());  // id order: the survivors' sums do not depend on the chunks
}

namespace {

// top_p_cut's bins: x in [-(kBins - 1) / kBinsPerUnit, 0] in steps of 1 / kBinsPerUnit, below that
// (weights under exp(-32) of the best's, -inf's 0 included) the last bin.
constexpr int kBins = 1024, kBinsPerUnit = 32;
inline int bin_of(double x) {
    const double s = -x * kBinsPerUnit;
    return s < kBins - 1 ? (int)s : kBins - 1;
}

}  // namespace

void top_p_cut(Candidates* c, double mass, double top_p, const ParallelFor& par) {
    const size_t n = c->size();
    if (n == 0) return;
    const RowChunks rc{n, par};
    const size_t nc = rc.count();
    const double *x = c->x.data(), *w = c->e.data();
    const int32_t* ids = c->ids.data();
    const auto best_first = [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && ids[a] < ids[b]); };
    // Keeps the best-first prefix of `sorted` (after acc of mass) whose mass before each is below
    // the cut (the NumPy expression: (c - e) / mass), as a walk over every candidate sorted would:
    // how many.
    const auto walk = [&](const std::vector<int32_t>& sorted, double acc) {
        size_t r = 0;
        double cum = acc;
        for (int32_t i : sorted) {
            cum += w[i];
            if ((cum - w[i]) / mass < top_p) ++r;
        }
        return r;
    };
    // The candidates for which pred(i) holds, in order (few: a list a chunk, then joined).
    const auto list_where = [&](auto pred) {
        std::vector<std::vector<int32_t>> per(nc);
        rc.each([&](size_t ch, size_t b, size_t e) {
            std::vector<int32_t> mine;
            size_t i = b;
            for (; i + 16 <= e; i += 16) {  // one branch for 16 (few hold one)
                bool any = false;
                for (size_t j = i; j < i + 16; ++j) any |= pred(j);
                if (any)
                    for (size_t j = i; j < i + 16; ++j)
                        if (pred(j)) mine.push_back((int32_t)j);
            }
            for (; i < e; ++i)
                if (pred(i)) mine.push_back((int32_t)i);
            per[ch].swap(mine);
        });
        std::vector<int32_t> all;
        for (auto& p : per) all.insert(all.end(), p.begin(), p.end());
        return all;
    };
    // A peaked row (most of a model's): the candidates within kNear of the best hold the cut. A
    // pass counts them and sums their mass (four partial sums a chunk, the chunks in order); when
    // that mass passes the cut (with a margin over the sums' rounding), everything after them is
    // cut, and only they are listed and sorted.
    {
        constexpr double kNear = -8.0;  // weights above e^-8 = 3.4e-4 of the best's
        constexpr size_t kFew = 4096;
        std::vector<double> near_mass(nc);
        std::vector<size_t> near_count(nc);
        rc.each([&](size_t ch, size_t b, size_t e) {
            double m[4] = {0, 0, 0, 0}, k[4] = {0, 0, 0, 0};  // (counts in doubles too: all lanes alike)
            size_t i = b;
            for (; i + 4 <= e; i += 4)
                for (int l = 0; l < 4; ++l) {
                    const double in = x[i + l] >= kNear ? 1.0 : 0.0;  // (no branch)
                    m[l] += w[i + l] * in;
                    k[l] += in;
                }
            for (; i < e; ++i) {
                const double in = x[i] >= kNear ? 1.0 : 0.0;
                m[0] += w[i] * in, k[0] += in;
            }
            near_mass[ch] = (m[0] + m[1]) + (m[2] + m[3]);
            near_count[ch] = (size_t)((k[0] + k[1]) + (k[2] + k[3]));
        });
        double mn = 0;
        size_t kn = 0;
        for (size_t ch = 0; ch < nc; ++ch) mn += near_mass[ch], kn += near_count[ch];
        if (kn <= kFew && mn / mass >= top_p * (1 + 1e-9)) {
            std::vector<int32_t> near = list_where([&](size_t i) { return x[i] >= kNear; });
            std::sort(near.begin(), near.end(), best_first);
            near.resize(std::max(walk(near, 0.0), (size_t)1));
            std::sort(near.begin(), near.end());  // index order: id order
            // In place (near[j] >= j): the arrays keep their capacity for the next token's row.
            for (size_t j = 0; j < near.size(); ++j)
                c->ids[j] = ids[near[j]], c->x[j] = x[near[j]], c->e[j] = w[near[j]];
            c->resize(near.size());
            return;
        }
    }
    // A flat row: each chunk's candidates binned by x (a bin's mass and count), then the row's bins
    // summed over the chunks in order: the same sums on any threads.
    c->bin_mass.resize(nc * kBins);
    c->bin_count.resize(nc * kBins);
    c->bins.resize(n);
    rc.each([&](size_t ch, size_t b, size_t e) {
        double* m = c->bin_mass.data() + ch * kBins;
        uint32_t* k = c->bin_count.data() + ch * kBins;
        uint16_t* bins = c->bins.data();
        std::fill(m, m + kBins, 0.0);
        std::fill(k, k + kBins, 0u);
        for (size_t i = b; i < e; ++i) {
            const int j = bin_of(x[i]);
            bins[i] = (uint16_t)j;
            m[j] += w[i];
            ++k[j];
        }
    });
    // Whole bins while the mass before the bin's last candidate stays below the cut; the first bin
    // that reaches it holds the last kept candidate.
    double acc = 0;
    size_t before = 0;  // candidates in the bins kept whole
    int cross = -1;
    for (int j = 0; j < kBins && cross < 0; ++j) {
        double m = 0;
        size_t k = 0;
        for (size_t ch = 0; ch < nc; ++ch) m += c->bin_mass[ch * kBins + j], k += c->bin_count[ch * kBins + j];
        if (k == 0) continue;
        if ((acc + m) / mass < top_p) {
            acc += m, before += k;
        } else {
            cross = j;
        }
    }
    if (cross < 0) return;  // the sums' rounding kept them all
    // The crossing bin's candidates, best first, walked on from the mass of the bins before it.
    const uint16_t* bins = c->bins.data();
    std::vector<int32_t> bin = list_where([&](size_t i) { return bins[i] == cross; });
    std::sort(bin.begin(), bin.end(), best_first);
    size_t r = walk(bin, acc);
    // Kept: the bins before the crossing one and its first r. Its others are moved past every bin,
    // so that one compare of a bin number a candidate decides.
    if (before + r == 0) r = 1;  // the best alone
    uint16_t* bins_w = c->bins.data();
    for (size_t j = r; j < bin.size(); ++j) bins_w[bin[j]] = (uint16_t)kBins;
    c->keep_if([&](size_t i) { return bins[i] <= cross; }, par);
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

double total_of(const std::vector<double>& sums) {
    double total = 0;
    for (double s : sums) total += s;
    return total;
}

size_t draw_index(const double* w, size_t n, const std::vector<double>& sums, double u) {
    constexpr size_t kBlock = 256;
    const double target = u * total_of(sums);
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
