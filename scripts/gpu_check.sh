#!/usr/bin/env bash
# GPU acceptance check (one or more CUDA GPUs, <= 8 min on one): every GPU-only path of nanoocr, then a summary.
#   bash scripts/gpu_check.sh            # uses .venv/bin/python (make setup), or PYTHON=...
# 1. kernel tests on the GPU (fp32/fp16/bf16 values and gradients vs torch; the GPU-only tests included)
# 2. python -m kernels.bench (Triton vs torch SDPA flash / eager), one dtype, fewer shapes
# 3. the shrunk stage-1 -> stage-2 -> export -> sample -> evaluate chain (tests/test_stage_chain.py, README's
#    real-run commands) on the GPUs: amp_bf16, Composer FSDP with sharded checkpoints on all GPUs present,
#    attn_impl: triton, embed_impl: triton
# 4. the FSDP / sharded-export / generation tests on the GPU build of torch
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then echo "gpu_check: no CUDA device visible" >&2; exit 2; fi
LOG=${GPU_CHECK_LOG:-gpu_check_logs}; mkdir -p "$LOG"
declare -a NAMES RCS SECS
step() {  # step NAME command...
  local name=$1; shift; local t0=$SECONDS
  echo "=== $name: $*"
  "$@" >"$LOG/$name.log" 2>&1; local rc=$?
  tail -n 25 "$LOG/$name.log"
  NAMES+=("$name"); RCS+=("$rc"); SECS+=("$((SECONDS - t0))")
}
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'x', torch.cuda.device_count())"
step kernels     $PY -m pytest -q tests/test_kernels_attention.py tests/test_kernels_scatter.py tests/test_kernels_integration.py
step bench       $PY -m kernels.bench
step chain       env NANOOCR_CHAIN_DEVICE=gpu NANOOCR_CHAIN_NPROC="$NGPU" $PY -m pytest -q -x tests/test_stage_chain.py
step distributed $PY -m pytest -q tests/test_export.py tests/test_engine.py
echo; echo "=== summary ($NGPU GPU(s); logs in $LOG/)"
fail=0
for i in "${!NAMES[@]}"; do
  printf "%-12s %-4s %5ss\n" "${NAMES[$i]}" "$([ "${RCS[$i]}" = 0 ] && echo ok || echo FAIL)" "${SECS[$i]}"
  [ "${RCS[$i]}" = 0 ] || fail=1
done
exit $fail
