#!/usr/bin/env bash
# SOK 2.1.0's race with TensorFlow 2.15 on one GPU, and what fixes it. main.py on synthetic
# data at batch 65536 over the full Criteo table (187.8M rows) with the patched SOK of
# gpu/build_sok.sh (gpu/sok_patches/), each patched site restored to SOK 2.1.0's own code in
# turn through SOK_DLRM_UNPATCH, one run each. Logs and JSON in $OUT/probe; one line per run.
#
#   bash tools/sok_probe.sh race [STEPS]   STEPS a run (default 2000), evaluated at the end:
#       patched (amp xla custom, then fp32 compress xla custom); ordered_copies restored (the
#       legacy-stream copies, patch 1); device_sync restored (patch 2). If the fp32 compress
#       run stops on a non-finite loss, the tf backend runs the same, to tell SOK from the
#       schedule.
#   bash tools/sok_probe.sh syncs          the cost of patch 3's two waits: 300 steps with
#       forward_sync and wgrad_sync restored, 300 patched (amp xla custom).
cd "$(dirname "$0")/.."
source /opt/dlrm-gpu/env.sh
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT/probe"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
STAGE=${1:?race or syncs}
STEPS=${2:-2000}
AMP_XLA_CUSTOM=(--amp --xla --custom_interact)
FP32_COMPRESS=(--compress --xla --custom_interact)
probe() {  # name seconds steps embedding unpatched-sites main.py-flags...
  local name=$1 secs=$2 steps=$3 backend=$4 unpatch=$5; shift 5
  local start=$SECONDS
  SOK_DLRM_UNPATCH=$unpatch timeout "$secs" python main.py --use_synthetic_dataset \
    --vocab_sizes=criteo_tb --global_batch_size=65536 --embedding="$backend" \
    --synthetic_steps="$steps" --early_stop="$steps" --log_interval=500 --eval_in_last \
    --results_json="$OUT/probe/$name.json" "$@" > "$OUT/probe/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $((SECONDS - start)) s unpatched=${unpatch:-none}:" \
    "$(grep -hE 'ms/iter|AUC|non-finite' "$OUT/probe/$name.log" | tr '\n' ' ' | cut -c1-300)"
  grep -hE "what\(\)|RuntimeError|illegal|capturing|error:" "$OUT/probe/$name.log" | head -3
  return $rc
}
case "$STAGE" in
  race)
    probe sok_patched_amp_xla_custom 240 "$STEPS" sok "" "${AMP_XLA_CUSTOM[@]}"
    probe sok_unpatched_copies_amp_xla_custom 90 "$STEPS" sok ordered_copies "${AMP_XLA_CUSTOM[@]}"
    probe sok_unpatched_device_sync_amp_xla_custom 120 "$STEPS" sok device_sync \
      "${AMP_XLA_CUSTOM[@]}"
    probe sok_patched_fp32_compress_xla_custom 150 "$STEPS" sok "" "${FP32_COMPRESS[@]}"
    if grep -q "non-finite" "$OUT/probe/sok_patched_fp32_compress_xla_custom.log"; then
      probe tf_fp32_compress_xla_custom 150 "$STEPS" tf "" "${FP32_COMPRESS[@]}"
    fi ;;
  syncs)
    probe sok_unpatched_syncs_amp_xla_custom 90 300 sok forward_sync,wgrad_sync \
      "${AMP_XLA_CUSTOM[@]}"
    probe sok_patched_amp_xla_custom_300 90 300 sok "" "${AMP_XLA_CUSTOM[@]}" ;;
  *)
    echo "sok_probe.sh: race or syncs, not $STAGE"; exit 2 ;;
esac
