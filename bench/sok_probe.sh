#!/usr/bin/env bash
# Where the sok backend fails on one GPU: main.py on synthetic data at batch 65536, 100 steps,
# one table size or flag set per run (a table of more or fewer than 2^31 / 128 = 16.78M rows,
# all tables capped at 16M rows, the full table without XLA, with CUDA_LAUNCH_BLOCKING=1).
# Logs in $OUT/probe; one line per run; the largest vocabulary that trained goes to
# $OUT/probe/vocab_sizes (for bench_gpu.py configs --vocab_sizes).
#
#   bash bench/sok_probe.sh
cd "$(dirname "$0")/.."
source /opt/dlrm-gpu/env.sh
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT/probe"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
CAP16M=16000000,39043,17289,7420,20263,3,7120,1543,63,16000000,2953546,403346,10,2208,11938,155,4,976,14,16000000,16000000,16000000,585935,12972,108,36
SMALL=$(printf ',1000%.0s' $(seq 25))
passed=()
probe() {  # name seconds vocab flags...
  local name=$1 secs=$2 vocab=$3; shift 3
  timeout "$secs" python main.py --use_synthetic_dataset --vocab_sizes="$vocab" \
    --global_batch_size=65536 --embedding=sok --early_stop=100 --log_interval=100 \
    --results_json="$OUT/probe/$name.json" "$@" > "$OUT/probe/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] && passed+=("$vocab")
  echo "== $name rc=$rc $(grep -hE 'ms/iter|GPU peak' "$OUT/probe/$name.log" | tr '\n' ' ' | cut -c1-240)"
  grep -hE "what\(\)|RuntimeError|illegal|error:" "$OUT/probe/$name.log" | head -3
}
probe one17m_amp_xla_custom 120 "17000000$SMALL" --amp --xla --custom_interact
probe one16m_amp_xla_custom 60 "16000000$SMALL" --amp --xla --custom_interact
probe cap16m_amp_xla_custom 70 "$CAP16M" --amp --xla --custom_interact
probe cap16m_fp32_compress 80 "$CAP16M" --compress --xla --custom_interact
probe full_amp 80 criteo_tb --amp
CUDA_LAUNCH_BLOCKING=1 probe full_amp_xla_custom_blocking 90 criteo_tb --amp --xla --custom_interact
for vocab in criteo_tb "$CAP16M" "16000000$SMALL"; do
  for ok in "${passed[@]}"; do
    [ "$ok" = "$vocab" ] && { echo "$vocab" > "$OUT/probe/vocab_sizes"; break 2; }
  done
done
echo "largest vocabulary that trained: $(cat "$OUT/probe/vocab_sizes" 2>/dev/null || echo none)"
