// CpuBackend::prepare_weight: matrices of the kernel set's panel16_types (Q4_0 / Q4_1 / Q5_0 / Q8_0;
// Q4_K / Q5_K / Q6_K, as load_layout rules) repacked at load into its 16-row panels (weight_panels.h), in parallel, into huge pages (weight_arena.h), with the
// file's pages of each repacked matrix released so that the copy does not sit beside them in
// memory.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu_backend.h"
#include "weight_panels.h"

namespace forgert::cpu {

bool repack_from_env() { return switch_from_env("FORGERT_CPU_REPACK"); }

namespace {

// Whether [begin, end) lies in one shared mapping of a file (/proc/self/maps: the mmap of a
// model file, which Python maps shared and read-only). Only there does MADV_DONTNEED merely
// drop pages that the file still holds; on anonymous or private memory it would discard data.
bool in_shared_file_mapping(uintptr_t begin, uintptr_t end) {
    FILE* f = std::fopen("/proc/self/maps", "r");
    if (!f) return false;
    char line[512];
    bool found = false;
    while (std::fgets(line, sizeof line, f)) {
        unsigned long lo = 0, hi = 0, inode = 0;
        char perms[8] = {0};
        if (std::sscanf(line, "%lx-%lx %7s %*s %*s %lu", &lo, &hi, perms, &inode) != 4) continue;
        if (begin >= lo && end <= hi) {
            found = perms[3] == 's' && inode != 0;
            break;
        }
    }
    std::fclose(f);
    return found;
}

// Drops the process's pages of a file-mapped range it no longer reads (whole pages inside it:
// a neighbouring tensor's page stays). Advice: nothing happens where it does not apply.
void release_file_pages(const void* p, size_t bytes) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t b = ((uintptr_t)p + page - 1) / page * page, e = ((uintptr_t)p + bytes) / page * page;
    if (e <= b || !in_shared_file_mapping(b, e)) return;
    madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

}  // namespace

Tensor CpuBackend::prepare_weight(const Tensor& w, std::vector<std::unique_ptr<Buffer>>& owned) {
    const DType pt = load_layout(k_, w.type);
    if (!repack_ || pt == w.type || w.rows == 0) return w;
    const auto t0 = std::chrono::steady_clock::now();
    Tensor p = w;
    p.type = pt;
    p.offset = 0;
    p.stride = (size_t)row_bytes(w.type, w.cols);
    // In huge pages, beside the other repacked matrices (weight_arena.h). Every byte is written
    // by the packing.
    auto buf = arena_.alloc(p.nbytes());
    p.buf = buf.get();
    owned.push_back(std::move(buf));
    const int64_t panels = (w.rows + kPanel16Rows - 1) / kPanel16Rows;
    pool_.parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
        pack_panels16(w.type, w.data<uint8_t>(), w.stride, w.rows, w.cols, p0, p1, p.data<uint8_t>());
    });
    release_file_pages(w.data(), w.nbytes());
    repack_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return p;
}

}  // namespace forgert::cpu
