#!/usr/bin/env bash
# Per-source-line executed instructions and stall samples of the CUDA product kernel (ncu
# SourceCounters), for the seed float32 step: launch 5 = forward (row mode), 7 = dk (col mode);
# and the bf16 forward. CSVs in $OUT (gpu/run_all.sh stage probesrc).
set -u
python3 gpu/ncu_probe.py || exit 1
prof() {  # prof NAME SKIP [env...]
  local name=$1 skip=$2; shift 2
  env "$@" timeout 150 ncu --clock-control none --import-source yes --set none --section SourceCounters \
    --section WarpStateStats --section InstructionStats -k regex:masked_product --launch-skip "$skip" --launch-count 1 \
    -o "$OUT/$name" -f python3 gpu/ncu_probe.py >/dev/null 2>&1 || echo "ncu $name failed"
  ncu -i "$OUT/$name.ncu-rep" --page source --csv --print-source cuda > "$OUT/${name}_cuda.csv" 2>&1
  ncu -i "$OUT/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/${name}_sass.csv" 2>&1
  ncu -i "$OUT/$name.ncu-rep" --page details > "$OUT/${name}_details.txt" 2>&1
  rm -f "$OUT/$name.ncu-rep"
  wc -l "$OUT/${name}_cuda.csv" "$OUT/${name}_sass.csv"; head -c 600 "$OUT/${name}_cuda.csv"; echo
}
prof f32fwd 4
prof f32dk 6
[ -n "${PROBE_BF16:-}" ] && prof bf16fwd 4 PROBE_DTYPE=bfloat16 PROBE_N=4096 PROBE_B=4
exit 0
