"""Writes synthetic HugeCTR raw files (train_data.bin, test_data.bin) with a learnable signal.

    python3 synthetic_data.py OUT_DIR --train_samples=N --test_samples=M [--vocab_sizes=...]

Per sample: 13 dense non-negative integers with heavy tails (floor of a log-normal, many
zeros), 26 categorical ids skewed toward small ids (id = floor(vocab * u**SKEW), u uniform),
and a label drawn from a hidden logistic model

    p = sigmoid(BIAS + sum_j DENSE_WEIGHT_j * log(x_j + 3) + sum_f w_f(id_f)),

where w_f(id) is a per-id weight derived from a hash of (seed, f, id), so no table is
stored and the full Criteo vocabularies cost no memory. The AUC of p on the test file is
the best any model can reach; it is printed and written to OUT_DIR/synthetic.json.
Deterministic for a seed; streams in chunks (memory bounded for train; the test file's
probabilities are kept for the exact AUC, 4 bytes per test sample).
"""

import argparse
import multiprocessing
import os
import sys
from typing import NamedTuple

import numpy as np

import data_format as fmt
from metrics import roc_auc
from progress import Progress

CHUNK_SAMPLES = 1 << 18
SKEW = 3.0
BIAS = -1.0
ID_WEIGHT_SCALE = 0.5
RARE_ID_SCALE = 100.0
DENSE_LOG_MEAN = np.linspace(-0.5, 3.0, fmt.NUM_DENSE)
DENSE_LOG_STD = np.linspace(1.0, 2.0, fmt.NUM_DENSE)
DENSE_WEIGHT = np.linspace(-0.12, 0.12, fmt.NUM_DENSE)


def _hash_uniform(seed, feature, ids):
    """splitmix64 of (seed, feature, id) -> float64 in [0, 1). ids: int64 [n]."""
    with np.errstate(over="ignore"):
        x = (ids.astype(np.uint64) + np.uint64((seed * 1000003 + feature) * 0x9E3779B97F4A7C15
                                               % (1 << 64)))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def id_weights(seed, feature, ids):
    """Hidden per-id logit contribution: uniform with standard deviation ID_WEIGHT_SCALE,
    shrunk for rare ids by (1 + id / RARE_ID_SCALE) ** -0.5, as rare ids in click logs carry
    less signal."""
    spread = ID_WEIGHT_SCALE * np.sqrt(3.0) / np.sqrt(1.0 + ids / RARE_ID_SCALE)
    return spread * (2.0 * _hash_uniform(seed, feature, ids) - 1.0)


def true_probability(seed, dense, ids):
    """Hidden model. dense: int [n, 13]; ids: int [n, 26] -> float64 [n]."""
    logit = BIAS + np.log(dense.astype(np.float64) + 3.0) @ DENSE_WEIGHT
    for feature in range(ids.shape[1]):
        logit += id_weights(seed, feature, ids[:, feature].astype(np.int64))
    return 1.0 / (1.0 + np.exp(-logit))


def generate_chunk(seed, file_index, chunk_index, n, vocab_sizes):
    """-> (raw int32 [n, 40], true probability float64 [n]); depends only on its arguments."""
    rng = np.random.default_rng([seed, file_index, chunk_index])
    raw = np.empty((n, fmt.RAW_INTS_PER_SAMPLE), dtype=fmt.RAW_DTYPE)
    dense = np.floor(np.exp(rng.normal(DENSE_LOG_MEAN, DENSE_LOG_STD, size=(n, fmt.NUM_DENSE)))) - 1
    raw[:, 1:1 + fmt.NUM_DENSE] = np.clip(dense, 0, np.iinfo(np.int32).max)
    vocab = np.asarray(vocab_sizes, dtype=np.float64)
    ids = np.floor(vocab * rng.random((n, len(vocab_sizes))) ** SKEW)
    raw[:, 1 + fmt.NUM_DENSE:] = np.minimum(ids, vocab - 1)
    prob = true_probability(seed, raw[:, 1:1 + fmt.NUM_DENSE], raw[:, 1 + fmt.NUM_DENSE:])
    raw[:, 0] = rng.random(n) < prob
    return raw, prob


class _ChunkTask(NamedTuple):
    """One chunk of a raw file, for _write_chunk."""
    path: str  # the file being written, already of its full size
    file_index: int
    chunk_index: int
    first: int  # the chunk's first sample
    samples: int
    vocab_sizes: tuple
    seed: int
    keep_probabilities: bool


def _write_chunk(task):
    """Generates one chunk (a _ChunkTask) and writes it at its offset of the file.
    -> (labels int8 [n], probabilities float32 [n]) if task.keep_probabilities, else None."""
    raw, prob = generate_chunk(task.seed, task.file_index, task.chunk_index, task.samples,
                               task.vocab_sizes)
    with open(task.path, "r+b") as f:
        os.pwrite(f.fileno(), raw.tobytes(), task.first * fmt.RAW_BYTES_PER_SAMPLE)
    if not task.keep_probabilities:
        return None
    return raw[:, 0].astype(np.int8), prob.astype(np.float32)


def write_raw(path, file_index, num_samples, vocab_sizes, seed, keep_probabilities=False,
              progress=None, first_done=0, pool=None):
    """Writes num_samples synthetic samples to path (atomically, data_format.atomic_file),
    chunk by chunk (in `pool`'s processes, if given, each writing its chunk at its offset),
    reporting first_done + samples written to `progress` (a progress.Progress) as chunks
    complete. Returns (labels int8 [n], probabilities float32 [n]) if keep_probabilities,
    else None."""
    kept = []
    with fmt.atomic_file(path, "wb") as f:
        f.truncate(num_samples * fmt.RAW_BYTES_PER_SAMPLE)
        tasks = [_ChunkTask(f.name, file_index, chunk_index, first,
                            min(CHUNK_SAMPLES, num_samples - first), tuple(vocab_sizes), seed,
                            keep_probabilities)
                 for chunk_index, first in enumerate(range(0, num_samples, CHUNK_SAMPLES))]
        results = pool.imap(_write_chunk, tasks) if pool is not None else map(_write_chunk, tasks)
        for task, result in zip(tasks, results):  # in file order
            if progress is not None:
                progress.update(first_done + task.first + task.samples)
            kept.append(result)
    if keep_probabilities:
        return (np.concatenate([k[0] for k in kept] or [np.zeros(0, np.int8)]),
                np.concatenate([k[1] for k in kept] or [np.zeros(0, np.float32)]))
    return None


def generate(out_dir, train_samples, test_samples, vocab_sizes, seed=0,
             progress_stream=sys.stderr, progress_seconds=10.0, workers=1):
    """Writes out_dir/{train_data.bin, test_data.bin, synthetic.json}; returns the JSON dict.
    Progress (samples of both files, rate, ETA) goes to progress_stream (None: silent).
    workers > 1 generates chunks in that many processes (same bytes as one)."""
    os.makedirs(out_dir, exist_ok=True)
    progress = Progress("synthetic_data", train_samples + test_samples, unit="M samples",
                        scale=1e6, seconds=progress_seconds, stream=progress_stream)
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        write_raw(os.path.join(out_dir, "train_data.bin"), 0, train_samples, vocab_sizes, seed,
                  progress=progress, pool=pool)
        labels, probs = write_raw(os.path.join(out_dir, "test_data.bin"), 1, test_samples,
                                  vocab_sizes, seed, keep_probabilities=True, progress=progress,
                                  first_done=train_samples, pool=pool)
    finally:
        if pool is not None:
            pool.terminate()
    info = {
        "seed": seed,
        "train_samples": train_samples,
        "test_samples": test_samples,
        "vocab_sizes": list(vocab_sizes),
        "best_test_auc": roc_auc(labels, probs),
        "test_positive_rate": float(labels.mean()) if len(labels) else None,
    }
    fmt.write_json_atomic(os.path.join(out_dir, "synthetic.json"), info)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train_samples", type=int, default=1 << 20)
    parser.add_argument("--test_samples", type=int, default=1 << 17)
    parser.add_argument("--vocab_sizes", default="criteo_tb_scaled",
                        help="'criteo_tb_scaled' (the Criteo TB list shrunk for CPU runs), "
                             "'criteo_tb', or a JSON / comma-separated list of 26 sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes generating chunks (the output is the same for any)")
    args = parser.parse_args(argv)
    try:
        vocab_sizes = fmt.parse_vocab_sizes(args.vocab_sizes)
    except ValueError as err:
        print(f"synthetic_data.py: error: {err}", file=sys.stderr)
        return 2
    info = generate(args.out_dir, args.train_samples, args.test_samples, vocab_sizes, args.seed,
                    workers=args.workers)
    print(f"synthetic_data.py: wrote {args.train_samples} train and {args.test_samples} test "
          f"samples to {args.out_dir}; best test AUC (hidden probabilities) "
          f"{info['best_test_auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
