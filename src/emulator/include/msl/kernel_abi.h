// The ABI between translated kernels and the fiber runtime (runtime/*.cpp).
// Both sides are compiled by the same clang into one shared library, so this is
// plain C++; it must not depend on the MSL keyword macros (device, constant, ...).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../runtime/emu_api.h"

namespace fgemu {

constexpr unsigned kSimdWidth = 32;        // Apple GPU simdgroup width
constexpr unsigned kLaneBytes = 64;        // largest value one lane passes to a simd_* call
constexpr unsigned kSharedBytes = 512;     // per-rendezvous scratch: a reduction, an 8x8 float matrix
constexpr unsigned kMemoKeyBytes = 64;     // what identifies a simdgroup-matrix operation
constexpr unsigned kMatrixBytes = 256;     // the largest simdgroup matrix: 8x8 float
constexpr unsigned kMaxSlots = FG_EMU_MAX_SLOTS;
constexpr unsigned kMaxFunctionConstants = FG_EMU_MAX_FUNCTION_CONSTANTS;
constexpr size_t kThreadgroupMemoryLimit = 32768;  // bytes, every Apple GPU
constexpr unsigned kMaxThreadsPerThreadgroup = 1024;

// A call site in the .metal source: rendezvous points match on it, errors name it.
struct Site {
    const char* file;
    unsigned line;
    unsigned column;
    static constexpr Site here(const char* f = __builtin_FILE(), unsigned l = __builtin_LINE(),
                               unsigned c = __builtin_COLUMN()) {
        return Site{f, l, c};
    }
};

struct U3 {
    uint32_t x, y, z;
};

// The values of a GPU thread's [[...]] builtin parameters.
struct ThreadIds {
    U3 thread_position_in_grid;
    U3 thread_position_in_threadgroup;
    U3 threadgroup_position_in_grid;
    U3 threads_per_threadgroup;
    U3 threadgroups_per_grid;
    U3 threads_per_grid;
    uint32_t thread_index_in_threadgroup;
    uint32_t thread_index_in_simdgroup;
    uint32_t simdgroup_index_in_threadgroup;
    uint32_t simdgroups_per_threadgroup;
};

enum ParamKind : int32_t {
    kBuffer,        // [[buffer(n)]]: pointer or reference into slot n
    kThreadgroup,   // [[threadgroup(n)]]: pointer to the threadgroup's slot n
    kThreadPositionInGrid,
    kThreadPositionInThreadgroup,
    kThreadgroupPositionInGrid,
    kThreadsPerThreadgroup,
    kThreadgroupsPerGrid,
    kThreadsPerGrid,
    kThreadIndexInThreadgroup,
    kThreadIndexInSimdgroup,
    kSimdgroupIndexInThreadgroup,
    kThreadsPerSimdgroup,
    kSimdgroupsPerThreadgroup,
    kThreadExecutionWidth,
    kQuadgroupIndexInThreadgroup,
    kThreadIndexInQuadgroup,
};

// One kernel parameter as the translator saw it (kind, slot) and as the compiler
// typed it (bytes: sizeof the referenced struct for `constant T&`, 0 otherwise;
// writes: a pointer to non-const memory).
struct ParamSpec {
    int32_t kind;
    int32_t slot;
    uint32_t bytes;
    bool writes;
};

using KernelEntry = void (*)(const fg_emu_bindings& b, const ThreadIds& ids, void* const* tg_slots);

struct KernelInfo {
    const char* name;       // host name: what Device::pipeline() looks up
    KernelEntry entry;
    const ParamSpec* params;
    int32_t n_params;
    const char* source;     // the .metal file
};

// Adds a kernel to the library's table (static initialisers of translated files).
struct KernelRegistrar {
    explicit KernelRegistrar(const KernelInfo* info);
};

// One lane's view of a simd rendezvous: the values deposited by the active lanes of
// its simdgroup, and a scratch slot shared by them so a reduction is computed once.
struct SimdExchange {
    const unsigned char* values;  // [kSimdWidth][kLaneBytes]
    unsigned char* shared;        // kSharedBytes, per rendezvous
    bool* shared_ready;
    uint32_t mask;                // active lanes
    uint32_t lane;                // the calling lane
};

// simdgroup_matrix values live in the runtime, immutable and reference-counted, shared by
// the lanes that hold them; a matrix variable holds a handle (0: uninitialised). Handles
// are never reused within a runner's life, so equal handles mean the same value.
// Each load, store and multiply runs once per simdgroup: the first lane to reach its
// n-th matrix operation since its last rendezvous records the operation's key and result
// handle in the memo; the other lanes compare keys and take the same handle (or report
// non-uniform arguments). `recorded` is false for that first lane, which fills both.
struct MatrixMemo {
    bool recorded;
    unsigned char* key;  // kMemoKeyBytes
    uint64_t* value;     // the result's handle
};

// --- called from kernel code, implemented by the runtime ---
void threadgroup_barrier_wait(Site s);
SimdExchange simd_exchange(const void* value, unsigned bytes, Site s);
[[noreturn]] void kernel_fault(const char* what, Site s);
// Threadgroup-shared storage for a `threadgroup T x;` declared in a kernel body.
void* threadgroup_local(const void* key, size_t bytes, size_t align, Site s);
// Atomics: `wrote` marks progress, plain loads count towards spin detection.
void atomic_hook(bool wrote, Site s);
MatrixMemo matrix_memo(Site s);
uint64_t matrix_alloc(unsigned char** data);  // a new value, one reference
unsigned char* matrix_data(uint64_t handle, Site s);
void matrix_retain(uint64_t handle);
void matrix_release(uint64_t handle);
// The current pipeline's value of function constant `index`; faults when unset.
const fg_emu_constant* function_constant(int index, const char* name, bool required, Site s);

}  // namespace fgemu
