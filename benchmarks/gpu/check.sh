#!/usr/bin/env bash
# One-shot GPU check, for a session that is lent a GPU machine (see the developers' guide: device tool).
# Builds fasttrain there (no registry: --no-build-isolation --no-deps against the machine's torch/triton),
# runs the CUDA tests (Triton kernels compiled for real, not the interpreter; tests/gpu end to end) and the
# CUDA benchmarks, and writes everything under $OUT (at most 8 files come back: log (build + tests), bench, 6 JSON).
# Usage on the device: bash benchmarks/gpu/check.sh     Before spending GPU time, compile every kernel for
# sm_90 here: TRITON_INTERPRET=0 python benchmarks/gpu/aot_compile.py
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; nproc; } > "$LOG" 2>&1
t0=$SECONDS
python3 -m pip install --no-build-isolation --no-deps -q . >> "$LOG" 2>&1 || { tail -50 "$LOG"; exit 1; }
echo "build: $((SECONDS - t0)) s" | tee -a "$LOG"
# python3 -P: the source folder (cwd) must not shadow the installed package. python3 (not pip/pytest on PATH)
# is the interpreter that holds torch there.
# -n 8 (pytest-xdist): the Triton compiles of a cold cache run in parallel processes; -p no:benchmark:
# pytest-benchmark warns under xdist, and the project turns warnings into errors.
t0=$SECONDS
timeout 200 python3 -P -m pytest -q -n 8 -p no:cacheprovider -p no:benchmark -rfE tests/gpu tests/kernels tests/optim/test_adamw_triton.py tests/optim/test_sgd_lion_triton.py \
  2>&1 | tee -a "$LOG" | tail -25
echo "tests: $((SECONDS - t0)) s" | tee -a "$LOG"
BENCH="$OUT/bench.txt"
bench() {  # name, timeout, pytest args...; CHECK_BENCH="quant grad_norm" runs only those (default: all)
  local name=$1 limit=$2
  shift 2
  [[ -z "${CHECK_BENCH:-}" || " $CHECK_BENCH " == *" ${name%-gpu} "* ]] || return 0
  t0=$SECONDS
  timeout "$limit" python3 -P -m pytest -q -s -p no:cacheprovider --benchmark-json "$OUT/$name.json" "$@" 2>&1 \
    | grep -v "^\s*$" | tee -a "$BENCH" | grep -E "speedup|GB/s|samples/s|passed|failed|Error" | cut -c1-400
  echo "$name: $((SECONDS - t0)) s" | tee -a "$LOG"
}
# AdamW on 1B params: the op (fp32 vs torch fused + copy bandwidth; bf16 + masters vs torch's way), the
# optimizer class (device-side step), step_in_backward on a 0.67B MLP; then quantized linears, the loader,
# SGD, Lion and the grad-norm kernels.
bench adamw-gpu 150 benchmarks/bench_adamw_cuda.py
bench quant-gpu 70 benchmarks/bench_quant.py -k cuda
bench loader-gpu 70 benchmarks/bench_loader.py -k cuda
bench sgd-gpu 60 benchmarks/bench_sgd.py -k cuda
bench lion-gpu 60 benchmarks/bench_lion.py -k cuda
bench grad_norm-gpu 100 benchmarks/bench_grad_norm.py -k "cuda and not noclip"
