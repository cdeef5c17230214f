#include "sampling/exp_rows.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FG_EXP_ROWS_AVX2 1
#endif

namespace forgert {
namespace {

#if FG_EXP_ROWS_AVX2
// exp(x) = 2^k exp(r), k = round(x / ln 2) read from the low bits of x log2(e) + 1.5 2^52, r = x - k ln 2
// (ln 2 in two parts, the first with trailing zeros so that k ln2_hi is exact), |r| <= ln 2 / 2,
// where Taylor's terms to r^13 leave < 1e-17. 2^k is built as 2^(k + 64) 2^-64 so that it stays
// normal down to exp(-746), which rounds to 0 as std::exp's does (a -inf logit weighs exactly 0).
constexpr double kLog2e = 1.4426950408889634, kShift = 0x1.8p52;
constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
constexpr double kInvFact[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
                                 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800};

__attribute__((target("avx2,fma"))) inline __m256d exp4(__m256d x) {
    const __m256d shift = _mm256_set1_pd(kShift);
    x = _mm256_max_pd(x, _mm256_set1_pd(-746.0));  // -inf too
    const __m256d t = _mm256_fmadd_pd(x, _mm256_set1_pd(kLog2e), shift);
    const __m256d k = _mm256_sub_pd(t, shift);
    __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(kLn2Hi), x);
    r = _mm256_fnmadd_pd(k, _mm256_set1_pd(kLn2Lo), r);
    __m256d p = _mm256_set1_pd(kInvFact[13]);
    for (int j = 12; j >= 0; --j) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(kInvFact[j]));
    const __m256i ki = _mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(shift));
    const __m256d s = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(ki, _mm256_set1_epi64x(64 + 1023)), 52));
    return _mm256_mul_pd(_mm256_mul_pd(p, s), _mm256_set1_pd(0x1p-64));
}

__attribute__((target("avx2,fma"))) void exp_rows_avx2(const double* x, double* e, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) _mm256_storeu_pd(e + i, exp4(_mm256_loadu_pd(x + i)));
    if (i < n) {  // the tail through the same lanes, so that every element gets the same arithmetic
        double in[4] = {0, 0, 0, 0}, out[4];
        std::memcpy(in, x + i, (n - i) * sizeof(double));
        _mm256_storeu_pd(out, exp4(_mm256_loadu_pd(in)));
        std::memcpy(e + i, out, (n - i) * sizeof(double));
    }
}

bool use_avx2() {
    static const bool yes = [] {
        const char* isa = std::getenv("FORGERT_CPU_ISA");  // the portable kernels, sampler included
        if (isa && std::strcmp(isa, "generic") == 0) return false;
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }();
    return yes;
}
#endif

}  // namespace

void exp_rows(const double* x, double* e, size_t n) {
#if FG_EXP_ROWS_AVX2
    if (use_avx2()) return exp_rows_avx2(x, e, n);
#endif
    for (size_t i = 0; i < n; ++i) e[i] = std::exp(x[i]);
}

}  // namespace forgert
