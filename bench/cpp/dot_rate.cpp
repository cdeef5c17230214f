// What the dot instructions cost on this CPU, one thread: cycles per instruction for vpdpbusd and
// vfmadd on zmm (12 independent accumulators), vpdpbusd fed by a broadcast, and the AMX tile
// instructions (TDPBSSD 16x16x64 into four C tiles, TILELOADD / TILESTORED of 16 x 64 bytes from
// L1, and one decode block: zero, load A, load B, dot, store). Cycles are counted against a
// dependent chain of 1-cycle general-register adds timed first, so "cycles" are that clock's; instructions
// that lower the core's clock (heavy AVX-512, AMX) read as more of them. Standalone (no forgert
// code), for bench/results/batch_step_gpuhost.md; run one copy, and one per CPU with taskset to
// see whether CPUs share the units:
//   g++ -O2 -mavx512f -mavx512bw -mavx512vnni -mamx-tile -mamx-int8 bench/cpp/dot_rate.cpp -o dot_rate
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdint>

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
volatile int sink;

// The vector loops are asm: 12 accumulators in named registers, an instruction string per loop.
// (Written as intrinsics over an array, g++ -O2 stored and reloaded the array every iteration, a
// store-forwarding round trip in each chain: 1.3-1.5 "cycles" a dot where the unit takes 0.5 on
// Zen 5; the figures of bench/results/batch_step_gpuhost.md's 2026-12-06 section were that.)
#define X12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define ACC12 "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11)
#define DOT(k) "vpdpbusd %12, %13, %" #k "\n\t"
#define DOT_BC(k) "vpbroadcastd " #k "*4(%13), %%zmm31\n\tvpdpbusd %%zmm31, %12, %" #k "\n\t"
#define FMA(k) "vfmadd231ps %12, %13, %" #k "\n\t"
#define ADD_PAIR(k) "vpaddd %" #k ", %14, %%zmm30\n\tvpxord %" #k ", %14, %%zmm29\n\t"  // results unused: no chain

int main() {
    const long N = 20000000;
    // clock: a dependent chain of general-register adds, 8 per iteration (1 cycle each on every x86
    // core; a vpaddd zmm chain is not: 2 cycles on Zen 5, which read as half its clock)
    long c = 1;
    double t0 = now();
    for (long i = 0; i < N; i++) {
        asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                     "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                     : "+r"(c));
    }
    double ns_cycle = (now() - t0) * 1e9 / (8.0 * N);
    std::printf("clock %.2f GHz (dependent adds)\n", 1.0 / ns_cycle);
    auto report = [&](const char* what, double sec, double ops) {
        std::printf("%-40s %.3f cycles/op\n", what, sec * 1e9 / ops / ns_cycle);
    };
    // vpdpbusd zmm, 12 independent accumulators
    {
        __m512i a0 = _mm512_set1_epi32(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
                a10 = a0, a11 = a0;
        const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
        t0 = now();
        for (long i = 0; i < N; i++) asm volatile(X12(DOT) : ACC12 : "v"(x), "v"(y));
        report("vpdpbusd zmm", now() - t0, 12.0 * N);
        sink = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a11));
    }
    // vpdpbusd zmm, each fed by its own word broadcast from memory (as the engine's tiles load
    // their activations)
    {
        __m512i a0 = _mm512_set1_epi32(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
                a10 = a0, a11 = a0;
        const __m512i x = _mm512_set1_epi8(3);
        alignas(64) int32_t m[16] = {0x01020304};
        const int32_t* pm = m;
        t0 = now();
        for (long i = 0; i < N; i++) asm volatile(X12(DOT_BC) : ACC12 : "v"(x), "r"(pm), "m"(m) : "zmm31");
        report("vpdpbusd zmm + a broadcast each", now() - t0, 12.0 * N);
        sink = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a11));
    }
    // vfmadd231ps zmm, 12 independent
    {
        __m512 a0 = _mm512_set1_ps(1.f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
               a10 = a0, a11 = a0;
        const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-7f);
        t0 = now();
        for (long i = 0; i < N; i++) asm volatile(X12(FMA) : ACC12 : "v"(x), "v"(y));
        report("vfmadd zmm", now() - t0, 12.0 * N);
        sink = (int)_mm512_reduce_add_ps(_mm512_add_ps(a0, a11));
    }
    // 12 vpdpbusd + 2 other vector ops per dot (a vpaddd and a vpxord: a finish-like mix)
    {
        __m512i a0 = _mm512_set1_epi32(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0,
                a10 = a0, a11 = a0;
        const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5), z = _mm512_set1_epi32(7);
        t0 = now();
        for (long i = 0; i < N; i++) asm volatile(X12(DOT) X12(ADD_PAIR) : ACC12 : "v"(x), "v"(y), "v"(z) : "zmm29", "zmm30");
        report("12 vpdpbusd + 24 other ALU (2 per dot)", now() - t0, 12.0 * N);
        sink = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a11));
    }
    // AMX: request the tile state, then TDPBSSD 16x16x64 into 4 C tiles
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) {
        std::printf("AMX: not permitted\n");
        return 0;
    }
    struct alignas(64) Cfg { uint8_t palette = 1, start = 0, res[14] = {}; uint16_t colsb[16] = {}; uint8_t rows[16] = {}; } cfg;
    for (int i = 0; i < 8; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;
    _tile_loadconfig(&cfg);
    alignas(64) int8_t buf[16 * 64 * 8];
    std::memset(buf, 1, sizeof buf);
    alignas(64) int32_t out[16 * 16 * 4];
    const long M = N / 8;
    _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    t0 = now();
    for (long i = 0; i < M; i++) {
        _tile_dpbssd(0, 4, 5); _tile_dpbssd(1, 4, 5); _tile_dpbssd(2, 4, 5); _tile_dpbssd(3, 4, 5);
    }
    report("tdpbssd 16x16x64 (4 C tiles)", now() - t0, 4.0 * M);
    t0 = now();
    for (long i = 0; i < M; i++) {
        _tile_loadd(4, buf, 64); _tile_loadd(5, buf + 1024, 64); _tile_loadd(6, buf + 2048, 64); _tile_loadd(7, buf + 3072, 64);
    }
    report("tileloadd 16 x 64 B (L1)", now() - t0, 4.0 * M);
    t0 = now();
    for (long i = 0; i < M; i++) {
        _tile_stored(0, out, 64); _tile_stored(1, out + 256, 64); _tile_stored(2, out + 512, 64); _tile_stored(3, out + 768, 64);
    }
    report("tilestored 16 x 64 B (L1)", now() - t0, 4.0 * M);
    t0 = now();
    for (long i = 0; i < M; i++) {  // a decode block: zero, load A, load B, dot, store; 4 C tiles
        _tile_zero(0); _tile_loadd(4, buf, 64); _tile_loadd(6, buf + 2048, 64); _tile_dpbssd(0, 4, 6); _tile_stored(0, out, 64);
        _tile_zero(1); _tile_loadd(5, buf + 1024, 64); _tile_loadd(7, buf + 3072, 64); _tile_dpbssd(1, 5, 7); _tile_stored(1, out + 256, 64);
        _tile_zero(2); _tile_loadd(4, buf, 64); _tile_loadd(6, buf + 2048, 64); _tile_dpbssd(2, 4, 6); _tile_stored(2, out + 512, 64);
        _tile_zero(3); _tile_loadd(5, buf + 1024, 64); _tile_loadd(7, buf + 3072, 64); _tile_dpbssd(3, 5, 7); _tile_stored(3, out + 768, 64);
    }
    report("zero+load A+load B+dot+store (a block)", now() - t0, 4.0 * M);
    _tile_release();
    sink = out[5];
    return 0;
}
