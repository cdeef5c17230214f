#pragma once
#include <pybind11/pybind11.h>
// _core._pool_ranges: the CPU thread pool's work split on its own, for tests/test_cpu_pool.py.
void bind_pool(pybind11::module_& m);
