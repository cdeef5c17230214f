#include "cpu_kernels.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#if (FORGERT_HAVE_AVXVNNI || FORGERT_HAVE_AMX) && defined(__x86_64__) && !defined(_MSC_VER)
#include <cpuid.h>
#endif
#if FORGERT_HAVE_AMX && defined(__x86_64__) && defined(__linux__)
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#endif

namespace forgert::cpu {

#if !FORGERT_HAVE_AVX2
const KernelSet* kernels_avx2() { return nullptr; }
#endif
#if !FORGERT_HAVE_AVX512
const KernelSet* kernels_avx512() { return nullptr; }
#endif
#if !FORGERT_HAVE_NEON
const KernelSet* kernels_neon() { return nullptr; }
#endif
#if !FORGERT_HAVE_I8MM
const KernelSet* kernels_neon_i8mm() { return nullptr; }
#endif
#if !FORGERT_HAVE_AVXVNNI
const KernelSet* kernels_avxvnni() { return nullptr; }
#endif
#if !FORGERT_HAVE_AMX
const KernelSet* kernels_amx() { return nullptr; }
const KernelSet* kernels_amx_emulated() { return nullptr; }
void amx_probe() {}
#endif

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(_M_X64)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

}  // namespace

bool cpu_has_avx_vnni() {
#if FORGERT_HAVE_AVXVNNI && defined(__x86_64__) && !defined(_MSC_VER)
    unsigned a, b, c, d;  // CPUID.(7, 1):EAX bit 4 (compilers disagree on a __builtin_cpu_supports name)
    return cpu_has_avx2() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 4) & 1);
#else
    return false;
#endif
}

bool cpu_has_amx_int8() {
#if FORGERT_HAVE_AMX && defined(__x86_64__) && defined(__linux__)
    static const bool ok = [] {
        if (!cpu_has_avx512_vnni()) return false;
        unsigned a, b, c, d;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1)) return false;  // AMX-TILE, -INT8
        if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return false;  // OSXSAVE: xgetbv works
        uint32_t xcr0, xcr0_hi;
        __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(xcr0_hi) : "c"(0));
        if ((xcr0 & 0x60000) != 0x60000) return false;  // the OS manages XTILECFG and XTILEDATA
        // Linux hands out the 8 KB tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
        if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return false;
        // Some VMs pass all of the above and still fault on the first tile instruction: run one
        // in a child (it only calls amx_probe and exits, so forking a threaded process is safe).
        const pid_t pid = fork();
        if (pid < 0) return false;
        if (pid == 0) {
            const struct rlimit no_core = {0, 0};  // a faulting probe leaves no core file behind
            setrlimit(RLIMIT_CORE, &no_core);
            amx_probe();
            _exit(0);
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0)
            if (errno != EINTR) return false;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }();
    return ok;
#else
    return false;
#endif
}

namespace {

bool cpu_has_neon_dotprod() {
#if defined(__aarch64__) && defined(__APPLE__)
    return true;  // every Apple arm64 chip has the dot-product extension
#elif defined(__aarch64__) && defined(__linux__) && defined(HWCAP_ASIMDDP)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return false;
#endif
}

bool cpu_has_neon_i8mm() {
#if defined(__aarch64__) && defined(__APPLE__)
    int v = 0;  // M2 and later
    size_t len = sizeof(v);
    return cpu_has_neon_dotprod() && sysctlbyname("hw.optional.arm.FEAT_I8MM", &v, &len, nullptr, 0) == 0 && v;
#elif defined(__aarch64__) && defined(__linux__)
    constexpr unsigned long kHwcap2I8mm = 1UL << 13;  // HWCAP2_I8MM (older headers lack the name)
    return cpu_has_neon_dotprod() && (getauxval(AT_HWCAP2) & kHwcap2I8mm) != 0;
#else
    return false;
#endif
}

const KernelSet* pick() {
    const char* want = std::getenv("FORGERT_CPU_ISA");
    if (want && *want) {
        const KernelSet* s = nullptr;
        if (!std::strcmp(want, "generic")) s = kernels_generic();
        else if (!std::strcmp(want, "avx2") && cpu_has_avx2()) s = kernels_avx2();
        else if (!std::strcmp(want, "avx2vnni") && cpu_has_avx_vnni()) s = kernels_avxvnni();
        else if (!std::strcmp(want, "avx512") && cpu_has_avx512_vnni()) s = kernels_avx512();
        else if (!std::strcmp(want, "amx") && cpu_has_amx_int8()) s = kernels_amx();
        else if (!std::strcmp(want, "neon") && cpu_has_neon_dotprod()) s = kernels_neon();
        else if (!std::strcmp(want, "i8mm") && cpu_has_neon_i8mm()) s = kernels_neon_i8mm();
        if (!s) throw InputError(std::string("FORGERT_CPU_ISA=") + want +
                                 " is not available on this CPU or build (choose generic, avx2, avx2vnni, avx512, amx, neon, i8mm)");
        return s;
    }
    // Each CPU check before its getter: see runnable_kernel_sets.
    if (cpu_has_amx_int8() && kernels_amx()) return kernels_amx();
    if (cpu_has_avx512_vnni() && kernels_avx512()) return kernels_avx512();
    if (cpu_has_avx_vnni() && kernels_avxvnni()) return kernels_avxvnni();
    if (cpu_has_avx2() && kernels_avx2()) return kernels_avx2();
    if (cpu_has_neon_i8mm() && kernels_neon_i8mm()) return kernels_neon_i8mm();
    if (cpu_has_neon_dotprod() && kernels_neon()) return kernels_neon();
    return kernels_generic();
}

}  // namespace

namespace {
// The AVX-512 and AMX sets (their names begin so), against the 256-bit ones and the rest.
bool is_512_bit(const KernelSet& k) { return std::strncmp(k.name, "avx512", 6) == 0; }

// An AMD CPU's family (CPUID 1: base + extended; 25 Zen 3 / Zen 4, 26 Zen 5), or 0 on any other
// CPU: the defaults measured per AMD generation (panel_prefetch, kquant_panel_tokens) key on it.
unsigned amd_family() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (!__builtin_cpu_is("amd")) return 0;
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) ? ((a >> 8) & 0xf) + ((a >> 20) & 0xff) : 0;
#else
    return 0;
#endif
}
}  // namespace

PanelPrefetch panel_prefetch(int64_t n_tok) {
    // The override, or n_tok's default: the CPU's far form for a few tokens' batch, and for one
    // token but on Zen 4.
    static const int overridden = [] {  // a PanelPrefetch, or -1: none
        const char* v = std::getenv("FORGERT_CPU_PANEL_PREFETCH");
        const std::string s = v ? v : "";
        for (PanelPrefetch p : {PanelPrefetch::Off, PanelPrefetch::Near, PanelPrefetch::Far, PanelPrefetch::FarNta})
            if (s == panel_prefetch_name(p)) return (int)p;
        if (!s.empty())
            throw InputError("FORGERT_CPU_PANEL_PREFETCH must be 'far', 'far-nta', 'near' or 'off', got '" + s + "'");
        return -1;
    }();
    struct Defaults { PanelPrefetch one_token, batch; };
    static const Defaults chosen = []() -> Defaults {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        const unsigned family = amd_family();
        if (family == 0) return {PanelPrefetch::Far, PanelPrefetch::Far};  // Intel and the rest
        // Zen 5 and later (family 26+): far, non-temporal. On a Zen 5 VM, far (into L2) made
        // SmolLM2 decode 1.17-1.47x faster than none, and non-temporal faster again: 1B Q4_K_M
        // 1.18-1.19x, 1B Q4_0 1.03-1.09x, SmolLM2 Q8_0 and K-quants 1.0-1.11x; SmolLM2 Q4_1 (at
        // 95% of the read probe with far) 0.90-0.96x. The lent Xeon read 0.41-0.76x with it.
        if (family >= 26) return {PanelPrefetch::FarNta, PanelPrefetch::FarNta};
        // Zen 4 (family 25 with AVX-512): none for one token, the one CPU where far cost decode
        // time. Zen 3 (family 25, no AVX-512): far, SmolLM2 Q4_0 decode 255-290 tok/s against
        // 218-234 off, Q8_0 146-167 against 139-156, 2 threads.
        if (family == 25 && is_512_bit(select_kernels())) return {PanelPrefetch::Off, PanelPrefetch::Far};
        return {PanelPrefetch::Far, PanelPrefetch::Far};
#else
        return {PanelPrefetch::Off, PanelPrefetch::Far};
#endif
    }();
    if (overridden >= 0) return (PanelPrefetch)overridden;
    return n_tok >= 2 ? chosen.batch : chosen.one_token;
}

bool switch_from_env(const char* name) {
    const char* v = std::getenv(name);
    const std::string s = v ? v : "";
    if (s.empty() || s == "1") return true;
    if (s == "0") return false;
    throw InputError(std::string(name) + " must be 1 or 0, got '" + s + "'");
}

bool kquant_panels_256() {
    static const bool chosen = switch_from_env("FORGERT_CPU_KQUANT_PANELS");
    return chosen;
}

DType load_layout(const KernelSet& k, DType t) {
    const DType pt = packed_type(k, t);
    const bool kquant = t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K;
    if (pt != t && kquant && !is_512_bit(k) && !kquant_panels_256()) return t;
    return pt;
}

// FORGERT_CPU_PANEL_TOKENS as 8 or 4, or 0 where unset; another value throws, naming it.
static int panel_tokens_from_env() {
    static const int chosen = [] {
        const char* v = std::getenv("FORGERT_CPU_PANEL_TOKENS");
        const std::string s = v ? v : "";
        if (s.empty()) return 0;
        if (s == "8") return 8;
        if (s == "4") return 4;
        throw InputError("FORGERT_CPU_PANEL_TOKENS must be 8 or 4, got '" + s + "'");
    }();
    return chosen;
}

int panel_tokens() {
    const int e = panel_tokens_from_env();
    return e ? e : 8;
}

int kquant_panel_tokens() {
    static const int chosen = [] {
        if (const int e = panel_tokens_from_env()) return e;
        // Zen 5 and later (family 26+): tiles of 4. On a Zen 5 VM the K-quant tile of 8 (its 32
        // float accumulators and 16 int32 dots past the registers) ran 8 tokens at 0.75-0.9x two
        // tiles of 4 (cpu_ops_bench, 1B shapes: Q4_Kx16 232-247 against 289-300 GFLOP/s, Q6_Kx16
        // 166-173 against 215-228); eight 1B Q4_K_M sequences decoded 1.25x faster with 4
        // (bench/results/kquant_batch_decode_vm2core.md, top). Elsewhere 8: on the lent Xeon the
        // tile of 8 ran the 1B Q4_K_M 8-sequence step 1.03-1.14x faster (docs/design.md).
        return amd_family() >= 26 ? 4 : 8;
    }();
    return chosen;
}

const char* panel_prefetch_name(PanelPrefetch p) {
    switch (p) {
        case PanelPrefetch::Far: return "far";
        case PanelPrefetch::FarNta: return "far-nta";
        case PanelPrefetch::Near: return "near";
        default: return "off";
    }
}

int prefill_int8_parts(int parts) {
    const char* v = std::getenv("FORGERT_CPU_PREFILL");
    if (!v || !*v) return parts;
    if (!std::strcmp(v, "int8x2")) return 2;
    if (!std::strcmp(v, "int8")) return 1;
    if (!std::strcmp(v, "f32")) return 0;
    throw InputError(std::string("FORGERT_CPU_PREFILL=") + v + " is not a prefill mode (choose int8x2, int8, f32)");
}

std::vector<const KernelSet*> runnable_kernel_sets() {
    std::vector<const KernelSet*> out = {kernels_generic()};
    const std::pair<bool, const KernelSet* (*)()> sets[] = {
        {cpu_has_avx2(), kernels_avx2},           {cpu_has_avx_vnni(), kernels_avxvnni},
        {cpu_has_avx512_vnni(), kernels_avx512},  {cpu_has_amx_int8(), kernels_amx},
        {cpu_has_neon_dotprod(), kernels_neon},   {cpu_has_neon_i8mm(), kernels_neon_i8mm}};
    for (const auto& [runs, get] : sets)
        if (runs && get()) out.push_back(get());
    return out;
}

const KernelSet& select_kernels() {
    static const KernelSet* chosen = pick();
    return *chosen;
}

}  // namespace forgert::cpu
