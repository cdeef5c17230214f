// The emulated-device entry points for builds without the MSL emulator (no clang,
// FORGERT_METAL_EMULATOR=OFF, or macOS with real Metal): each says there is none.
#include "backends/metal/device_emulated.h"

namespace forgert::metal {

namespace {
const char* kNoEmulator =
    "this build has no MSL emulator: it needs clang at build time (apt-get install clang), then reinstall "
    "forgert (with FORGERT_METAL_EMULATOR=ON, the default)";
}

std::unique_ptr<Device> make_emulated_device(std::string* why) {
    if (why) *why = kNoEmulator;
    return nullptr;
}

std::unique_ptr<Device> make_emulated_device_from(const std::string&, std::string* why) {
    return make_emulated_device(why);
}

void set_emulator_schedule(const std::string&, uint64_t) { throw InputError(kNoEmulator); }
std::string emulator_schedule() { return "none"; }
void set_emulator_threads(int) {}
void set_emulator_max_buffer_length(size_t) {}

}  // namespace forgert::metal
