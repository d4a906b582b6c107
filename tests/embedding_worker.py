"""Run under horovodrun by test_embedding.py: one lookup and one SGD step of the tf backend.

    python embedding_worker.py OUT_DIR

Every rank builds the tables from the same numpy full table, looks up its slice of one global
batch (eagerly and in a tf.function), takes one SGD step on loss = sum(vectors * weights), and
writes OUT_DIR/rank{R}_compress{C}.npz with its initial shard, outputs and updated shard.
"""

import os
import sys

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd

import embedding

VOCAB_SIZES = [5, 3, 17, 1, 8]
DIM = 3
GLOBAL_BATCH = 12
LEARNING_RATE = 0.5


def global_problem():
    """The shared full table, global ids (many duplicates) and loss weights, seed-fixed."""
    rng = np.random.default_rng(7)
    full_table = rng.standard_normal((sum(VOCAB_SIZES), DIM)).astype(np.float32)
    ids = np.stack([rng.integers(0, vocab, GLOBAL_BATCH) for vocab in VOCAB_SIZES],
                   axis=1).astype(np.int32)
    weights = rng.standard_normal((GLOBAL_BATCH, len(VOCAB_SIZES), DIM)).astype(np.float32)
    return full_table, ids, weights


def main(out_dir):
    hvd.init()
    rank, num_ranks = hvd.rank(), hvd.size()
    full_table, ids, weights = global_problem()
    local = slice(rank * GLOBAL_BATCH // num_ranks, (rank + 1) * GLOBAL_BATCH // num_ranks)
    local_ids, local_weights = tf.constant(ids[local]), tf.constant(weights[local])
    table_source = tf.constant(full_table)

    for compress in (False, True):
        emb = embedding.create_embedding("tf", VOCAB_SIZES, DIM, compress=compress,
                                         initializer=lambda rows: tf.gather(table_source, rows))
        initial_shard = emb.table.numpy()
        eager_output = emb(local_ids).numpy()
        gradient_types = []

        @tf.function
        def train_step(ids, weights):
            with tf.GradientTape() as tape:
                vectors = emb(ids)
                loss = tf.reduce_sum(vectors * weights)
            grads = tape.gradient(loss, emb.variables)
            gradient_types.extend(type(g).__name__ for g in grads)
            emb.apply_gradients(grads, tf.constant(LEARNING_RATE))
            return vectors

        function_output = train_step(local_ids, local_weights).numpy()
        np.savez(os.path.join(out_dir, f"rank{rank}_compress{int(compress)}.npz"),
                 initial_shard=initial_shard, eager_output=eager_output,
                 function_output=function_output, updated_shard=emb.table.numpy(),
                 gradient_types=np.array(gradient_types), name=np.array(emb.name))


if __name__ == "__main__":
    main(sys.argv[1])
