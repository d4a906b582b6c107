#!/usr/bin/env bash
# The README's first command: sets up, makes a small synthetic Criteo-like dataset
# (HugeCTR raw -> split format) under data/synthetic, then trains DLRM on it on 2 Horovod
# CPU ranks (a smaller MLP and schedule than MLPerf's, sized for 2M samples) and prints
# the report beside the best AUC the data allows.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
PY=.venv/bin/python
DATA=data/synthetic
TRAIN_SAMPLES=${TRAIN_SAMPLES:-2000000}
TEST_SAMPLES=${TEST_SAMPLES:-200000}
if [ ! -f "$DATA/train/metadata.json" ] || [ ! -f "$DATA/test/metadata.json" ]; then
  $PY synthetic_data.py "$DATA/raw" --train_samples="$TRAIN_SAMPLES" --test_samples="$TEST_SAMPLES"
  VOCAB=$($PY -c 'import json; print(json.load(open("'"$DATA"'/raw/synthetic.json"))["vocab_sizes"])')
  $PY split_bin.py "$DATA/raw/train_data.bin" "$DATA/train" --vocab_sizes="$VOCAB" --overwrite
  $PY split_bin.py "$DATA/raw/test_data.bin" "$DATA/test" --vocab_sizes="$VOCAB" --overwrite
fi
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/horovodrun -np 2 --gloo -H localhost:2 ./hvd_wrapper.sh $PY main.py \
  --data_dir="$DATA" --global_batch_size=4096 --epochs=2 --lr=2 \
  --embedding_dim=16 --bottom_mlp=64,16 --top_mlp=64,32,1 \
  --warmup_steps=50 --decay_start_step=900 --decay_steps=564 --eval_interval=488 \
  --log_interval=100 --results_json="$DATA/report.json" "$@"
$PY -c 'import json; print("best AUC the data allows (hidden probabilities):",
                           round(json.load(open("'"$DATA"'/raw/synthetic.json"))["best_test_auc"], 4))'
