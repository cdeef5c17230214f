// A batch step's draws: each entry's rows by its own sampler, the entries side by side.
#pragma once

#include <cstdint>

#include "sampling/sampler.h"

namespace forgert {

// logits [rows, vocab] (overwritten: penalties apply in place), entry e's rows_of[e] rows after
// those of the entries before it, drawn in order by samplers[e] into out [rows]. A row its sampler
// refuses for having no token to draw (NaN, all -inf...) gets no_token_sentinel, so that its
// sequence alone fails; any other refusal is rethrown (the first entry's in order) once every
// entry is done. Entries share nothing (each sampler its own RNG and scratch), so several run side
// by side through par (the engine's pool, idle between steps); one entry's rows run their passes
// through it instead. The same draws as one after another on one thread.
void draw_batch(Sampler* const* samplers, const int* rows_of, int n, float* logits, int vocab, int32_t* out,
                const ParallelFor& par);

}  // namespace forgert
