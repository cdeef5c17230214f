// What the dot instructions cost on this CPU, one thread: cycles per instruction for vpdpbusd and
// vfmadd on zmm (12 independent accumulators), vpdpbusd fed by a broadcast, and the AMX tile
// instructions (TDPBSSD 16x16x64 into four C tiles, TILELOADD / TILESTORED of 16 x 64 bytes from
// L1, and one decode block: zero, load A, load B, dot, store). Cycles are counted against a
// dependent chain of 1-cycle vpaddd zmm timed first, so "cycles" are that clock's; instructions
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

int main() {
    const long N = 20000000;
    // clock: dependent vpaddd zmm chain, 8 per iteration
    __m512i c = _mm512_set1_epi32(1), one = _mm512_set1_epi32(1);
    double t0 = now();
    for (long i = 0; i < N; i++) {
        asm volatile("vpaddd %1, %0, %0\n\tvpaddd %1, %0, %0\n\tvpaddd %1, %0, %0\n\tvpaddd %1, %0, %0\n\t"
                     "vpaddd %1, %0, %0\n\tvpaddd %1, %0, %0\n\tvpaddd %1, %0, %0\n\tvpaddd %1, %0, %0"
                     : "+v"(c) : "v"(one));
    }
    double ns_cycle = (now() - t0) * 1e9 / (8.0 * N);
    std::printf("clock %.2f GHz (dependent vpaddd zmm)\n", 1.0 / ns_cycle);
    auto report = [&](const char* what, double sec, double ops) {
        std::printf("%-40s %.3f cycles/op\n", what, sec * 1e9 / ops / ns_cycle);
    };
    // vpdpbusd zmm, 12 independent accumulators
    {
        __m512i a[12];
        for (int k = 0; k < 12; k++) a[k] = _mm512_set1_epi32(k);
        const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
        t0 = now();
        for (long i = 0; i < N; i++) {
#pragma GCC unroll 12
            for (int k = 0; k < 12; k++) a[k] = _mm512_dpbusd_epi32(a[k], x, y);
            asm volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]));
        }
        report("vpdpbusd zmm", now() - t0, 12.0 * N);
        int s = 0;
        for (int k = 0; k < 12; k++) s += _mm512_reduce_add_epi32(a[k]);
        sink = s;
    }
    // vpdpbusd zmm, each fed by its own broadcast word (g++ -O2: vpbroadcastd from a GPR)
    {
        __m512i a[12];
        for (int k = 0; k < 12; k++) a[k] = _mm512_set1_epi32(k);
        const __m512i x = _mm512_set1_epi8(3);
        alignas(64) int32_t m[16] = {0x01020304};
        t0 = now();
        for (long i = 0; i < N; i++) {
#pragma GCC unroll 12
            for (int k = 0; k < 12; k++) a[k] = _mm512_dpbusd_epi32(a[k], x, _mm512_set1_epi32(m[k % 4]));
            asm volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]) : "m"(m));
        }
        report("vpdpbusd zmm + a broadcast each", now() - t0, 12.0 * N);
        int s = 0;
        for (int k = 0; k < 12; k++) s += _mm512_reduce_add_epi32(a[k]);
        sink = s;
    }
    // vfmadd231ps zmm, 12 independent
    {
        __m512 a[12];
        for (int k = 0; k < 12; k++) a[k] = _mm512_set1_ps((float)k);
        const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-7f);
        t0 = now();
        for (long i = 0; i < N; i++) {
#pragma GCC unroll 12
            for (int k = 0; k < 12; k++) a[k] = _mm512_fmadd_ps(a[k], x, y);
            asm volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]));
        }
        report("vfmadd zmm", now() - t0, 12.0 * N);
        float s = 0;
        for (int k = 0; k < 12; k++) s += _mm512_reduce_add_ps(a[k]);
        sink = (int)s;
    }
    // vpdpbusd + 1 vpaddd per 2 dots (a finish-like mix)
    {
        __m512i a[12], b = _mm512_setzero_si512();
        for (int k = 0; k < 12; k++) a[k] = _mm512_set1_epi32(k);
        const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
        t0 = now();
        for (long i = 0; i < N; i++) {
#pragma GCC unroll 12
            for (int k = 0; k < 12; k++) a[k] = _mm512_dpbusd_epi32(a[k], x, y);
            __m512i t0v = _mm512_add_epi32(a[0], a[1]), t1 = _mm512_add_epi32(a[2], a[3]), t2 = _mm512_add_epi32(a[4], a[5]);
            __m512i t3 = _mm512_add_epi32(a[6], a[7]), t4 = _mm512_add_epi32(a[8], a[9]), t5 = _mm512_add_epi32(a[10], a[11]);
            b = _mm512_xor_si512(b, _mm512_xor_si512(_mm512_xor_si512(t0v, t1), _mm512_xor_si512(_mm512_xor_si512(t2, t3), _mm512_xor_si512(t4, t5))));
            asm volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(b));
        }
        report("12 vpdpbusd + 11 other ALU (per dot)", now() - t0, 12.0 * N);
        sink = _mm512_reduce_add_epi32(b);
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
