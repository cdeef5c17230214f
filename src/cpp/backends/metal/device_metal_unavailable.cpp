// make_metal_device for builds without the Objective-C++ device (any OS but macOS,
// or macOS with FORGERT_METAL=OFF).
#include "backends/metal/metal_device.h"

namespace forgert::metal {

std::unique_ptr<Device> make_metal_device(std::string* why) {
    if (why)
        *why = "real Metal needs macOS (this build has no Objective-C++ Metal device; on a Mac build with "
               "-DFORGERT_METAL=ON, the default)";
    return nullptr;
}

}  // namespace forgert::metal
