#!/usr/bin/env bash
# One call on a lent GPU machine: set up, then run the named stages in order.
#   bash gpu/run_all.sh info chunk dense cuda harness+fuzz     (a+b: side by side)
#   LIMIT_<stage>=seconds overrides a stage's limit.
# Each stage has its own time limit so one slow stage cannot eat the whole call; logs and
# JSON land in $OUT (the device tool brings back at most 8 files).
set -u
export PYTHONUNBUFFERED=1
# The device tool brings back at most 8 files: stages write into a work folder, and a packer
# snapshots it into one tarball in the real $OUT every 15 s (written aside, then renamed), so a
# call cut off by its time limit still brings back everything up to the last snapshot.
FINAL=${OUT:-/tmp/linattn-out}
export OUT=/tmp/linattn-work
mkdir -p "$FINAL" "$OUT"
pack() { tar -czf "$FINAL/.results.tgz.part" -C "$OUT" . 2>/dev/null && mv -f "$FINAL/.results.tgz.part" "$FINAL/results.tgz"; }
if [ "$FINAL" != "$OUT" ]; then
  ( while sleep 15; do pack; done ) & PACKER=$!
  trap 'kill $PACKER 2>/dev/null; pack' EXIT
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext

stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== stage $name (limit ${limit}s) ==="
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "--- $name: rc=$rc in $(( $(date +%s) - t0 ))s; last lines:"
  tail -n "${TAIL:-40}" "$OUT/$name.log"
}

run_one() {  # run_one STAGE: the stage's limit comes from LIMIT_<stage> when set
  local s=$1
  case "$s" in
    info)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
      python3 -c "import fla, lightning_attn; print('fla', fla.__version__, 'lightning_attn ok')" 2>&1 | tail -1
      ;;
    dense)   stage dense "${LIMIT_dense:-240}" python3 gpu/triton_dense.py ;;
    densefp32) stage densefp32 "${LIMIT_densefp32:-100}" python3 gpu/dense_fp32.py ;;
    chunk)   stage chunk "${LIMIT_chunk:-300}" python3 gpu/triton_chunk.py ;;
    cuda)    stage cuda "${LIMIT_cuda:-240}" python3 gpu/cuda_ext.py ;;
    sanitize) stage sanitize "${LIMIT_sanitize:-150}" bash gpu/cuda_sanitize.sh ;;
    harness) stage harness "${LIMIT_harness:-150}" bash -c 'if [ -f gpu/harness_gpu.sh ]; then bash gpu/harness_gpu.sh; else python3 gpu/harness_gpu.py; fi' ;;
    bench)   stage bench "${LIMIT_bench:-180}" python3 gpu/bench.py ;;
    fuzz)    stage fuzz "${LIMIT_fuzz:-150}" python3 gpu/fuzz_gpu.py ;;
    probe)   stage probe "${LIMIT_probe:-300}" bash gpu/probe.sh ;;
    probesrc) stage probesrc "${LIMIT_probesrc:-400}" bash gpu/probe_src.sh ;;
    probetriton) stage probetriton "${LIMIT_probetriton:-300}" bash gpu/probe_triton.sh ;;
    seedprof) stage seedprof "${LIMIT_seedprof:-100}" python3 gpu/profile_seed.py ;;
    hunt)    stage hunt "${LIMIT_hunt:-400}" python3 gpu/f16x3_hunt.py ;;
    sweep)   stage sweep "${LIMIT_sweep:-260}" python3 gpu/f16x3_sweep.py ;;
    fp32modes) stage fp32modes "${LIMIT_fp32modes:-260}" python3 gpu/fp32_modes.py ;;
    hostprof) stage hostprof "${LIMIT_hostprof:-120}" python3 gpu/host_profile.py ;;
    chunkfinal) stage chunkfinal "${LIMIT_chunkfinal:-300}" python3 gpu/chunk_final.py ;;
    fuseab)  stage fuseab "${LIMIT_fuseab:-240}" python3 gpu/chunk_fuse_ab.py ;;
    faultgrid) stage faultgrid "${LIMIT_faultgrid:-200}" python3 gpu/chunk_fault_grid.py ;;
    harnessfuse) stage harnessfuse "${LIMIT_harnessfuse:-150}" env LINATTN_CHUNK=bwd_fuse=1 OUT="$OUT/fuse" \
        bash -c 'mkdir -p "$OUT"; bash gpu/harness_gpu.sh' ;;
    *) echo "unknown stage $s" ;;
  esac
}

# A word "a+b+c" runs those stages side by side (correctness stages only: never timings) and
# waits for all of them; each prints its own summary when it ends.
for word in "$@"; do
  if [[ "$word" == *+* ]]; then
    pids=()
    for s in ${word//+/ }; do run_one "$s" > "$OUT/$s.summary" 2>&1 & pids+=($!); done
    wait "${pids[@]}"
    for s in ${word//+/ }; do cat "$OUT/$s.summary"; done
  else
    run_one "$word"
  fi
done
