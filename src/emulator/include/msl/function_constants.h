// Function constants: the translator turns `constant T name [[function_constant(i)]];`
// into a FunctionConstant<T> and every use of `name` into `.get()`, which reads the
// value the current pipeline was created with (one library serves every specialisation).
#pragma once

#include <type_traits>

#include "kernel_abi.h"

namespace fgemu {

template <class T> struct FunctionConstant {
    int index;
    const char* name;
    T get(Site s = Site::here()) const {
        const fg_emu_constant* c = function_constant(index, name, true, s);
        if constexpr (std::is_same_v<T, bool>) {
            return c->kind == FG_EMU_FLOAT ? c->f != 0.0f : c->i != 0;
        } else {
            return c->kind == FG_EMU_FLOAT ? T(c->f) : T(c->i);
        }
    }
    bool defined(Site s = Site::here()) const { return function_constant(index, name, false, s) != nullptr; }
};

}  // namespace fgemu
