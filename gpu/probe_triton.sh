#!/usr/bin/env bash
# Counters of triton_dense's float32 seed kernels (gpu/run_all.sh stage probetriton): tensor pipes,
# issue, instruction mix, for the forward, dq and dk/dv launches of one warm step.
set -u
python3 gpu/ncu_triton_probe.py || exit 1
MET="--metrics smsp__inst_executed.sum,smsp__inst_executed_pipe_tensor_op_hmma.sum,smsp__inst_executed_pipe_tensor_op_gmma.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum"
timeout 240 ncu --clock-control none --nvtx --nvtx-include "probe/" --section SpeedOfLight --section Occupancy \
  --section LaunchStats --section WarpStateStats $MET python3 gpu/ncu_triton_probe.py
