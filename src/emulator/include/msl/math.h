// MSL math, common, integer and relational functions: elementwise over vectors,
// computed in float for half operands. fast:: and precise:: are the same here.
#pragma once

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "types.h"

namespace metal {

namespace detail {
template <class T, class F> inline T map1(const T& x, F f) {
    if constexpr (fgemu::is_vec<T>) {
        T r;
        for (int i = 0; i < fgemu::n_elems<T>; ++i) r[i] = fgemu::elem_t<T>(f(x[i]));
        return r;
    } else {
        return T(f(x));
    }
}
template <class T, class F> inline T map2(const T& x, const T& y, F f) {
    if constexpr (fgemu::is_vec<T>) {
        T r;
        for (int i = 0; i < fgemu::n_elems<T>; ++i) r[i] = fgemu::elem_t<T>(f(x[i], y[i]));
        return r;
    } else {
        return T(f(x, y));
    }
}
template <class T, class F> inline T map3(const T& x, const T& y, const T& z, F f) {
    if constexpr (fgemu::is_vec<T>) {
        T r;
        for (int i = 0; i < fgemu::n_elems<T>; ++i) r[i] = fgemu::elem_t<T>(f(x[i], y[i], z[i]));
        return r;
    } else {
        return T(f(x, y, z));
    }
}
// A scalar argument next to a vector one is splatted (MSL: clamp(float4, float, float)).
template <class T, class S> inline T like(const S& s) {
    if constexpr (fgemu::is_vec<T> && !fgemu::is_vec<S>) {
        return T(fgemu::elem_t<T>(s));
    } else {
        return T(s);
    }
}
}  // namespace detail

#define FGEMU_MATH1(name, expr)                                                     \
    template <class T> inline T name(T x) {                                         \
        return detail::map1(x, [](auto v) {                                         \
            const float f = float(v);                                               \
            (void)f;                                                                \
            return (expr);                                                          \
        });                                                                         \
    }
FGEMU_MATH1(exp, ::expf(f))
FGEMU_MATH1(exp2, ::exp2f(f))
FGEMU_MATH1(exp10, ::powf(10.0f, f))
FGEMU_MATH1(log, ::logf(f))
FGEMU_MATH1(log2, ::log2f(f))
FGEMU_MATH1(log10, ::log10f(f))
FGEMU_MATH1(sqrt, ::sqrtf(f))
FGEMU_MATH1(rsqrt, 1.0f / ::sqrtf(f))
FGEMU_MATH1(sin, ::sinf(f))
FGEMU_MATH1(cos, ::cosf(f))
FGEMU_MATH1(tan, ::tanf(f))
FGEMU_MATH1(asin, ::asinf(f))
FGEMU_MATH1(acos, ::acosf(f))
FGEMU_MATH1(atan, ::atanf(f))
FGEMU_MATH1(sinh, ::sinhf(f))
FGEMU_MATH1(cosh, ::coshf(f))
FGEMU_MATH1(tanh, ::tanhf(f))
FGEMU_MATH1(erf, ::erff(f))
FGEMU_MATH1(floor, ::floorf(f))
FGEMU_MATH1(ceil, ::ceilf(f))
FGEMU_MATH1(round, ::roundf(f))
FGEMU_MATH1(rint, ::rintf(f))
FGEMU_MATH1(trunc, ::truncf(f))
FGEMU_MATH1(fabs, ::fabsf(f))
FGEMU_MATH1(fract, f - ::floorf(f))
FGEMU_MATH1(saturate, f < 0.0f ? 0.0f : (f > 1.0f ? 1.0f : f))
FGEMU_MATH1(sign, f > 0.0f ? 1.0f : (f < 0.0f ? -1.0f : 0.0f))
#undef FGEMU_MATH1

template <class T> inline T abs(T x) {
    return detail::map1(x, [](auto v) { return v < 0 ? decltype(v)(-v) : v; });
}
template <class T> inline T pow(T x, T y) {
    return detail::map2(x, y, [](auto a, auto b) { return ::powf(float(a), float(b)); });
}
template <class T> inline T powr(T x, T y) { return pow(x, y); }
template <class T> inline T fmod(T x, T y) {
    return detail::map2(x, y, [](auto a, auto b) { return ::fmodf(float(a), float(b)); });
}
template <class T> inline T atan2(T y, T x) {
    return detail::map2(y, x, [](auto a, auto b) { return ::atan2f(float(a), float(b)); });
}
template <class T> inline T max(T x, T y) {
    return detail::map2(x, y, [](auto a, auto b) { return a > b ? a : b; });
}
template <class T> inline T min(T x, T y) {
    return detail::map2(x, y, [](auto a, auto b) { return a < b ? a : b; });
}
template <class T, class S, class = std::enable_if_t<fgemu::is_vec<T> && !fgemu::is_vec<S>>>
inline T max(T x, S y) { return max(x, detail::like<T>(y)); }
template <class T, class S, class = std::enable_if_t<fgemu::is_vec<T> && !fgemu::is_vec<S>>>
inline T min(T x, S y) { return min(x, detail::like<T>(y)); }
template <class T> inline T fmax(T x, T y) {
    return detail::map2(x, y, [](auto a, auto b) { return ::fmaxf(float(a), float(b)); });
}
template <class T> inline T fmin(T x, T y) {
    return detail::map2(x, y, [](auto a, auto b) { return ::fminf(float(a), float(b)); });
}
template <class T, class U, class V> inline T clamp(T x, U lo, V hi) {
    return min(max(x, detail::like<T>(lo)), detail::like<T>(hi));
}
template <class T, class U> inline T mix(T x, T y, U a) { return x + (y - x) * detail::like<T>(a); }
template <class T, class U> inline T step(U edge, T x) {
    return detail::map2(detail::like<T>(edge), x, [](auto e, auto v) { return v < e ? 0.0f : 1.0f; });
}
template <class T> inline T fma(T a, T b, T c) {
    return detail::map3(a, b, c, [](auto x, auto y, auto z) { return ::fmaf(float(x), float(y), float(z)); });
}
template <class T> inline T select(T a, T b, bool c) { return c ? b : a; }
template <class T, class C, class = std::enable_if_t<fgemu::is_vec<C>>>
inline T select(T a, T b, C c) {
    T r;
    for (int i = 0; i < fgemu::n_elems<T>; ++i) r[i] = c[i] ? b[i] : a[i];
    return r;
}
template <class T> inline fgemu::elem_t<T> dot(T a, T b) {
    fgemu::elem_t<T> s = 0;
    for (int i = 0; i < fgemu::n_elems<T>; ++i) s += a[i] * b[i];
    return s;
}
template <class T> inline fgemu::elem_t<T> length(T a) { return fgemu::elem_t<T>(::sqrtf(float(dot(a, a)))); }
template <class T> inline fgemu::elem_t<T> distance(T a, T b) { return length(a - b); }
template <class T> inline T normalize(T a) { return a / length(a); }
template <class T> inline bool all(T v) {
    if constexpr (fgemu::is_vec<T>) {
        for (int i = 0; i < fgemu::n_elems<T>; ++i)
            if (!v[i]) return false;
        return true;
    } else {
        return bool(v);
    }
}
template <class T> inline bool any(T v) {
    if constexpr (fgemu::is_vec<T>) {
        for (int i = 0; i < fgemu::n_elems<T>; ++i)
            if (v[i]) return true;
        return false;
    } else {
        return bool(v);
    }
}
template <class T> inline bool isnan(T x) { return x != x; }
template <class T> inline bool isinf(T x) { return std::isinf(float(x)); }
template <class T> inline bool isfinite(T x) { return std::isfinite(float(x)); }
template <class T> inline bool signbit(T x) { return std::signbit(float(x)); }

template <class T> inline T popcount(T x) {
    return detail::map1(x, [](auto v) { return __builtin_popcountll(uint64_t(v) & (~0ull >> (64 - 8 * sizeof(v)))); });
}
template <class T> inline T clz(T x) {
    return detail::map1(x, [](auto v) {
        const unsigned bits = 8 * sizeof(v);
        const uint64_t u = uint64_t(v) & (~0ull >> (64 - bits));
        return u ? unsigned(__builtin_clzll(u)) - (64 - bits) : bits;
    });
}
template <class T> inline T ctz(T x) {
    return detail::map1(x, [](auto v) {
        const uint64_t u = uint64_t(v) & (~0ull >> (64 - 8 * sizeof(v)));
        return u ? unsigned(__builtin_ctzll(u)) : unsigned(8 * sizeof(v));
    });
}
template <class T> inline T mulhi(T a, T b) {
    return detail::map2(a, b, [](auto x, auto y) {
        return decltype(x)((int64_t(x) * int64_t(y)) >> (8 * sizeof(x)));
    });
}

// Bit reinterpretation between same-size types (scalars and vectors).
template <class To, class From> inline To as_type(const From& f) {
    static_assert(sizeof(To) == sizeof(From), "as_type: the two types differ in size");
    To t;
    std::memcpy(&t, &f, sizeof(To));
    return t;
}

using std::numeric_limits;

namespace fast {
using metal::clamp; using metal::cos; using metal::exp; using metal::exp2; using metal::log;
using metal::log2; using metal::max; using metal::min; using metal::pow; using metal::powr;
using metal::rsqrt; using metal::sin; using metal::sqrt; using metal::tanh; using metal::tan;
using metal::fmax; using metal::fmin; using metal::normalize; using metal::length;
}  // namespace fast
namespace precise {
using metal::clamp; using metal::cos; using metal::exp; using metal::exp2; using metal::log;
using metal::log2; using metal::max; using metal::min; using metal::pow; using metal::powr;
using metal::rsqrt; using metal::sin; using metal::sqrt; using metal::tanh; using metal::tan;
using metal::fmax; using metal::fmin; using metal::normalize; using metal::length;
}  // namespace precise

}  // namespace metal

#ifndef MAXFLOAT
#define MAXFLOAT FLT_MAX
#endif
#define HALF_MAX (half(65504.0f))
#define HALF_MIN (half(6.103515625e-05f))
#define HALF_EPSILON (half(0.0009765625f))
#define M_PI_F 3.14159265358979323846f
#define M_PI_2_F 1.57079632679489661923f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.70710678118654752440f
#define M_LN2_F 0.69314718055994530942f
#define M_LOG2E_F 1.44269504088896340736f
#define M_E_F 2.71828182845904523536f
