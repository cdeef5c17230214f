# Metal backend, host side: the C++ ops layer (every platform) and the device behind
# it. Real Metal (device_metal.mm) on macOS with FORGERT_METAL; elsewhere a stub that
# says why, and the emulated device from cmake/metal_emulator.cmake.
set(FG_METAL_DIR ${FORGERT_SRC}/backends/metal)
target_sources(forgert_core PRIVATE
  ${FG_METAL_DIR}/metal_backend.cpp
  ${FG_METAL_DIR}/metal_ops.cpp
  ${FG_METAL_DIR}/hazard_tracker.cpp
  ${FG_METAL_DIR}/buffer_views.cpp)
target_compile_definitions(forgert_core PUBLIC FORGERT_HAVE_METAL_BACKEND=1)

if(APPLE AND FORGERT_METAL)
  include(${CMAKE_CURRENT_LIST_DIR}/metal_macos.cmake)
else()
  target_sources(forgert_core PRIVATE ${FG_METAL_DIR}/device_metal_unavailable.cpp)
endif()

# Kernel microbenchmarks (bench/metal/run.sh builds and runs them).
if(FORGERT_BUILD_BENCH)
  add_executable(forgert_bench_kernels ${CMAKE_CURRENT_SOURCE_DIR}/bench/metal/bench_kernels.cpp)
  target_link_libraries(forgert_bench_kernels PRIVATE forgert_core)
endif()
