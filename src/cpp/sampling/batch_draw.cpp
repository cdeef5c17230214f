#include "sampling/batch_draw.h"

#include <algorithm>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <thread>
#include <vector>

namespace forgert {
namespace {

// Below this many logits a step's draws take a few tens of microseconds, about what starting a
// thread costs: one after another then.
constexpr size_t kThreadedLogits = size_t(1) << 17;

void draw_entry(Sampler* s, float* logits, int rows, int vocab, int32_t* out) {
    for (int r = 0; r < rows; r++) {
        float* row = logits + (size_t)r * vocab;
        try {
            out[r] = s->sample(row, vocab);
        } catch (const std::invalid_argument&) {
            if ((out[r] = no_token_sentinel(row, vocab)) == 0) throw;
        }
    }
}

}  // namespace

void draw_batch(Sampler* const* samplers, const int* rows_of, int n, float* logits, int vocab, int32_t* out,
                int threads) {
    std::vector<size_t> first(n + 1, 0);  // each entry's first row
    for (int e = 0; e < n; e++) first[e + 1] = first[e] + rows_of[e];
    const int workers = (int)std::min<size_t>({(size_t)std::max(threads, 1), (size_t)n,
                                               first[n] * vocab / kThreadedLogits + 1});
    std::vector<std::exception_ptr> errors(n);
    auto work = [&](int w) {
        for (int e = w; e < n; e += workers) {
            try {
                draw_entry(samplers[e], logits + first[e] * vocab, rows_of[e], vocab, out + first[e]);
            } catch (...) {
                errors[e] = std::current_exception();
            }
        }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; w++) pool.emplace_back(work, w);
    work(0);
    for (std::thread& t : pool) t.join();
    for (const std::exception_ptr& err : errors)
        if (err) std::rethrow_exception(err);
}

}  // namespace forgert
