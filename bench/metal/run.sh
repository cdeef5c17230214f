#!/bin/sh
# One command: build and run the kernel microbenchmarks.
#   bench/metal/run.sh            # Metal on a Mac, the CPU ops elsewhere
#   bench/metal/run.sh cpu        # the CPU ops through the same harness
#   bench/metal/run.sh metal      # on Linux: the MSL emulator (very slow; a correctness tool)
#   bench/metal/run.sh metal --quick --peak-gbs 400
# On a Mac the chip's memory bandwidth is looked up so results show % of peak.
set -e
cd "$(dirname "$0")/../.."
if [ "$(uname)" = Darwin ]; then DEFAULT=metal; else DEFAULT=cpu; fi
BACKEND=${1:-$DEFAULT}
[ $# -gt 0 ] && shift
BUILD=build/bench
PYBIND_DIR=$(python3 -c "import pybind11; print(pybind11.get_cmake_dir())")
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFORGERT_BUILD_BENCH=ON -Dpybind11_DIR="$PYBIND_DIR" >/dev/null
cmake --build "$BUILD" --target forgert_bench_kernels -j "${JOBS:-2}" >/dev/null

PEAK=""
if [ "$(uname)" = Darwin ] && ! echo "$*" | grep -q -- --peak-gbs; then
  CHIP=$(sysctl -n machdep.cpu.brand_string 2>/dev/null || true)
  # Apple's published unified-memory bandwidth (GB/s); binned Max parts are lower.
  case "$CHIP" in
    *"M1 Ultra"*) PEAK=800 ;; *"M1 Max"*) PEAK=400 ;; *"M1 Pro"*) PEAK=200 ;; *"M1"*) PEAK=68.25 ;;
    *"M2 Ultra"*) PEAK=800 ;; *"M2 Max"*) PEAK=400 ;; *"M2 Pro"*) PEAK=200 ;; *"M2"*) PEAK=100 ;;
    *"M3 Ultra"*) PEAK=819 ;; *"M3 Max"*) PEAK=400 ;; *"M3 Pro"*) PEAK=150 ;; *"M3"*) PEAK=100 ;;
    *"M4 Max"*) PEAK=546 ;; *"M4 Pro"*) PEAK=273 ;; *"M4"*) PEAK=120 ;;
  esac
  echo "chip: $CHIP${PEAK:+ (peak $PEAK GB/s)}"
fi
exec "$BUILD/forgert_bench_kernels" "$BACKEND" ${PEAK:+--peak-gbs $PEAK} "$@"
