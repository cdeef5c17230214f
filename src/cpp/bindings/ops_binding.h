#pragma once
#include <pybind11/pybind11.h>
// _core.Ops: single backend ops on NumPy arrays, for per-op tests.
void bind_ops(pybind11::module_& m);
