#!/usr/bin/env bash
# One call of the device tool, from the repo root:
#   run: bash bench/custom_interact/run_on_device.sh
# Builds the kernels for sm_90, runs the small-shape driver plain and under compute-sanitizer
# (memcheck, racecheck, synccheck), checks the SASS for tensor-core instructions, then runs
# harness.py (correctness over random shapes + timing). Everything lands in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/custom_interact_out}
mkdir -p "$OUT"
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
status=0
{
  date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  nvcc --version | tail -2
  make SMS=90 2>&1 | grep -E "error|warning|spill|Compiling entry|registers" || true
  test -x build/sanitize || { echo "build failed"; exit 1; }
  echo "== SASS: tensor-core instructions per kernel object"
  cuobjdump --dump-sass build/libdot_interact.so | grep -oE "HMMA[.A-Z0-9]*" | sort | uniq -c
  echo "== sanitize driver (plain)"
  ./build/sanitize || status=1
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 99 ./build/sanitize \
      > "$OUT/sanitize_$tool.log" 2>&1
    rc=$?
    echo "$tool exit status $rc"
    grep -E "SUMMARY|ERROR SUMMARY|hazard|Error" "$OUT/sanitize_$tool.log" | head -5
    [ $rc -eq 0 ] || status=1
  done
  echo "== harness"
  python3 harness.py --out "$OUT" || status=1
  echo "run_on_device status $status"
  exit $status
} 2>&1 | tee "$OUT/log.txt"
