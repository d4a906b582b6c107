"""DLRM on one GPU: the seed's configurations end to end, and the step's parts beside their floors.

    python3 -m bench.bench_gpu configs --out=DIR [--steps=300] [--embedding=tf|sok]
                                  [--vocab_sizes=criteo_tb] [--batch=65536] [--only=NAME,NAME]
                                  [--extra="--nofused_table_ops ..."]
                                                        main.py runs -> DIR/configs_EMB.{json,md}
    python3 -m bench.bench_gpu scaling --out=DIR [--gpus=1,2,4,8] [--per_gpu_batch=8192]
                                  [--batch=65536] [configs' options]
                                          the configs on N GPUs -> DIR/scaling_EMB.{json,md}
    python3 -m bench.bench_gpu parts --out=DIR                    parts alone -> DIR/parts.{json,md}

configs: one `main.py --use_synthetic_dataset --vocab_sizes=criteo_tb --global_batch_size=65536
--embedding=EMB` run per configuration (by default the full Criteo table, 187.8M x 128 fp32 =
89.5 GiB), each in
its own process; ms/iter and samples/s over the steps after the first (the report's), first-step
time (tracing, XLA compilation, PTX JIT), table start-up time, peak GPU memory at start and at
the end (TF's allocator).

scaling: the same runs under horovodrun -np N ./hvd_wrapper.sh (one GPU per rank; set
NCCL_NVLS_ENABLE=0 on shared machines) for each N of --gpus, at a fixed per-GPU batch (global
N x --per_gpu_batch) and at the fixed global --batch; the speed-up over one GPU at the same
per-GPU batch and at the same global batch, with its efficiency (speed-up / N).

parts: in one process, each part of a step at batch 65536 (26 lookups a sample) timed alone
(needs custom_interact and embedding_ops built):
a tf.function runs it REPEATS times back to back, median of 3 such loops. Floors: bytes over
the copy bandwidth and FLOPs over the fp16 matmul rate, both measured first in the same run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from tools import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {  # name -> main.py flags; the seed's rows first
    "amp xla custom": ["--amp", "--xla", "--custom_interact"],
    "fp32 compress xla custom": ["--compress", "--xla", "--custom_interact"],
    "amp custom": ["--amp", "--custom_interact"],
    "amp xla": ["--amp", "--xla"],
    "amp": ["--amp"],
    "fp32 compress custom": ["--compress", "--custom_interact"],
    "fp32 xla custom": ["--xla", "--custom_interact"],
    "amp compress xla custom": ["--amp", "--compress", "--xla", "--custom_interact"],
}
BATCH, FEATURES, DIM, DENSE = 65536, 26, 128, 13
REPORT_KEYS = ["ms_per_iteration", "samples_per_second", "first_step_seconds", "table_seconds",
               "startup_peak_gpu_gib", "peak_gpu_gib"]


def _gib(value):
    return "" if value is None else f"{value:.1f}"  # None: no GPU (a smoke run on CPU ranks)


def launcher(ranks):
    """The command prefix for main.py on `ranks` local ranks: python alone for one, else
    horovodrun with hvd_wrapper.sh (one GPU per rank)."""
    if ranks == 1:
        return [sys.executable]
    return launch.horovodrun(ranks, sys.executable, wrapper=True)


def run_configs(out_dir, steps, names, embedding="tf", vocab_sizes="criteo_tb", batch=BATCH,
                timeout=None, ranks=1, extra=()):
    """extra: main.py flags added to every configuration's (they name the files too)."""
    rows = []
    for name in names:
        stem = os.path.join(out_dir, f"{embedding}_{name.replace(' ', '_')}"
                                     + (f"_np{ranks}_b{batch}" if ranks > 1 else "")
                                     + "".join(f"_{flag.lstrip('-')}" for flag in extra))
        results = stem + ".json"
        cmd = [*launcher(ranks), os.path.join(ROOT, "main.py"), "--use_synthetic_dataset",
               f"--vocab_sizes={vocab_sizes}", f"--global_batch_size={batch}",
               f"--embedding={embedding}",
               f"--early_stop={steps}", f"--log_interval={steps}", "--eval_in_last",
               f"--results_json={results}", *CONFIGS[name], *extra]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as expired:
            returncode = f"timeout {timeout} s"
            stdout, stderr = [(out or b"").decode(errors="replace")
                              for out in (expired.stdout, expired.stderr)]
        with open(stem + ".log", "w") as log:
            log.write(" ".join(cmd) + "\n" + stdout + stderr)
        if returncode != 0:
            print(f"{name}: FAILED ({returncode}): {stderr.strip().splitlines()[-6:]}",
                  flush=True)
            rows.append({"config": name, "failed": returncode})
            continue
        report = json.load(open(results))
        row = {"config": name, "embedding": embedding,
               "flags": " ".join(CONFIGS[name] + list(extra)),
               "ranks": ranks, "global_batch": batch, "wall_seconds": time.perf_counter() - start,
               **{key: report[key] for key in REPORT_KEYS}}
        rows.append(row)
        print(f"{name}: {row['ms_per_iteration']:.2f} ms/iter "
              f"{row['samples_per_second'] / 1e6:.2f}M samples/s, first step "
              f"{row['first_step_seconds']:.1f} s, peak {_gib(row['peak_gpu_gib'])} GiB",
              flush=True)
    table = ["| configuration | ms/iter | M samples/s | first step s | table init s | "
             "peak GiB at start | peak GiB |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "failed" in row:
            table.append(f"| {row['config']} | failed | | | | | |")
            continue
        table.append(f"| {row['config']} | {row['ms_per_iteration']:.2f} | "
                     f"{row['samples_per_second'] / 1e6:.2f} | {row['first_step_seconds']:.1f} | "
                     f"{row['table_seconds']:.1f} | {_gib(row['startup_peak_gpu_gib'])} | "
                     f"{_gib(row['peak_gpu_gib'])} |")
    return rows, table


def run_scaling(out_dir, steps, names, gpus, per_gpu_batch, global_batch, **options):
    """Each configuration on each number of GPUs, at a fixed per-GPU batch and at a fixed
    global batch -> (rows, markdown table with the speed-ups over 1 GPU and efficiencies)."""
    rows = []
    for ranks in gpus:
        for batch in sorted({per_gpu_batch * ranks, global_batch}):
            rows += run_configs(out_dir, steps, names, batch=batch, ranks=ranks, **options)[0]
    table = ["| configuration | GPUs | global batch | ms/iter | M samples/s | speed-up, same "
             "per-GPU batch | speed-up, same global batch | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    done = [row for row in rows if "failed" not in row]

    def speedup(row, one_gpu_batch):
        """-> "x (efficiency)" against the 1-GPU run of this configuration at one_gpu_batch."""
        found = [r for r in done if r["config"] == row["config"] and r["ranks"] == 1
                 and r["global_batch"] == one_gpu_batch]
        if not found:
            return ""
        x = row["samples_per_second"] / found[0]["samples_per_second"]
        return f"{x:.2f} ({x / row['ranks']:.0%})"
    for row in rows:
        if "failed" in row:
            table.append(f"| {row['config']} | failed | | | | | | |")
            continue
        table.append(f"| {row['config']} | {row['ranks']} | {row['global_batch']} | "
                     f"{row['ms_per_iteration']:.2f} | {row['samples_per_second'] / 1e6:.2f} | "
                     f"{speedup(row, row['global_batch'] // row['ranks'])} | "
                     f"{speedup(row, row['global_batch'])} | {_gib(row['peak_gpu_gib'])} |")
    return rows, table


def run_parts(repeats, batch=BATCH, rows_total=None, num_scores=89_137_319):
    import numpy as np
    import tensorflow as tf

    import custom_interact
    import data_format as fmt
    import embedding_ops
    import metrics
    import model as dlrm

    rows = []

    def timed(name, body, floor_ms=None, in_graph=True):
        """in_graph: the repeats run as one tf.function's loop; else as `repeats` calls of a
        tf.function (the dense parts: an XLA-compiled function inside a graph loop crashed
        TF 2.15 here, 'Mutex corrupt')."""
        step = tf.function(lambda: tf.reduce_sum(tf.reshape(tf.cast(body(), tf.float32), [-1])[:1]))

        @tf.function
        def loop():
            acc = tf.constant(0.0)
            for _ in tf.range(repeats):
                acc += step()
            return acc

        def python_loop():
            acc = 0.0
            for _ in range(repeats):
                acc += step()
            return acc

        run = loop if in_graph else python_loop
        run().numpy()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run().numpy()
            times.append((time.perf_counter() - start) / repeats * 1e3)
        ms = sorted(times)[1]
        rows.append({"part": name, "ms": ms, "floor_ms": floor_ms})
        floor = f"  floor {floor_ms:.3f} ms ({ms / floor_ms:.1f}x)" if floor_ms else ""
        print(f"{name:52s} {ms:8.3f} ms{floor}", flush=True)
        return ms

    # Ceilings, measured here: device copy (read + write) and fp16 matmul (small in smoke runs).
    smoke = rows_total is not None
    big = tf.random.uniform([1 << (20 if smoke else 28)], dtype=tf.float32)  # 1 GiB
    copy_ms = timed("copy 1 GiB (ceiling)", lambda: big + 1.0)  # (* 1.0 is optimised away)
    bandwidth = 2 * big.shape[0] * 4 / (copy_ms * 1e-3)
    n = 256 if smoke else 8192
    a = tf.cast(tf.random.normal([n, n]), tf.float16)
    matmul_ms = timed(f"fp16 matmul {n}^3 (ceiling)", lambda: tf.matmul(a, a))
    flops = 2 * n ** 3 / (matmul_ms * 1e-3)
    rows.append({"part": "ceilings", "bandwidth_tb_s": bandwidth / 1e12,
                 "fp16_tflop_s": flops / 1e12})
    del big

    def bytes_floor(nbytes):
        return nbytes / bandwidth * 1e3

    vocab = np.asarray(fmt.CRITEO_TB_VOCAB_SIZES)
    if rows_total is not None:  # a smaller table (a smoke run): vocabularies scaled down
        vocab = np.maximum(1, vocab * rows_total // vocab.sum())
    rows_total = int(vocab.sum())
    lookups = batch * FEATURES
    table = tf.Variable(tf.zeros([rows_total, DIM], tf.float32))
    rng = np.random.default_rng(0)
    ids = (rng.random((batch, FEATURES)) ** 3 * vocab).astype(np.int64)
    keys = tf.constant((ids + np.concatenate([[0], np.cumsum(vocab)[:-1]])).reshape(-1))
    unique_keys, _ = tf.unique(keys)
    print(f"{lookups} lookups, {int(tf.size(unique_keys))} unique (skewed ids, u**3)", flush=True)
    grads = tf.random.normal([lookups, DIM]) * 1e-9
    row = DIM * 4
    timed("gather 1.7M rows fp32", lambda: tf.gather(table, keys), bytes_floor(2 * lookups * row))
    timed("gather 1.7M rows + cast fp16", lambda: tf.cast(tf.gather(table, keys), tf.float16),
          bytes_floor(lookups * (row + row // 2)))
    timed("gather 1.7M rows + cast fp16, XLA (the tf backend under --xla)",
          tf.function(lambda: tf.cast(tf.gather(table, keys), tf.float16), jit_compile=True),
          bytes_floor(lookups * (row + row // 2)))
    timed("gather 1.7M rows + cast fp16, embedding_ops (the tf backend's default)",
          lambda: embedding_ops.gather(table, keys, tf.float16),
          bytes_floor(lookups * (row + row // 2)))
    timed("unique 1.7M keys", lambda: tf.unique(keys)[0])

    def scatter_duplicates():
        table.scatter_sub(tf.IndexedSlices(grads, keys))
        return tf.constant(0.0)

    fp16_grads, rate = tf.cast(grads, tf.float16), tf.constant(1e-3)

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

    update_floor = bytes_floor(lookups * row + 2 * int(tf.size(unique_keys)) * row)
    for name, body in [("update: scatter_sub, duplicate keys", scatter_duplicates),
                       ("update: embedding_ops.sgd_update, fp16 gradients, scaled",
                        fused_update),
                       ("update: unique + segment_sum + scatter_sub", unique_segment_scatter),
                       ("update: argsort + sorted segment_sum + scatter_sub",
                        sorted_segment_scatter)]:
        timed(name, body, update_floor)
    del table

    tf.keras.mixed_precision.set_global_policy("mixed_float16")

    dense = tf.random.normal([batch, DENSE])
    vectors = tf.cast(tf.random.normal([batch, FEATURES, DIM]) * 0.1, tf.float16)

    class FixedVectors:  # the dense part alone: the lookup returns the same vectors
        dim = DIM
        vocab_sizes = [1] * FEATURES
        variables = []

        def __call__(self, ids):
            return vectors

        def exclude_tables(self, variables):
            return variables
    mlp_flops = 3 * 2 * batch * sum(a * b for a, b in zip(
        [DENSE, 512, 256, 480, 1024, 1024, 512, 256], [512, 256, 128, 1024, 1024, 512, 256, 1]))
    for name, interaction, jit in [("dense part fwd+bwd, AMP, TF interaction", None, False),
                                   ("dense part fwd+bwd, AMP, TF interaction, XLA", None, True),
                                   ("dense part fwd+bwd, AMP, custom op", "custom", False),
                                   ("dense part fwd+bwd, AMP, custom op, XLA", "custom", True)]:
        net = dlrm.DLRM(FixedVectors(), [1] * FEATURES, jit_compile=jit, interaction=(
            custom_interact.dot_interact if interaction else dlrm.dot_interaction))

        def dense_step(net=net):
            with tf.GradientTape() as tape:
                tape.watch(vectors)
                logits = net((dense, tf.zeros([batch, FEATURES], tf.int32)), training=True)
                loss = tf.reduce_sum(logits)
            grads = tape.gradient(loss, net.trainable_variables + [vectors])
            return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])
        timed(name, dense_step, mlp_flops / flops * 1e3, in_graph=False)
    tf.keras.mixed_precision.set_global_policy("float32")

    scores = tf.random.uniform([num_scores])
    labels = tf.cast(tf.random.uniform([num_scores]) < 0.03, tf.float32)
    metrics.roc_auc_tf(labels, scores)
    start = time.perf_counter()
    auc = metrics.roc_auc_tf(labels, scores)
    auc_seconds = time.perf_counter() - start
    rows.append({"part": f"exact AUC over {num_scores:,} scores (roc_auc_tf)",
                 "ms": auc_seconds * 1e3, "floor_ms": None})
    print(f"exact AUC over {num_scores:,} scores: {auc_seconds * 1e3:.1f} ms (AUC {auc:.4f})",
          flush=True)
    if tf.config.list_logical_devices("GPU"):
        rows.append({"part": "peak GPU memory GiB",
                     "value": tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30})
    table_md = ["| part | ms | floor ms | / floor |", "|---|---|---|---|"]
    for row in rows:
        if "ms" in row:
            floor = row["floor_ms"]
            ratio = "" if floor is None else f"{row['ms'] / floor:.1f}"
            floor = "" if floor is None else f"{floor:.3f}"
            table_md.append(f"| {row['part']} | {row['ms']:.3f} | {floor} | {ratio} |")
    return rows, table_md


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["configs", "scaling", "parts"])
    parser.add_argument("--out", required=True, help="directory for the JSON, markdown and logs")
    parser.add_argument("--steps", type=int, default=300, help="configs: steps per run")
    parser.add_argument("--only", default=None, help="configs: comma-separated names")
    parser.add_argument("--timeout", type=float, default=None,
                        help="configs: seconds a run may take before it counts as failed")
    parser.add_argument("--embedding", choices=["tf", "sok"], default="tf",
                        help="configs: main.py's embedding backend")
    parser.add_argument("--vocab_sizes", default="criteo_tb",
                        help="configs: main.py's --vocab_sizes (criteo_tb: the full table)")
    parser.add_argument("--extra", default="", help="configs, scaling: main.py flags added to "
                        "every configuration's, space-separated (e.g. --nofused_table_ops)")
    parser.add_argument("--repeats", type=int, default=20, help="parts: runs per timing loop")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help="the batch (configs: main.py's --global_batch_size)")
    parser.add_argument("--rows", type=int, default=None,
                        help="parts: table rows (default the full Criteo table; smoke runs)")
    parser.add_argument("--scores", type=int, default=89_137_319, help="parts: AUC scores")
    parser.add_argument("--gpus", default="1,2,4,8", help="scaling: GPU counts")
    parser.add_argument("--per_gpu_batch", type=int, default=BATCH // 8,
                        help="scaling: the fixed per-GPU batch (the other series: --batch)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    names = args.only.split(",") if args.only else list(CONFIGS)
    if args.mode == "configs":
        rows, table = run_configs(args.out, args.steps, names, args.embedding,
                                  args.vocab_sizes, args.batch, args.timeout,
                                  extra=args.extra.split())
        stem = os.path.join(args.out, f"configs_{args.embedding}")
    elif args.mode == "scaling":
        rows, table = run_scaling(args.out, args.steps, names,
                                  [int(n) for n in args.gpus.split(",")], args.per_gpu_batch,
                                  args.batch, embedding=args.embedding,
                                  vocab_sizes=args.vocab_sizes, timeout=args.timeout,
                                  extra=args.extra.split())
        stem = os.path.join(args.out, f"scaling_{args.embedding}")
    else:
        rows, table = run_parts(args.repeats, args.batch, args.rows, args.scores)
        stem = os.path.join(args.out, "parts")
    with open(stem + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
