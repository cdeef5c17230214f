// MSL atomics (relaxed order only, as on Apple GPUs) over real CPU atomics: threadgroups
// of one dispatch run on several OS threads. Each operation tells the runtime whether
// it wrote, so a thread spinning on atomic loads that nobody will ever satisfy is
// reported as a deadlock instead of hanging.
#pragma once

#include "kernel_abi.h"
#include "types.h"

namespace metal {

namespace detail {
template <class T> struct same { using type = T; };  // blocks deduction from the value
}
template <class T> using atomic_value_t = typename detail::same<T>::type;

enum memory_order { memory_order_relaxed = __ATOMIC_RELAXED };

template <class T> struct atomic {
    T value;
};
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<bool> atomic_bool;
typedef atomic<float> atomic_float;

#define FGEMU_SITE fgemu::Site site = fgemu::Site::here()

template <class T> inline T atomic_load_explicit(const volatile atomic<T>* a, memory_order, FGEMU_SITE) {
    fgemu::atomic_hook(false, site);
    T r;
    __atomic_load(const_cast<T*>(&a->value), &r, __ATOMIC_RELAXED);
    return r;
}
template <class T> inline void atomic_store_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    fgemu::atomic_hook(true, site);
    __atomic_store(const_cast<T*>(&a->value), &v, __ATOMIC_RELAXED);
}
template <class T> inline T atomic_exchange_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    fgemu::atomic_hook(true, site);
    T old;
    __atomic_exchange(const_cast<T*>(&a->value), &v, &old, __ATOMIC_RELAXED);
    return old;
}
template <class T>
inline bool atomic_compare_exchange_weak_explicit(volatile atomic<T>* a, atomic_value_t<T>* expected, atomic_value_t<T> desired, memory_order,
                                                  memory_order, FGEMU_SITE) {
    const bool ok = __atomic_compare_exchange(const_cast<T*>(&a->value), expected, &desired, false,
                                              __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    fgemu::atomic_hook(ok, site);
    return ok;
}

namespace detail {
template <class T, class Op> inline T atomic_update(volatile atomic<T>* a, atomic_value_t<T> v, Op op, fgemu::Site site) {
    fgemu::atomic_hook(true, site);
    T* p = const_cast<T*>(&a->value);
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    for (;;) {
        T next = op(old, v);
        if (__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
    }
}
}  // namespace detail

template <class T> inline T atomic_fetch_add_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    return detail::atomic_update(a, v, [](T x, T y) { return T(x + y); }, site);
}
template <class T> inline T atomic_fetch_sub_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    return detail::atomic_update(a, v, [](T x, T y) { return T(x - y); }, site);
}
template <class T> inline T atomic_fetch_max_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    return detail::atomic_update(a, v, [](T x, T y) { return x > y ? x : y; }, site);
}
template <class T> inline T atomic_fetch_min_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    return detail::atomic_update(a, v, [](T x, T y) { return x < y ? x : y; }, site);
}
template <class T> inline T atomic_fetch_and_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    return detail::atomic_update(a, v, [](T x, T y) { return T(x & y); }, site);
}
template <class T> inline T atomic_fetch_or_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    return detail::atomic_update(a, v, [](T x, T y) { return T(x | y); }, site);
}
template <class T> inline T atomic_fetch_xor_explicit(volatile atomic<T>* a, atomic_value_t<T> v, memory_order, FGEMU_SITE) {
    return detail::atomic_update(a, v, [](T x, T y) { return T(x ^ y); }, site);
}

#undef FGEMU_SITE

}  // namespace metal
