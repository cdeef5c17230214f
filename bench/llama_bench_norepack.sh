#!/usr/bin/env bash
# ../shared/peers/llama-bench.sh with llama.cpp's weight repacking off (`--repack 0`): on the lent
# 16-core Xeon (AMX, repacking on) the vendored llama.cpp aborts on deepseek2 (latent attention)
# graphs with GGML_ASSERT(*cur_backend_id != -1) in ggml_backend_sched_split_graph, so this is its
# fastest configuration that runs them (bench/results/cpu_vs_llama_bench_gpuhost_mla.md):
#
#   python bench/bench_vs_llama_bench.py --presets deepseek-v2-lite-6l --peer bench/llama_bench_norepack.sh
#
# PEER: the llama-bench.sh to run (default ../shared/peers/llama-bench.sh beside the checkout).
set -euo pipefail
peer=${PEER:-$(cd "$(dirname "$0")/../.." && pwd)/shared/peers/llama-bench.sh}
exec bash "$peer" "$@" --repack 0
