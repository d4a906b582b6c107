"""The step's parts timed alone on one device, beside their floors (bench_gpu's parts mode).

Each part at batch B (26 lookups a sample): a tf.function runs it `repeats` times back to back,
median of 3 such loops. Floors: bytes over the copy bandwidth and FLOPs over the fp16 matmul
rate, both measured first in the same run. Needs custom_interact and embedding_ops built.
"""

import time

import numpy as np
import tensorflow as tf

import custom_interact
import data_format as fmt
import embedding_ops
import metrics
import model as dlrm

FEATURES, DIM, DENSE = 26, 128, 13


class PartTimer:
    """Times parts and keeps their rows ({"part", "ms", "floor_ms"}, and others' rows)."""

    def __init__(self, repeats):
        self.repeats = repeats
        self.rows = []

    def time(self, name, body, floor_ms=None, in_graph=True):
        """Times body() (-> a tensor) -> ms per run. in_graph: the repeats run as one
        tf.function's loop; else as `repeats` calls of a tf.function (the dense parts: an
        XLA-compiled function inside a graph loop crashed TF 2.15 here, 'Mutex corrupt')."""
        step = tf.function(lambda: tf.reduce_sum(tf.reshape(tf.cast(body(), tf.float32),
                                                            [-1])[:1]))

        @tf.function
        def graph_loop():
            acc = tf.constant(0.0)
            for _ in tf.range(self.repeats):
                acc += step()
            return acc

        def python_loop():
            return sum(step() for _ in range(self.repeats))

        run = graph_loop if in_graph else python_loop
        run().numpy()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run().numpy()
            times.append((time.perf_counter() - start) / self.repeats * 1e3)
        ms = sorted(times)[1]
        self.rows.append({"part": name, "ms": ms, "floor_ms": floor_ms})
        floor = f"  floor {floor_ms:.3f} ms ({ms / floor_ms:.1f}x)" if floor_ms else ""
        print(f"{name:52s} {ms:8.3f} ms{floor}", flush=True)
        return ms


def measure_ceilings(timer, smoke):
    """The device's copy bandwidth (read + write of 1 GiB; 4 MiB if smoke) and fp16 matmul
    rate (8192^3; 256^3 if smoke). -> (bytes/s, FLOP/s)."""
    big = tf.random.uniform([1 << (20 if smoke else 28)], dtype=tf.float32)
    copy_ms = timer.time("copy 1 GiB (ceiling)", lambda: big + 1.0)  # (* 1.0 is optimised away)
    bandwidth = 2 * big.shape[0] * 4 / (copy_ms * 1e-3)
    n = 256 if smoke else 8192
    a = tf.cast(tf.random.normal([n, n]), tf.float16)
    flops = 2 * n ** 3 / (timer.time(f"fp16 matmul {n}^3 (ceiling)", lambda: tf.matmul(a, a))
                          * 1e-3)
    timer.rows.append({"part": "ceilings", "bandwidth_tb_s": bandwidth / 1e12,
                       "fp16_tflop_s": flops / 1e12})
    return bandwidth, flops


def _table_and_keys(batch, rows_total):
    """A zero fp32 table of the Criteo vocabularies (scaled to rows_total rows if given) and
    the batch's skewed keys (ids u**3 of each vocabulary, offset into the one table).
    -> (tf.Variable [rows, DIM], int64 [batch * FEATURES], unique key count)."""
    vocab = np.asarray(fmt.CRITEO_TB_VOCAB_SIZES)
    if rows_total is not None:
        vocab = np.maximum(1, vocab * rows_total // vocab.sum())
    table = tf.Variable(tf.zeros([int(vocab.sum()), DIM], tf.float32))
    ids = (np.random.default_rng(0).random((batch, FEATURES)) ** 3 * vocab).astype(np.int64)
    keys = tf.constant((ids + np.concatenate([[0], np.cumsum(vocab)[:-1]])).reshape(-1))
    unique = int(tf.size(tf.unique(keys)[0]))
    print(f"{int(tf.size(keys))} lookups, {unique} unique (skewed ids, u**3)", flush=True)
    return table, keys, unique


def time_lookups(timer, table, keys, bandwidth):
    """The table's gather, with and without the fp16 cast, by TF, XLA and embedding_ops."""
    lookups, row = int(tf.size(keys)), DIM * 4
    cast_floor = lookups * (row + row // 2) / bandwidth * 1e3
    timer.time("gather 1.7M rows fp32", lambda: tf.gather(table, keys),
               2 * lookups * row / bandwidth * 1e3)
    timer.time("gather 1.7M rows + cast fp16", lambda: tf.cast(tf.gather(table, keys),
                                                               tf.float16), cast_floor)
    timer.time("gather 1.7M rows + cast fp16, XLA (the tf backend under --xla)",
               tf.function(lambda: tf.cast(tf.gather(table, keys), tf.float16),
                           jit_compile=True), cast_floor)
    timer.time("gather 1.7M rows + cast fp16, embedding_ops (the tf backend's default)",
               lambda: embedding_ops.gather(table, keys, tf.float16), cast_floor)
    timer.time("unique 1.7M keys", lambda: tf.unique(keys)[0])


def time_updates(timer, table, keys, unique_count, bandwidth):
    """The table's SGD update of repeated keys, four ways; floor: read the gradients, read
    and write each distinct row once."""
    lookups, row = int(tf.size(keys)), DIM * 4
    grads = tf.random.normal([lookups, DIM]) * 1e-9
    fp16_grads, rate = tf.cast(grads, tf.float16), tf.constant(1e-3)

    def scatter_duplicates():
        table.scatter_sub(tf.IndexedSlices(grads, keys))
        return tf.constant(0.0)

    def fused_update():  # the scaling included, fp16 gradients (AMP's)
        embedding_ops.sgd_update(table, keys, fp16_grads, rate)
        return tf.constant(0.0)

    def unique_segment_scatter():
        unique, slot = tf.unique(keys)
        summed = tf.math.unsorted_segment_sum(grads, slot, tf.size(unique))
        table.scatter_sub(tf.IndexedSlices(summed, unique))
        return tf.constant(0.0)

    def sorted_segment_scatter():
        order = tf.argsort(keys)
        sorted_keys = tf.gather(keys, order)
        starts = tf.concat([[True], sorted_keys[1:] != sorted_keys[:-1]], 0)
        segment = tf.cumsum(tf.cast(starts, tf.int32)) - 1
        summed = tf.math.segment_sum(tf.gather(grads, order), segment)
        table.scatter_sub(tf.IndexedSlices(summed, tf.boolean_mask(sorted_keys, starts)))
        return tf.constant(0.0)

    floor = (lookups * row + 2 * unique_count * row) / bandwidth * 1e3
    for name, body in [("update: scatter_sub, duplicate keys", scatter_duplicates),
                       ("update: embedding_ops.sgd_update, fp16 gradients, scaled",
                        fused_update),
                       ("update: unique + segment_sum + scatter_sub", unique_segment_scatter),
                       ("update: argsort + sorted segment_sum + scatter_sub",
                        sorted_segment_scatter)]:
        timer.time(name, body, floor)


class _FixedVectors:
    """An embedding whose lookup returns the same vectors: the dense part alone."""
    dim = DIM
    vocab_sizes = [1] * FEATURES
    variables = []

    def __init__(self, vectors):
        self.vectors = vectors

    def __call__(self, ids):
        return self.vectors

    def exclude_tables(self, variables):
        return variables


def time_dense_part(timer, batch, flops):
    """The model's dense part (bottom MLP, interaction, top MLP) forward and backward under
    AMP, TF's interaction or the custom op, with and without XLA; floor: the MLPs' FLOPs."""
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    dense = tf.random.normal([batch, DENSE])
    vectors = tf.cast(tf.random.normal([batch, FEATURES, DIM]) * 0.1, tf.float16)
    mlp_flops = 3 * 2 * batch * sum(a * b for a, b in zip(
        [DENSE, 512, 256, 480, 1024, 1024, 512, 256], [512, 256, 128, 1024, 1024, 512, 256, 1]))
    for name, interaction, jit in [
            ("dense part fwd+bwd, AMP, TF interaction", dlrm.dot_interaction, False),
            ("dense part fwd+bwd, AMP, TF interaction, XLA", dlrm.dot_interaction, True),
            ("dense part fwd+bwd, AMP, custom op", custom_interact.dot_interact, False),
            ("dense part fwd+bwd, AMP, custom op, XLA", custom_interact.dot_interact, True)]:
        net = dlrm.DLRM(_FixedVectors(vectors), [1] * FEATURES, jit_compile=jit,
                        interaction=interaction)

        def dense_step(net=net):
            with tf.GradientTape() as tape:
                tape.watch(vectors)
                loss = tf.reduce_sum(net((dense, tf.zeros([batch, FEATURES], tf.int32)),
                                         training=True))
            grads = tape.gradient(loss, net.trainable_variables + [vectors])
            return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])
        timer.time(name, dense_step, mlp_flops / flops * 1e3, in_graph=False)
    tf.keras.mixed_precision.set_global_policy("float32")


def time_auc(timer, num_scores):
    """The exact AUC (metrics.roc_auc_tf) over num_scores random scores, once after a warm-up."""
    scores = tf.random.uniform([num_scores])
    labels = tf.cast(tf.random.uniform([num_scores]) < 0.03, tf.float32)
    metrics.roc_auc_tf(labels, scores)
    start = time.perf_counter()
    auc = metrics.roc_auc_tf(labels, scores)
    ms = (time.perf_counter() - start) * 1e3
    timer.rows.append({"part": f"exact AUC over {num_scores:,} scores (roc_auc_tf)", "ms": ms,
                       "floor_ms": None})
    print(f"exact AUC over {num_scores:,} scores: {ms:.1f} ms (AUC {auc:.4f})", flush=True)


def markdown(rows):
    """The timed rows as a markdown table: part, ms, floor ms, ms / floor."""
    lines = ["| part | ms | floor ms | / floor |", "|---|---|---|---|"]
    for row in rows:
        if "ms" in row:
            floor = row["floor_ms"]
            ratio = "" if floor is None else f"{row['ms'] / floor:.1f}"
            floor = "" if floor is None else f"{floor:.3f}"
            lines.append(f"| {row['part']} | {row['ms']:.3f} | {floor} | {ratio} |")
    return lines


def run_parts(repeats, batch, rows_total=None, num_scores=89_137_319):
    """Every part, in order; rows_total: a smaller table (a smoke run, small ceilings too).
    -> (rows, markdown lines)."""
    timer = PartTimer(repeats)
    bandwidth, flops = measure_ceilings(timer, smoke=rows_total is not None)
    table, keys, unique_count = _table_and_keys(batch, rows_total)
    time_lookups(timer, table, keys, bandwidth)
    time_updates(timer, table, keys, unique_count, bandwidth)
    del table
    time_dense_part(timer, batch, flops)
    time_auc(timer, num_scores)
    if tf.config.list_logical_devices("GPU"):
        timer.rows.append({"part": "peak GPU memory GiB",
                           "value": tf.config.experimental.get_memory_info("GPU:0")["peak"]
                           / 2**30})
    return timer.rows, markdown(timer.rows)
