/* The C interface of an emulated-kernel library (libforgert_msl_kernels.so and the
 * test library): what device_emulated.cpp reaches through dlopen/dlsym and what the
 * Python tests reach through ctypes. Plain C so that the library (clang) and its
 * users (g++, Python) need not agree on a C++ ABI. */
#ifndef FORGERT_EMU_API_H
#define FORGERT_EMU_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FG_EMU_ABI_VERSION 1
#define FG_EMU_MAX_SLOTS 31
#define FG_EMU_MAX_FUNCTION_CONSTANTS 64

typedef struct fg_emu_kernel fg_emu_kernel; /* opaque: a registered kernel */

typedef struct {
    uint32_t x, y, z;
} fg_emu_size3;

/* What the encoder bound for one dispatch. */
typedef struct {
    void* buffers[FG_EMU_MAX_SLOTS];             /* [[buffer(n)]]: address (offset applied) */
    size_t buffer_bytes[FG_EMU_MAX_SLOTS];       /* bytes readable from there; 0 = unknown */
    size_t threadgroup_bytes[FG_EMU_MAX_SLOTS];  /* [[threadgroup(n)]] lengths */
} fg_emu_bindings;

enum { FG_EMU_BOOL = 0, FG_EMU_INT = 1, FG_EMU_FLOAT = 2 };

/* One function-constant value of a pipeline. */
typedef struct {
    int32_t index;
    int32_t kind; /* FG_EMU_BOOL / INT / FLOAT */
    int32_t i;    /* bool and int values */
    float f;      /* float values */
} fg_emu_constant;

enum { FG_EMU_FORWARD = 0, FG_EMU_REVERSE = 1, FG_EMU_RANDOM = 2 };

typedef struct {
    int32_t schedule;                  /* order in which runnable GPU threads resume */
    int32_t workers;                   /* OS threads running threadgroups; <= 0: all cores */
    uint64_t seed;                     /* FG_EMU_RANDOM */
    int32_t poison_threadgroup_memory; /* fill threadgroup memory with 0xFF (NaN, -1) */
    int32_t traffic;                   /* count memory traffic (a traffic build only; one worker) */
} fg_emu_options;

/* What one dispatch moved (fg_emu_last_traffic). A simdgroup access is the lanes of one
 * simdgroup executing the same load or store instruction for the same time (k-th
 * execution by each lane): lanes reading the same bytes make one request; its line counts are the distinct 64/128-byte lines its bytes
 * fall in, against the fewest that could hold its distinct bytes. Device memory is what
 * the kernel's pointer parameters point to ([[buffer(n)]] `constant T&` argument structs
 * are not counted); threadgroup memory is split into 32 banks of 4 bytes, and a
 * simdgroup access takes as many wavefronts as the most distinct words in one bank. */
typedef struct {
    uint64_t read_requested;    /* device bytes loaded: the distinct bytes of each simdgroup access, summed */
    uint64_t read_needed;       /* distinct device bytes loaded by the dispatch (first touch per byte) */
    uint64_t write_requested;
    uint64_t write_needed;
    uint64_t loads, stores;     /* simdgroup accesses to device memory */
    uint64_t load_lines64, load_lines64_min, load_lines128, load_lines128_min;
    uint64_t store_lines64, store_lines64_min, store_lines128, store_lines128_min;
    uint64_t tg_accesses;       /* simdgroup accesses to threadgroup memory */
    uint64_t tg_wavefronts;     /* sum of the most distinct words in one bank */
    uint64_t tg_wavefronts_min; /* sum of ceil(distinct words / 32) */
    uint64_t lane_accesses;     /* device loads and stores of single lanes */
    uint64_t threadgroup_memory; /* bytes per threadgroup ([[threadgroup]] slots and locals) */
    uint32_t threads_per_threadgroup;
    uint32_t threadgroups;
    /* read_requested / read_needed by [[buffer(n)]] slot: which operand is re-read */
    uint64_t slot_read_requested[FG_EMU_MAX_SLOTS];
    uint64_t slot_read_needed[FG_EMU_MAX_SLOTS];
} fg_emu_traffic;

uint32_t fg_emu_abi_version(void);
int32_t fg_emu_kernel_count(void);
const char* fg_emu_kernel_name(int32_t i);
/* NULL when no kernel has that name. */
const fg_emu_kernel* fg_emu_find_kernel(const char* name);
/* Problems found while the library loaded (duplicate kernel names), or "" */
const char* fg_emu_library_error(void);

/* Runs groups.x * groups.y * groups.z threadgroups of `threads` threads each and returns
 * 0, or nonzero with a message naming the kernel in `error` (divergent barrier, early
 * exit before a barrier, read of an inactive lane, deadlock, unbound slot, ...). */
int32_t fg_emu_dispatch(const fg_emu_kernel* kernel, const fg_emu_constant* constants,
                        int32_t n_constants, const fg_emu_bindings* bindings, fg_emu_size3 groups,
                        fg_emu_size3 threads, const fg_emu_options* options, char* error,
                        size_t error_bytes);

/* 1 when the library's kernels are instrumented for traffic counting (the
 * *_traffic.so build), 0 otherwise. */
int32_t fg_emu_traffic_supported(void);
/* The traffic of the last dispatch run with options->traffic set; 0, or 1 when none. */
int32_t fg_emu_last_traffic(fg_emu_traffic* out);

#ifdef __cplusplus
}
#endif

#endif /* FORGERT_EMU_API_H */
