// How the AMX prefill GEMM's tile work should be structured: one thread's share of a 1B shape
// (Q8_0-like 16-row panels of kI8PanelBlockBytes per block, two activation parts, the group and
// token-chunk loop of kernels_x86_int8.inc's i8_for_groups) through variants of amx_tile's inner
// loop, timed apart. Standalone (no forgert code: the structures, not the engine's kernels; the
// values are random and unchecked), for the reasoning in docs/design.md "AMX panel pairs":
//   1p16t              one panel x 16 tokens per pass, tiles then finish per block (amx_tile)
//   1p16t-ov           the same, block b + 1's tiles before block b's finish (OVERLAP)
//   1p16t-tilesonly    only the tile instructions (loads, TDPBSSD, stores)
//   1p16t-finonly      only the AVX-512 finish (reading stale dots)
//   tilesonly-contigA  tiles only, activations relaid so that each A tile is 512 contiguous bytes
//   tilesonly-L1       tiles only, every block's data the first block's (all in L1)
//   tilesonly-nostore  tiles only, accumulating in the C tiles (no per-block stores)
//   1p16t(-ov)-contigA the whole, A tiles from the relaid copy (d still from the blocks)
//   2p16t-reg / -mem   two panels per activation tile load (amx_tile_pair), the 32 accumulators
//                      per token in registers / in memory; -ov: overlapped
//   1p32t-mem(-ov)     one panel x 32 tokens per weight tile load
//   2p16t-*-contigAD   two panels, A tiles relaid contiguous and each token's d beside them
//                      ([tile][block][token]), so the finish reads d from one line
//   2p16t-mem-1part    two panels, the hi part alone (one-part activations: the floor)
//   2p16t-mem-k64(-ov) two panels, both parts in one K=64 TDPBSSD: the A tile is a block's hi and
//                      lo side by side (BlockQ8Act's own layout, no copy) against a B tile of the
//                      block's quants times F stacked on the quants (x = d (F hi + lo), F = 16:
//                      ~12-bit activations): one TDPBSSD and one store per panel and block
// Build and run on a CPU with AMX-INT8 (Linux; the tile state is requested per thread):
//   g++ -O2 -std=c++17 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mamx-tile -mamx-int8
//       -mfma -pthread bench/cpp/amx_gemm_structures.cpp -o amx_gemm_structures
//   ./amx_gemm_structures 1; ./amx_gemm_structures 16; ./amx_gemm_structures 8
//   ONLY=6,7,19,20,21 ./amx_gemm_structures 4   (these variants only; the first is the x-of reference)
// Each thread runs its own rows (rows / threads) on its own data; the variants run in turn with
// the threads started together; a variant's figure is the slowest thread's best of 5.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <pthread.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <thread>
#include <vector>
#include <algorithm>
#include <atomic>

struct BlockQ8Act { float d, sum; int8_t hi[32], lo[32]; };
constexpr int PB = 768;  // panel block bytes: 512 quants, 64 scales, 64 mins, 128 half terms
struct alignas(64) TileConfig { uint8_t palette = 1, start_row = 0, reserved[14] = {}; uint16_t colsb[16] = {}; uint8_t rows[16] = {}; };
using Dots = int32_t[16][16];
#define UNR _Pragma("GCC unroll 16")

static void cfg_v0() {  // 0,1 C; 2,3 A; 4 B
    TileConfig c;
    for (int i = 0; i < 2; i++) c.rows[i] = 16, c.colsb[i] = 64;
    for (int i = 2; i < 4; i++) c.rows[i] = 16, c.colsb[i] = 32;
    c.rows[4] = 8, c.colsb[4] = 64;
    _tile_loadconfig(&c);
}
static void cfg_v4() {  // 0-3 C; 4,5 A; 6,7 B
    TileConfig c;
    for (int i = 0; i < 4; i++) c.rows[i] = 16, c.colsb[i] = 64;
    for (int i = 4; i < 6; i++) c.rows[i] = 16, c.colsb[i] = 32;
    for (int i = 6; i < 8; i++) c.rows[i] = 8, c.colsb[i] = 64;
    _tile_loadconfig(&c);
}

// ---- V0 / V1: one panel x 16 tokens (main's amx_tile), OV: overlapped
template <bool OV, bool TILES = true, bool FIN = true, int MODE = 0>  // MODE 1: contiguous A (xa), 2: L1 (block 0), 3: no stores
static void tile16(const uint8_t* wp, const BlockQ8Act* x, int64_t nb, float* out, int64_t os, const int8_t* xa = nullptr) {
    alignas(64) Dots dh[2] = {}, dl[2] = {};
    __m512 acc[16];
    UNR for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();
    const size_t xs = nb * sizeof(BlockQ8Act);
    auto tiles = [&](int64_t b, int buf) {
        if (!TILES) return;
        if (MODE == 2) b = 0;
        _tile_loadd(4, wp + b * PB, 64);
        if (MODE != 3) _tile_zero(0);
        if (MODE == 1) _tile_loadd(2, xa + b * 1024, 32); else _tile_loadd(2, x[b].hi, xs);
        _tile_dpbssd(0, 2, 4);
        if (MODE != 3) _tile_stored(0, dh[buf], 64);
        if (MODE != 3) _tile_zero(1);
        if (MODE == 1) _tile_loadd(3, xa + b * 1024 + 512, 32); else _tile_loadd(3, x[b].lo, xs);
        _tile_dpbssd(1, 3, 4);
        if (MODE != 3) _tile_stored(1, dl[buf], 64);
    };
    if (MODE == 3) { _tile_zero(0); _tile_zero(1); }
    if (OV) tiles(0, 0);
    for (int64_t b = 0; b < nb; b++) {
        const int cur = OV ? (b & 1) : 0;
        if (OV) { if (b + 1 < nb) tiles(b + 1, (b + 1) & 1); } else tiles(b, 0);
        if (!FIN) continue;
        const __m512 dw = _mm512_loadu_ps(wp + b * PB + 512);
        UNR for (int t = 0; t < 16; t++) {
            __m512i idot = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(dh[cur][t]), 8), _mm512_load_si512(dl[cur][t]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot), _mm512_mul_ps(dw, _mm512_set1_ps(x[t * nb + b].d)), acc[t]);
        }
    }
    if (MODE == 3) { _tile_stored(0, dh[0], 64); _tile_stored(1, dl[0], 64); out[0] += dh[0][0][0] + dl[0][0][0]; }
    UNR for (int t = 0; t < 16; t++) _mm512_storeu_ps(out + t * os, acc[t]);
}

// ---- V4: two panels x 16 tokens; accumulators in registers (32 zmm, spills) or in memory (MEM)
template <bool OV, bool MEM, bool CONTIG = false, bool DCONTIG = false>
static void tile16x2(const uint8_t* w0, const uint8_t* w1, const BlockQ8Act* x, int64_t nb, float* out, int64_t os, const int8_t* xa = nullptr,
                     const float* xd = nullptr) {
    alignas(64) Dots c[2][4];
    alignas(64) float accm[16][32];
    __m512 a0[16], a1[16];
    if (MEM) std::memset(accm, 0, sizeof accm);
    else { UNR for (int t = 0; t < 16; t++) a0[t] = a1[t] = _mm512_setzero_ps(); }
    const size_t xs = nb * sizeof(BlockQ8Act);
    auto tiles = [&](int64_t b, int buf) {
        _tile_loadd(6, w0 + b * PB, 64);
        if (CONTIG) _tile_loadd(4, xa + b * 1024, 32); else _tile_loadd(4, x[b].hi, xs);
        _tile_zero(0);
        _tile_dpbssd(0, 4, 6);
        if (CONTIG) _tile_loadd(5, xa + b * 1024 + 512, 32); else _tile_loadd(5, x[b].lo, xs);
        _tile_zero(1);
        _tile_dpbssd(1, 5, 6);
        _tile_loadd(7, w1 + b * PB, 64);
        _tile_zero(2);
        _tile_dpbssd(2, 4, 7);
        _tile_zero(3);
        _tile_dpbssd(3, 5, 7);
        _tile_stored(0, c[buf][0], 64);
        _tile_stored(1, c[buf][1], 64);
        _tile_stored(2, c[buf][2], 64);
        _tile_stored(3, c[buf][3], 64);
    };
    if (OV) tiles(0, 0);
    for (int64_t b = 0; b < nb; b++) {
        const int cur = OV ? (b & 1) : 0;
        if (OV) { if (b + 1 < nb) tiles(b + 1, (b + 1) & 1); } else tiles(b, 0);
        const __m512 dw0 = _mm512_loadu_ps(w0 + b * PB + 512), dw1 = _mm512_loadu_ps(w1 + b * PB + 512);
        UNR for (int t = 0; t < 16; t++) {
            const __m512 d = _mm512_set1_ps(DCONTIG ? xd[b * 16 + t] : x[t * nb + b].d);
            __m512i i0 = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(c[cur][0][t]), 8), _mm512_load_si512(c[cur][1][t]));
            __m512i i1 = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(c[cur][2][t]), 8), _mm512_load_si512(c[cur][3][t]));
            if (MEM) {
                _mm512_store_ps(accm[t], _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(dw0, d), _mm512_load_ps(accm[t])));
                _mm512_store_ps(accm[t] + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(dw1, d), _mm512_load_ps(accm[t] + 16)));
            } else {
                a0[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(dw0, d), a0[t]);
                a1[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(dw1, d), a1[t]);
            }
        }
    }
    UNR for (int t = 0; t < 16; t++) {
        _mm512_storeu_ps(out + t * os, MEM ? _mm512_load_ps(accm[t]) : a0[t]);
        _mm512_storeu_ps(out + t * os + 16, MEM ? _mm512_load_ps(accm[t] + 16) : a1[t]);
    }
}

// Both parts of 16 tokens' block (xb: the first token's; rows xs bytes apart) against the weight
// tile 6: hi dots in tile CH, lo in CL (activations through tiles 4 / 5), stored to c[0] / c[1].
// A macro: GCC's tile intrinsics take their tile numbers as literals.
#define PARTS_BY_TILE6(CH, CL, xb, xs, c) \
    do {                                  \
        _tile_loadd(4, (xb).hi, xs);      \
        _tile_zero(CH);                   \
        _tile_dpbssd(CH, 4, 6);           \
        _tile_loadd(5, (xb).lo, xs);      \
        _tile_zero(CL);                   \
        _tile_dpbssd(CL, 5, 6);           \
        _tile_stored(CH, (c)[0], 64);     \
        _tile_stored(CL, (c)[1], 64);     \
    } while (0)

// ---- V5: one panel x 32 tokens (tiles: 0-3 C, 4,5 A (reused for both token halves), 6 B)
template <bool OV>
static void tile32(const uint8_t* wp, const BlockQ8Act* x, int64_t nb, float* out, int64_t os) {
    alignas(64) Dots c[2][4];
    alignas(64) float accm[32][16];
    std::memset(accm, 0, sizeof accm);
    const size_t xs = nb * sizeof(BlockQ8Act);
    const BlockQ8Act* x1 = x + 16 * nb;
    auto tiles = [&](int64_t b, int buf) {
        _tile_loadd(6, wp + b * PB, 64);
        PARTS_BY_TILE6(0, 1, x[b], xs, c[buf]);
        PARTS_BY_TILE6(2, 3, x1[b], xs, c[buf] + 2);
    };
    if (OV) tiles(0, 0);
    for (int64_t b = 0; b < nb; b++) {
        const int cur = OV ? (b & 1) : 0;
        if (OV) { if (b + 1 < nb) tiles(b + 1, (b + 1) & 1); } else tiles(b, 0);
        const __m512 dw = _mm512_loadu_ps(wp + b * PB + 512);
        UNR for (int t = 0; t < 32; t++) {
            const int h = t / 16, tt = t % 16;
            __m512i i0 = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(c[cur][2 * h][tt]), 8), _mm512_load_si512(c[cur][2 * h + 1][tt]));
            _mm512_store_ps(accm[t], _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(dw, _mm512_set1_ps(x[t * nb + b].d)), _mm512_load_ps(accm[t])));
        }
    }
    for (int t = 0; t < 32; t++) _mm512_storeu_ps(out + t * os, _mm512_load_ps(accm[t]));
}

// ---- K64: both activation parts through one K=64 TDPBSSD per panel; PB2-byte panel blocks
// (1024 bytes of B: F w on top of w, then 16 scales). With cfg_k64(true) the same code runs one
// part: a K=32 A tile (hi alone) against the B tile's first 8 rows.
constexpr int PB2 = 1024 + 64;
static void cfg_k64(bool onepart) {  // 0, 2 C; 4 A; 6, 7 B
    TileConfig c;
    c.rows[0] = c.rows[2] = 16, c.colsb[0] = c.colsb[2] = 64;
    c.rows[4] = 16, c.colsb[4] = onepart ? 32 : 64;
    c.rows[6] = c.rows[7] = onepart ? 8 : 16, c.colsb[6] = c.colsb[7] = 64;
    _tile_loadconfig(&c);
}
template <bool OV>
static void tile16x2_k64(const uint8_t* w0, const uint8_t* w1, const BlockQ8Act* x, int64_t nb, float* out, int64_t os) {
    alignas(64) Dots c[2][2];
    alignas(64) float accm[16][32];
    std::memset(accm, 0, sizeof accm);
    const size_t xs = nb * sizeof(BlockQ8Act);
    auto tiles = [&](int64_t b, int buf) {
        _tile_loadd(6, w0 + b * PB2, 64);
        _tile_loadd(4, x[b].hi, xs);
        _tile_zero(0);
        _tile_dpbssd(0, 4, 6);
        _tile_loadd(7, w1 + b * PB2, 64);
        _tile_zero(2);
        _tile_dpbssd(2, 4, 7);
        _tile_stored(0, c[buf][0], 64);
        _tile_stored(2, c[buf][1], 64);
    };
    if (OV) tiles(0, 0);
    for (int64_t b = 0; b < nb; b++) {
        const int cur = OV ? (b & 1) : 0;
        if (OV) { if (b + 1 < nb) tiles(b + 1, (b + 1) & 1); } else tiles(b, 0);
        const __m512 dw0 = _mm512_loadu_ps(w0 + b * PB2 + 1024), dw1 = _mm512_loadu_ps(w1 + b * PB2 + 1024);
        UNR for (int t = 0; t < 16; t++) {
            const __m512 d = _mm512_set1_ps(x[t * nb + b].d);
            _mm512_store_ps(accm[t], _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[cur][0][t])), _mm512_mul_ps(dw0, d), _mm512_load_ps(accm[t])));
            _mm512_store_ps(accm[t] + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[cur][1][t])), _mm512_mul_ps(dw1, d), _mm512_load_ps(accm[t] + 16)));
        }
    }
    UNR for (int t = 0; t < 16; t++) {
        _mm512_storeu_ps(out + t * os, _mm512_load_ps(accm[t]));
        _mm512_storeu_ps(out + t * os + 16, _mm512_load_ps(accm[t] + 16));
    }
}

constexpr int NV = 22;
struct Shape { const char* name; int64_t K, rows_per_thread, tokens; };

static double run_variant(int v, const Shape& s, uint8_t* panels, const BlockQ8Act* x, float* out, const int8_t* xa,
                          const float* xd, uint8_t* panels2) {
    const int64_t nb = s.K / 32, np = s.rows_per_thread / 16;
    int64_t gp = std::max<int64_t>(1, (1 << 19) / (nb * PB));
    int64_t chunk = std::max<int64_t>(64, ((1 << 20) / (nb * 72 + 8 * nb)) / 32 * 32);
    const int64_t os = s.rows_per_thread;
    const bool k64 = v >= 19;
    const bool pair = (v >= 4 && v <= 7) || v >= 15;  // two panels per pass
    const int64_t pstep = pair ? 2 : 1, tstep = v == 8 || v == 9 ? 32 : 16;
    if (pair) gp += gp & 1;
    if (k64) cfg_k64(v == 19); else if ((v >= 4 && v <= 9) || v >= 15) cfg_v4(); else cfg_v0();
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t g0 = 0; g0 < np; g0 += gp) {
        const int64_t g1 = std::min(np, g0 + gp);
        for (int64_t c0 = 0; c0 < s.tokens; c0 += chunk) {
            const int64_t c1 = std::min(s.tokens, c0 + chunk);
            for (int64_t p = g0; p < g1; p += pstep)
                for (int64_t t = c0; t + tstep <= c1; t += tstep) {
                    const uint8_t* w0 = panels + p * nb * PB;
                    const uint8_t* w1 = panels + std::min(p + 1, np - 1) * nb * PB;  // pairs only
                    const BlockQ8Act* xt = x + t * nb;
                    const int8_t* at = xa + t / 16 * nb * 1024;  // the relaid A tiles
                    const float* dt = xd + t / 16 * nb * 16;     // and their d, [block][token]
                    float* o = out + t * os + p * 16;
                    const uint8_t* k0 = panels2 + p * nb * PB2;
                    const uint8_t* k1 = panels2 + std::min(p + 1, np - 1) * nb * PB2;
                    switch (v) {
                        case 0: tile16<false>(w0, xt, nb, o, os); break;
                        case 1: tile16<true>(w0, xt, nb, o, os); break;
                        case 2: tile16<false, true, false>(w0, xt, nb, o, os); break;
                        case 3: tile16<false, false, true>(w0, xt, nb, o, os); break;
                        case 4: tile16x2<false, false>(w0, w1, xt, nb, o, os); break;
                        case 5: tile16x2<true, false>(w0, w1, xt, nb, o, os); break;
                        case 6: tile16x2<false, true>(w0, w1, xt, nb, o, os); break;
                        case 7: tile16x2<true, true>(w0, w1, xt, nb, o, os); break;
                        case 8: tile32<false>(w0, xt, nb, o, os); break;
                        case 9: tile32<true>(w0, xt, nb, o, os); break;
                        case 10: tile16<false, true, false, 1>(w0, xt, nb, o, os, at); break;
                        case 11: tile16<false, true, false, 2>(w0, xt, nb, o, os, at); break;
                        case 12: tile16<false, true, false, 3>(w0, xt, nb, o, os, at); break;
                        case 13: tile16<false, true, true, 1>(w0, xt, nb, o, os, at); break;
                        case 14: tile16<true, true, true, 1>(w0, xt, nb, o, os, at); break;
                        case 15: tile16x2<false, false, true>(w0, w1, xt, nb, o, os, at); break;
                        case 16: tile16x2<false, true, true, true>(w0, w1, xt, nb, o, os, at, dt); break;
                        case 17: tile16x2<true, true, true, true>(w0, w1, xt, nb, o, os, at, dt); break;
                        case 18: tile16x2<false, false, true, true>(w0, w1, xt, nb, o, os, at, dt); break;
                        case 19: tile16x2_k64<false>(k0, k1, xt, nb, o, os); break;
                        case 20: tile16x2_k64<false>(k0, k1, xt, nb, o, os); break;
                        case 21: tile16x2_k64<true>(k0, k1, xt, nb, o, os); break;
                    }
                }
        }
    }
    auto t1 = std::chrono::steady_clock::now();
    _tile_release();
    return std::chrono::duration<double>(t1 - t0).count();
}

static const char* vname[] = {"1p16t", "1p16t-ov", "1p16t-tilesonly", "1p16t-finonly", "2p16t-reg", "2p16t-reg-ov",
                              "2p16t-mem", "2p16t-mem-ov", "1p32t-mem", "1p32t-mem-ov",
                              "tilesonly-contigA", "tilesonly-L1", "tilesonly-nostore", "1p16t-contigA", "1p16t-ov-contigA", "2p16t-reg-contigA",
                              "2p16t-mem-contigAD", "2p16t-mem-ov-contigAD", "2p16t-reg-contigAD",
                              "2p16t-mem-1part", "2p16t-mem-k64", "2p16t-mem-k64-ov"};

int main(int argc, char** argv) {
    if (syscall(SYS_arch_prctl, 0x1023, 18)) { perror("arch_prctl"); return 1; }
    int nthr = argc > 1 ? atoi(argv[1]) : 1;
    Shape shapes[] = {{"ffn_up 1B (K2048, 8192 rows)", 2048, 8192, 256}, {"ffn_down 1B (K8192, 2048 rows)", 8192, 2048, 256},
                      {"attn_q 1B (K2048, 2048 rows)", 2048, 2048, 256}};
    for (auto& s0 : shapes) {
        Shape s = s0;
        s.rows_per_thread = s0.rows_per_thread / nthr;
        s.rows_per_thread = (s.rows_per_thread + 31) / 32 * 32;
        const int64_t nb = s.K / 32;
        
        std::vector<std::vector<double>> per(nthr, std::vector<double>(NV, 1e9));
        std::atomic<int> ready{0};
        std::vector<std::thread> th;
        std::vector<int> order = {0, 1, 2, 3, 10, 11, 12, 13, 14, 4, 5, 6, 7, 15, 16, 17, 18, 8, 9, 19, 20, 21};
        if (const char* only = getenv("ONLY")) {  // e.g. ONLY=0,6,7,19,20,21
            order.clear();
            for (const char* q = only; *q;) { order.push_back(atoi(q)); while (*q && *q != ',') q++; if (*q) q++; }
        }
        for (int i = 0; i < nthr; i++)
            th.emplace_back([&, i] {
                if (syscall(SYS_arch_prctl, 0x1023, 18)) perror("arch_prctl");
                std::vector<uint8_t> panels(s.rows_per_thread / 16 * nb * PB + 64);
                std::vector<BlockQ8Act> x(s.tokens * nb);
                std::vector<float> out(s.tokens * s.rows_per_thread + 64);
                std::vector<uint8_t> panels2(s.rows_per_thread / 16 * nb * PB2 + 64);
                srand(i + 1);
                for (auto& b : panels) b = rand();
                for (int64_t p = 0; p < s.rows_per_thread / 16; p++)
                    for (int64_t b = 0; b < nb; b++)
                        for (int k = 0; k < 16; k++) ((float*)(panels.data() + (p * nb + b) * PB + 512))[k] = 0.01f;
                for (auto& b : panels2) b = rand() % 8;
                for (int64_t p = 0; p < s.rows_per_thread / 16; p++)
                    for (int64_t b = 0; b < nb; b++)
                        for (int k = 0; k < 16; k++) ((float*)(panels2.data() + (p * nb + b) * PB2 + 1024))[k] = 0.01f;
                for (auto& a : x) { a.d = 0.001f; for (int k = 0; k < 32; k++) a.hi[k] = rand(), a.lo[k] = rand(); }
                std::vector<int8_t> xa(s.tokens / 16 * nb * 1024 + 64);
                std::vector<float> xd(s.tokens / 16 * nb * 16 + 16);
                for (int64_t tt = 0; tt < s.tokens / 16; tt++)
                    for (int64_t b = 0; b < nb; b++)
                        for (int t = 0; t < 16; t++) {
                            std::memcpy(&xa[(tt * nb + b) * 1024 + t * 32], x[(tt * 16 + t) * nb + b].hi, 32);
                            std::memcpy(&xa[(tt * nb + b) * 1024 + 512 + t * 32], x[(tt * 16 + t) * nb + b].lo, 32);
                            xd[(tt * nb + b) * 16 + t] = x[(tt * 16 + t) * nb + b].d;
                        }
                for (int rep = 0; rep < 5; rep++) {
                    for (int vi = 0; vi < (int)order.size(); vi++) {
                        const int v = order[vi];
                        ready++;
                        while (ready.load() < nthr * (1 + rep * (int)order.size() + vi)) {}
                        double t = run_variant(v, s, panels.data(), x.data(), out.data(), xa.data(), xd.data(), panels2.data());
                        per[i][v] = std::min(per[i][v], t);
                    }
                }
            });
        for (auto& t : th) t.join();
        printf("== %s, %d threads, %ld rows/thread, %ld tokens\n", s.name, nthr, (long)s.rows_per_thread, (long)s.tokens);
        const double macs = 2.0 * s.K * s.rows_per_thread * s.tokens;
        for (int v : order) {
            double worst = 0;
            for (int i = 0; i < nthr; i++) worst = std::max(worst, per[i][v]);
            printf("  %-18s %8.3f ms  %7.1f GMAC/s/thread  x%.2f of %s\n", vname[v], worst * 1e3, macs / worst / 1e9,
                   [&] { double w0 = 0; for (int i = 0; i < nthr; i++) w0 = std::max(w0, per[i][order[0]]); return w0 / worst; }(),
                   vname[order[0]]);
        }
    }
}
