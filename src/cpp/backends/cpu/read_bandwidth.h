// The machine's memory read bandwidth as the CPU backend's decode sees it: n_threads
// threads each summing their share of a buffer much larger than the caches. The reference
// that decode speed (weights streamed per token) is reported against in the benches.
#pragma once

namespace forgert::cpu {

// GB/s (1e9 bytes) read, the best of several timed passes over `mib` MiB after an untimed
// warm-up pass. n_threads == 0: all cores; mib == 0: 16x the L3 cache, at least 1 GiB,
// at most 4 GiB and a quarter of the available memory. Throws std::invalid_argument for
// a negative n_threads or mib, or a buffer larger than half the available memory.
double measure_read_bandwidth_gbs(int n_threads, int mib = 0);

}  // namespace forgert::cpu
