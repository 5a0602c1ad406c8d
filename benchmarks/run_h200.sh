#!/bin/bash
# Decode bench (recipe vs app, logits check, contexts), then the load paths in fresh processes (quantize + save
# with a cold inductor cache, then the saved 4-bit model with it warm, twice). `decode` or `load` runs one part,
# for device calls limited to ten minutes.
set -o pipefail
PART=${1:-all}
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $OUT/gpu.txt
if [ $PART != load ]; then
  timeout 400 python3 benchmarks/bench_decode.py $OUT 2>&1 | grep -v "Loading weights\|Writing" | tee $OUT/bench.log
fi
[ $PART = decode ] && exit 0
[ $PART = load ] && python3 benchmarks/bench_decode.py $OUT --build-only
COLD=/tmp/inductor-cold
# The third reads the saved model with one loader thread, as the desktop app's worker does (ui/worker.py).
for path in quantize_cold_compile cache_warm_compile cache_warm_compile_one_thread; do
  [ $path = cache_warm_compile_one_thread ] && export HF_DEACTIVATE_ASYNC_LOAD=1
  TORCHINDUCTOR_CACHE_DIR=$COLD TRITON_CACHE_DIR=$COLD/triton timeout 180 \
    python3 benchmarks/bench_load.py $OUT $path /tmp/qcache 2>&1 | grep -v "Loading weights" | tail -5 | tee -a $OUT/load.log
done
