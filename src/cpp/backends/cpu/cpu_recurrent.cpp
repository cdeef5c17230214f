// Recurrent-layer ops of the CPU backend (Gated DeltaNet: Qwen3.5; short convolutions: LFM2; Mamba2:
// Granite 4.0-H): the causal depthwise convolution that carries its last inputs per sequence, the
// gated delta rule that carries a [k_dim, v_dim] state per value head, Mamba2's scan that carries a
// [head_dim, d_state] state per head, and the sigmoid gate of the attention output.
// Both recurrences walk each sequence's rows in order; the work is split over sequences and
// channels (convolution) or sequences and heads (delta rule, Mamba2), never along time.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_backend.h"

namespace forgert::cpu {

namespace {
float* row_f32(const Tensor& t, int64_t r) { return reinterpret_cast<float*>(t.data<uint8_t>() + t.stride * r); }

struct Run {
    int32_t slot, row0, n, fresh;
};

// The run table grouped by state row, each group's runs in table order: one sequence's rows
// oldest first, however the pass interleaved them with other sequences'.
std::vector<std::vector<Run>> runs_by_slot(const Tensor& runs) {
    const int32_t* t = runs.data<int32_t>();
    std::vector<std::vector<Run>> groups;
    std::vector<int32_t> slot_of_group;
    for (int64_t r = 0; r < runs.rows; r++) {
        const Run run{t[4 * r], t[4 * r + 1], t[4 * r + 2], t[4 * r + 3]};
        auto it = std::find(slot_of_group.begin(), slot_of_group.end(), run.slot);
        if (it == slot_of_group.end()) {
            slot_of_group.push_back(run.slot);
            groups.push_back({run});
        } else {
            groups[it - slot_of_group.begin()].push_back(run);
        }
    }
    return groups;
}

float silu(float x) { return x / (1.0f + std::exp(-x)); }
float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }  // torch's threshold 20
}  // namespace

void CpuBackend::conv1d_state(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                              const Tensor& state, const Tensor& runs, bool silu_out) {
    check_conv1d_state(out, x, w, bias, state, runs, runs.buf ? runs.data<int32_t>() : nullptr);
    const float* b = bias.rows ? bias.data<float>() : nullptr;
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Recurrent);
    const int64_t C = x.cols, K = w.cols, H = K - 1;
    const auto groups = runs_by_slot(runs);
    constexpr int64_t kChannels = 64;  // channels per work item: contiguous in x, out and the state
    const int64_t chunks = (C + kChannels - 1) / kChannels;
    pool_.parallel_for((int64_t)groups.size() * chunks, 1, [&](int64_t i0, int64_t i1) {
        std::vector<float> win((size_t)(H + 1) * kChannels);  // the window: H past inputs and the current one
        for (int64_t item = i0; item < i1; item++) {
            const auto& group = groups[item / chunks];
            const int64_t c0 = (item % chunks) * kChannels, nc = std::min(kChannels, C - c0);
            float* st = row_f32(state, group[0].slot);  // [H][C]
            for (const Run& run : group) {
                for (int64_t j = 0; j < H; j++)  // the window's past: the state, or zeros for a new sequence
                    for (int64_t c = 0; c < nc; c++) win[j * kChannels + c] = run.fresh ? 0.0f : st[j * C + c0 + c];
                for (int32_t t = 0; t < run.n; t++) {
                    const float* xr = row_f32(x, run.row0 + t) + c0;
                    float* orow = row_f32(out, run.row0 + t) + c0;
                    for (int64_t c = 0; c < nc; c++) win[H * kChannels + c] = xr[c];
                    for (int64_t c = 0; c < nc; c++) {
                        const float* wc = row_f32(w, c0 + c);
                        float acc = 0.0f;
                        for (int64_t j = 0; j <= H; j++) acc += wc[j] * win[j * kChannels + c];
                        if (b) acc += b[c0 + c];
                        orow[c] = silu_out ? silu(acc) : acc;
                    }
                    for (int64_t j = 0; j < H; j++)  // slide by one
                        for (int64_t c = 0; c < nc; c++) win[j * kChannels + c] = win[(j + 1) * kChannels + c];
                }
                for (int64_t j = 0; j < H; j++)
                    for (int64_t c = 0; c < nc; c++) st[j * C + c0 + c] = win[j * kChannels + c];
            }
        }
    });
}

void CpuBackend::gated_delta_rule(const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& alpha, const Tensor& beta, const Tensor& A, const Tensor& dt_bias,
                                  const Tensor& state, const Tensor& runs, const DeltaNetParams& p) {
    check_delta_rule(out, q, k, v, alpha, beta, A, dt_bias, state, runs, p, runs.buf ? runs.data<int32_t>() : nullptr);
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Recurrent);
    const int64_t dk = p.k_dim, dv = p.v_dim, nv = p.n_v_heads, per_k = p.n_v_heads / p.n_k_heads;
    const auto groups = runs_by_slot(runs);
    const float q_scale = 1.0f / std::sqrt((float)dk);
    pool_.parallel_for((int64_t)groups.size() * nv, 1, [&](int64_t i0, int64_t i1) {
        std::vector<float> qh(dk), kh(dk), u(dv);
        for (int64_t item = i0; item < i1; item++) {
            const auto& group = groups[item / nv];
            const int64_t h = item % nv, kv_head = p.v_tiled ? h % p.n_k_heads : h / per_k;
            float* S = row_f32(state, group[0].slot) + h * dk * dv;  // [dk][dv]
            const float a_h = A.data<float>()[h], dt_h = dt_bias.data<float>()[h];
            for (const Run& run : group) {
                if (run.fresh) std::fill(S, S + dk * dv, 0.0f);
                for (int32_t t = 0; t < run.n; t++) {
                    const int64_t r = run.row0 + t;
                    const float* qr = row_f32(q, r) + kv_head * dk;
                    const float* kr = row_f32(k, r) + kv_head * dk;
                    const float* vr = row_f32(v, r) + h * dv;
                    float qq = 0.0f, kk = 0.0f;
                    for (int64_t i = 0; i < dk; i++) qq += qr[i] * qr[i], kk += kr[i] * kr[i];
                    const float qs = q_scale / std::sqrt(qq + p.eps), ks = 1.0f / std::sqrt(kk + p.eps);
                    for (int64_t i = 0; i < dk; i++) qh[i] = qr[i] * qs, kh[i] = kr[i] * ks;
                    const float decay = std::exp(a_h * softplus(row_f32(alpha, r)[h] + dt_h));
                    const float b = 1.0f / (1.0f + std::exp(-row_f32(beta, r)[h]));
                    // u = S^T k after the decay: the memory's current reading of the key
                    std::fill(u.begin(), u.end(), 0.0f);
                    for (int64_t i = 0; i < dk; i++) {
                        float* Si = S + i * dv;
                        const float ki = kh[i];
                        for (int64_t j = 0; j < dv; j++) {
                            Si[j] *= decay;
                            u[j] += Si[j] * ki;
                        }
                    }
                    for (int64_t j = 0; j < dv; j++) u[j] = b * (vr[j] - u[j]);  // the write: delta
                    float* o = row_f32(out, r) + h * dv;
                    std::fill(o, o + dv, 0.0f);
                    for (int64_t i = 0; i < dk; i++) {
                        float* Si = S + i * dv;
                        const float ki = kh[i], qi = qh[i];
                        for (int64_t j = 0; j < dv; j++) {
                            Si[j] += ki * u[j];
                            o[j] += Si[j] * qi;
                        }
                    }
                }
            }
        }
    });
}

void CpuBackend::mamba2_scan(const Tensor& out, const Tensor& x, const Tensor& B, const Tensor& C, const Tensor& dt,
                             const Tensor& A, const Tensor& D, const Tensor& dt_bias, const Tensor& state,
                             const Tensor& runs, const Mamba2Params& p) {
    check_mamba2_scan(out, x, B, C, dt, A, D, dt_bias, state, runs, p, runs.buf ? runs.data<int32_t>() : nullptr);
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Recurrent);
    const int64_t hd = p.head_dim, ds = p.d_state, nh = p.n_heads, per_group = p.n_heads / p.n_groups;
    const auto groups = runs_by_slot(runs);
    pool_.parallel_for((int64_t)groups.size() * nh, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t item = i0; item < i1; item++) {
            const auto& group = groups[item / nh];
            const int64_t h = item % nh, g = h / per_group;
            float* S = row_f32(state, group[0].slot) + h * hd * ds;  // [hd][ds]
            const float a_h = A.data<float>()[h], d_h = D.data<float>()[h], bias_h = dt_bias.data<float>()[h];
            for (const Run& run : group) {
                if (run.fresh) std::fill(S, S + hd * ds, 0.0f);
                for (int32_t t = 0; t < run.n; t++) {
                    const int64_t r = run.row0 + t;
                    const float* xr = row_f32(x, r) + h * hd;
                    const float* br = row_f32(B, r) + g * ds;
                    const float* cr = row_f32(C, r) + g * ds;
                    const float step = softplus(row_f32(dt, r)[h] + bias_h);
                    const float decay = std::exp(step * a_h);
                    float* o = row_f32(out, r) + h * hd;
                    for (int64_t i = 0; i < hd; i++) {  // row i of S: the state of x's element i
                        float* Si = S + i * ds;
                        const float u = step * xr[i];
                        float y = 0.0f;
                        for (int64_t j = 0; j < ds; j++) {
                            Si[j] = Si[j] * decay + u * br[j];
                            y += Si[j] * cr[j];
                        }
                        o[i] = y + d_h * xr[i];
                    }
                }
            }
        }
    });
}

void CpuBackend::mul_sigmoid(const Tensor& x, const Tensor& gate) {
    if (x.type != DType::F32 || gate.type != DType::F32 || gate.rows != x.rows || gate.cols != x.cols || !x.buf ||
        !gate.buf)
        throw InputError("mul_sigmoid: x and gate must be f32 of one shape");
    CpuOpTimer timer(profiling_, ops_, pool_, CpuOp::Elementwise);
    pool_.parallel_for(x.rows, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            float* xr = row_f32(x, r);
            const float* g = row_f32(gate, r);
            for (int64_t c = 0; c < x.cols; c++) xr[c] /= 1.0f + std::exp(-g[c]);
        }
    });
}

}  // namespace forgert::cpu
