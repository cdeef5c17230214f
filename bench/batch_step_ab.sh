#!/bin/bash
# Device-side before/after of the batched decode step in one lease: two source trees built side by
# side (--target dirs), the new tree's kernel check and batch tests, then bench/batch_decode.py
# (1B Q4_0 and Q4_K_M, 1 vs 8 sequences, 16 threads) with the builds alternating in separate
# processes, and bench/batch_step_ops.py's per-op split of both.
#   bash bench/batch_step_ab.sh BASE_TREE NEW_TREE ROUNDS
BASE=$1 NEW=$2 R=${3:-3}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=8
lscpu | grep -E "Model name|Thread|Core|Socket|L2|L3" | cut -c1-120
(python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/base $BASE 2>&1 | tail -3) &
(python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/new $NEW 2>&1 | tail -3) &
wait
ls /tmp/base/forgert/_core* /tmp/new/forgert/_core* || exit 1
PYTHONPATH=/tmp/new python3 $NEW/bench/synthetic_gguf.py /tmp/q40.gguf --preset llama32-1b --type Q4_0 >/dev/null &
PYTHONPATH=/tmp/new python3 $NEW/bench/synthetic_gguf.py /tmp/q4km.gguf --preset llama32-1b --type Q4_K_M >/dev/null &
(cd $NEW && timeout 240 python3 -m pytest -q -x tests/test_kernel_sets.py 2>&1 | tail -2)
(cd $NEW && PYTHONPATH=/tmp/new timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_batch_invariance.py tests/test_batch_engine.py 2>&1 | tail -25)
wait
cat /proc/loadavg
for r in $(seq $R); do
  for m in q40 q4km; do
    for b in base new; do
      PYTHONPATH=/tmp/$b python3 $NEW/bench/batch_decode.py --model /tmp/$m.gguf --seqs 1,8 --steps 32 --repeats 2 --threads 16 2>&1 | grep "^| int16" | sed "s/^/$m $b round $r /"
    done
  done
done
for m in q40; do for b in base new; do
  PYTHONPATH=/tmp/$b python3 $NEW/bench/batch_step_ops.py --model /tmp/$m.gguf --threads 16 --steps 16 --rounds 3 --label "$m $b"
done; done
cat /proc/loadavg
