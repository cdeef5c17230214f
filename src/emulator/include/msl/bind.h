// Binding of encoder state and builtins to kernel parameters. The translator records
// each parameter's attribute ([[buffer(n)]], [[threadgroup(n)]], [[thread_index_in_...]]);
// the C++ parameter types come from the kernel's function type, so templates and
// typedefs need no parsing.
#pragma once

#include <type_traits>
#include <utility>

#include "kernel_abi.h"
#include "types.h"

namespace fgemu {

inline U3 builtin_value(int kind, const ThreadIds& t) {
    switch (kind) {
        case kThreadPositionInGrid: return t.thread_position_in_grid;
        case kThreadPositionInThreadgroup: return t.thread_position_in_threadgroup;
        case kThreadgroupPositionInGrid: return t.threadgroup_position_in_grid;
        case kThreadsPerThreadgroup: return t.threads_per_threadgroup;
        case kThreadgroupsPerGrid: return t.threadgroups_per_grid;
        case kThreadsPerGrid: return t.threads_per_grid;
        case kThreadIndexInThreadgroup: return {t.thread_index_in_threadgroup, 0, 0};
        case kThreadIndexInSimdgroup: return {t.thread_index_in_simdgroup, 0, 0};
        case kSimdgroupIndexInThreadgroup: return {t.simdgroup_index_in_threadgroup, 0, 0};
        case kThreadsPerSimdgroup: return {kSimdWidth, 0, 0};
        case kSimdgroupsPerThreadgroup: return {t.simdgroups_per_threadgroup, 0, 0};
        case kThreadExecutionWidth: return {kSimdWidth, 0, 0};
        case kQuadgroupIndexInThreadgroup: return {t.thread_index_in_threadgroup / 4, 0, 0};
        case kThreadIndexInQuadgroup: return {t.thread_index_in_threadgroup % 4, 0, 0};
    }
    return {0, 0, 0};
}

template <class P>
inline P bind_param(const ParamSpec& s, const fg_emu_bindings& b, const ThreadIds& t, void* const* tg) {
    if constexpr (std::is_pointer_v<P>) {
        return static_cast<P>(s.kind == kThreadgroup ? tg[s.slot] : b.buffers[s.slot]);
    } else if constexpr (std::is_reference_v<P>) {
        return *static_cast<std::remove_reference_t<P>*>(b.buffers[s.slot]);
    } else {
        const U3 v = builtin_value(s.kind, t);
        if constexpr (is_vec<P>) {
            const uint32_t c[3] = {v.x, v.y, v.z};
            P r;
            for (int i = 0; i < n_elems<P>; ++i) r[i] = elem_t<P>(c[i]);
            return r;
        } else {
            return P(v.x);
        }
    }
}

template <class... P, size_t... I>
inline void invoke_with(void (*fn)(P...), const ParamSpec* s, const fg_emu_bindings& b, const ThreadIds& t,
                        void* const* tg, std::index_sequence<I...>) {
    fn(bind_param<P>(s[I], b, t, tg)...);
}
template <class... P>
inline void invoke(void (*fn)(P...), const ParamSpec* s, const fg_emu_bindings& b, const ThreadIds& t,
                   void* const* tg) {
    invoke_with(fn, s, b, t, tg, std::index_sequence_for<P...>{});
}

template <class P> constexpr uint32_t param_bytes() {
    if constexpr (std::is_reference_v<P>) return sizeof(std::remove_reference_t<P>);
    return 0;
}
template <class P> constexpr bool param_writes() {
    if constexpr (std::is_pointer_v<P>) return !std::is_const_v<std::remove_pointer_t<P>>;
    return false;
}
// Completes the translator's table with what the compiler knows of each parameter.
template <int N, class... P> inline const ParamSpec* typed_params(void (*)(P...), ParamSpec* s) {
    static_assert(sizeof...(P) == N, "msl2cpp: parameter count differs from the kernel's signature");
    int i = 0;
    ((s[i].bytes = param_bytes<P>(), s[i].writes = param_writes<P>(), ++i), ...);
    return s;
}

}  // namespace fgemu
