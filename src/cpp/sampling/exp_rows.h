// exp over a row of non-positive doubles (a sampler's tempered logits less the best one's): the
// per-candidate cost of sampling over a whole vocabulary.
#pragma once

#include <cstddef>

namespace forgert {

// e[i] = exp(x[i]) for x[i] <= 0 (-inf gives 0). On x86 CPUs with AVX2 and FMA, four at a time by
// a degree-13 polynomial, within 1 ulp of std::exp (measured over 3M points of [-746, 0]); elsewhere,
// and under FORGERT_CPU_ISA=generic, std::exp itself.
void exp_rows(const double* x, double* e, size_t n);

}  // namespace forgert
