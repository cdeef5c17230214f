// Minimal stackful coroutines for the GPU threads of a threadgroup. On x86-64 a
// hand-written switch saves the six callee-saved registers and the FP control words
// (a few ns, no syscall); elsewhere ucontext (which also saves the signal mask).
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace fgemu {

struct FiberContext {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

using FiberEntry = void (*)(void* arg);

// Prepares `ctx` so that the first switch to it calls entry(arg) on the given stack.
// entry must never return: it ends by switching away for good.
void fiber_init(FiberContext& ctx, void* stack, size_t stack_bytes, FiberEntry entry, void* arg);
// Saves the running context into `from` and resumes `to`.
void fiber_switch(FiberContext& from, FiberContext& to);

// Stacks with a guard page below each, so an overflowing kernel faults instead of
// corrupting its neighbour. Memory is committed lazily by the kernel.
void* stack_alloc(size_t bytes);
void stack_free(void* stack, size_t bytes);

}  // namespace fgemu
