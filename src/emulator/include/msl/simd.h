// threadgroup_barrier, simdgroup_barrier and the simd_* / quad_* collectives.
// Every collective is a rendezvous in the fiber runtime: the calling lane deposits its
// value and sleeps until the lanes of its simdgroup that can reach this call site have
// arrived (the active mask). Reductions are computed once per rendezvous, in lane order,
// so every lane sees the same bits whatever the schedule.
#pragma once

#include "kernel_abi.h"
#include "math.h"

namespace metal {

enum class mem_flags : int {
    mem_none = 0,
    mem_device = 1,
    mem_threadgroup = 2,
    mem_texture = 4,
    mem_threadgroup_imageblock = 8,
    mem_object_data = 16,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

inline void threadgroup_barrier(mem_flags, fgemu::Site s = fgemu::Site::here()) {
    fgemu::threadgroup_barrier_wait(s);
}
inline void simdgroup_barrier(mem_flags, fgemu::Site s = fgemu::Site::here()) {
    (void)fgemu::simd_exchange(nullptr, 0, s);
}

namespace detail {
template <class T> struct Lanes {
    fgemu::SimdExchange ex;
    fgemu::Site site;
    bool active(unsigned i) const { return i < fgemu::kSimdWidth && ((ex.mask >> i) & 1u); }
    T at(unsigned i) const {
        T v;
        std::memcpy(&v, ex.values + size_t(i) * fgemu::kLaneBytes, sizeof(T));
        return v;
    }
    unsigned first() const { return unsigned(__builtin_ctz(ex.mask)); }
    // A value of another lane, which must be active (reading an inactive lane's
    // register is undefined on the GPU).
    T read(unsigned i, const char* what) const {
        if (!active(i)) fgemu::kernel_fault(what, site);
        return at(i);
    }
    // op folded over the active lanes in lane order, computed by the first lane to ask.
    template <class Op> T reduce(Op op) const {
        if (*ex.shared_ready) {
            T v;
            std::memcpy(&v, ex.shared, sizeof(T));
            return v;
        }
        T acc = at(first());
        for (unsigned i = first() + 1; i < fgemu::kSimdWidth; ++i)
            if (active(i)) acc = op(acc, at(i));
        std::memcpy(ex.shared, &acc, sizeof(T));
        *ex.shared_ready = true;
        return acc;
    }
};
template <class T> inline Lanes<T> exchange(const T& x, fgemu::Site s) {
    static_assert(sizeof(T) <= fgemu::kLaneBytes, "simd_* value larger than 64 bytes");
    return Lanes<T>{fgemu::simd_exchange(&x, sizeof(T), s), s};
}
}  // namespace detail

using fgemu::Site;
#define FGEMU_SITE fgemu::Site site = fgemu::Site::here()

template <class T> inline T simd_sum(T x, FGEMU_SITE) {
    return detail::exchange(x, site).reduce([](T a, T b) { return T(a + b); });
}
template <class T> inline T simd_product(T x, FGEMU_SITE) {
    return detail::exchange(x, site).reduce([](T a, T b) { return T(a * b); });
}
template <class T> inline T simd_max(T x, FGEMU_SITE) {
    return detail::exchange(x, site).reduce([](T a, T b) { return max(a, b); });
}
template <class T> inline T simd_min(T x, FGEMU_SITE) {
    return detail::exchange(x, site).reduce([](T a, T b) { return min(a, b); });
}
template <class T> inline T simd_and(T x, FGEMU_SITE) {
    return detail::exchange(x, site).reduce([](T a, T b) { return T(a & b); });
}
template <class T> inline T simd_or(T x, FGEMU_SITE) {
    return detail::exchange(x, site).reduce([](T a, T b) { return T(a | b); });
}
template <class T> inline T simd_xor(T x, FGEMU_SITE) {
    return detail::exchange(x, site).reduce([](T a, T b) { return T(a ^ b); });
}
inline bool simd_all(bool b, FGEMU_SITE) {
    return detail::exchange(b, site).reduce([](bool a, bool c) { return a && c; });
}
inline bool simd_any(bool b, FGEMU_SITE) {
    return detail::exchange(b, site).reduce([](bool a, bool c) { return a || c; });
}

template <class T> inline T simd_prefix_exclusive_sum(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    T acc = T(0);
    for (unsigned i = 0; i < l.ex.lane; ++i)
        if (l.active(i)) acc += l.at(i);
    return acc;
}
template <class T> inline T simd_prefix_inclusive_sum(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    T acc = T(0);
    for (unsigned i = 0; i <= l.ex.lane; ++i)
        if (l.active(i)) acc += l.at(i);
    return acc;
}
template <class T> inline T simd_prefix_exclusive_product(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    T acc = T(1);
    for (unsigned i = 0; i < l.ex.lane; ++i)
        if (l.active(i)) acc *= l.at(i);
    return acc;
}
template <class T> inline T simd_prefix_inclusive_product(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    T acc = T(1);
    for (unsigned i = 0; i <= l.ex.lane; ++i)
        if (l.active(i)) acc *= l.at(i);
    return acc;
}

template <class T> inline T simd_shuffle(T x, ushort src, FGEMU_SITE) {
    return detail::exchange(x, site).read(src, "simd_shuffle reads an inactive or nonexistent lane");
}
template <class T> inline T simd_broadcast(T x, ushort src, FGEMU_SITE) {
    return detail::exchange(x, site).read(src, "simd_broadcast reads an inactive or nonexistent lane");
}
template <class T> inline T simd_broadcast_first(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    return l.at(l.first());
}
template <class T> inline T simd_shuffle_xor(T x, ushort mask, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    return l.read(l.ex.lane ^ mask, "simd_shuffle_xor reads an inactive or nonexistent lane");
}
// Lanes whose source falls off the simdgroup keep their own value (MSL semantics).
template <class T> inline T simd_shuffle_down(T x, ushort delta, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    const unsigned src = l.ex.lane + delta;
    if (src >= fgemu::kSimdWidth) return x;
    return l.read(src, "simd_shuffle_down reads an inactive or nonexistent lane");
}
template <class T> inline T simd_shuffle_up(T x, ushort delta, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    if (l.ex.lane < delta) return x;
    return l.read(l.ex.lane - delta, "simd_shuffle_up reads an inactive or nonexistent lane");
}
template <class T> inline T simd_shuffle_rotate_down(T x, ushort delta, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    return l.read((l.ex.lane + delta) % fgemu::kSimdWidth, "simd_shuffle_rotate_down reads an inactive lane");
}
template <class T> inline T simd_shuffle_rotate_up(T x, ushort delta, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    return l.read((l.ex.lane + fgemu::kSimdWidth - delta % fgemu::kSimdWidth) % fgemu::kSimdWidth,
                  "simd_shuffle_rotate_up reads an inactive lane");
}

inline bool simd_is_first(FGEMU_SITE) {
    const auto l = detail::exchange(true, site);
    return l.ex.lane == l.first();
}

struct simd_vote {
    using vote_t = uint64_t;
    vote_t v;
    explicit constexpr operator vote_t() const { return v; }
    bool all() const { return v == 0xffffffffull; }
    bool any() const { return v != 0; }
};
inline simd_vote simd_ballot(bool b, FGEMU_SITE) {
    const auto l = detail::exchange(b, site);
    uint64_t r = 0;
    for (unsigned i = 0; i < fgemu::kSimdWidth; ++i)
        if (l.active(i) && l.at(i)) r |= 1ull << i;
    return simd_vote{r};
}
inline simd_vote simd_active_threads_mask(FGEMU_SITE) {
    return simd_vote{detail::exchange(true, site).ex.mask};
}

// quad_*: groups of four consecutive lanes.
template <class T> inline T quad_sum(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    const unsigned q = l.ex.lane & ~3u;
    T acc = T(0);
    for (unsigned i = q; i < q + 4; ++i)
        if (l.active(i)) acc += l.at(i);
    return acc;
}
template <class T> inline T quad_max(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    const unsigned q = l.ex.lane & ~3u;
    T acc = x;
    for (unsigned i = q; i < q + 4; ++i)
        if (l.active(i)) acc = max(acc, l.at(i));
    return acc;
}
template <class T> inline T quad_min(T x, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    const unsigned q = l.ex.lane & ~3u;
    T acc = x;
    for (unsigned i = q; i < q + 4; ++i)
        if (l.active(i)) acc = min(acc, l.at(i));
    return acc;
}
template <class T> inline T quad_shuffle(T x, ushort src, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    return l.read((l.ex.lane & ~3u) + (src & 3u), "quad_shuffle reads an inactive lane");
}
template <class T> inline T quad_broadcast(T x, ushort src, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    return l.read((l.ex.lane & ~3u) + (src & 3u), "quad_broadcast reads an inactive lane");
}
template <class T> inline T quad_shuffle_xor(T x, ushort mask, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    return l.read(l.ex.lane ^ (mask & 3u), "quad_shuffle_xor reads an inactive lane");
}
template <class T> inline T quad_shuffle_down(T x, ushort delta, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    const unsigned src = (l.ex.lane & 3u) + delta;
    if (src >= 4) return x;
    return l.read((l.ex.lane & ~3u) + src, "quad_shuffle_down reads an inactive lane");
}
template <class T> inline T quad_shuffle_up(T x, ushort delta, FGEMU_SITE) {
    const auto l = detail::exchange(x, site);
    if ((l.ex.lane & 3u) < delta) return x;
    return l.read(l.ex.lane - delta, "quad_shuffle_up reads an inactive lane");
}

#undef FGEMU_SITE

}  // namespace metal
