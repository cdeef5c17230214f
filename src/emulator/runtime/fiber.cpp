#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace fgemu {

#if defined(__x86_64__)

// fgemu_switch(void** save_sp, void* load_sp): push the callee-saved registers, swap
// stacks, pop them back and return into the other fiber. The MXCSR and x87 control words
// are not switched: kernel code never changes rounding or exception modes.
// fgemu_trampoline: the first return of a new fiber lands here with r12 = arg, r13 = entry.
asm(R"(
    .text
    .p2align 4
    .globl fgemu_switch
    .hidden fgemu_switch
    .type fgemu_switch,@function
fgemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fgemu_switch,.-fgemu_switch

    .p2align 4
    .globl fgemu_trampoline
    .hidden fgemu_trampoline
    .type fgemu_trampoline,@function
fgemu_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size fgemu_trampoline,.-fgemu_trampoline
)");

extern "C" void fgemu_switch(void** save_sp, void* load_sp);
extern "C" void fgemu_trampoline();

void fiber_init(FiberContext& ctx, void* stack, size_t stack_bytes, FiberEntry entry, void* arg) {
    // Frame popped by fgemu_switch: [r15 r14 r13 r12 rbx rbp][return address]. After the
    // final `ret`, rsp = frame + 56 must be 16-byte aligned for the call in the trampoline.
    const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + stack_bytes) & ~uintptr_t(15);
    uint64_t* frame = reinterpret_cast<uint64_t*>(top - 64 - 8);
    frame[0] = 0;                                        // r15
    frame[1] = 0;                                        // r14
    frame[2] = reinterpret_cast<uint64_t>(entry);        // r13
    frame[3] = reinterpret_cast<uint64_t>(arg);          // r12
    frame[4] = 0;                                        // rbx
    frame[5] = 0;                                        // rbp
    frame[6] = reinterpret_cast<uint64_t>(&fgemu_trampoline);
    ctx.sp = frame;
}

void fiber_switch(FiberContext& from, FiberContext& to) { fgemu_switch(&from.sp, to.sp); }

#else

namespace {
struct Start {
    FiberEntry entry;
    void* arg;
};
void ucontext_start(unsigned lo, unsigned hi) {
    const uintptr_t p = uintptr_t(lo) | (uintptr_t(hi) << 32);
    const Start* s = reinterpret_cast<const Start*>(p);
    s->entry(s->arg);
    std::abort();
}
}  // namespace

void fiber_init(FiberContext& ctx, void* stack, size_t stack_bytes, FiberEntry entry, void* arg) {
    // The start record lives at the top of the fiber's own stack.
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + stack_bytes - sizeof(Start)) & ~uintptr_t(15);
    Start* s = new (reinterpret_cast<void*>(top)) Start{entry, arg};
    getcontext(&ctx.uc);
    ctx.uc.uc_stack.ss_sp = stack;
    ctx.uc.uc_stack.ss_size = top - reinterpret_cast<uintptr_t>(stack);
    ctx.uc.uc_link = nullptr;
    const uintptr_t p = reinterpret_cast<uintptr_t>(s);
    makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&ucontext_start), 2, unsigned(p), unsigned(p >> 32));
}

void fiber_switch(FiberContext& from, FiberContext& to) { swapcontext(&from.uc, &to.uc); }

#endif

void* stack_alloc(size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    mprotect(p, page, PROT_NONE);
    return static_cast<char*>(p) + page;
}

void stack_free(void* stack, size_t bytes) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    munmap(static_cast<char*>(stack) - page, bytes + page);
}

}  // namespace fgemu
