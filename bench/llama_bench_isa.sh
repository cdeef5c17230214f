#!/usr/bin/env bash
# llama.cpp's llama-bench built for a chosen x86 level instead of this CPU's, from the source
# beside ../shared/peers/llama-bench.sh: the peer for a comparison at that level, e.g. forgert's
# AVX2 set on an AVX-512 machine (bench/results/cpu_vs_llama_bench_vm2core.md):
#
#   PEER_LEVEL=avx2 bench/llama_bench_isa.sh -m model.gguf -t 2 -p 256 -n 32
#   FORGERT_CPU_ISA=avx2 python bench/bench_vs_llama_bench.py --peer bench/llama_bench_isa.sh ...
#
# PEER_LEVEL: avx2 (AVX, AVX2, FMA, F16C, BMI2; no AVX-512, no AVX-VNNI), avx2vnni (those and
# AVX-VNNI), or avx512 (those and AVX-512 F / VBMI / VNNI / BF16, no AMX: a Zen 4 / Zen 5 desktop's
# level, for forgert's FORGERT_CPU_ISA=avx512 on an AMX machine). Built once into $PEER_CACHE (default ~/.cache/forgert-peers), then run.
set -euo pipefail
src=${PEER_SRC:-$(cd "$(dirname "$0")/../.." && pwd)/shared/peers/llama.cpp-src.tar.xz}
cache=${PEER_CACHE:-$HOME/.cache/forgert-peers}
base="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
base="$base -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
case "${PEER_LEVEL:-avx2}" in
  avx2) isa="$base -DGGML_AVX_VNNI=OFF" ;;
  avx2vnni) isa="$base -DGGML_AVX_VNNI=ON" ;;
  avx512) isa="$base -DGGML_AVX_VNNI=OFF -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON"
          isa="$isa -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  *) echo "PEER_LEVEL must be avx2, avx2vnni or avx512, got '$PEER_LEVEL'" >&2; exit 2 ;;
esac
bin=$cache/build-level-${PEER_LEVEL:-avx2}/bin/llama-bench
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  [ -d "$cache/llama.cpp" ] || tar -xJf "$src" -C "$cache"
  echo "building llama-bench (${PEER_LEVEL:-avx2}) in $cache/build-level-${PEER_LEVEL:-avx2} ..." >&2
  cmake -S "$cache/llama.cpp" -B "$cache/build-level-${PEER_LEVEL:-avx2}" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF $isa > "$cache/build-level-${PEER_LEVEL:-avx2}.log" 2>&1
  cmake --build "$cache/build-level-${PEER_LEVEL:-avx2}" --target llama-bench -j "$(nproc)" \
    >> "$cache/build-level-${PEER_LEVEL:-avx2}.log" 2>&1 || { tail -20 "$cache/build-level-${PEER_LEVEL:-avx2}.log" >&2; exit 1; }
fi
exec "$bin" "$@"
