"""Run under horovodrun by test_training.py: AMP step with an inf in rank 1's batch only.
Saves, per rank, whether the step was skipped there, the scale, and parameter checksums."""

import sys

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf

import dataset
import embedding
import model as dlrm
import trainer as training

hvd.init()
tf.keras.mixed_precision.set_global_policy("mixed_float16")
rank, world = hvd.rank(), hvd.size()
vocab = [11, 7, 5]
net = dlrm.DLRM(embedding.create_embedding("tf", vocab, 8), vocab, bottom_mlp=(16, 8),
                top_mlp=(16, 1))
scale = training.DynamicLossScale(initial_scale=1024.0, growth_interval=100)
trainer = training.Trainer(net, lambda step: tf.constant(0.1), 8 * world, loss_scale=scale)
batches = list(dataset.SyntheticDataset(8, vocab, 2, seed=rank))
trainer.build_and_broadcast(batches[0][0])


def checksum():
    local = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in net.trainable_variables])
    return hvd.allgather(tf.reshape(local, [1])).numpy()  # one entry per rank


(dense, ids), label = batches[0]
if rank == 1:
    dense = dense + np.inf
start = checksum()
trainer.train_step((dense, ids), label)
after_bad = checksum()
trainer.train_step(*batches[1])
after_good = checksum()
np.savez(f"{sys.argv[1]}/rank{rank}.npz", start=start, after_bad=after_bad,
         after_good=after_good, scale=float(scale.scale), skipped=int(scale.skipped_steps),
         step=int(trainer.step))
