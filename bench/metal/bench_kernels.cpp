// Microbenchmarks of the backend ops at Llama-7B-like shapes, in the style of llm.c's
// dev/cuda kernel labs: each op is encoded `reps` times into one command buffer, timed
// over commit + wait, and reported as GB/s (bytes the op must move) and GFLOP/s, plus
// the percentage of the chip's memory bandwidth when known (--peak-gbs or the table in
// run.sh). `forgert_bench_kernels metal` on a Mac times the GPU kernels; `cpu` times the
// CPU ops with the same harness anywhere.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"

using namespace forgert;

namespace {

struct Bench {
    std::unique_ptr<Backend> be;
    std::vector<std::unique_ptr<Buffer>> bufs;
    double peak_gbs = 0;
    double scale = 1;  // fewer repetitions on slow devices

    Tensor tensor(DType t, int64_t rows, int64_t cols) {
        const size_t bytes = (size_t)row_bytes(t, cols) * rows;
        bufs.push_back(be->alloc(bytes));
        Tensor x = make_tensor(bufs.back().get(), 0, t, rows, cols);
        // Plausible contents: small f16/f32 values, random quant bytes with small scales.
        std::vector<uint8_t> host(bytes);
        std::mt19937 rng(1234);
        for (auto& b : host) b = (uint8_t)rng();
        if (t == DType::F32) {
            for (size_t i = 0; i < bytes / 4; i++) reinterpret_cast<float*>(host.data())[i] = (float)(rng() % 1000) / 1000.f;
        } else if (t == DType::F16 || t == DType::BF16) {
            for (size_t i = 0; i < bytes / 2; i++) reinterpret_cast<uint16_t*>(host.data())[i] = t == DType::F16 ? 0x2c00 : 0x3d80;
        } else if (t != DType::I32) {
            const int64_t bb = dtype_block_bytes(t);
            for (size_t o = 0; o < bytes; o += bb) {
                host[o] = 0x00;
                host[o + 1] = 0x20;  // f16 scale 0.0078
            }
        } else {
            std::memset(host.data(), 0, bytes);
        }
        be->write(x, host.data(), bytes);
        return x;
    }

    void run(const std::string& what, double bytes, double flops, int reps, const std::function<void()>& op) {
        reps = std::max(1, (int)(reps * scale));
        be->begin();
        op();  // warm-up: pipeline creation, first touch
        be->wait();
        const auto t0 = std::chrono::steady_clock::now();
        be->begin();
        for (int i = 0; i < reps; i++) op();
        be->commit();
        be->wait();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
        const double gbs = bytes / s / 1e9;
        std::printf("%-44s %9.1f us %8.1f GB/s %8.1f GFLOP/s", what.c_str(), s * 1e6, gbs, flops / s / 1e9);
        if (peak_gbs > 0) std::printf("  %5.1f%% of peak", 100.0 * gbs / peak_gbs);
        std::printf("\n");
    }
};

const char* tname(DType t) { return dtype_name(t); }

}  // namespace

int main(int argc, char** argv) {
    const std::string backend = argc > 1 ? argv[1] : "metal";
    Bench b;
    for (int i = 2; i < argc; i++) {
        if (!std::strcmp(argv[i], "--peak-gbs") && i + 1 < argc) b.peak_gbs = std::atof(argv[++i]);
        else if (!std::strcmp(argv[i], "--quick")) b.scale = 0.1;
    }
    try {
        b.be = make_backend(backend, 0);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cannot create backend %s: %s\n", backend.c_str(), e.what());
        return 1;
    }
    if (backend != "metal") b.scale *= 0.2;
    std::printf("backend %s\n", b.be->name().c_str());

    const int dim = 4096, ffn = 11008, H = 32, KV = 8, hd = 128, vocab = 32000;
    // Decode GEMV: the weights dominate; this is the number the 85%-of-bandwidth target is about.
    for (DType t : {DType::Q4_0, DType::Q8_0, DType::Q4_1, DType::F16, DType::BF16, DType::F32})
        for (auto rc : {std::pair<int, int>{dim, dim}, {ffn, dim}, {dim, ffn}}) {
            Tensor w = b.tensor(t, rc.first, rc.second), x = b.tensor(DType::F32, 1, rc.second),
                   y = b.tensor(DType::F32, 1, rc.first);
            const double bytes = (double)w.nbytes() + x.nbytes() + y.nbytes();
            b.run(std::string("matmul decode ") + tname(t) + " " + std::to_string(rc.first) + "x" +
                      std::to_string(rc.second),
                  bytes, 2.0 * rc.first * rc.second, 50, [&] { b.be->matmul(y, w, x); });
        }
    // The fused decode projections: gate/up with SiLU * mul, and the residual-adding GEMV.
    for (DType t : {DType::Q4_0, DType::Q8_0}) {
        Tensor wg = b.tensor(t, ffn, dim), wu = b.tensor(t, ffn, dim), x = b.tensor(DType::F32, 1, dim);
        Tensor g = b.tensor(DType::F32, 1, ffn), s = b.tensor(DType::F32, 1, ffn);
        b.run(std::string("matmul_swiglu decode ") + tname(t) + " 2x11008x4096", 2.0 * wg.nbytes() + x.nbytes() + g.nbytes(),
              4.0 * ffn * dim, 50, [&] { b.be->matmul_swiglu(g, wg, wu, x, s); });
        Tensor wd = b.tensor(t, dim, ffn), h = b.tensor(DType::F32, 1, dim), p = b.tensor(DType::F32, 1, dim);
        b.run(std::string("matmul_add decode ") + tname(t) + " 4096x11008", wd.nbytes() + g.nbytes() + 2.0 * h.nbytes(),
              2.0 * dim * ffn, 50, [&] { b.be->matmul_add(h, wd, g, p); });
    }
    // Prefill GEMM: compute bound.
    for (DType t : {DType::Q4_0, DType::Q8_0, DType::F16})
        for (int n : {32, 512}) {
            Tensor w = b.tensor(t, dim, dim), x = b.tensor(DType::F32, n, dim), y = b.tensor(DType::F32, n, dim);
            b.run(std::string("matmul prefill ") + tname(t) + " n=" + std::to_string(n) + " 4096x4096",
                  (double)w.nbytes() + x.nbytes() + y.nbytes(), 2.0 * n * dim * dim, 10, [&] { b.be->matmul(y, w, x); });
        }
    // Attention over an f16 cache: decode streams K and V once per head group.
    for (int ctx : {512, 4096}) {
        Tensor q = b.tensor(DType::F32, 1, H * hd), o = b.tensor(DType::F32, 1, H * hd);
        Tensor kc = b.tensor(DType::F16, ctx, KV * hd), vc = b.tensor(DType::F16, ctx, KV * hd);
        b.run("attention decode ctx=" + std::to_string(ctx), 2.0 * ctx * KV * hd * 2, 4.0 * ctx * H * hd, 50,
              [&] { b.be->attention(o, q, kc, vc, ctx - 1, AttentionParams{H, KV, hd, 0.088f}); });
    }
    // A batch step's attention: 8 sequences' decode rows, each at position ctx - 1 of its own KV
    // slot, in one dispatch through the row table vs one dispatch per sequence (as a batch step
    // ran before the table).
    {
        const int n_seq = 8, ctx = 512;
        Tensor q = b.tensor(DType::F32, n_seq, H * hd), o = b.tensor(DType::F32, n_seq, H * hd);
        Tensor kc = b.tensor(DType::F16, n_seq * ctx, KV * hd), vc = b.tensor(DType::F16, n_seq * ctx, KV * hd);
        Tensor rows = b.tensor(DType::I32, n_seq, 2);
        std::vector<int32_t> table;  // (position, slot's first cache row) per row
        for (int s = 0; s < n_seq; s++) table.insert(table.end(), {ctx - 1, s * ctx});
        b.be->write(rows, table.data(), table.size() * sizeof(int32_t));
        const double bytes = 2.0 * n_seq * ctx * KV * hd * 2, flops = 4.0 * n_seq * ctx * H * hd;
        b.run("attention batch 8 seqs ctx=512, one call", bytes, flops, 50,
              [&] { b.be->attention(o, q, kc, vc, RowPositions(rows, ctx, 1), AttentionParams{H, KV, hd, 0.088f}); });
        b.run("attention batch 8 seqs ctx=512, per seq", bytes, flops, 50, [&] {
            for (int s = 0; s < n_seq; s++)
                b.be->attention(o.slice_rows(s, 1), q.slice_rows(s, 1), kc.slice_rows(s * ctx, ctx),
                                vc.slice_rows(s * ctx, ctx), ctx - 1, AttentionParams{H, KV, hd, 0.088f});
        });
    }
    {
        const int n = 512;
        Tensor q = b.tensor(DType::F32, n, H * hd), o = b.tensor(DType::F32, n, H * hd);
        Tensor kc = b.tensor(DType::F16, n, KV * hd), vc = b.tensor(DType::F16, n, KV * hd);
        b.run("attention prefill n=512", 2.0 * n * KV * hd * 2 + 2.0 * q.nbytes(), 2.0 * n * n * H * hd, 5,
              [&] { b.be->attention(o, q, kc, vc, 0, AttentionParams{H, KV, hd, 0.088f}); });
    }
    // Small memory-bound ops.
    {
        Tensor x = b.tensor(DType::F32, 1, dim), w = b.tensor(DType::F32, 1, dim), y = b.tensor(DType::F32, 1, dim);
        b.run("rms_norm 4096", 3.0 * dim * 4, 3.0 * dim, 200, [&] { b.be->rms_norm(y, x, w, 1e-5f); });
        Tensor g = b.tensor(DType::F32, 1, ffn), u = b.tensor(DType::F32, 1, ffn), s = b.tensor(DType::F32, 1, ffn);
        b.run("silu_mul 11008", 3.0 * ffn * 4, 4.0 * ffn, 200, [&] { b.be->silu_mul(s, g, u); });
        b.run("add 4096", 3.0 * dim * 4, dim, 200, [&] { b.be->add(y, x, w); });
        Tensor q = b.tensor(DType::F32, 1, H * hd), fr = b.tensor(DType::F32, 1, hd / 2);
        Tensor kc = b.tensor(DType::F16, 4096, KV * hd), k = b.tensor(DType::F32, 1, KV * hd);
        Tensor v = b.tensor(DType::F32, 1, KV * hd), vc = b.tensor(DType::F16, 4096, KV * hd);
        b.run("rope_kv_write 32x128 8x128", 2.0 * q.nbytes() + 3.0 * k.nbytes() + k.nbytes() / 2 + 1.5 * v.nbytes(),
              6.0 * (H + KV) * hd, 200,
              [&] { b.be->rope_kv_write(q, k, v, kc, vc, fr, 100, RopeKvParams{H, KV, hd, false}); });
        Tensor logits = b.tensor(DType::F32, 1, vocab), am = b.tensor(DType::I32, 1, 1);
        b.run("argmax 32000", 4.0 * vocab, vocab, 200, [&] { b.be->argmax(am, logits); });
        Tensor emb = b.tensor(DType::Q4_0, vocab, dim), ids = b.tensor(DType::I32, 1, 1), e = b.tensor(DType::F32, 1, dim);
        b.run("get_rows q4_0 4096", (double)row_bytes(DType::Q4_0, dim) + dim * 4, 0, 200,
              [&] { b.be->get_rows(e, emb, ids); });
    }
    return 0;
}
