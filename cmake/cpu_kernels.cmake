# CPU kernel sets, one translation unit per ISA level with its own flags; the
# best one the CPU supports is chosen at run time (backends/cpu/cpu_kernels.cpp).
# Never -march=native: the wheel must run on any CPU of its architecture.
set(FG_CPU ${FORGERT_SRC}/backends/cpu)
target_sources(forgert_core PRIVATE ${FG_CPU}/kernels_generic.cpp)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" AND NOT MSVC)
  target_sources(forgert_core PRIVATE ${FG_CPU}/kernels_avx2.cpp ${FG_CPU}/kernels_avx512.cpp)
  set_source_files_properties(${FG_CPU}/kernels_avx2.cpp PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties(${FG_CPU}/kernels_avx512.cpp PROPERTIES COMPILE_OPTIONS
    "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mavx512vnni")
  target_compile_definitions(forgert_core PRIVATE FORGERT_HAVE_AVX2=1 FORGERT_HAVE_AVX512=1)
  include(CheckCXXCompilerFlag)
  # AVX-VNNI without AVX-512 (prefill int8 GEMM on VEX vpdpbusd).
  check_cxx_compiler_flag("-mavxvnni" FG_CXX_HAS_AVXVNNI)
  if(FG_CXX_HAS_AVXVNNI)
    target_sources(forgert_core PRIVATE ${FG_CPU}/kernels_avxvnni.cpp)
    set_source_files_properties(${FG_CPU}/kernels_avxvnni.cpp PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavxvnni")
    target_compile_definitions(forgert_core PRIVATE FORGERT_HAVE_AVXVNNI=1)
  endif()
  # AMX-INT8 (prefill int8 GEMM on tiles), used only where the run-time probe passes.
  check_cxx_compiler_flag("-mamx-tile -mamx-int8" FG_CXX_HAS_AMX)
  if(FG_CXX_HAS_AMX AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_sources(forgert_core PRIVATE ${FG_CPU}/kernels_amx.cpp)
    set_source_files_properties(${FG_CPU}/kernels_amx.cpp PROPERTIES COMPILE_OPTIONS
      "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mavx512vnni;-mamx-tile;-mamx-int8")
    target_compile_definitions(forgert_core PRIVATE FORGERT_HAVE_AMX=1)
  endif()
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
  target_sources(forgert_core PRIVATE ${FG_CPU}/kernels_neon.cpp)
  if(NOT APPLE)
    set_source_files_properties(${FG_CPU}/kernels_neon.cpp PROPERTIES COMPILE_OPTIONS "-march=armv8.2-a+dotprod+fp16")
  endif()
  target_compile_definitions(forgert_core PRIVATE FORGERT_HAVE_NEON=1)
  # FEAT_I8MM (SMMLA) for the prefill int8 GEMM, used only where the CPU reports it at run time.
  check_cxx_compiler_flag("-march=armv8.2-a+dotprod+fp16+i8mm" FG_CXX_HAS_I8MM)
  if(FG_CXX_HAS_I8MM)
    target_sources(forgert_core PRIVATE ${FG_CPU}/kernels_neon_i8mm.cpp)
    set_source_files_properties(${FG_CPU}/kernels_neon_i8mm.cpp PROPERTIES COMPILE_OPTIONS
      "-march=armv8.2-a+dotprod+fp16+i8mm")
    target_compile_definitions(forgert_core PRIVATE FORGERT_HAVE_I8MM=1)
  endif()
endif()
