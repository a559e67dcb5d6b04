#!/usr/bin/env bash
# compute-sanitizer on backend `cuda`: memcheck and racecheck over awkward shapes, fwd + bwd.
#   bash gpu/cuda_sanitize.sh          (from the repository root; <= ~120 s after the build)
# The extension is built (or loaded from the cache) first, outside the sanitizer. The caching
# allocator is switched off so that memcheck sees every tensor as its own allocation.
set -u
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRIVER=gpu/cuda_sanitize_driver.py
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -z "$SAN" ]; then echo "compute-sanitizer not found"; exit 1; fi
OUTDIR=${OUT:-/tmp/linattn-out}
mkdir -p "$OUTDIR"

echo "== build / load the extension"
timeout 300 python3 -c "import torch; from linattn.backends.cuda import loader; loader.load(torch.device('cuda', 0)); print('extension ready')" || exit 1

run() {  # run TOOL LIMIT
  local tool=$1 limit=$2 log="$OUTDIR/sanitize_$1.log"
  echo "== $tool"
  local t0=$(date +%s)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$limit" "$SAN" --tool "$tool" --print-limit 20 \
    python3 "$DRIVER" "$tool" >"$log" 2>&1
  local rc=$?
  echo "-- $tool: rc=$rc in $(( $(date +%s) - t0 ))s"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard|Invalid|driver cases" "$log" | sort | uniq -c | head -20
  grep -E "^========= (Error|Invalid|Race|Warning)" "$log" | head -5
  tail -n 3 "$log"
}
run memcheck 60
run racecheck 90
