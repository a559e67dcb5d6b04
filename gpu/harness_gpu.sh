#!/usr/bin/env bash
# The harness stage (run_all.sh prefers this file): gpu/harness_gpu.py with its GPU defaults.
#   LIMIT_harness=185 HARNESS_BUDGET_S=170 bash gpu/run_all.sh harness
# HARNESS_BUDGET_S must stay below the stage's limit (the script writes its table at the end
# of its budget; on SIGTERM it writes what it has).
# Only some cells (their repros first, up to HARNESS_MAX_FAILS failures each):
#   LIMIT_harness=100 HARNESS_BUDGET_S=90 HARNESS_CELLS=triton/backward/float16,triton/state_split/float32/long \
#     bash gpu/run_all.sh harness
export LINATTN_TRITON_AUTOTUNE=${LINATTN_TRITON_AUTOTUNE:-0}
export LINATTN_CUDA_FP32=${LINATTN_CUDA_FP32:-1}
export HARNESS_BUDGET_S=${HARNESS_BUDGET_S:-140}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export PYTHONUNBUFFERED=1
exec python3 "$(dirname "$0")/harness_gpu.py" "$@"
