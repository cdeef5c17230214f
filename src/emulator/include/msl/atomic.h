// MSL atomics (relaxed order only, as on Apple GPUs) over real CPU atomics: threadgroups
// of one dispatch run on several OS threads. Each operation tells the runtime whether
// it wrote, so a thread spinning on atomic loads that nobody will ever satisfy is
// reported as a deadlock instead of hanging.
#pragma once

#include "kernel_abi.h"
#include "types.h"
#ifdef FGEMU_STRICT_ADDRESS_SPACES
#include "address_spaces.h"
#endif

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

#ifdef FGEMU_STRICT_ADDRESS_SPACES
// The address-space lint compiles and never runs: declarations for the two spaces MSL
// has atomics in; `expected` is a thread pointer.
#define FGEMU_ATOMIC_RMW(AS, op) \
    template <class T> T atomic_##op##_explicit(volatile AS atomic<T>*, atomic_value_t<T>, memory_order);
#define FGEMU_ATOMICS_IN(AS)                                                                                        \
    template <class T> T atomic_load_explicit(const volatile AS atomic<T>*, memory_order);                          \
    template <class T> void atomic_store_explicit(volatile AS atomic<T>*, atomic_value_t<T>, memory_order);         \
    template <class T>                                                                                              \
    bool atomic_compare_exchange_weak_explicit(volatile AS atomic<T>*, atomic_value_t<T>*, atomic_value_t<T>,       \
                                               memory_order, memory_order);                                         \
    FGEMU_ATOMIC_RMW(AS, exchange) FGEMU_ATOMIC_RMW(AS, fetch_add) FGEMU_ATOMIC_RMW(AS, fetch_sub)                  \
    FGEMU_ATOMIC_RMW(AS, fetch_max) FGEMU_ATOMIC_RMW(AS, fetch_min) FGEMU_ATOMIC_RMW(AS, fetch_and)                 \
    FGEMU_ATOMIC_RMW(AS, fetch_or) FGEMU_ATOMIC_RMW(AS, fetch_xor)
FGEMU_ATOMICS_IN(FGEMU_DEVICE)
FGEMU_ATOMICS_IN(FGEMU_THREADGROUP)
#undef FGEMU_ATOMICS_IN
#undef FGEMU_ATOMIC_RMW
#else
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

#endif  // FGEMU_STRICT_ADDRESS_SPACES

#undef FGEMU_SITE

}  // namespace metal
