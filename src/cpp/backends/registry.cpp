// make_backend: the one place that knows which backends this build has.
#include "core/backend.h"
#include "backends/cpu/cpu_backend.h"
#if FORGERT_HAVE_METAL_BACKEND
#include "backends/metal/metal_backend.h"
#endif

namespace forgert {

std::unique_ptr<Backend> make_backend(const std::string& name, int n_threads) {
    if (name == "cpu") return std::make_unique<cpu::CpuBackend>(n_threads);
    if (name == "metal") {
#if FORGERT_HAVE_METAL_BACKEND
        return metal::make_metal_backend(n_threads);
#else
        throw InputError("this build of forgert has no Metal backend: on macOS it is built by default; on Linux "
                         "the emulated Metal device needs clang at build time (apt-get install clang, then reinstall)");
#endif
    }
    throw InputError("unknown backend '" + name + "' (available: cpu, metal)");
}

}  // namespace forgert
