# macOS: the Objective-C++ Metal device, and the shaders precompiled into a .metallib
# that is embedded in the module (no shader compile at start-up). The shader source,
# with its shared headers inlined, is embedded too as a fallback for when no Metal
# toolchain was found at build time (Xcode 16+ installs it as a separate component:
# `xcodebuild -downloadComponent MetalToolchain`) or the OS rejects the metallib.
enable_language(OBJCXX)
set(FG_SHADER_DIR ${CMAKE_CURRENT_SOURCE_DIR}/src/shaders)
file(GLOB FG_METAL_SOURCES CONFIGURE_DEPENDS ${FG_SHADER_DIR}/*.metal)
set(FG_METAL_HEADERS
  ${FORGERT_SRC}/core/quant_blocks.h
  ${FG_SHADER_DIR}/kernel_args.h
  ${FG_SHADER_DIR}/dequant.h
  ${FORGERT_SRC}/core/iq_grids.h
  ${FG_SHADER_DIR}/iq_lattice.h
  ${FG_SHADER_DIR}/mul_mv.h
  ${FG_SHADER_DIR}/stage_bytes.h
  ${FG_SHADER_DIR}/mul_mv_parts.h
  ${FG_SHADER_DIR}/mul_mv_staged.h
  ${FG_SHADER_DIR}/argmax.h)
set(FG_METAL_OUT ${CMAKE_CURRENT_BINARY_DIR}/metal)
file(MAKE_DIRECTORY ${FG_METAL_OUT})

execute_process(COMMAND xcrun -sdk macosx -f metal OUTPUT_VARIABLE FG_METAL_COMPILER
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE FG_METAL_FOUND)
# Found is not enough: with Xcode 16+ and its Metal Toolchain component not installed, xcrun
# finds a `metal` that only says the toolchain is missing. Run it once.
if(FG_METAL_FOUND EQUAL 0 AND FG_METAL_COMPILER)
  execute_process(COMMAND xcrun -sdk macosx metal --version OUTPUT_QUIET ERROR_QUIET RESULT_VARIABLE FG_METAL_FOUND)
endif()
set(FG_METALLIB ${FG_METAL_OUT}/forgert.metallib)
if(FG_METAL_FOUND EQUAL 0 AND FG_METAL_COMPILER)
  message(STATUS "forgert: precompiling Metal shaders with ${FG_METAL_COMPILER}")
  set(FG_AIR_FILES "")
  foreach(src ${FG_METAL_SOURCES})
    get_filename_component(stem ${src} NAME_WE)
    set(air ${FG_METAL_OUT}/${stem}.air)
    # -fno-fast-math: argmax skips NaNs and attention relies on IEEE exp/max.
    add_custom_command(OUTPUT ${air}
      COMMAND xcrun -sdk macosx metal -c -Werror -fno-fast-math -I ${FG_SHADER_DIR} ${src} -o ${air}
      DEPENDS ${src} ${FG_METAL_HEADERS}
      COMMENT "metal ${stem}.metal")
    list(APPEND FG_AIR_FILES ${air})
  endforeach()
  add_custom_command(OUTPUT ${FG_METALLIB}
    COMMAND xcrun -sdk macosx metallib ${FG_AIR_FILES} -o ${FG_METALLIB}
    DEPENDS ${FG_AIR_FILES}
    COMMENT "metallib forgert.metallib")
else()
  message(WARNING "forgert: no Metal shader compiler (xcrun metal); shaders will be compiled at run time")
  file(WRITE ${FG_METALLIB} "")
endif()

set(FG_METAL_EMBED ${FG_METAL_OUT}/metal_library_data.cpp)
# Lists travel as "|"-separated strings: a ";" would split the shell command.
string(REPLACE ";" "|" FG_EMBED_HEADERS "${FG_METAL_HEADERS}")
string(REPLACE ";" "|" FG_EMBED_SOURCES "${FG_METAL_SOURCES}")
add_custom_command(OUTPUT ${FG_METAL_EMBED}
  COMMAND ${CMAKE_COMMAND} -DMETALLIB=${FG_METALLIB} -DOUTPUT=${FG_METAL_EMBED}
          -DHEADERS=${FG_EMBED_HEADERS} -DSOURCES=${FG_EMBED_SOURCES}
          -P ${CMAKE_CURRENT_LIST_DIR}/metal_embed.cmake
  DEPENDS ${FG_METALLIB} ${FG_METAL_SOURCES} ${FG_METAL_HEADERS} ${CMAKE_CURRENT_LIST_DIR}/metal_embed.cmake
  COMMENT "embedding the Metal library"
  VERBATIM)

target_sources(forgert_core PRIVATE ${FG_METAL_DIR}/device_metal.mm ${FG_METAL_EMBED})
set_source_files_properties(${FG_METAL_DIR}/device_metal.mm PROPERTIES COMPILE_OPTIONS "-fobjc-arc")
target_link_libraries(forgert_core PUBLIC "-framework Metal" "-framework Foundation")
