#!/bin/bash
# The speed figures of issue 20 on one GPU, in parts that each fit a ten-minute device call:
#   load:   fresh processes (bench_load.py): quantize + save with a cold compile cache, the saved 4-bit model with
#           it warm, then with no C compiler (PATH without one, CC naming none: the installed app) with the warm
#           cache and with an empty one; then `ask` from the command line twice (the second with its caches warm).
#   decode: the recipe against the app in one process (bench_decode.py: first answer right after load, the
#           compiled step built in the background, decode rate, adapter switches with the logits check after
#           each, time to first token alternating with the recipe); writes summary.json; then the first token
#           for prompts of new lengths (ttft_new_lengths.py). After `load` it uses the compile cache that `load`
#           filled.
#   kernel: the NF4 matrix-vector kernel (core/nf4_matvec.py) against bitsandbytes' (nf4_gemv.py), the query/key
#           norm-and-rotation kernel (core/qk_norm_rope.py) and the RMS norm kernel (core/rms_norm.py) against the
#           model's modules (qk_norm_rope_check.py, rms_norm_check.py), the NF4 dequantisation kernel
#           (core/nf4_dequantize.py) against bitsandbytes' (nf4_dequantize_check.py).
#   serve:  batch items/s and the server's latency with 1 and 4 clients (bench_serve.py; needs the openai,
#           starlette and uvicorn wheels and theirs in .whl too).
#   tools:  the compiled step's kernel profile (profile_step.py).
#   ask:    `ask` four times (ROUNDS) with a writable bytecode cache (the installed app's state; see below).
#   startup: where `ask`'s start goes with warm caches: Python's import times (-X importtime, the 40 slowest
#           imports) and a cProfile of the whole command (the 40 largest cumulative times); then the prompt's
#           memory (profile_memory.py) and time (profile_prefill.py).
# `all` (the default) runs load, then decode (about eight minutes on an H200). Needs .whl with bitsandbytes,
# platformdirs and pydicom (carry [".whl"]).
set -o pipefail
PART=${1:-all}
OUT=${OUT:-/tmp/out}
mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
PYTHON=$(command -v python3)
COLD=/tmp/inductor-cold EMPTY=/tmp/inductor-empty
# /tmp/nocc-bin: every command on PATH except C/C++ compilers, assemblers and linkers, for PATH=/tmp/nocc-bin
# (hiding all of PATH also hides `file`, which changes Triton's cache key for its compiled helper module: run 14's
# no-compiler rows are that artefact).
hide_compilers() {
  mkdir -p /tmp/nocc-bin
  for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
    for f in "$d"/*; do
      b=$(basename "$f")
      case $b in *gcc*|*g++*|cc|c++|*clang*|cpp|*-cc|*-c++|ld|ld.*|*-ld|as|*-as) ;;
        *) [ -e "/tmp/nocc-bin/$b" ] || ln -s "$f" "/tmp/nocc-bin/$b" ;; esac
    done
  done
}
# `ask` as a user runs it, $1 times: seconds since the command started at each progress line (stderr), then its
# own time-to-first-token line.
ask_rounds() {
  CT=$($PYTHON -c "from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))")
  for round in $(seq $1); do
    start=$(date +%s.%N)
    XDG_CACHE_HOME=/tmp/ask-cache timeout 100 $PYTHON -m medgemma_desktop ask --model /tmp/medgemma-arch-random-896 \
      --adapter /tmp/lora-r8-random-896 --image $CT --max-new-tokens 64 "Describe this CT." 2>&1 >/dev/null \
      | grep --line-buffered -v "tensors)\|weights' hash\|Writing" | while IFS= read -r line; do echo "$(date +%s.%N) $line"; done \
      | awk -v s=$start '{t=$1; $1=""; printf "%.2f%s\n", t-s, $0}' | tee -a $OUT/ask.log
    echo "round $round exit $?" | tee -a $OUT/ask.log
  done
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $OUT/gpu.txt
[ $PART = kernel ] || $PYTHON benchmarks/bench_decode.py $OUT --build-only
if [ $PART = load ] || [ $PART = all ]; then
  hide_compilers
  for path in quantize_cold_compile cache_warm_compile no_compiler_warm_cache no_compiler_empty_cache; do
    cache=$COLD; env=""
    case $path in
      cache_warm_compile) export HF_DEACTIVATE_ASYNC_LOAD=1 ;;  # one loader thread, as the desktop app loads
      no_compiler_warm_cache) env="PATH=/tmp/nocc-bin CC=/nonexistent/cc CXX=/nonexistent/c++" ;;
      no_compiler_empty_cache) env="PATH=/tmp/nocc-bin CC=/nonexistent/cc CXX=/nonexistent/c++"; cache=$EMPTY ;;
    esac
    timeout 200 env $env TORCHINDUCTOR_CACHE_DIR=$cache TRITON_CACHE_DIR=$cache/triton \
      $PYTHON benchmarks/bench_load.py $OUT $path /tmp/qcache 2>&1 | grep "^{" | tee -a $OUT/load.log
  done
  unset HF_DEACTIVATE_ASYNC_LOAD
  ask_rounds 2
fi
if [ $PART = decode ] || [ $PART = all ]; then
  [ $PART = all ] && export TORCHINDUCTOR_CACHE_DIR=$COLD TRITON_CACHE_DIR=$COLD/triton
  timeout 400 $PYTHON benchmarks/bench_decode.py $OUT 2>&1 | grep -v "Loading weights\|Writing" | tee $OUT/bench.log
  $PYTHON -c "import json; print(json.dumps([r for r in json.load(open('$OUT/bench_decode.json')) \
    if r.get('event') == 'summary'], indent=1))" | tee $OUT/summary.json
  timeout 120 $PYTHON benchmarks/ttft_new_lengths.py $OUT 2>&1 | grep -v "Loading weights\|Writing" | tail -30
fi
if [ $PART = ask ]; then
  # This machine's Python keeps no bytecode (PYTHONDONTWRITEBYTECODE, no __pycache__ in its packages), so every
  # start compiles the bytecode of torch, transformers and the rest again (a cProfile of `ask`: 8 s in `compile`);
  # an installed app has its bytecode. Writing it to a cache folder gives that state: the first round fills it
  # (and saves the 4-bit model), the next three are measured.
  env | grep "^PYTHON" | tee -a $OUT/ask.log
  ( unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache; ask_rounds ${ROUNDS:-4} )
fi
if [ $PART = kernel ]; then
  timeout 120 $PYTHON benchmarks/nf4_gemv.py $OUT 2>&1 | tail -60 | tee $OUT/kernel.log
  timeout 120 $PYTHON benchmarks/qk_norm_rope_check.py $OUT 2>&1 | tail -40 | tee -a $OUT/kernel.log
  timeout 120 $PYTHON benchmarks/rms_norm_check.py $OUT 2>&1 | tail -40 | tee -a $OUT/kernel.log
  timeout 120 $PYTHON benchmarks/nf4_dequantize_check.py $OUT 2>&1 | tail -60 | tee -a $OUT/kernel.log
fi
if [ $PART = serve ]; then
  timeout 400 $PYTHON benchmarks/bench_serve.py $OUT 2>&1 | grep -v "Loading weights\|Writing" | tee $OUT/serve.log
fi
if [ $PART = helper ]; then
  # The installed app's compile path: Triton's helper built as the installer builds it (against a stand-in
  # libcuda), then a fresh process with no C compiler and empty caches that uses it.
  $PYTHON packaging/triton_helper.py /tmp/helpers | tee $OUT/helper.log
  readelf -d /tmp/helpers/*.so | grep -i "needed\|path" | tee -a $OUT/helper.log
  hide_compilers
  timeout 280 env PATH=/tmp/nocc-bin CC=/nonexistent/cc CXX=/nonexistent/c++ TORCHINDUCTOR_CACHE_DIR=/tmp/helper-cache \
    TRITON_CACHE_DIR=/tmp/helper-cache/triton $PYTHON benchmarks/bench_load.py $OUT no_compiler_prebuilt_helper \
    /tmp/qcache --triton-helpers /tmp/helpers 2>&1 | grep "^{\|Error" | tee -a $OUT/helper.log
fi
if [ $PART = startup ]; then
  CT=$($PYTHON -c "from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))")
  ASK="-m medgemma_desktop ask --model /tmp/medgemma-arch-random-896 --adapter /tmp/lora-r8-random-896 --image $CT \
    --max-new-tokens 16 --no-history Describe."
  export XDG_CACHE_HOME=/tmp/ask-cache
  timeout 100 $PYTHON $ASK > /dev/null 2>&1  # caches warm (the 4-bit model saved once)
  timeout 100 $PYTHON -X importtime $ASK 2> $OUT/importtime.log > /dev/null
  sort -t'|' -k2 -n -r $OUT/importtime.log | head -40 | tee $OUT/startup.log
  timeout 100 $PYTHON -m cProfile -o /tmp/ask.prof $ASK > /dev/null 2>&1
  $PYTHON -c "import pstats; pstats.Stats('/tmp/ask.prof').sort_stats('cumulative').print_stats(60)" \
    | tail -75 | tee -a $OUT/startup.log
  unset XDG_CACHE_HOME
  timeout 200 $PYTHON benchmarks/profile_memory.py $OUT 2>&1 | grep -v "Loading weights\|Writing" | tail -80 > $OUT/memory.log
  timeout 200 $PYTHON benchmarks/profile_prefill.py $OUT 2>&1 | grep -v "Loading weights\|Writing" | tail -80 > $OUT/prefill.log
fi
if [ $PART = tools ]; then
  timeout 200 $PYTHON benchmarks/profile_step.py $OUT 2>&1 | tail -30 >> $OUT/tools.log
fi
