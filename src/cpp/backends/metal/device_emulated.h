// The emulated Metal device (device_emulated.cpp): Device over the MSL emulator.
// Kernels come from libforgert_msl_kernels.so (src/shaders/*.metal translated to C++
// and built with clang, next to forgert/_core), loaded on first use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../../../emulator/runtime/emu_api.h"

#include "backends/metal/metal_device.h"

namespace forgert::metal {

// Like make_emulated_device, from a given kernel library (tests use their own kernels).
std::unique_ptr<Device> make_emulated_device_from(const std::string& library_path, std::string* why);

// The order in which the emulator resumes GPU threads, for every emulated device of
// the process: "forward", "reverse" or "random" (seeded). Reverse and random also run
// the dispatches between two memory barriers in reverse / random order, as a concurrent
// Metal encoder may, so a missing barrier shows up as a wrong result. Initial value from
// FORGERT_EMU_SCHEDULE=forward|reverse|random[:seed]. Throws InputError for other names.
void set_emulator_schedule(const std::string& schedule, uint64_t seed = 0);
std::string emulator_schedule();  // "forward", "reverse" or "random:<seed>"

// OS threads running threadgroups (0 = all cores); initial value from FORGERT_EMU_THREADS.
void set_emulator_threads(int n);

// The maxBufferLength emulated devices split wrapped host memory (model weights) by, as a
// Mac does past its device's limit (0 = no limit, the default); initial value from
// FORGERT_EMU_MAX_BUFFER_LENGTH. Applies to buffers wrapped afterwards. Tests set it tiny
// so that a small model's weights span many overlapping views.
void set_emulator_max_buffer_length(size_t bytes);

// Traffic counting (src/emulator/runtime/traffic.h): emulated devices created while it is on
// run the traffic build of the kernel library (libforgert_msl_kernels_traffic.so, one worker,
// about 17x the CPU time) and log every dispatch's traffic for their whole life; devices
// created while it is off run as before. Initial value from FORGERT_EMU_TRAFFIC=1.
struct DispatchTraffic {
    std::string kernel;     // the pipeline's name
    fg_emu_traffic totals;  // emu_api.h
};
void set_emulator_traffic(bool on);
bool emulator_traffic();
// The dispatches counted since the last call, in the order they ran.
std::vector<DispatchTraffic> take_emulator_traffic();

}  // namespace forgert::metal
