#include "sampling/batch_draw.h"

#include <algorithm>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <vector>

namespace forgert {
namespace {

void draw_entry(Sampler* s, float* logits, int rows, int vocab, int32_t* out, const ParallelFor& par) {
    for (int r = 0; r < rows; r++) {
        float* row = logits + (size_t)r * vocab;
        try {
            out[r] = s->sample(row, vocab, -1.0, par);
        } catch (const std::invalid_argument&) {
            if ((out[r] = no_token_sentinel(row, vocab)) == 0) throw;
        }
    }
}

}  // namespace

void draw_batch(Sampler* const* samplers, const int* rows_of, int n, float* logits, int vocab, int32_t* out,
                const ParallelFor& par) {
    std::vector<size_t> first(n + 1, 0);  // each entry's first row
    for (int e = 0; e < n; e++) first[e + 1] = first[e] + rows_of[e];
    if (n == 1) {  // one sequence: its rows' passes on the threads
        draw_entry(samplers[0], logits, rows_of[0], vocab, out, par);
        return;
    }
    std::vector<std::exception_ptr> errors(n);
    auto entries = [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; e++) {
            try {
                draw_entry(samplers[e], logits + first[e] * vocab, rows_of[e], vocab, out + first[e], ParallelFor());
            } catch (...) {
                errors[e] = std::current_exception();
            }
        }
    };
    if (par) {
        par(n, entries);
    } else {
        entries(0, n);
    }
    for (const std::exception_ptr& err : errors)
        if (err) std::rethrow_exception(err);
}

}  // namespace forgert
