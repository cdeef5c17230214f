// Mixture-of-experts ops of the CPU backend: the router's top-k, the matmul over selected
// experts (grouped by expert, so each used expert's weights are read once per pass), and the
// weighted sum of the experts' outputs.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_backend.h"

namespace forgert::cpu {

namespace {
float* row_f32(const Tensor& t, int64_t r) { return reinterpret_cast<float*>(t.data<uint8_t>() + t.stride * r); }
const int32_t* row_i32(const Tensor& t, int64_t r) {
    return reinterpret_cast<const int32_t*>(t.data<uint8_t>() + t.stride * r);
}
}  // namespace

void CpuBackend::moe_route(const Tensor& weights, const Tensor& ids, const Tensor& logits, const MoeRouting& r,
                           const Tensor& select_bias) {
    check_moe_route(weights, ids, logits, r, select_bias);
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Moe);
    const int64_t n_expert = logits.cols, k = ids.cols, group = n_expert / r.n_group;
    const float* bias = select_bias.rows ? select_bias.data<float>() : nullptr;
    pool_.parallel_for(logits.rows, 16, [&](int64_t r0, int64_t r1) {
        std::vector<float> p(n_expert), c(n_expert), group_score(r.n_group);
        std::vector<int32_t> order(std::max<int64_t>(n_expert, r.n_group));
        std::vector<char> keep(r.n_group);  // the groups chosen from (one token's)
        // Largest first, the lower index first on ties (stable over the ascending indices).
        auto pick = [&](const std::vector<float>& v, int64_t count, int64_t m) {
            for (int64_t e = 0; e < count; e++) order[e] = (int32_t)e;
            std::partial_sort(order.begin(), order.begin() + m, order.begin() + count,
                              [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
        };
        for (int64_t i = r0; i < r1; i++) {
            const float* l = row_f32(logits, i);
            float sum = 0;  // the softmax's denominator
            if (r.sigmoid) {
                for (int64_t e = 0; e < n_expert; e++) {
                    p[e] = 1.0f / (1.0f + std::exp(-l[e]));
                    c[e] = bias ? p[e] + bias[e] : p[e];
                }
            } else {
                const float mx = *std::max_element(l, l + n_expert);
                for (int64_t e = 0; e < n_expert; e++) sum += (c[e] = p[e] = std::exp(l[e] - mx));
                // With a bias the choice adds it to the probability (without, the unnormalised p
                // orders the experts alike)
                if (bias)
                    for (int64_t e = 0; e < n_expert; e++) c[e] = p[e] / sum + bias[e];
            }
            if (r.n_group > 1) {  // only the topk_group groups of largest top-2 sum are chosen from
                for (int g = 0; g < r.n_group; g++) {
                    float a = -FLT_MAX, b = -FLT_MAX;  // the group's largest two (its scores are finite)
                    for (int64_t e = g * group; e < (g + 1) * group; e++) {
                        if (c[e] > a) {
                            b = a;
                            a = c[e];
                        } else if (c[e] > b) {
                            b = c[e];
                        }
                    }
                    group_score[g] = a + b;
                }
                pick(group_score, r.n_group, r.topk_group);
                std::fill(keep.begin(), keep.end(), 0);
                for (int j = 0; j < r.topk_group; j++) keep[order[j]] = 1;
                for (int64_t e = 0; e < n_expert; e++)
                    if (!keep[e / group]) c[e] = -INFINITY;
            }
            pick(c, n_expert, k);
            float picked = 0;
            for (int64_t j = 0; j < k; j++) picked += p[order[j]];
            const float denom = r.renormalize ? picked : r.sigmoid ? 1.0f : sum;
            int32_t* id = reinterpret_cast<int32_t*>(ids.data<uint8_t>() + ids.stride * i);
            float* w = row_f32(weights, i);
            for (int64_t j = 0; j < k; j++) {
                id[j] = order[j];
                w[j] = p[order[j]] / denom * r.scale;
            }
        }
    });
}

void CpuBackend::matmul_id(const Tensor& out, const Tensor* experts, int n_expert, const Tensor& x,
                           const Tensor& ids, RowClasses rc) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Moe);
    const int64_t n = ids.rows, k = ids.cols, n_slots = n * k, cols = x.cols, rows = out.cols;
    const bool per_slot = x.rows == n_slots;  // down: slot s reads x row s; gate/up: row s / k
    // Slots grouped by expert (a counting sort): slots of expert e are order[start[e]..start[e+1]),
    // in slot order, so an expert's decode slots (tokens below rc.n_decode) come first.
    std::vector<int64_t> start(n_expert + 1, 0), order(n_slots);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < k; j++) {
            const int32_t e = row_i32(ids, i)[j];
            if (e < 0 || e >= n_expert)
                throw InputError("matmul_id: expert id " + std::to_string(e) + " outside 0.." +
                                 std::to_string(n_expert - 1));
            start[e + 1]++;
        }
    }
    for (int e = 0; e < n_expert; e++) start[e + 1] += start[e];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t s = 0; s < n_slots; s++) order[fill[row_i32(ids, s / k)[s % k]]++] = s;
    // n_few[e]: expert e's leading slots that take the few-token kernels. Decode slots with row
    // classes (each token's bits then those it gets alone); by count, all of an expert's slots
    // when it has fewer than kPanelMinTokens (decode: one token, k experts), else none.
    std::vector<int64_t> n_few(n_expert, 0);
    for (int e = 0; e < n_expert; e++) {
        const int64_t c = start[e + 1] - start[e];
        if (rc.by_row_count()) n_few[e] = c < kPanelMinTokens ? c : 0;
        else
            while (n_few[e] < c && order[start[e] + n_few[e]] / k < rc.n_decode) n_few[e]++;
    }

    auto grow = [&](std::unique_ptr<Buffer>& b, size_t bytes) {
        if (!b || b->size < bytes) b = alloc(bytes);
        return b.get();
    };
    // Experts' few-token slots (all of them in decode: one token, k experts) run together in ONE
    // parallel region over their rows, each expert's weights read once per run of at most
    // kMaxDecodeRun slots. One region per expert instead costs a fork-join per expert: with 8
    // experts of 768 rows each, 16 threads got 48-row slices and the joins dominated (Qwen3-30B-A3B
    // shape: decode 0.8x llama.cpp). Inputs are gathered (quantized once) in slot order, so a run's
    // slots are consecutive rows of xg and of the gathered output yg.
    // (Experts of one stack share a type; per-expert HF tensors of another type than the first
    // expert's run alone below.)
    struct Run {
        int e;
        int64_t first, count;  // slots order[first .. first + count)
    };
    std::vector<Run> runs;
    std::vector<int64_t> shared_few(n_expert, 0);  // of n_few[e], those run in the shared region
    for (int e = 0; e < n_expert; e++) {
        if (n_few[e] == 0 || (!runs.empty() && experts[e].type != experts[runs[0].e].type)) continue;
        for (int64_t r = 0; r < n_few[e]; r += kMaxDecodeRun)
            runs.push_back({e, start[e] + r, std::min(kMaxDecodeRun, n_few[e] - r)});
        shared_few[e] = n_few[e];
    }
    if (!runs.empty()) {
        const DType wt = experts[runs[0].e].type;
        const bool quantized = is_quantized(wt);
        const int64_t nb = cols / FG_QK;
        const Tensor yg = make_tensor(grow(gathered_y_, (size_t)n_slots * rows * sizeof(float)), 0, DType::F32,
                                      n_slots, rows);
        const Tensor xg = quantized ? Tensor{}
                                    : make_tensor(grow(gathered_x_, (size_t)n_slots * cols * sizeof(float)), 0,
                                                  DType::F32, n_slots, cols);
        if (quantized && (int64_t)xq_.size() < n_slots * nb) xq_.resize(n_slots * nb);
        for (const Run& run : runs) {
            for (int64_t pos = run.first; pos < run.first + run.count; pos++) {
                const int64_t s = order[pos];
                const float* xr = row_f32(x, per_slot ? s : s / k);
                if (quantized) quantize_decode_row(xr, xq_.data() + pos * nb, cols);
                else std::memcpy(row_f32(xg, pos), xr, cols * sizeof(float));
            }
        }
        // Work items: 16-row chunks of every run's expert, split contiguously over the threads.
        constexpr int64_t kChunk = 16;
        std::vector<int64_t> chunk_start(runs.size() + 1, 0);
        for (size_t i = 0; i < runs.size(); i++) chunk_start[i + 1] = chunk_start[i] + (rows + kChunk - 1) / kChunk;
        pool_.parallel_for(chunk_start.back(), 1, [&](int64_t c0, int64_t c1) {
            for (size_t i = 0; i < runs.size(); i++) {
                const int64_t b = std::max(c0, chunk_start[i]), end = std::min(c1, chunk_start[i + 1]);
                if (b >= end) continue;
                const Run& run = runs[i];
                const Tensor& w = experts[run.e];
                const int64_t r0 = (b - chunk_start[i]) * kChunk, r1 = std::min(rows, (end - chunk_start[i]) * kChunk);
                const int64_t out_stride = (int64_t)(yg.stride / sizeof(float));
                float* y = row_f32(yg, run.first);
                if (quantized)
                    k_.gemm_q(wt, w.data<uint8_t>(), w.stride, r0, r1, xq_.data() + run.first * nb, nb, run.count, y,
                              out_stride, decode_parts_);
                else
                    k_.gemm_f(wt, w.data<uint8_t>(), w.stride, r0, r1, row_f32(xg, run.first), cols, run.count, y,
                              out_stride);
            }
        });
        for (const Run& run : runs)
            for (int64_t pos = run.first; pos < run.first + run.count; pos++)
                std::memcpy(row_f32(out, order[pos]), row_f32(yg, pos), rows * sizeof(float));
    }
    // The other slots of each expert (prefill): gather their input rows, one matmul (its few-token
    // rows first, if any were left out above, then the GEMM), scatter the outputs.
    for (int e = 0; e < n_expert; e++) {
        const int64_t c = start[e + 1] - start[e] - shared_few[e];
        if (c == 0) continue;  // not read (no token chose it), or run above
        const int64_t* slots = &order[start[e] + shared_few[e]];
        const Tensor xg = make_tensor(grow(gathered_x_, (size_t)c * cols * sizeof(float)), 0, DType::F32, c, cols);
        const Tensor yg = make_tensor(grow(gathered_y_, (size_t)c * rows * sizeof(float)), 0, DType::F32, c, rows);
        for (int64_t r = 0; r < c; r++)
            std::memcpy(row_f32(xg, r), row_f32(x, per_slot ? slots[r] : slots[r] / k), cols * sizeof(float));
        matmul(yg, experts[e], xg, RowClasses::decode(n_few[e] - shared_few[e]));
        for (int64_t r = 0; r < c; r++) std::memcpy(row_f32(out, slots[r]), row_f32(yg, r), rows * sizeof(float));
    }
}

void CpuBackend::moe_sum_add(const Tensor& out, const Tensor& y, const Tensor& weights) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Moe);
    const int64_t k = weights.cols, dim = out.cols;
    pool_.parallel_for(out.rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; i++) {
            float* o = row_f32(out, i);
            const float* w = row_f32(weights, i);
            for (int64_t j = 0; j < k; j++) {
                const float* yr = row_f32(y, i * k + j);
                for (int64_t c = 0; c < dim; c++) o[c] += w[j] * yr[c];
            }
        }
    });
}

void CpuBackend::scale_sigmoid(const Tensor& x, const Tensor& gate) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Moe);
    for (int64_t i = 0; i < x.rows; i++) {
        const float s = 1.0f / (1.0f + std::exp(-row_f32(gate, i)[0]));
        float* xr = row_f32(x, i);
        for (int64_t c = 0; c < x.cols; c++) xr[c] *= s;
    }
}

void CpuBackend::swiglu_oai(const Tensor& out, const Tensor& gate, const Tensor& up, float alpha, float limit) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Moe);
    if (gate.rows != out.rows || up.rows != out.rows || gate.cols != out.cols || up.cols != out.cols)
        throw InputError("swiglu_oai: gate, up and out must have one shape");
    if (!(alpha > 0.0f) || !(limit > 0.0f) || !std::isfinite(alpha) || !std::isfinite(limit))
        throw InputError("swiglu_oai: alpha and limit must be positive and finite");
    const int64_t cols = out.cols;
    pool_.parallel_for(out.rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            const float* g = row_f32(gate, r);
            const float* u = row_f32(up, r);
            float* y = row_f32(out, r);
            for (int64_t c = 0; c < cols; c++) {
                const float gc = std::min(g[c], limit);
                const float uc = std::min(std::max(u[c], -limit), limit);
                y[c] = (uc + 1.0f) * gc / (1.0f + std::exp(-alpha * gc));
            }
        }
    });
}

void CpuBackend::add_bias_id(const Tensor& x, const Tensor& b, const Tensor& ids) {
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Moe);
    const int64_t n = ids.rows, k = ids.cols;
    if (ids.type != DType::I32 || x.rows != n * k || b.cols != x.cols || b.type != DType::F32)
        throw InputError("add_bias_id: x must be f32 [n*k, dim], b f32 [n_expert, dim], ids i32 [n, k]");
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < k; j++)
            if (row_i32(ids, i)[j] < 0 || row_i32(ids, i)[j] >= b.rows)
                throw InputError("add_bias_id: expert id out of range");
    pool_.parallel_for(n * k, 1, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; s++) {
            const float* br = row_f32(b, row_i32(ids, s / k)[s % k]);
            float* xr = row_f32(x, s);
            for (int64_t c = 0; c < x.cols; c++) xr[c] += br[c];
        }
    });
}

}  // namespace forgert::cpu
