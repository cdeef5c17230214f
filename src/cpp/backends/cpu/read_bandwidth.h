// The machine's memory read bandwidth as the CPU backend's decode sees it: n_threads
// threads each summing their share of a buffer much larger than the caches. The reference
// that decode speed (weights streamed per token) is reported against in the benches.
#pragma once

namespace forgert::cpu {

// GB/s (1e9 bytes) read, the median of a few passes over `mib` MiB; n_threads <= 0: all cores.
double measure_read_bandwidth_gbs(int n_threads, int mib = 1024);

}  // namespace forgert::cpu
