"""Training-step throughput on CPU: the tf backend on 1 and 2 ranks, with and without
--compress and --xla, beside per-feature Keras Embedding layers on one rank (the seed's
non-SOK option), all with the same DLRM and synthetic batches.

    python3 -m bench.bench_train_step [--global_batch_size=4096] [--steps=40]

Each tf-backend configuration is one `horovodrun ... main.py --use_synthetic_dataset` run
(its report's samples/s leaves out the first step, which traces); the Keras
baseline runs in this process through the same Trainer. For --xla, XLA_FLAGS=--xla_dump_to
records the compiled clusters, and their count is printed: zero means XLA did nothing.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from tools import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class KerasEmbedding:
    """The seed's non-SOK option: one tf.keras.layers.Embedding per feature, one rank."""
    name = "keras"

    def __init__(self, vocab_sizes, dim):
        import tensorflow as tf
        self.vocab_sizes, self.dim = list(vocab_sizes), dim
        self.layers = [tf.keras.layers.Embedding(v, dim) for v in vocab_sizes]
        for layer in self.layers:
            layer.build(None)
        self.variables = [layer.embeddings for layer in self.layers]

    def __call__(self, ids):
        import tensorflow as tf
        return tf.stack([layer(ids[:, f]) for f, layer in enumerate(self.layers)], axis=1)

    def apply_gradients(self, grads, lr):
        for var, grad in zip(self.variables, grads):
            var.scatter_sub(type(grad)(lr * grad.values, grad.indices, grad.dense_shape))

    def exclude_tables(self, variables):
        tables = {id(v) for v in self.variables}
        return [v for v in variables if id(v) not in tables]


def model_flags(args):
    return [f"--global_batch_size={args.global_batch_size}", "--vocab_sizes=criteo_tb_scaled",
            f"--embedding_dim={args.embedding_dim}"]


def run_main(num_ranks, extra, args, workdir):
    results = os.path.join(workdir, "report.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    dump = None
    if "--xla" in extra:
        dump = tempfile.mkdtemp(dir=workdir)
        env["XLA_FLAGS"] = f"--xla_dump_to={dump}"
    cmd = [*launch.horovodrun(num_ranks, sys.executable, os.path.join(ROOT, "main.py"),
                              gloo=True), "--use_synthetic_dataset", f"--synthetic_steps={args.steps}", "--embedding=tf",
           "--eval_interval=0", f"--log_interval={args.steps}", f"--results_json={results}",
           *model_flags(args), *extra]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    report = json.load(open(results))
    clusters = len(glob.glob(os.path.join(dump, "*after_optimizations.txt"))) if dump else None
    return report["samples_per_second"], clusters


def run_keras(args):
    import horovod.tensorflow as hvd
    import dataset
    import data_format as fmt
    import model as dlrm
    import trainer as training
    hvd.init()
    vocab = fmt.VOCAB_PRESETS["criteo_tb_scaled"]
    tables = KerasEmbedding(vocab, args.embedding_dim)
    net = dlrm.DLRM(tables, vocab, bottom_mlp=(512, 256, args.embedding_dim))
    trainer = training.Trainer(net, training.LearningRateSchedule.for_global_batch(
        24.0, args.global_batch_size), args.global_batch_size)
    data = list(dataset.SyntheticDataset(args.global_batch_size, vocab, args.steps))
    trainer.build_and_broadcast(data[0][0])
    trainer.train_step(*data[0])  # trace
    start = time.perf_counter()
    for features, label in data[1:]:
        loss = trainer.train_step(features, label)
    float(loss)
    return (len(data) - 1) * args.global_batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--global_batch_size", type=int, default=4096)
    parser.add_argument("--embedding_dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for num_ranks in [1, 2]:
            for extra in [[], ["--compress"], ["--xla"], ["--compress", "--xla"]]:
                rate, clusters = run_main(num_ranks, extra, args, workdir)
                rows.append((f"tf backend, {num_ranks} rank(s) {' '.join(extra)}", rate, clusters))
                print(rows[-1], flush=True)
    rows.append(("keras Embedding per feature, 1 rank", run_keras(args), None))
    print(f"\nglobal batch {args.global_batch_size}, dim {args.embedding_dim}, MLPerf MLPs, "
          f"criteo_tb_scaled vocabularies, {args.steps} steps")
    print("| configuration | samples/s | XLA clusters compiled |\n|---|---|---|")
    for name, rate, clusters in rows:
        print(f"| {name} | {rate:,.0f} | {'' if clusters is None else clusters} |")


if __name__ == "__main__":
    main()
