// MSL address spaces as distinct clang types, for the address-space lint only
// (tools/msl_lint.py: msl2cpp.py --strict-address-spaces, then clang -fsyntax-only).
// The executing build erases them (msl.h), so a pointer passed into the wrong space
// would compile there and only fail on Apple's compiler. Here each space is a clang
// address_space qualifier, and clang, like the Metal compiler, rejects implicit
// conversions between them. `thread` is clang's default space, so `float*` and `thread float*`
// are one type here; msl_lint.py checks separately that every pointer and reference level
// names its space, as Metal requires. Never code-generated: the numbers mean nothing to the
// x86 back end.
#pragma once

#include <type_traits>

#include "types.h"

#define FGEMU_DEVICE __attribute__((address_space(1)))
#define FGEMU_CONSTANT __attribute__((address_space(2)))
#define FGEMU_THREADGROUP __attribute__((address_space(3)))

namespace fgemu {

enum AddressSpace { kThreadSpace = 0, kDeviceSpace = 1, kConstantSpace = 2, kThreadgroupSpace = 3 };

template <class T> struct SpaceOf {
    static constexpr int value = kThreadSpace;
};
template <class T, int N> struct SpaceOf<__attribute__((address_space(N))) T> {
    static constexpr int value = N;
};
// The space of the memory a pointer or reference refers to; -1 for a value.
template <class P> constexpr int pointee_space() {
    if constexpr (std::is_pointer_v<P>) return SpaceOf<std::remove_cv_t<std::remove_pointer_t<P>>>::value;
    if constexpr (std::is_reference_v<P>) return SpaceOf<std::remove_cv_t<std::remove_reference_t<P>>>::value;
    return -1;
}

// A vector read through a device, constant or threadgroup reference is a vector: float4(*p).
template <class T, int N> struct VecTraits<__attribute__((address_space(N))) T> : VecTraits<T> {};

// Kernel parameters, checked by the static_asserts msl2cpp.py writes for each kernel.
template <class F, int I> struct KernelParam;
template <class P0, class... P> struct KernelParam<void (*)(P0, P...), 0> {
    using type = P0;
};
template <class P0, class... P, int I>
struct KernelParam<void (*)(P0, P...), I> : KernelParam<void (*)(P...), I - 1> {};
template <class F, int I> using kernel_param_t = typename KernelParam<F, I>::type;

template <class P>
constexpr bool buffer_param_ok = pointee_space<P>() == kDeviceSpace || pointee_space<P>() == kConstantSpace;
template <class P>
constexpr bool threadgroup_param_ok = std::is_pointer_v<P> && pointee_space<P>() == kThreadgroupSpace;

}  // namespace fgemu
