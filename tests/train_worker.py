"""Run under horovodrun by test_training.py: trains a tiny DLRM for a few steps from a fixed
initial state and saves, on rank 0, the global loss of every step, the final parameters
(dense variables and the whole embedding table gathered from the shards), every rank's
dense-variable checksum after the broadcast, and the evaluation AUC and every sample's
prediction (in file order) over the training file.

    python train_worker.py DATA_DIR OUT STEPS GLOBAL_BATCH COMPRESS [BACKEND]
BACKEND: tf (default), sok (the real SOK 2.x), or sok-stand-in (the sok backend on
tests/sok_stand_in.py)."""

import sys

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf

import dataset
import embedding
from embedding_worker import shard_rows
import model as dlrm
import trainer as training

hvd.init()
data_dir, out_path, steps, global_batch, compress = sys.argv[1:6]
backend = sys.argv[6] if len(sys.argv) > 6 else "tf"
if backend == "sok-stand-in":
    import sok_stand_in
    sok_stand_in.install()
steps, global_batch, compress = int(steps), int(global_batch), compress == "1"
rank, world = hvd.rank(), hvd.size()

data = dataset.SplitDataset(data_dir, global_batch // world, rank, world, training=True)
dim = 8
full_table = np.random.default_rng(5).uniform(-0.5, 0.5, (sum(data.vocab_sizes), dim))
tables = embedding.create_embedding(
    backend.replace("-stand-in", ""), data.vocab_sizes, dim, compress=compress,
    initializer=lambda rows: tf.gather(tf.constant(full_table, tf.float32), rows))
# A different dense initialisation on every rank: only the broadcast from rank 0 makes the
# runs agree with the one-rank run (seed 0).
net = dlrm.DLRM(tables, data.vocab_sizes, bottom_mlp=(16, dim), top_mlp=(16, 8, 1), seed=rank)
# lr 0.5: at 2.0 the tiny model collapses to one score for most samples within 20 steps, and
# the AUC comparison of the test would say nothing.
schedule = training.LearningRateSchedule(0.5, warmup_steps=3, decay_start_step=8, decay_steps=10)
trainer = training.Trainer(net, schedule, global_batch)
trainer.build_and_broadcast(next(iter(data))[0])
start_checksums = hvd.allgather(tf.reshape(tf.add_n(
    [tf.reduce_sum(tf.cast(v, tf.float64)) for v in net.dense_variables]), [1])).numpy()

losses = []
batches = iter(data)
for _ in range(steps):
    features, label = next(batches)
    losses.append(float(hvd.allreduce(trainer.train_step(features, label), op=hvd.Average)))

# Evaluation over the same file (1603 samples) with batch 400: the remainder of 3 samples
# gives every rank a last batch of the same rows (2 + 1 padded to 2 + 2 on 2 ranks; on 4,
# one row each, rank 3's only padding), which all take part in the exchange.
eval_data = dataset.SplitDataset(data_dir, 400, rank, world, training=False)
eval_auc, eval_samples = trainer.evaluate(eval_data)
# Every sample's prediction, put back in file order through the reader's batch ranges.
eval_ranges = dataset.batch_ranges(data.num_samples, 400, rank, world, False)
local_predictions = tf.concat([trainer.predict_step(features)[:count] for (features, _), (_, count, _)
                               in zip(eval_data, eval_ranges)], 0)
local_samples = np.concatenate([np.arange(start, start + count)
                                for start, count, _ in eval_ranges])
all_predictions = hvd.allgather(local_predictions).numpy()
all_samples = hvd.allgather(tf.constant(local_samples, tf.int64)).numpy()
predictions = np.full(data.num_samples, np.nan, np.float32)
predictions[all_samples] = all_predictions

shards = net.embedding_variables
local_rows = shard_rows(data.vocab_sizes, rank, world)
rows = hvd.allgather(tf.constant(local_rows, tf.int64)).numpy()
values = hvd.allgather(tf.concat(shards, 0)).numpy()
if rank == 0:
    assert np.array_equal(np.sort(rows), np.arange(len(full_table)))  # each row exactly once
    table = np.zeros_like(full_table)
    table[rows] = values
    np.savez(out_path, losses=np.array(losses), table=table, shard_rows=sum(s.shape[0] for s in shards),
             start_checksums=start_checksums, eval_auc=eval_auc, eval_samples=eval_samples,
             predictions=predictions, labels=data.read_numpy(0, data.num_samples)[2][:, 0],
             **{f"dense_{i}": v.numpy() for i, v in enumerate(net.dense_variables)})
