// The Metal Shading Language on clang, for kernels translated by tools/msl2cpp.py.
// Types, math, simd_*/quad_* collectives, barriers, simdgroup_matrix, atomics and
// function constants; the collectives and barriers are rendezvous points of the fiber
// runtime (runtime/), which runs one fiber per GPU thread.
#pragma once

// Every standard header must come before the address-space macros below.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "atomic.h"
#include "function_constants.h"
#include "kernel_abi.h"
#include "math.h"
#include "simd.h"
#include "simdgroup_matrix.h"
#include "types.h"

// Shared headers (quant_blocks.h, kernel_args.h) pick their MSL branch on this.
#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 310
#endif
#define FORGERT_MSL_EMULATOR 1

// Address spaces and function qualifiers. `threadgroup` in a .metal file is rewritten by the
// translator (locals become threadgroup-shared storage); what is left of it, in the headers
// the .metal files include (pointer types only), is dropped like `device`. In the
// address-space lint (msl2cpp.py --strict-address-spaces) every space is a distinct type
// (address_spaces.h).
#define kernel
#ifdef FGEMU_STRICT_ADDRESS_SPACES
#include "address_spaces.h"
#define device FGEMU_DEVICE
#define constant const FGEMU_CONSTANT
#define threadgroup FGEMU_THREADGROUP
#else
#define device
#define constant const
#define threadgroup
#endif
#define thread
#define ray_data
#define object_data

namespace fgemu {
// Storage of a `threadgroup` variable declared in a kernel body (the translator wraps
// the declaration in a local struct S): one instance per running threadgroup.
template <class S> inline S& threadgroup_var(Site s = Site::here()) {
    static const char key = 0;  // one per S, i.e. per declaration and template instantiation
    return *static_cast<S*>(threadgroup_local(&key, sizeof(S), alignof(S), s));
}
#ifdef FGEMU_STRICT_ADDRESS_SPACES
// The address-space lint (compiled, never run) sees that storage as threadgroup memory.
template <class S> inline threadgroup S& threadgroup_ref() { return *(threadgroup S*)&threadgroup_var<S>(); }
#endif
}  // namespace fgemu
