"""Run under horovodrun by test_embedding.py: one lookup and one SGD step of a backend.

    python embedding_worker.py OUT_DIR [BACKEND]
        BACKEND: tf (default), tf-unfused (TF's ops for the table), sok, sok-stand-in

Every rank builds the table from the same numpy full table, looks up its slice of one global
batch (eagerly and in a tf.function), takes one SGD step on loss = sum(vectors * weights), and
writes OUT_DIR/rank{R}_compress{C}.npz with its initial shard, outputs and updated shard.
sok-stand-in runs the sok backend on tests/sok_stand_in.py and also records what a lookup
with a different number of rows on each rank raised.
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


def shard_rows(vocab_sizes, rank, num_ranks):
    """By hand, the layout both backends promise: -> the global rows of `rank`'s local rows
    0, 1, ...: global row r (offset[f] + id) of the one fused table lives on rank r % N at
    local row r // N."""
    return np.arange(rank, sum(vocab_sizes), num_ranks)


def backend_name(backend):
    """A run's backend ("tf", "tf-unfused": TF's ops for the table, "sok", "sok-stand-in") ->
    create_embedding's name of it."""
    return backend.split("-")[0]


def main(out_dir, backend="tf"):
    hvd.init()
    if backend == "sok-stand-in":
        import sok_stand_in
        sok_stand_in.install()
    rank, num_ranks = hvd.rank(), hvd.size()
    full_table, ids, weights = global_problem()
    local = slice(rank * GLOBAL_BATCH // num_ranks, (rank + 1) * GLOBAL_BATCH // num_ranks)
    local_ids, local_weights = tf.constant(ids[local]), tf.constant(weights[local])
    table_source = tf.constant(full_table)

    for compress in (False, True):
        emb = embedding.create_embedding(backend_name(backend), VOCAB_SIZES, DIM,
                                         compress=compress,
                                         fused_table_ops=backend != "tf-unfused",
                                         initializer=lambda rows: tf.gather(table_source, rows))
        initial_shards = [v.numpy() for v in emb.variables]
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
        unequal_error = ""
        if backend == "sok-stand-in" and num_ranks > 1:
            try:
                emb(local_ids[:1 + rank])  # rank r brings 1 + r rows
            except tf.errors.InvalidArgumentError as error:
                unequal_error = error.message
        shards = {f"initial_shard{i}": shard for i, shard in enumerate(initial_shards)}
        shards.update({f"updated_shard{i}": v.numpy() for i, v in enumerate(emb.variables)})
        np.savez(os.path.join(out_dir, f"rank{rank}_compress{int(compress)}.npz"),
                 eager_output=eager_output, function_output=function_output,
                 gradient_types=np.array(gradient_types), name=np.array(emb.name),
                 num_shards=len(initial_shards), unequal_error=np.array(unequal_error), **shards)


if __name__ == "__main__":
    main(*sys.argv[1:])
