#!/usr/bin/env bash
# Ceilings and a counter profile of the CUDA backend's product kernel (gpu/run_all.sh stage probe):
# mma.sync throughput/latency (gpu/mma_probe.cu), then ncu on the seed float32 step's four launches.
set -u
nvcc -O3 -arch=sm_90 -o /tmp/mma_probe gpu/mma_probe.cu && /tmp/mma_probe
python3 gpu/ncu_probe.py || exit 1
SECT="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis"
MET="--metrics smsp__inst_executed_pipe_tensor_op_hmma.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,smsp__cycles_active.avg,sm__cycles_elapsed.avg,smsp__issue_active.avg.pct_of_peak_sustained_active"
timeout 200 ncu --clock-control none -k regex:masked_product --launch-skip 4 --launch-count ${PROBE_LAUNCHES:-2} $SECT $MET python3 gpu/ncu_probe.py
if [ -n "${PROBE_BF16:-}" ]; then
  PROBE_DTYPE=bfloat16 PROBE_N=4096 PROBE_B=4 timeout 120 ncu --clock-control none -k regex:masked_product --launch-skip 4 --launch-count 1 $SECT $MET python3 gpu/ncu_probe.py
fi
