# The Metal backend's build, in two separately owned parts:
#   metal_backend.cmake  - ops layer (all platforms) + the real Metal device and the
#                          embedded .metallib on macOS (metal_macos.cmake)
#   metal_emulator.cmake - the MSL emulator and the emulated device (device_emulated.cpp)
include(${CMAKE_CURRENT_LIST_DIR}/metal_backend.cmake)
# With real Metal the emulator would never be chosen (make_metal_backend tries the GPU
# first), so a Mac build skips it rather than depend on fibers/clang features there.
if(FORGERT_METAL_EMULATOR AND NOT (APPLE AND FORGERT_METAL)
   AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/metal_emulator.cmake)
  include(${CMAKE_CURRENT_LIST_DIR}/metal_emulator.cmake)
else()
  # make_emulated_device must still exist: it reports that there is no emulator.
  target_sources(forgert_core PRIVATE ${FORGERT_SRC}/backends/metal/device_emulated_unavailable.cpp)
endif()
