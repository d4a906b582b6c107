#!/usr/bin/env bash
# One stage of the GPU checks and figures, on a GPU machine with the environment of
# ../shared/gpu/ unpacked (boot.sh). Logs and JSON go to $OUT (default /tmp/gpu_out).
#
#   bash bench/gpu_run.sh build      the custom ops against this TensorFlow (CUDA builds)
#   bash bench/gpu_run.sh tests      the GPU-facing tests: the ops on the GPU, the step graph
#   bash bench/gpu_run.sh configs    bench_gpu configs (the seed's configurations;
#                                    --embedding=sok for the sok backend)
#   bash bench/gpu_run.sh share      bench_gpu configs at one GPU's share of the 8-GPU job:
#                                    batch 8192, ceil(v / 8) rows of each Criteo table
#   bash bench/gpu_run.sh parts      bench_gpu parts (the step's parts beside their floors)
#   bash bench/gpu_run.sh real_data  20M/2M synthetic samples at full Criteo vocabularies:
#                                    generate, split, train one epoch, evaluate
#   bash bench/gpu_run.sh profile    a TF profiler trace of steps 41-50 of the first
#                                    configuration, summarised by tools/trace_summary.py
#                                    (needs .gpu/nvidia_cuda_cupti_cu12-*.whl: CUPTI 12);
#                                    SHARE=1: at one GPU's share of the 8-GPU job
#   bash bench/gpu_run.sh suite [FILES]  the test suite (or FILES), one summary line per file
#   bash bench/gpu_run.sh sok_tests  the tests that run the real SOK (one rank each; several
#                                    minutes: each starts TF, SOK and main.py more than once)
#   bash bench/gpu_run.sh install    installs the builds carried in .gpu/ (gpu/install_builds.sh):
#                                    NCCL Horovod over the pack's Gloo-only one, SOK 2.1.0
set -euo pipefail
cd "$(dirname "$0")/.."
source /opt/dlrm-gpu/env.sh
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
stage=$1; shift
SHARE_BATCH=8192  # one GPU's share of the 8-GPU job: its batch, and ceil(v / 8) rows a table
share_vocab() {
  python -c 'import math, data_format as f
print(",".join(str(math.ceil(v / 8)) for v in f.CRITEO_TB_VOCAB_SIZES))'
}
case "$stage" in
  build)
    for ops in custom_interact embedding_ops; do
      make -s -C $ops PYTHON="$(command -v python)" 2>&1 | grep -v "ptxas info" || true
    done
    test -f custom_interact/build/_dot_interact_ops.so && test -f embedding_ops/build/_table_ops.so ;;
  tests)
    python -m pytest -q tests/test_custom_interact.py tests/test_embedding_ops.py \
      tests/test_step_graph.py "$@" 2>&1 \
      | tee "$OUT/tests.log" ;;
  configs)
    python -m bench.bench_gpu configs --out="$OUT/configs" "$@" ;;
  share)
    python -m bench.bench_gpu configs --out="$OUT/share" --batch=$SHARE_BATCH \
      --vocab_sizes="$(share_vocab)" "$@" ;;
  parts)
    python -m bench.bench_gpu parts --out="$OUT/parts" "$@" ;;
  real_data)
    data=${DATA:-/tmp/dlrm_real}
    if [ ! -f "$data/test/metadata.json" ]; then
      /usr/bin/time -v python synthetic_data.py "$data/raw" --train_samples=20000000 \
        --test_samples=2000000 --vocab_sizes=criteo_tb --workers="$(nproc)" 2> "$OUT/generate.log"
      for part in train test; do
        python split_bin.py "$data/raw/${part}_data.bin" "$data/$part" --vocab_sizes=criteo_tb
      done
    fi
    python main.py --data_dir="$data" --global_batch_size=65536 --amp --xla --custom_interact \
      --warmup_steps=50 --decay_start_step=200 --decay_steps=105 --eval_interval=100 \
      --eval_in_last --auc_target=1.0 --log_interval=50 --results_json="$OUT/real_data.json" "$@" \
      2>&1 | tee "$OUT/real_data.log"
    python -c "import json; print('best AUC the data allows:', json.load(open('$data/raw/synthetic.json'))['best_test_auc'])" \
      | tee -a "$OUT/real_data.log" ;;
  profile)
    python -m zipfile -e .gpu/nvidia_cuda_cupti_cu12-*.whl /opt/cupti
    export LD_LIBRARY_PATH=/opt/cupti/nvidia/cuda_cupti/lib:$LD_LIBRARY_PATH
    share=()
    if [ "${SHARE:-0}" = 1 ]; then
      share=(--global_batch_size=$SHARE_BATCH --vocab_sizes="$(share_vocab)")
    fi
    python main.py --use_synthetic_dataset --vocab_sizes=criteo_tb --global_batch_size=65536 \
      --embedding=tf --amp --xla --custom_interact --early_stop=60 --log_interval=20 \
      --profile_dir="$OUT/profile" --profile_steps=40:50 "${share[@]}" "$@" 2>&1 \
      | tee "$OUT/profile.log"
    python -m tools.trace_summary "$OUT/profile" --steps=10 --top=40 \
      --json="$OUT/profile_summary.json" | tee -a "$OUT/profile.log" ;;
  suite)  # file by file, so a call's time limit still leaves each finished file's summary
    export TF_FORCE_GPU_ALLOW_GROWTH=true
    for file in "${@:-tests/test_*.py}"; do
      for f in $file; do
        echo "== $f: $(python -m pytest -q -p no:cacheprovider "$f" 2>&1 | tail -n 1)" \
          | tee -a "$OUT/suite.log"
      done
    done ;;
  sok_tests)  # a summary line per file, so a call's time limit still leaves the finished ones
    for spec in "tests/test_embedding.py:sok and not stand" "tests/test_training.py:real_sok" \
                "tests/test_checkpoint.py:real_sok"; do
      echo "== ${spec%%:*} -k '${spec#*:}': $(python -m pytest -q -p no:cacheprovider \
        "${spec%%:*}" -k "${spec#*:}" 2>&1 | tail -n 1)" | tee -a "$OUT/sok_tests.log"
    done ;;
  install)
    bash gpu/install_builds.sh 2>&1 | tee "$OUT/install.log" ;;
  *)
    echo "gpu_run.sh: unknown stage $stage"; exit 2 ;;
esac
