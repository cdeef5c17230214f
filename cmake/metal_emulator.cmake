# The MSL emulator and the emulated Metal device (included by cmake/metal.cmake when
# FORGERT_METAL_EMULATOR is ON).
#
# The translated kernels need clang (ext_vector_type, _Float16) while the module may be
# built with g++, so src/emulator is a separate CMake project built with clang as an
# ExternalProject: it produces libforgert_msl_kernels.so (every src/shaders/*.metal plus
# the fiber runtime), installed next to forgert/_core, where device_emulated.cpp dlopens
# it. Without clang the build still succeeds and backend="metal" explains how to enable it.
find_program(FORGERT_CLANGXX
  NAMES clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++ clang++-14
  DOC "clang++ for the MSL emulator's kernel library")

if(NOT FORGERT_CLANGXX)
  message(STATUS "forgert: no clang++ found: the emulated Metal device is disabled "
                 "(apt-get install clang, then rebuild)")
  target_sources(forgert_core PRIVATE ${FORGERT_SRC}/backends/metal/device_emulated_unavailable.cpp)
  return()
endif()
message(STATUS "forgert: MSL emulator kernels built with ${FORGERT_CLANGXX}")

include(ExternalProject)
if(FORGERT_DEV_INPLACE)
  set(FG_EMU_OUTPUT_DIR ${CMAKE_CURRENT_SOURCE_DIR}/python/forgert)
else()
  set(FG_EMU_OUTPUT_DIR ${CMAKE_CURRENT_BINARY_DIR}/msl_emulator)
endif()
cmake_host_system_information(RESULT FG_EMU_JOBS QUERY NUMBER_OF_LOGICAL_CORES)

ExternalProject_Add(forgert_msl_emulator
  SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/src/emulator
  BINARY_DIR ${CMAKE_CURRENT_BINARY_DIR}/msl_emulator-build
  CMAKE_ARGS
    -DCMAKE_CXX_COMPILER=${FORGERT_CLANGXX}
    -DCMAKE_BUILD_TYPE=Release
    -DFORGERT_EMU_OUTPUT_DIR=${FG_EMU_OUTPUT_DIR}
    -DPython3_EXECUTABLE=${Python_EXECUTABLE}
  BUILD_COMMAND ${CMAKE_COMMAND} --build <BINARY_DIR> --parallel ${FG_EMU_JOBS}
  BUILD_ALWAYS ON  # the sub-project tracks its own .metal and header dependencies
  INSTALL_COMMAND ""
  BUILD_BYPRODUCTS ${FG_EMU_OUTPUT_DIR}/libforgert_msl_kernels.so ${FG_EMU_OUTPUT_DIR}/libforgert_msl_kernels_traffic.so)

target_sources(forgert_core PRIVATE ${FORGERT_SRC}/backends/metal/device_emulated.cpp)
# The bindings expose device_emulated.h's schedule setters where this is set.
target_compile_definitions(forgert_core PUBLIC FORGERT_HAVE_METAL_EMULATOR=1)
add_dependencies(forgert_core forgert_msl_emulator)
install(FILES ${FG_EMU_OUTPUT_DIR}/libforgert_msl_kernels.so DESTINATION forgert)
# The traffic build of the kernels (src/emulator/README.md), where clang can instrument loads.
install(FILES ${FG_EMU_OUTPUT_DIR}/libforgert_msl_kernels_traffic.so DESTINATION forgert OPTIONAL)
