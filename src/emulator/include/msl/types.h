// MSL scalar and vector types on clang: vectors are ext_vector_type (swizzles,
// .xyzw, elementwise operators), `half` is _Float16 (clang >= 15) or __fp16 with
// -fnative-half-type (clang 14), `float4(...)` constructors are macros over make_vec.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;

#if defined(__FLT16_MANT_DIG__)
typedef _Float16 half;
#else
typedef __fp16 half;  // needs -Xclang -fnative-half-type -Xclang -fallow-half-arguments-and-returns
#endif

// bfloat (MSL 3.1): storage type computed in float, round-to-nearest-even on store.
struct bfloat {
    uint16_t bits;
    bfloat() = default;
    constexpr bfloat(float f) : bits(from_float(f)) {}
    constexpr operator float() const { return __builtin_bit_cast(float, uint32_t(bits) << 16); }
    static constexpr uint16_t from_float(float f) {
        const uint32_t u = __builtin_bit_cast(uint32_t, f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
        return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
};

#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wuser-defined-literals"
constexpr half operator""h(long double v) { return half(float(v)); }
constexpr half operator""h(unsigned long long v) { return half(float(v)); }
#pragma clang diagnostic pop

#define FGEMU_VECTORS(T)                                    \
    typedef T T##2 __attribute__((ext_vector_type(2)));     \
    typedef T T##3 __attribute__((ext_vector_type(3)));     \
    typedef T T##4 __attribute__((ext_vector_type(4)));     \
    typedef T packed_##T##2 __attribute__((ext_vector_type(2), aligned(sizeof(T)))); \
    typedef T packed_##T##4 __attribute__((ext_vector_type(4), aligned(sizeof(T))));
FGEMU_VECTORS(float)
FGEMU_VECTORS(half)
FGEMU_VECTORS(int)
FGEMU_VECTORS(uint)
FGEMU_VECTORS(short)
FGEMU_VECTORS(ushort)
FGEMU_VECTORS(char)
FGEMU_VECTORS(uchar)
FGEMU_VECTORS(long)
FGEMU_VECTORS(ulong)
#undef FGEMU_VECTORS
// Not provided: boolN (clang compares vectors into intN masks; use all()/any()/select()),
// bfloatN, packed_*3, matrix types (floatNxM).

namespace fgemu {

template <class T> struct VecTraits {
    static constexpr int N = 1;
    static constexpr bool is_vec = false;
    using E = T;
};
template <class T, int N_> struct VecTraits<T __attribute__((ext_vector_type(N_)))> {
    static constexpr int N = N_;
    static constexpr bool is_vec = true;
    using E = T;
};
template <class T> using Plain = std::remove_cv_t<std::remove_reference_t<T>>;
template <class T> using elem_t = typename VecTraits<Plain<T>>::E;
template <class T> constexpr int n_elems = VecTraits<Plain<T>>::N;
template <class T> constexpr bool is_vec = VecTraits<Plain<T>>::is_vec;

template <class E, class A> inline void put_components(E* out, int& k, const A& a) {
    if constexpr (is_vec<A>) {
        for (int i = 0; i < n_elems<A>; ++i) out[k++] = E(a[i]);
    } else {
        out[k++] = E(a);
    }
}

template <class V, class A> inline V convert_vec(const A& a) { return __builtin_convertvector(a, V); }

// MSL vector construction: float4(x) splats, float4(half4) converts (a clang cast
// between same-size vectors would reinterpret the bits), float4(xy, z, w) concatenates.
template <class V, class... A> inline V make_vec(const A&... a) {
    using E = elem_t<V>;
    constexpr int N = n_elems<V>;
    if constexpr (sizeof...(A) == 1 && (is_vec<A> && ...)) {
        static_assert(((n_elems<A> == N) && ...), "vector conversion between different widths");
        return convert_vec<V>(a...);
    } else if constexpr (sizeof...(A) == 1) {
        return V(E(a...));
    } else {
        static_assert((n_elems<A> + ...) == N, "wrong number of components in a vector constructor");
        E tmp[N];
        int k = 0;
        (put_components<E>(tmp, k, a), ...);
        V v;
        for (int i = 0; i < N; ++i) v[i] = tmp[i];
        return v;
    }
}

// `(T) x` and `T(x)` where T may be a vector type: the translator routes C-style casts
// to vector types and functional casts on template parameters here.
template <class T, class... A> inline T vcast(const A&... a) {
    if constexpr (is_vec<T>) {
        return make_vec<T>(a...);
    } else {
        return T(a...);
    }
}

}  // namespace fgemu

template <class T, int N> using vec = T __attribute__((ext_vector_type(N)));

#define float2(...) ::fgemu::make_vec<::float2>(__VA_ARGS__)
#define float3(...) ::fgemu::make_vec<::float3>(__VA_ARGS__)
#define float4(...) ::fgemu::make_vec<::float4>(__VA_ARGS__)
#define half2(...) ::fgemu::make_vec<::half2>(__VA_ARGS__)
#define half3(...) ::fgemu::make_vec<::half3>(__VA_ARGS__)
#define half4(...) ::fgemu::make_vec<::half4>(__VA_ARGS__)
#define int2(...) ::fgemu::make_vec<::int2>(__VA_ARGS__)
#define int3(...) ::fgemu::make_vec<::int3>(__VA_ARGS__)
#define int4(...) ::fgemu::make_vec<::int4>(__VA_ARGS__)
#define uint2(...) ::fgemu::make_vec<::uint2>(__VA_ARGS__)
#define uint3(...) ::fgemu::make_vec<::uint3>(__VA_ARGS__)
#define uint4(...) ::fgemu::make_vec<::uint4>(__VA_ARGS__)
#define short2(...) ::fgemu::make_vec<::short2>(__VA_ARGS__)
#define short3(...) ::fgemu::make_vec<::short3>(__VA_ARGS__)
#define short4(...) ::fgemu::make_vec<::short4>(__VA_ARGS__)
#define ushort2(...) ::fgemu::make_vec<::ushort2>(__VA_ARGS__)
#define ushort3(...) ::fgemu::make_vec<::ushort3>(__VA_ARGS__)
#define ushort4(...) ::fgemu::make_vec<::ushort4>(__VA_ARGS__)
#define char2(...) ::fgemu::make_vec<::char2>(__VA_ARGS__)
#define char3(...) ::fgemu::make_vec<::char3>(__VA_ARGS__)
#define char4(...) ::fgemu::make_vec<::char4>(__VA_ARGS__)
#define uchar2(...) ::fgemu::make_vec<::uchar2>(__VA_ARGS__)
#define uchar3(...) ::fgemu::make_vec<::uchar3>(__VA_ARGS__)
#define uchar4(...) ::fgemu::make_vec<::uchar4>(__VA_ARGS__)
#define long2(...) ::fgemu::make_vec<::long2>(__VA_ARGS__)
#define long4(...) ::fgemu::make_vec<::long4>(__VA_ARGS__)
#define ulong2(...) ::fgemu::make_vec<::ulong2>(__VA_ARGS__)
#define ulong3(...) ::fgemu::make_vec<::ulong3>(__VA_ARGS__)
#define ulong4(...) ::fgemu::make_vec<::ulong4>(__VA_ARGS__)
