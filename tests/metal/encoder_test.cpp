// Checks what MetalBackend encodes, without running a kernel: a recording Device logs
// every dispatch, barrier and commit. Verifies that barriers go exactly where a dispatch
// depends on an earlier one of the same command buffer (and nowhere else), that every
// dispatch's geometry is legal on Apple GPUs, that every binding lies in one buffer view,
// and that a decode step commits no empty command buffer and waits once. Pipelined decoding:
// step t+1 committed before the wait for step t alone, each token read only after that wait,
// the model's buffers made resident once, and no buffer freed while a command buffer that
// binds it may run (command buffers hold unretained references). Built and run by
// tests/test_metal_encoder.py.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>
#include <string>
#include <vector>

#include "backends/metal/buffer_views.h"
#include "backends/metal/metal_backend.h"
#include "../../src/shaders/kernel_args.h"
#include "model/llama_model.h"

using namespace forgert;
using namespace forgert::metal;

namespace {

int failures = 0;
#define EXPECT(cond, ...)                                             \
    do {                                                              \
        if (!(cond)) {                                                \
            std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            std::printf(__VA_ARGS__);                                 \
            std::printf("\n");                                        \
            ++failures;                                               \
        }                                                             \
    } while (0)

class RecordingDevice;
struct HostBuffer final : Buffer {
    RecordingDevice* owner = nullptr;
    ~HostBuffer() override;
};

// Logs "kernel" per dispatch, "|" per barrier and "#" per commit; counts waits; checks
// geometry and bindings as it goes. `events` records the command stream as the host drives
// it: "E<n>" the first dispatch encoded into command buffer n, "C<n>" its commit, "W<n>" wait_until(n), "W*" wait(), "R<k>" k buffers
// made resident. A command buffer "completes" only when waited for: then, and not before, its
// argmax dispatches write 100 + n into their output (as a GPU's result appears in shared
// memory only once the work ran), so a host read before the wait sees no token.
class RecordingDevice final : public Device {
public:
    std::string log, events;
    int commits = 0, waits = 0;
    std::vector<size_t> resident_calls;    // buffers per make_resident call
    std::vector<int32_t> committed_ids;    // each command buffer's get_rows id, read at its commit
    // Unretained references: a buffer freed before the last command buffer binding it is done
    // is a failure (checked when on; the barrier tests leave work unwaited on purpose).
    bool check_lifetimes = false;
    void on_free(const void* host) {
        auto it = last_bound_.find(host);
        if (it == last_bound_.end()) return;
        EXPECT(!check_lifetimes || it->second <= completed_,
               "a buffer bound by command buffer %llu was freed with only %llu done",
               (unsigned long long)it->second, (unsigned long long)completed_);
        last_bound_.erase(it);
    }
    uint32_t last_threads = 0;
    Size3 last_grid{};
    size_t last_tg_bytes = 0;
    std::vector<char> last_args;  // the argument struct of the last dispatch
    std::map<std::string, int> thread_limits;  // pipelines compiled with a lower limit than 1024
    std::map<std::string, int> asked;          // pipeline() calls per kernel
    std::string name() const override { return "recording"; }
    std::unique_ptr<Buffer> new_buffer(size_t bytes) override {
        auto b = std::make_unique<HostBuffer>();
        b->owner = this;
        b->host = std::calloc(1, bytes);
        b->size = bytes;
        return b;
    }
    std::unique_ptr<Buffer> wrap_host(void* p, size_t bytes, size_t) override {
        auto b = std::make_unique<HostBuffer>();
        b->owner = this;
        b->host = std::malloc(bytes);
        std::memcpy(b->host, p, bytes);
        b->size = bytes;
        return b;
    }
    Pipeline* pipeline(const std::string& k) override {
        ++asked[k];
        auto& p = pipes_[k];
        p.key = k;
        if (thread_limits.count(k)) p.max_threads_per_threadgroup = thread_limits[k];
        return &p;
    }
    void begin() override {
        EXPECT(!open_, "begin() with a command buffer open");
        open_ = true;
        dispatches_ = 0;
    }
    void set_pipeline(Pipeline* p) override {
        EXPECT(open_, "encoding outside a command buffer");
        cur_ = p->key;
        args_ = 0;
        tg_ = 0;
    }
    void set_bytes(const void* p, size_t n, int slot) override {
        EXPECT(slot == 0, "%s: bytes in slot %d (only the args struct goes there)", cur_.c_str(), slot);
        args_ = n;
        last_args.assign(static_cast<const char*>(p), static_cast<const char*>(p) + n);
    }
    void set_buffer(const Buffer* b, size_t off, size_t bytes, int slot) override {
        EXPECT(slot >= 1 && slot < 31, "%s: slot %d", cur_.c_str(), slot);
        if (slot >= 1 && slot < 31) bound_[slot] = static_cast<char*>(b->host) + off;
        last_bound_[b->host] = (uint64_t)commits + 1;
        EXPECT(off + bytes <= b->size, "%s: bytes %zu..%zu past buffer of %zu", cur_.c_str(), off, off + bytes,
               b->size);
    }
    void set_threadgroup_memory(size_t n, int) override {
        EXPECT(n % 16 == 0, "%s: threadgroup memory %zu not a multiple of 16", cur_.c_str(), n);
        tg_ = n;
    }
    void dispatch_threadgroups(Size3 g, Size3 t) override {
        const uint32_t threads = t.x * t.y * t.z;
        last_threads = threads;
        last_grid = g;
        last_tg_bytes = tg_;
        EXPECT(args_ > 0, "%s: no argument struct", cur_.c_str());
        EXPECT(threads >= 1 && threads <= 1024, "%s: %u threads per threadgroup", cur_.c_str(), threads);
        EXPECT(threads % 32 == 0, "%s: %u threads: not whole simdgroups", cur_.c_str(), threads);
        EXPECT(tg_ <= 32768, "%s: %zu bytes of threadgroup memory", cur_.c_str(), tg_);
        EXPECT(g.x >= 1 && g.y >= 1 && g.z >= 1, "%s: empty grid", cur_.c_str());
        log += (log.empty() ? "" : " ") + cur_;
        ++dispatches_;
        const uint64_t serial = (uint64_t)commits + 1;  // the command buffer being encoded
        if (dispatches_ == 1) events += " E" + std::to_string(serial);
        if (cur_ == "argmax_f32" || cur_ == "argmax_partials")  // greedy's last dispatch, fused or not
            results_.push_back({serial, reinterpret_cast<int32_t*>(bound_[2])});
        if (cur_.rfind("get_rows_", 0) == 0) ids_.push_back({serial, reinterpret_cast<int32_t*>(bound_[2])});
    }
    void memory_barrier() override { log += " |"; }
    void commit() override {
        EXPECT(open_ && dispatches_ > 0, "commit of an empty command buffer (a round trip for nothing)");
        open_ = false;
        log += " #";
        ++commits;
        events += " C" + std::to_string(commits);
        for (auto& [serial, ids] : ids_)
            if (serial == (uint64_t)commits) committed_ids.push_back(*ids);  // what the GPU will read
    }
    void wait() override {
        ++waits;
        events += " W*";
        complete((uint64_t)commits);
    }
    void wait_until(uint64_t n) override {
        EXPECT(n <= (uint64_t)commits, "wait_until(%llu) with %d committed", (unsigned long long)n, commits);
        events += " W" + std::to_string(n);
        complete(n);
    }
    void make_resident(const Buffer* const*, size_t n) override {
        resident_calls.push_back(n);
        events += " R" + std::to_string(n);
    }

private:
    void complete(uint64_t n) {  // command buffers 1..n have run
        completed_ = std::max(completed_, n);
        for (size_t i = 0; i < results_.size();)
            if (results_[i].first <= n) {
                *results_[i].second = (int32_t)(100 + results_[i].first);
                results_.erase(results_.begin() + i);
            } else {
                i++;
            }
    }
    std::map<std::string, Pipeline> pipes_;
    char* bound_[31] = {};
    std::map<const void*, uint64_t> last_bound_;  // buffer -> last command buffer that binds it
    uint64_t completed_ = 0;
    std::vector<std::pair<uint64_t, int32_t*>> results_, ids_;  // (command buffer, argmax out / get_rows ids)
    std::string cur_;
    size_t args_ = 0, tg_ = 0;
    bool open_ = false;
    int dispatches_ = 0;
};

HostBuffer::~HostBuffer() {
    if (owner) owner->on_free(host);
    std::free(host);
}

struct Fixture {
    RecordingDevice* dev;
    MetalBackend be;
    std::vector<std::unique_ptr<Buffer>> bufs;
    Fixture() : dev(new RecordingDevice), be(std::unique_ptr<Device>(dev)) {}
    Tensor t(DType type, int64_t rows, int64_t cols) {
        bufs.push_back(be.alloc((size_t)row_bytes(type, cols) * rows));
        return make_tensor(bufs.back().get(), 0, type, rows, cols);
    }
};

// One decode step of a layer: the barriers must sit exactly before the dispatches that
// read what an earlier dispatch since the previous barrier wrote.
void test_layer_barriers() {
    Fixture f;
    const int dim = 64, hd = 16, H = 4, KV = 2, ctx = 32, pos = 5;
    Tensor x = f.t(DType::F32, 1, dim), xn = f.t(DType::F32, 1, dim), wn = f.t(DType::F32, 1, dim);
    Tensor wq = f.t(DType::Q4_0, H * hd, dim), wk = f.t(DType::Q8_0, KV * hd, dim), wv = f.t(DType::F16, KV * hd, dim);
    Tensor q = f.t(DType::F32, 1, H * hd), k = f.t(DType::F32, 1, KV * hd), v = f.t(DType::F32, 1, KV * hd);
    Tensor kc = f.t(DType::F16, ctx, KV * hd), vc = f.t(DType::F16, ctx, KV * hd), fr = f.t(DType::F32, 1, hd / 2);
    Tensor att = f.t(DType::F32, 1, H * hd), h = f.t(DType::F32, 1, dim);

    f.be.begin();
    f.be.rms_norm(xn, x, wn, 1e-5f);
    f.be.matmul(q, wq, xn);   // reads xn: barrier
    f.be.matmul(k, wk, xn);   // independent of q: none
    f.be.matmul(v, wv, xn);
    f.be.rope_kv_write(q, k, v, kc, vc, fr, pos, RopeKvParams{H, KV, hd, false});  // q, k, v written above: barrier
    f.be.attention(att, q, kc, vc, pos, AttentionParams{H, KV, hd, 0.25f});  // reads the caches: barrier
    f.be.add(h, x, att);         // barrier
    f.be.commit();
    const std::string want =
        "rms_norm_f32 | mul_mv_staged_q4_0 mul_mv_staged_q8_0 mul_mv_staged_f16 | rope_kv_write_f32 | attention_f16_d64 | "
        "add_f32 #";
    EXPECT(f.dev->log == want, "\n  got  %s\n  want %s", f.dev->log.c_str(), want.c_str());
}

// A whole decode layer as the model encodes it: RoPE and both cache writes in one
// dispatch, the residual adds inside the projections, SiLU * mul inside the gate/up GEMV.
void test_fused_layer_barriers() {
    Fixture f;
    const int dim = 64, hd = 16, H = 4, KV = 2, ctx = 32, pos = 5, ffn = 96;
    Tensor x = f.t(DType::F32, 1, dim), xn = f.t(DType::F32, 1, dim), wn = f.t(DType::F32, 1, dim);
    Tensor wq = f.t(DType::Q4_1, H * hd, dim), wk = f.t(DType::Q4_1, KV * hd, dim), wv = f.t(DType::Q4_1, KV * hd, dim);
    Tensor wo = f.t(DType::Q4_1, dim, H * hd), wg = f.t(DType::Q4_1, ffn, dim), wu = f.t(DType::Q4_1, ffn, dim);
    Tensor wd = f.t(DType::Q4_1, dim, ffn);
    Tensor q = f.t(DType::F32, 1, H * hd), k = f.t(DType::F32, 1, KV * hd), v = f.t(DType::F32, 1, KV * hd);
    Tensor kc = f.t(DType::F16, ctx, KV * hd), vc = f.t(DType::F16, ctx, KV * hd), fr = f.t(DType::F32, 1, hd / 2);
    Tensor att = f.t(DType::F32, 1, H * hd), proj = f.t(DType::F32, 1, dim);
    Tensor gate = f.t(DType::F32, 1, ffn), up = f.t(DType::F32, 1, ffn);

    f.be.begin();
    f.be.rms_norm(xn, x, wn, 1e-5f);
    const Tensor outs[3] = {q, k, v}, ws[3] = {wq, wk, wv};
    f.be.matmul_many(outs, ws, 3, xn);
    f.be.rope_kv_write(q, k, v, kc, vc, fr, pos, RopeKvParams{H, KV, hd, false});
    f.be.attention(att, q, kc, vc, pos, AttentionParams{H, KV, hd, 0.25f});
    f.be.matmul_add(x, wo, att, proj);
    f.be.rms_norm(xn, x, wn, 1e-5f);
    f.be.matmul_swiglu(gate, wg, wu, xn, up);
    f.be.matmul_add(x, wd, gate, proj);
    f.be.commit();
    const std::string want =
        "rms_norm_f32 | mul_mv_staged_q4_1 mul_mv_staged_q4_1 mul_mv_staged_q4_1 | rope_kv_write_f32 | attention_f16_d64 | "
        "mul_mv_staged_q4_1 | rms_norm_f32 | mul_mv_swiglu_staged_q4_1 | mul_mv_staged_q4_1 #";
    EXPECT(f.dev->log == want, "\n  got  %s\n  want %s", f.dev->log.c_str(), want.c_str());
}

void test_write_after_read_and_disjoint_rows() {
    Fixture f;
    Tensor q = f.t(DType::F32, 4, 64), k = f.t(DType::F32, 4, 64), v = f.t(DType::F32, 4, 64);
    Tensor b = f.t(DType::F32, 4, 64), w = f.t(DType::F32, 1, 64), fr = f.t(DType::F32, 1, 32);
    Tensor kc = f.t(DType::F16, 16, 64), vc = f.t(DType::F16, 16, 64);
    const RopeKvParams p{1, 1, 64, false};
    auto rows = [](const Tensor& t, int64_t r0, int64_t n) { return t.slice_rows(r0, n); };
    f.be.begin();
    f.be.rope_kv_write(rows(q, 0, 2), rows(k, 0, 2), rows(v, 0, 2), kc, vc, fr, 0, p);  // cache rows 0..1
    f.be.rope_kv_write(rows(q, 2, 2), rows(k, 2, 2), rows(v, 2, 2), kc, vc, fr, 2, p);  // rows 2..3: disjoint, none
    f.be.rms_norm(b, v, w, 1e-5f);                   // only reads v: none
    f.be.rms_norm(rows(v, 3, 1), w, w, 1e-5f);       // overwrites a row of v read above: barrier
    f.be.rms_norm(rows(v, 3, 1), w, w, 1e-5f);       // writes it again (write after write): barrier
    f.be.rope_kv_write(rows(q, 0, 1), rows(k, 0, 1), rows(b, 0, 1), kc, vc, fr, 5, p);  // all behind a barrier: none
    f.be.commit();
    const std::string want =
        "rope_kv_write_f32 rope_kv_write_f32 rms_norm_f32 | rms_norm_f32 | rms_norm_f32 rope_kv_write_f32 #";
    EXPECT(f.dev->log == want, "\n  got  %s\n  want %s", f.dev->log.c_str(), want.c_str());
}

void test_commit_starts_fresh_tracking() {
    Fixture f;
    Tensor a = f.t(DType::F32, 1, 64), b = f.t(DType::F32, 1, 64), w = f.t(DType::F32, 1, 64);
    f.be.begin();
    f.be.rms_norm(a, b, w, 1e-5f);
    f.be.commit();  // early commit: the next command buffer runs after this one
    f.be.rms_norm(b, a, w, 1e-5f);  // depends on a, but across command buffers: no barrier
    f.be.wait();
    EXPECT(f.dev->log == "rms_norm_f32 # rms_norm_f32 #", "got %s", f.dev->log.c_str());
}

// Geometry of every kernel over shapes at and around its tile sizes.
void test_geometry_over_shapes() {
    Fixture f;
    const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1,
                           DType::Q4_K, DType::Q6_K};
    for (DType t : types)
        for (int n : {1, 7, 8, 33})
            for (int rows : {1, 63, 65}) {
                const int cols = dtype_block_elems(t) == FG_QK_K ? 256 : 64;  // whole K-quant super-blocks
                Tensor w = f.t(t, rows, cols), x = f.t(DType::F32, n, cols), y = f.t(DType::F32, n, rows);
                f.be.matmul(y, w, x);
                Tensor ids = f.t(DType::I32, n, 1), e = f.t(DType::F32, n, cols);
                f.be.get_rows(e, w, ids);
            }
    for (int dim : {1, 31, 2049}) {
        Tensor x = f.t(DType::F32, 2, dim), w = f.t(DType::F32, 1, dim);
        f.be.rms_norm(x, x, w, 1e-5f);
        f.be.silu_mul(x, x, x);
        f.be.add(x, x, x);
        f.be.add_bias(x, w);
        Tensor am = f.t(DType::I32, 2, 1);
        f.be.argmax(am, x);
    }
    for (int hd : {2, 64, 256}) {
        Tensor x = f.t(DType::F32, 9, 2 * hd), fr = f.t(DType::F32, 1, hd / 2);
        Tensor k = f.t(DType::F32, 9, hd), c = f.t(DType::F16, 16, hd);
        f.be.rope_kv_write(x, k, k, c, c, fr, 7, RopeKvParams{2, 1, hd, false});
        Tensor kc = f.t(DType::F16, 4096, hd);
        for (int n : {1, 3, 9})
            for (int pos0 : {0, 4000}) {
                Tensor q = x.slice_rows(0, n), o = f.t(DType::F32, n, 2 * hd);
                f.be.attention(o, q, kc, kc, pos0, AttentionParams{2, 1, hd, 1.0f});
            }
    }
    f.be.wait();
    // Long single-query contexts are split across threadgroups and reduced.
    EXPECT(f.dev->log.find("attention_reduce") != std::string::npos, "no flash-decoding split in %s",
           f.dev->log.c_str());
    // Chunks of queries without a long context use the tiled prefill kernel.
    EXPECT(f.dev->log.find("attention_prefill_f16") != std::string::npos, "no prefill kernel in %s",
           f.dev->log.c_str());
}

// A pipeline whose compiled limit is below 1024 threads gets no more than that.
void test_pipeline_thread_limit() {
    Fixture f;
    f.dev->thread_limits["rms_norm_f32"] = 200;
    Tensor x = f.t(DType::F32, 2, 4096), w = f.t(DType::F32, 1, 4096);
    f.be.rms_norm(x, x, w, 1e-5f);
    f.be.wait();
    EXPECT(f.dev->last_threads == 192, "rms_norm ran %u threads under a limit of 200", f.dev->last_threads);
}

// attention's decode kernel and its query heads per threadgroup: the GQA kernel never asks for
// the latent kernel's pipeline; latent attention (one KV head whose V rows are its K rows, 576
// wide) takes attention_latent_f16 with a simdgroup a head, as many heads as its pipeline's
// thread limit allows (256 threads: 8 of 16 heads), over a grid of the head blocks.
void test_attention_decode_heads() {
    Fixture f;
    const int hd = 64;
    Tensor kc = f.t(DType::F16, 64, 2 * hd), vc = f.t(DType::F16, 64, 2 * hd);
    Tensor q = f.t(DType::F32, 1, 8 * hd), o = f.t(DType::F32, 1, 8 * hd);
    f.be.attention(o, q, kc, vc, 10, AttentionParams{8, 2, hd, 0.125f});
    f.be.wait();
    EXPECT(f.dev->log.find("attention_f16_d64") != std::string::npos, "GQA decode ran %s", f.dev->log.c_str());
    EXPECT(f.dev->asked.count("attention_latent_f16") == 0, "GQA attention asked for the latent kernel's pipeline");

    Fixture g;
    g.dev->thread_limits["attention_latent_f16"] = 256;
    const int H = 16, row = 576;
    Tensor cache = g.t(DType::F16, 64, row), ql = g.t(DType::F32, 1, H * row), ol = g.t(DType::F32, 1, H * row);
    g.be.attention(ol, ql, cache, cache, 10, AttentionParams{H, 1, row, 0.05f});
    g.be.wait();
    EXPECT(g.dev->log == "attention_latent_f16 #", "latent decode ran %s", g.dev->log.c_str());
    EXPECT(g.dev->last_threads == 8 * FG_SIMD_WIDTH && g.dev->last_grid.y == H / 8 && g.dev->last_grid.x == 1,
           "latent decode: %u threads, grid (%u, %u)", g.dev->last_threads, g.dev->last_grid.x, g.dev->last_grid.y);
}

// prepare_experts copies a stack whose experts are alike but lie apart (here in two buffers)
// into one buffer at one stride, leaves one that lies at one stride as it is, and one whose
// experts differ in type or shape too: the model refuses that by its mismatch, the fault a
// copy would not mend, even where the experts also lie apart.
void test_prepare_experts() {
    Fixture f;
    const int64_t rows = 4, cols = 64;
    const size_t bytes = (size_t)row_bytes(DType::F32, cols) * rows;
    Tensor a = f.t(DType::F32, 2 * rows, cols), b = f.t(DType::F32, 2 * rows, cols), h = f.t(DType::F16, rows, cols);
    std::vector<float> v(2 * rows * cols);
    for (size_t i = 0; i < v.size(); i++) v[i] = (float)i;
    f.be.write(a, v.data(), 2 * bytes);
    for (float& x : v) x = -x;
    f.be.write(b, v.data(), 2 * bytes);
    std::vector<std::unique_ptr<Buffer>> owned;

    std::vector<Tensor> apart = {a.slice_rows(0, rows), a.slice_rows(rows, rows), b.slice_rows(0, rows),
                                 b.slice_rows(rows, rows)};
    const std::vector<Tensor> before = apart;
    std::string why = f.be.expert_stack_problem(apart.data(), 4);
    EXPECT(why == "expert 2 lies in another file than expert 0", "split stack: %s", why.c_str());
    f.be.prepare_experts(apart, owned);
    EXPECT(owned.size() == 1, "split stack: %zu copies", owned.size());
    why = f.be.expert_stack_problem(apart.data(), 4);
    EXPECT(why.empty(), "copied stack: %s", why.c_str());
    for (int e = 0; e < 4; e++)
        EXPECT(!owned.empty() && apart[e].buf == owned[0].get() && apart[e].offset == e * bytes &&
                   std::memcmp(apart[e].data<uint8_t>(), before[e].data<uint8_t>(), bytes) == 0,
               "expert %d not copied to its place", e);

    std::vector<Tensor> stacked = {a.slice_rows(rows, rows), a.slice_rows(0, rows)};  // one stride, any order
    f.be.prepare_experts(stacked, owned);
    EXPECT(owned.size() == 1 && stacked[0].buf == a.buf && stacked[0].offset == bytes, "a stacked stack was copied");

    std::vector<Tensor> mixed = {a.slice_rows(0, rows), b.slice_rows(0, rows), h};
    why = f.be.expert_stack_problem(mixed.data(), 3);
    EXPECT(why == "expert 2 differs from expert 0 in type or shape", "mixed stack: %s", why.c_str());
    f.be.prepare_experts(mixed, owned);
    EXPECT(owned.size() == 1 && mixed[1].buf == b.buf && mixed[2].buf == h.buf, "a mixed stack was copied");
}

// A GEMV launch the host should pick: kernel family ("mul_mv_", "mul_mv_swiglu_", "mul_mv_id_"), a
// matrix of `rows` x 256 for n tokens under a pipeline thread limit (0: none), and the expected
// rows per threadgroup, threads and rows per simdgroup.
struct GemvLaunchCase {
    const char* family;
    int rows, n, limit;
    uint32_t tg_rows, threads;
    int sg_rows;
};

// The staged GEMVs' rows per threadgroup (metal_ops.cpp, gemv_tg_rows): 32 until the matrix
// still makes 80 threadgroups of twice that, up to 256 (8 rows per simdgroup from there); the
// grid covers the rows, the threadgroup memory is x's window plus a row window per simdgroup, and
// a pipeline limit below 1024 threads takes fewer simdgroups.
void test_gemv_threadgroup_rows() {
    const GemvLaunchCase cases[] = {
        {"mul_mv_", 512, 1, 0, 32, 256, 4},          {"mul_mv_", 5056, 1, 0, 32, 256, 4},
        {"mul_mv_", 5120, 1, 0, 64, 512, 4},         {"mul_mv_", 10240, 1, 0, 128, 1024, 4},
        {"mul_mv_", 20480, 1, 0, 256, 1024, 8},  // several tokens: test_gemv_tokens_threadgroup_rows
        {"mul_mv_", 20480, 1, 512, 128, 512, 8},     {"mul_mv_swiglu_", 10240, 1, 0, 128, 1024, 4},
        {"mul_mv_id_", 10240, 2, 0, 256, 1024, 8},   // 2 slots
    };
    for (const GemvLaunchCase& c : cases) {
        Fixture f;
        const int cols = 256;
        const std::string kernel = std::string(c.family) + "staged_q4_0";
        if (c.limit) f.dev->thread_limits[kernel] = c.limit;
        Tensor w = f.t(DType::Q4_0, c.rows, cols), x = f.t(DType::F32, c.n, cols);
        if (std::strcmp(c.family, "mul_mv_id_") == 0) {
            Tensor ids = f.t(DType::I32, 1, c.n), y = f.t(DType::F32, c.n, c.rows);
            f.be.matmul_id(y, &w, 1, x.slice_rows(0, 1), ids);
        } else if (std::strcmp(c.family, "mul_mv_swiglu_") == 0) {
            Tensor u = f.t(DType::Q4_0, c.rows, cols), y = f.t(DType::F32, c.n, c.rows), s = f.t(DType::F32, c.n, c.rows);
            f.be.matmul_swiglu(y, w, u, x, s);
        } else {
            Tensor y = f.t(DType::F32, c.n, c.rows);
            f.be.matmul(y, w, x);
        }
        f.be.wait();
        EXPECT(f.dev->log.find(kernel) != std::string::npos, "%s not dispatched: %s", kernel.c_str(),
               f.dev->log.c_str());
        mul_mv_args a{};
        std::memcpy(&a, f.dev->last_args.data(), sizeof a);
        EXPECT(f.dev->last_threads == c.threads && a.sg_rows == c.sg_rows, "%s %d rows: %u threads, %d rows each",
               c.family, c.rows, f.dev->last_threads, a.sg_rows);
        EXPECT(f.dev->last_grid.x == (c.rows + c.tg_rows - 1) / c.tg_rows && f.dev->last_grid.y == (uint32_t)c.n,
               "%s %d rows: grid %u x %u", c.family, c.rows, f.dev->last_grid.x, f.dev->last_grid.y);
        const size_t window = FG_MV_WINDOW_BLOCKS * sizeof(block_q4_0);
        const size_t tg = FG_MV_STAGED_TG_BYTES(window, c.threads / 32);
        EXPECT(f.dev->last_tg_bytes == tg, "%s: %zu bytes of threadgroup memory, expected %zu", c.family,
               f.dev->last_tg_bytes, tg);
    }
}

// Several decode rows take the multi-token GEMVs (mul_mv_tokens.metal; metal_ops.cpp,
// gemv_tokens_tg_rows): up to 8 tokens per threadgroup (grid y: token groups; mul_mv_id_: grid z the
// experts and the zero-row pass), 8 times the one-token rule's rows for 8 tokens (as many times as
// the tokens for fewer), up to 256, spread evenly over the threadgroups; the threadgroup memory holds
// each of the threadgroup's tokens' x window and a window of 8 blocks per simdgroup.
void test_gemv_tokens_threadgroup_rows() {
    const GemvLaunchCase cases[] = {
        {"mul_mv_", 2560, 4, 0, 128, 1024, 4},       // 32 rows for one token, 4 tokens: 128
        {"mul_mv_", 576, 8, 0, 192, 768, 8},         // 256 spread over 3 threadgroups: 192
        {"mul_mv_", 576, 17, 0, 192, 768, 8},        // token groups of 8, 8, 1
        {"mul_mv_", 20480, 8, 512, 128, 512, 8},     // a pipeline limit of 512 threads
        {"mul_mv_swiglu_", 20480, 8, 0, 256, 1024, 8},
        {"mul_mv_id_", 10240, 2, 0, 256, 1024, 8},   // 2 tokens of 2 slots: 4 slots, 128 rows x 4 -> 256
        {"mul_mv_id_", 576, 9, 0, 192, 768, 8},      // 9 tokens of 2 slots: 2 groups per expert
    };
    for (const GemvLaunchCase& c : cases) {
        Fixture f;
        const int cols = 256;
        const std::string kernel = std::string(c.family) + "tokens_q4_0";
        if (c.limit) f.dev->thread_limits[kernel] = c.limit;
        Tensor w = f.t(DType::Q4_0, c.rows, cols), x = f.t(DType::F32, c.n, cols);
        int64_t tokens = c.n;
        uint32_t grid_z = 1;
        if (std::strcmp(c.family, "mul_mv_id_") == 0) {
            Tensor ids = f.t(DType::I32, c.n, 2), y = f.t(DType::F32, 2 * c.n, c.rows);
            f.be.matmul_id(y, &w, 1, x, ids, RowClasses::decode(c.n));
            tokens = 2 * c.n;
            grid_z = 2;  // one expert and the zero rows
        } else if (std::strcmp(c.family, "mul_mv_swiglu_") == 0) {
            Tensor u = f.t(DType::Q4_0, c.rows, cols), y = f.t(DType::F32, c.n, c.rows), s = f.t(DType::F32, c.n, c.rows);
            f.be.matmul_swiglu(y, w, u, x, s, RowClasses::decode(c.n));
        } else {
            Tensor y = f.t(DType::F32, c.n, c.rows);
            f.be.matmul(y, w, x, RowClasses::decode(c.n));
        }
        f.be.wait();
        EXPECT(f.dev->log.find(kernel) != std::string::npos, "%s not dispatched: %s", kernel.c_str(),
               f.dev->log.c_str());
        mul_mv_args a{};
        std::memcpy(&a, f.dev->last_args.data(), sizeof a);
        EXPECT(f.dev->last_threads == c.threads && a.sg_rows == c.sg_rows, "%s %d rows x %d: %u threads, %d rows each",
               c.family, c.rows, c.n, f.dev->last_threads, a.sg_rows);
        const uint32_t groups = (uint32_t)((c.n + FG_MV_TOKENS - 1) / FG_MV_TOKENS);  // mul_mv_id_: per expert
        EXPECT(f.dev->last_grid.x == (c.rows + c.tg_rows - 1) / c.tg_rows && f.dev->last_grid.y == groups &&
                   f.dev->last_grid.z == grid_z,
               "%s %d rows x %d: grid %u x %u x %u", c.family, c.rows, c.n, f.dev->last_grid.x, f.dev->last_grid.y,
               f.dev->last_grid.z);
        const size_t window = FG_MV_TOKENS_WINDOW_BLOCKS * sizeof(block_q4_0);
        const size_t tg = FG_MV_TOKENS_TG_BYTES(window, std::min<int64_t>(tokens, FG_MV_TOKENS), c.threads / 32);
        EXPECT(f.dev->last_tg_bytes == tg && tg <= 32768, "%s: %zu bytes of threadgroup memory, expected %zu",
               c.family, f.dev->last_tg_bytes, tg);
    }
}

void test_bad_input_throws_input_error() {
    Fixture f;
    Tensor w = f.t(DType::Q4_0, 8, 64), x = f.t(DType::F32, 1, 32), y = f.t(DType::F32, 1, 8);
    bool threw = false;
    try {
        f.be.matmul(y, w, x);
    } catch (const InputError& e) {
        threw = std::strstr(e.what(), "x is [1, 32], expected [1, 64]") != nullptr;
        if (!threw) std::printf("message: %s\n", e.what());
    }
    EXPECT(threw, "matmul with mismatched widths must throw InputError naming the shapes");

    Tensor wq = f.t(DType::Q8_0, 4, 64), xq = f.t(DType::F32, 1, 48), yq = f.t(DType::F32, 1, 4);
    wq.cols = 48;  // a hand-made view that is not whole blocks
    threw = false;
    try {
        f.be.matmul(yq, wq, xq);
    } catch (const InputError& e) {
        threw = std::strstr(e.what(), "whole blocks") != nullptr;
    }
    EXPECT(threw, "a quantized width that is not whole blocks must be rejected");
}

// Zero-copy wrapping of a long host range: page-aligned views no longer than the device
// allows, covering the whole range and overlapping so that any range up to the largest
// tensor lies inside one view; a tensor that cannot be placed is refused by name of sizes.
void test_buffer_views() {
    const size_t page = 16384;
    alignas(16384) static char area[1];  // only its address is used
    const char* base = area;
    {
        ViewPlan p = plan_buffer_views(base + 100, 5000, 5000, page, 1 << 30);
        EXPECT(p.views.size() == 1 && p.shift == 100 && p.views[0].length == page, "small range: one page view");
    }
    const size_t max_len = 6 * page + 123;  // not a page multiple: views of 6 pages
    const size_t bytes = 20 * page + 777;
    // Overlaps of 1, 1, 3 and 5 pages. Half a view (3 pages) would not hold a 5-page tensor
    // starting 1.5 pages into a view.
    for (size_t largest : {size_t(1), page, 2 * page + 5, 5 * page}) {
        ViewPlan p = plan_buffer_views(base + 4000, bytes, largest, page, max_len);
        EXPECT(p.shift == 4000 && p.start == reinterpret_cast<uintptr_t>(base), "start/shift");
        EXPECT(p.views.size() > 1, "split into views");
        size_t covered = 0;
        for (const BufferView& v : p.views) {
            EXPECT(v.begin % page == 0 && v.length % page == 0, "views page-aligned");
            EXPECT(v.length <= max_len, "view of %zu > max %zu", v.length, max_len);
            EXPECT(v.begin <= covered, "gap before view at %zu", v.begin);
            covered = std::max(covered, v.begin + v.length);
        }
        EXPECT(covered >= p.shift + bytes, "views cover %zu of %zu", covered, p.shift + bytes);
        for (size_t off = 0; off + largest <= bytes; off += page / 3 + 1) {
            try {
                const ViewBinding b = bind_range(p, off, largest);
                EXPECT(p.start + p.views[b.view].begin + b.offset_in_view == reinterpret_cast<uintptr_t>(base + 4000 + off),
                       "wrong address for offset %zu", off);
                EXPECT(b.bytes_in_view >= largest, "view holds %zu of %zu bytes", b.bytes_in_view, largest);
            } catch (const std::exception& e) {
                EXPECT(false, "%zu bytes at %zu (largest %zu): %s", largest, off, largest, e.what());
            }
        }
    }
    bool refused = false;
    try {
        plan_buffer_views(base, bytes, 6 * page, page, max_len);  // as long as a whole view
    } catch (const InputError& e) {
        refused = std::strstr(e.what(), "maxBufferLength") != nullptr;
    }
    EXPECT(refused, "a tensor that fits no view must be refused naming maxBufferLength");
    // Views made for 1-page tensors: a 3-page range across a view boundary is reported, and
    // so is a range past the end.
    ViewPlan p = plan_buffer_views(base, bytes, page, page, max_len);
    for (auto [off, len] : {std::pair<size_t, size_t>{4 * page, 3 * page}, {bytes - 10, 20}}) {
        bool threw = false;
        try {
            bind_range(p, off, len);
        } catch (const std::runtime_error& e) {
            threw = true;
        }
        EXPECT(threw, "bytes %zu..%zu bound without error", off, off + len);
    }
}

int count_kernel(const std::string& log, const std::string& kernel);

// A tiny Llama over the recording device (weights 0.01 everywhere: the device runs nothing).
struct TinyModel {
    RecordingDevice* dev = new RecordingDevice;
    std::unique_ptr<LlamaModel> model;
    size_t n_weight_buffers = 0;
    explicit TinyModel(int n_layers, int n_slots = 1, int n_ctx = 16) {
        ModelConfig cfg;
        cfg.arch = "llama";
        cfg.n_layers = n_layers;
        cfg.dim = 64;
        cfg.n_heads = 2;
        cfg.n_kv_heads = 1;
        cfg.head_dim = 32;
        cfg.ffn_dim = 96;
        cfg.vocab = 128;
        cfg.n_ctx = n_ctx;
        cfg.rope_freqs.assign(16, 0.1f);
        std::vector<std::vector<float>> storage;
        storage.reserve(64);
        std::map<std::string, HostTensor> tensors;
        auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
            storage.emplace_back(rows * cols, 0.01f);
            HostTensor t;
            t.data = storage.back().data();
            t.nbytes = (size_t)(rows * cols) * sizeof(float);
            t.rows = rows;
            t.cols = cols;
            tensors[name] = t;
        };
        add("token_embd.weight", cfg.vocab, cfg.dim);
        add("output_norm.weight", 1, cfg.dim);
        for (int l = 0; l < n_layers; l++) {
            const std::string b = "blk." + std::to_string(l) + ".";
            for (const char* norm : {"attn_norm", "ffn_norm"}) add(b + norm + ".weight", 1, cfg.dim);
            add(b + "attn_q.weight", cfg.q_dim(), cfg.dim);
            add(b + "attn_k.weight", cfg.kv_dim(), cfg.dim);
            add(b + "attn_v.weight", cfg.kv_dim(), cfg.dim);
            add(b + "attn_output.weight", cfg.dim, cfg.q_dim());
            add(b + "ffn_gate.weight", cfg.ffn_dim, cfg.dim);
            add(b + "ffn_up.weight", cfg.ffn_dim, cfg.dim);
            add(b + "ffn_down.weight", cfg.dim, cfg.ffn_dim);
        }
        auto be = std::make_unique<MetalBackend>(std::unique_ptr<Device>(dev));
        ModelWeights w = load_weights(cfg, tensors, *be);
        n_weight_buffers = w.buffers.size();
        model = std::make_unique<LlamaModel>(cfg, std::move(w), std::move(be), 16, n_slots);
    }
};

// A batch step runs RoPE + the cache write once per layer for all its sequences (their rows,
// positions and slots in one row table), and attention once per layer per row class (RowClasses),
// not once per sequence: decode rows of four slots (attention_f16_d64); a prompt chunk of 9 prefix
// rows (positions 15..23) beside decode rows: the decode rows' attention_f16_d64 and the chunk's
// tiled prefill kernel; a chunk at positions 0..8 is decode rows (below kMaxDecodeRun), one dispatch.
void test_batch_step_one_attention_per_layer() {
    const int n_layers = 3;
    TinyModel t(n_layers, 4, 32);
    const int32_t toks[9] = {5, 6, 7, 8, 9, 10, 11, 12, 13};
    const BatchEntry decode[4] = {{2, toks, 1, 3}, {0, toks + 1, 1, 7}, {3, toks + 2, 1, 0}, {1, toks + 3, 1, 5}};
    const BatchEntry mixed[3] = {{1, toks, 9, 15}, {0, toks, 1, 8}, {3, toks, 1, 2}};
    const BatchEntry early[3] = {{1, toks, 9, 0}, {0, toks, 1, 8}, {3, toks, 1, 2}};
    for (auto [entries, n, decode_dispatches, prefill_dispatches] :
         {std::tuple{decode, 4, n_layers, 0}, std::tuple{mixed, 3, n_layers, n_layers},
          std::tuple{early, 3, n_layers, 0}}) {
        t.dev->log.clear();
        int32_t best[4] = {};
        t.model->forward_batch_argmax(entries, n, best);
        const std::string& log = t.dev->log;
        EXPECT(count_kernel(log, "rope_kv_write_f32") == n_layers, "%d rope_kv_write dispatches for %d layers: %s",
               count_kernel(log, "rope_kv_write_f32"), n_layers, log.c_str());
        EXPECT(count_kernel(log, "attention_f16_d64") == decode_dispatches &&
                   count_kernel(log, "attention_prefill_f16") == prefill_dispatches,
               "%d attention_f16_d64 and %d attention_prefill_f16 dispatches for %d layers, expected %d and %d: %s",
               count_kernel(log, "attention_f16_d64"), count_kernel(log, "attention_prefill_f16"), n_layers,
               decode_dispatches, prefill_dispatches, log.c_str());
    }
}

// A decode step as the model runs it: the token upload goes into shared memory before
// anything is encoded, so no empty command buffer is committed and nothing waits before
// the step's end. A one-layer model commits once per step; from two layers on the model
// commits its first layers early (the GPU starts on them while the rest is encoded).
void test_decode_step_commits() {
    for (int n_layers : {1, 3}) {
        TinyModel t(n_layers);
        RecordingDevice* dev = t.dev;
        LlamaModel& model = *t.model;
        const int want_commits = n_layers == 1 ? 1 : 2;
        std::vector<float> logits(model.config().vocab);
        for (int pos = 0; pos < 3; pos++) {
            const int32_t token = 5 + pos;
            dev->commits = dev->waits = 0;
            if (pos % 2 == 0)
                model.forward_argmax(&token, 1, pos);
            else
                model.forward(&token, 1, pos, false, logits.data());
            EXPECT(dev->commits == want_commits && dev->waits == 1,
                   "%d-layer decode step at %d: %d commits, %d waits (want %d and 1)", n_layers, pos, dev->commits,
                   dev->waits, want_commits);
        }
    }
}

int count_kernel(const std::string& log, const std::string& kernel) {
    int n = 0;
    for (size_t at = log.find(kernel); at != std::string::npos; at = log.find(kernel, at + 1)) {
        const size_t end = at + kernel.size();
        if ((at == 0 || log[at - 1] == ' ') && (end == log.size() || log[end] == ' ')) n++;
    }
    return n;
}

// A Gemma decode step's dispatches: GeGLU fused into the gate/up GEMV (mul_mv_swiglu with
// args.gelu, no separate gelu_mul), each post-norm carrying its residual add (no add_f32), the
// embedding scale and Gemma 2's final soft-cap once per step, Gemma 3's QK-norm as two norms.
// Per layer: Llama's dispatches plus the two post-norms (plus two QK-norms for Gemma 3).
// Measured for 2 layers: llama 23, gemma2 29, gemma3 32; with the adds and GeGLU unfused (norm +
// add, gate and up GEMVs + gelu_mul) Gemma 2 would take 37.
void test_gemma_decode_dispatches() {
    for (const char* arch : {"llama", "gemma2", "gemma3"}) {
        const bool gemma = std::string(arch) != "llama", gemma3 = std::string(arch) == "gemma3";
        ModelConfig cfg;
        cfg.arch = arch;
        cfg.n_layers = 2;
        cfg.dim = 64;
        cfg.n_heads = 2;
        cfg.n_kv_heads = 1;
        cfg.head_dim = 32;
        cfg.ffn_dim = 96;
        cfg.vocab = 128;
        cfg.n_ctx = 16;
        cfg.rope_freqs.assign(16, 0.1f);
        if (gemma) {
            cfg.ffn_gelu = true;
            cfg.embed_scale = 8.0f;
            cfg.layer_window = {4, 0};
            cfg.post_norms = true;  // the sandwich: pre-norms and post-norms
        }
        if (gemma3) cfg.qk_norm = ModelConfig::QkNorm::PerHead;
        if (std::string(arch) == "gemma2") cfg.attn_softcap = 50.0f, cfg.final_softcap = 30.0f;
        std::vector<std::vector<float>> storage;
        storage.reserve(64);
        std::map<std::string, HostTensor> tensors;
        auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
            storage.emplace_back(rows * cols, 0.01f);
            HostTensor t;
            t.data = storage.back().data();
            t.nbytes = (size_t)(rows * cols) * sizeof(float);
            t.rows = rows;
            t.cols = cols;
            tensors[name] = t;
        };
        add("token_embd.weight", cfg.vocab, cfg.dim);
        add("output_norm.weight", 1, cfg.dim);
        for (int l = 0; l < cfg.n_layers; l++) {
            const std::string b = "blk." + std::to_string(l) + ".";
            for (const char* norm : {"attn_norm", "ffn_norm"}) add(b + norm + ".weight", 1, cfg.dim);
            if (gemma)
                for (const char* norm : {"post_attention_norm", "post_ffw_norm"}) add(b + norm + ".weight", 1, cfg.dim);
            if (gemma3)
                for (const char* norm : {"attn_q_norm", "attn_k_norm"}) add(b + norm + ".weight", 1, cfg.head_dim);
            add(b + "attn_q.weight", cfg.q_dim(), cfg.dim);
            add(b + "attn_k.weight", cfg.kv_dim(), cfg.dim);
            add(b + "attn_v.weight", cfg.kv_dim(), cfg.dim);
            add(b + "attn_output.weight", cfg.dim, cfg.q_dim());
            add(b + "ffn_gate.weight", cfg.ffn_dim, cfg.dim);
            add(b + "ffn_up.weight", cfg.ffn_dim, cfg.dim);
            add(b + "ffn_down.weight", cfg.dim, cfg.ffn_dim);
        }
        auto* dev = new RecordingDevice;
        auto be = std::make_unique<MetalBackend>(std::unique_ptr<Device>(dev));
        ModelWeights w = load_weights(cfg, tensors, *be);
        LlamaModel model(cfg, std::move(w), std::move(be), 8);
        std::vector<float> logits(cfg.vocab);
        const int32_t token = 5;
        dev->log.clear();
        model.forward(&token, 1, 0, false, logits.data());
        const std::string& log = dev->log;
        const int L = cfg.n_layers;
        auto expect_count = [&](const char* kernel, int want) {
            const int got = count_kernel(log, kernel);
            EXPECT(got == want, "%s decode step: %d x %s, want %d\n  %s", arch, got, kernel, want, log.c_str());
        };
        expect_count("mul_mv_swiglu_staged_f32", L);
        expect_count("gelu_mul_f32", 0);
        expect_count("silu_mul_f32", 0);
        expect_count("add_f32", 0);
        expect_count("rms_norm_f32", L * (2 + (gemma ? 2 : 0) + (gemma3 ? 2 : 0)) + 1);
        expect_count("scale_f32", gemma ? 1 : 0);
        expect_count("softcap_f32", std::string(arch) == "gemma2" ? 1 : 0);
        int dispatches = 0;
        for (size_t i = 0; i < log.size(); i++)
            if ((i == 0 || log[i - 1] == ' ') && log[i] != '|' && log[i] != '#') dispatches++;
        std::printf("%s: %d dispatches per decode step of %d layers\n", arch, dispatches, L);
        // Greedy: the fused output GEMV, except under Gemma 2's final soft-cap (the argmax of the
        // capped logits, whose tanh can tie values the raw logits order).
        dev->log.clear();
        model.forward_argmax(&token, 1, 1);
        const bool capped = std::string(arch) == "gemma2";
        EXPECT(count_kernel(dev->log, "argmax_f32") == (capped ? 1 : 0) &&
                   count_kernel(dev->log, "argmax_partials") == (capped ? 0 : 1),
               "%s greedy step: %s", arch, dev->log.c_str());
    }
}


// Greedy pipelined decode (3 layers: two command buffers per step, the first layers committed
// early). Step t+1 is committed before the host waits for step t, the host waits only for step
// t (never for everything), and each token it returns is the one step t's argmax wrote, which
// the recording device makes visible only at that wait: a read before it would see no token.
void test_greedy_pipeline_ordering() {
    TinyModel t(3);
    RecordingDevice& dev = *t.dev;
    dev.events.clear();
    const int32_t first = 5;
    t.model->decode_begin(first, 4, true);  // step 0: command buffers 1, 2 (argmax in 2)
    std::vector<int32_t> got;
    for (int i = 0; i < 4; i++) got.push_back(t.model->decode_next(true));
    got.push_back(t.model->decode_next(false));  // the last token: no step after it
    t.model->decode_end();
    // step s: command buffers 2s+1, 2s+2; the host's wait for step s-1 (cb 2s) comes after both
    std::string want = " E1 C1 E2 C2";
    for (int s = 1; s <= 4; s++)
        want += " E" + std::to_string(2 * s + 1) + " C" + std::to_string(2 * s + 1) + " E" + std::to_string(2 * s + 2) +
                " C" + std::to_string(2 * s + 2) + " W" + std::to_string(2 * s);
    want += " W*";  // decode_next(false): the last step is all that is in flight
    EXPECT(dev.events == want, "greedy pipeline\n  got  %s\n  want %s", dev.events.c_str(), want.c_str());
    const std::vector<int32_t> want_tokens = {102, 104, 106, 108, 110};
    got.insert(got.begin(), 0);  // (decode_begin returns nothing; align the lists)
    for (size_t i = 1; i < got.size(); i++)
        EXPECT(got[i] == want_tokens[i - 1], "token %zu: %d, want %d (step %zu's argmax, read after its wait)", i,
               got[i], want_tokens[i - 1], i - 1);
    EXPECT(!t.model->decode_active(), "pipeline still active after decode_next(false)");
}

// Greedy steps whose logits nobody reads take the fused output GEMV (mul_mv_argmax_staged_*, a
// barrier, argmax_partials: no logits written); a pass whose last row is a prefix row keeps the
// GEMM and argmax_f32 for it; FORGERT_METAL_FUSED_ARGMAX=0 and logits requests take the old path.
void test_greedy_steps_fuse_the_argmax() {
    TinyModel t(1, 2, 32);
    const int32_t toks[3] = {5, 6, 7};
    const std::string fused = "mul_mv_argmax_staged_f32 | argmax_partials";
    t.dev->log.clear();
    t.model->forward_argmax(toks, 1, 0);
    EXPECT(t.dev->log.find(fused) != std::string::npos && count_kernel(t.dev->log, "argmax_f32") == 0,
           "greedy step: %s", t.dev->log.c_str());
    t.dev->log.clear();
    t.model->decode_begin(toks[1], 1, true);
    t.model->decode_next(false);
    t.model->decode_end();
    EXPECT(t.dev->log.find(fused) != std::string::npos && count_kernel(t.dev->log, "argmax_f32") == 0,
           "pipelined greedy step: %s", t.dev->log.c_str());
    const BatchEntry mixed[2] = {{0, toks, 3, 15}, {1, toks, 1, 3}};  // slot 0's rows: positions 15..17, prefix rows
    int32_t best[2] = {};
    t.dev->log.clear();
    t.model->forward_batch_argmax(mixed, 2, best);
    EXPECT(count_kernel(t.dev->log, "mul_mv_argmax_staged_f32") == 1 && count_kernel(t.dev->log, "argmax_f32") == 1,
           "decode and prefix last rows: %s", t.dev->log.c_str());
    setenv("FORGERT_METAL_FUSED_ARGMAX", "0", 1);
    t.dev->log.clear();
    t.model->forward_argmax(toks, 1, 0);
    unsetenv("FORGERT_METAL_FUSED_ARGMAX");
    EXPECT(count_kernel(t.dev->log, "argmax_partials") == 0 && count_kernel(t.dev->log, "argmax_f32") == 1,
           "fusion off: %s", t.dev->log.c_str());
    std::vector<float> logits(t.model->config().vocab);
    t.dev->log.clear();
    t.model->forward(toks, 1, 0, false, logits.data());
    EXPECT(t.dev->log.find("argmax") == std::string::npos && count_kernel(t.dev->log, "mul_mv_staged_f32") > 0,
           "logits requested: %s", t.dev->log.c_str());
}

// A stop found late: decode_end waits for the speculative step and nothing else is left.
void test_greedy_pipeline_end_waits_for_speculative_step() {
    TinyModel t(1);
    t.dev->events.clear();
    t.model->decode_begin(3, 0, true);
    const int32_t tok = t.model->decode_next(true);  // step 1 launched, then the caller stops
    t.model->decode_end();
    EXPECT(tok == 101, "token %d, want 101", tok);
    EXPECT(t.dev->events == " E1 C1 E2 C2 W1 W*", "got %s", t.dev->events.c_str());
    bool threw = false;
    try {
        t.model->decode_next(true);
    } catch (const InputError& e) {
        threw = std::strstr(e.what(), "decode_begin") != nullptr;
    }
    EXPECT(threw, "decode_next after decode_end must throw InputError naming decode_begin");
}

// Sampled on the host: step t+1 is encoded (all its dispatches) before the host waits for step
// t, and committed after the drawn token is in its input - the id get_rows reads at commit.
void test_sampled_pipeline_ordering() {
    TinyModel t(1);
    RecordingDevice& dev = *t.dev;
    t.model->decode_begin(9, 0, false);
    dev.events.clear();
    dev.log.clear();
    dev.committed_ids.clear();
    int draws = 0;
    auto sample = [&](float*, int vocab) {
        EXPECT(vocab == 128, "vocab %d", vocab);
        return (int32_t)(40 + draws++);
    };
    const int32_t a = t.model->decode_next(true, sample);
    const int32_t b = t.model->decode_next(true, sample);
    const int32_t c = t.model->decode_next(false, sample);
    EXPECT(a == 40 && b == 41 && c == 42, "tokens %d %d %d", a, b, c);
    // Step 1 (cb 2) is encoded before the wait for step 0 and committed after it; with one
    // layer a step is one command buffer, so that wait is for everything committed (W*).
    EXPECT(dev.events == " E2 W* C2 E3 W* C3 W*", "sampled pipeline events %s", dev.events.c_str());
    EXPECT(dev.committed_ids == std::vector<int32_t>({40, 41}), "ids at commit: %zu of them, first %d",
           dev.committed_ids.size(), dev.committed_ids.empty() ? -1 : dev.committed_ids[0]);
    EXPECT(dev.log.find("argmax") == std::string::npos, "a sampled step computes no argmax: %s", dev.log.c_str());
}

// Weights, KV cache and activations are made resident once, when the model is built: never
// again by decode steps, pipelined or not.
void test_residency_once() {
    TinyModel t(2);
    RecordingDevice& dev = *t.dev;
    EXPECT(dev.resident_calls.size() == 1, "%zu make_resident calls at load, want 1", dev.resident_calls.size());
    // every weight buffer, 2 KV buffers per layer and the activations
    EXPECT(!dev.resident_calls.empty() && dev.resident_calls[0] > t.n_weight_buffers + 4,
           "made resident %zu buffers; the weights alone are %zu", dev.resident_calls.empty() ? 0 : dev.resident_calls[0],
           t.n_weight_buffers);
    std::vector<float> logits(128);
    const int32_t tok = 7;
    t.model->forward(&tok, 1, 0, false, logits.data());
    t.model->forward_argmax(&tok, 1, 1);
    t.model->decode_begin(tok, 2, true);
    for (int i = 0; i < 3; i++) t.model->decode_next(true);
    t.model->decode_end();
    EXPECT(dev.resident_calls.size() == 1, "%zu make_resident calls after decoding, want 1",
           dev.resident_calls.size());
}

// Command buffers do not retain their buffers: the model frees nothing while a step is in
// flight (here a pipelined step, committed and never waited for by the caller), and scratch
// replaced while the command buffer that binds it runs is kept until that one is done, also
// across waits for earlier command buffers only.
void test_unretained_lifetimes() {
    {
        TinyModel t(2);
        t.dev->check_lifetimes = true;
        t.model->decode_begin(3, 0, true);
        t.model->decode_next(true);  // step 1 in flight; the model goes with it
    }
    Fixture f;
    f.dev->check_lifetimes = true;
    const int hd = 64;
    Tensor kc = f.t(DType::F16, 4096, hd), q = f.t(DType::F32, 1, 2 * hd), o = f.t(DType::F32, 1, 2 * hd);
    Tensor x = f.t(DType::F32, 1, 64), w = f.t(DType::F32, 1, 64), am = f.t(DType::I32, 1, 1);
    const AttentionParams p{2, 1, hd, 1.0f};
    f.be.rms_norm(x, x, w, 1e-5f);
    f.be.commit();                            // cb 1
    const uint64_t first = f.be.committed();
    f.be.attention(o, q, kc, kc, 300, p);     // split: scratch A, bound by cb 2
    f.be.commit();
    f.be.attention(o, q, kc, kc, 4000, p);    // more splits: scratch B; A retired (cb 2 runs)
    f.be.argmax(am, x);
    f.be.commit();                            // cb 3
    int32_t best = 0;
    f.be.read_after(first, &best, am, 0);     // waits for cb 1 alone: A must survive
    EXPECT(f.dev->events.find(" W1") != std::string::npos, "no wait for cb 1 alone: %s", f.dev->events.c_str());
    f.be.wait();
}
}  // namespace

int main() {
    test_buffer_views();
    test_decode_step_commits();
    test_batch_step_one_attention_per_layer();
    test_gemma_decode_dispatches();
    test_layer_barriers();
    test_fused_layer_barriers();
    test_pipeline_thread_limit();
    test_attention_decode_heads();
    test_prepare_experts();
    test_gemv_threadgroup_rows();
    test_gemv_tokens_threadgroup_rows();
    test_write_after_read_and_disjoint_rows();
    test_commit_starts_fresh_tracking();
    test_geometry_over_shapes();
    test_bad_input_throws_input_error();
    test_greedy_pipeline_ordering();
    test_greedy_pipeline_end_waits_for_speculative_step();
    test_greedy_steps_fuse_the_argmax();
    test_sampled_pipeline_ordering();
    test_residency_once();
    test_unretained_lifetimes();
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
