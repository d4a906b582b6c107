"""Run under horovodrun by test_training.py: trains a tiny DLRM for a few steps from a fixed
initial state and saves, on rank 0, the global loss of every step and the final parameters
(dense variables and the whole embedding table gathered from the shards)."""

import sys

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf

import dataset
import embedding
import model as dlrm
import trainer as training

hvd.init()
data_dir, out_path, steps, global_batch, compress = sys.argv[1:6]
steps, global_batch, compress = int(steps), int(global_batch), compress == "1"
rank, world = hvd.rank(), hvd.size()

data = dataset.SplitDataset(data_dir, global_batch // world, rank, world, training=True)
dim = 8
full_table = np.random.default_rng(5).uniform(-0.5, 0.5, (sum(data.vocab_sizes), dim))
tables = embedding.create_embedding(
    "tf", data.vocab_sizes, dim, compress=compress,
    initializer=lambda rows: tf.gather(tf.constant(full_table, tf.float32), rows))
net = dlrm.DLRM(tables, data.vocab_sizes, bottom_mlp=(16, dim), top_mlp=(16, 8, 1), seed=0)
schedule = training.LearningRateSchedule(2.0, warmup_steps=3, decay_start_step=8, decay_steps=10)
trainer = training.Trainer(net, schedule, global_batch)
trainer.broadcast_dense_variables(next(iter(data))[0])

losses = []
batches = iter(data)
for _ in range(steps):
    features, label = next(batches)
    losses.append(float(hvd.allreduce(trainer.train_step(features, label), op=hvd.Average)))

shard = net.embedding_variables[0]
local_rows = np.arange(shard.shape[0]) * world + rank  # row r lives on rank r % N at r // N
rows = hvd.allgather(tf.constant(local_rows, tf.int64)).numpy()
values = hvd.allgather(shard).numpy()
if rank == 0:
    valid = rows < len(full_table)  # a shard may hold padding rows past the end
    table = np.zeros_like(full_table)
    table[rows[valid]] = values[valid]
    assert np.bincount(rows[valid], minlength=len(full_table)).max() == 1
    np.savez(out_path, losses=np.array(losses), table=table, shard_rows=shard.shape[0],
             **{f"dense_{i}": v.numpy() for i, v in enumerate(net.dense_variables)})
