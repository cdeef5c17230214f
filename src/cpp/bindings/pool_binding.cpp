// _core._pool_ranges(threads, split, n, grain, ...): runs one parallel_for on a fresh pool
// and returns the ranges it handed out, so tests can check that every index is covered
// exactly once, in contiguous whole grains, whatever the threads and split.
#include "pool_binding.h"

#include <pybind11/stl.h>

#include <mutex>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "backends/cpu/thread_pool.h"

namespace py = pybind11;
using forgert::cpu::ThreadPool;

namespace {

using Range = std::tuple<int, int64_t, int64_t>;  // (ith, begin, end)

// nested_n > 0: each range also runs a parallel_for over [0, nested_n) from inside the
// region (the ranges it gets are recorded with ith -1 - ith). throw_at >= 0: the range that
// holds that index throws std::runtime_error after recording itself.
std::vector<Range> pool_ranges(int threads, const std::string& split, int64_t n, int64_t grain, int64_t nested_n,
                               int64_t throw_at, bool profile, int64_t units) {
    ThreadPool pool(threads, forgert::cpu::parse_work_split(split), forgert::cpu::kDefaultSpinUs, units);
    pool.set_profiling(profile);
    std::mutex mu;
    std::vector<Range> ranges;
    {
        py::gil_scoped_release nogil;
        pool.parallel_for_ith(n, grain, [&](int ith, int64_t b, int64_t e) {
            {
                std::lock_guard<std::mutex> lock(mu);
                ranges.emplace_back(ith, b, e);
            }
            if (nested_n > 0)
                pool.parallel_for_ith(nested_n, 1, [&](int inner, int64_t nb, int64_t ne) {
                    std::lock_guard<std::mutex> lock(mu);
                    ranges.emplace_back(-1 - inner, nb, ne);
                });
            if (throw_at >= b && throw_at < e) throw std::runtime_error("share failed at " + std::to_string(throw_at));
        });
    }
    return ranges;
}

}  // namespace

void bind_pool(py::module_& m) {
    m.def("_pool_ranges", &pool_ranges, py::arg("threads"), py::arg("split"), py::arg("n"), py::arg("grain"),
          py::arg("nested_n") = 0, py::arg("throw_at") = -1, py::arg("profile") = false,
          py::arg("units") = 0,
          "test-facing: the (ith, begin, end) ranges one ThreadPool.parallel_for_ith hands out");
    m.def("_pool_stats", [](int threads, const std::string& split, int regions) {
        // `regions` trivial parallel_fors with profiling on: what PoolStats counts.
        ThreadPool pool(threads, forgert::cpu::parse_work_split(split));
        pool.set_profiling(true);
        {
            py::gil_scoped_release nogil;
            for (int i = 0; i < regions; i++) pool.parallel_for(1000, 1, [](int64_t, int64_t) {});
        }
        const auto s = pool.stats();
        py::dict d;
        d["regions"] = s.regions;
        d["wall_s"] = s.wall_s;
        d["busy_s"] = s.busy_s;
        d["capacity_s"] = s.capacity_s;
        return d;
    }, py::arg("threads"), py::arg("split"), py::arg("regions"));
}
