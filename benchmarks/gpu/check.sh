#!/usr/bin/env bash
# One-shot GPU check, for a session that is lent a GPU machine (see DEVELOPERS' guide: device tool).
# Builds fasttrain there (no registry: --no-build-isolation against the machine's torch/triton),
# runs the tests on CUDA (Triton kernels for real, not the interpreter) and the CUDA benchmarks,
# and writes everything under $OUT. Usage on the device: bash benchmarks/gpu/check.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
{ nvidia-smi; python -c "import torch, triton; print(torch.__version__, triton.__version__)"; } > "$OUT/env.txt" 2>&1
pip install --no-build-isolation -q . > "$OUT/build.txt" 2>&1 || { tail -50 "$OUT/build.txt"; exit 1; }
# `pytest` (not `python -m pytest`): the source folder must not shadow the installed package.
timeout 240 pytest -q -x tests/kernels tests/ops tests/optim/test_adamw_triton.py -p no:cacheprovider 2>&1 \
  | tail -40 > "$OUT/tests.txt"
timeout 240 pytest -q -s benchmarks/bench_grad_norm.py -k cuda -p no:cacheprovider \
  --benchmark-json "$OUT/grad_norm-gpu.json" 2>&1 | tail -40 > "$OUT/bench.txt"
# AdamW on 1B params: the op (fp32 vs torch fused + copy bandwidth; bf16 + masters vs torch's way) and
# the optimizer class (the same, through fasttrain.optim.AdamW's device-side step).
timeout 300 pytest -q -s benchmarks/bench_adamw.py -k cuda -p no:cacheprovider \
  --benchmark-json "$OUT/adamw-gpu.json" 2>&1 | tail -40 > "$OUT/bench_adamw.txt"
cat "$OUT/tests.txt" "$OUT/bench.txt" "$OUT/bench_adamw.txt"
