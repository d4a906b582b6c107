#!/usr/bin/env bash
# The README's first command: sets up, makes a small synthetic Criteo-like dataset
# (HugeCTR raw -> split format) under data/synthetic, then streams it through the
# per-rank reader on 2 Horovod CPU ranks, printing samples/s per rank.
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
.venv/bin/horovodrun -np 2 --gloo -H localhost:2 $PY bench/bench_reader.py "$DATA/train" --horovod
