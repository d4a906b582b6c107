"""The shuffle (pass 3): the train samples in a uniform random permutation, a two-pass bucketed
Fisher-Yates-Rao shuffle. Scatter: each sample of the ordered train file goes to one of K
bucket files drawn uniformly at random; gather: each bucket permuted in memory, the buckets
written in order. Resumable: state["shuffle"] records the bucket sizes every
SHUFFLE_SAVE_BLOCKS scatter blocks and each bucket written.
"""

import os
import time

import numpy as np

import data_format as fmt
from data_format import InputError
from progress import Progress

SHUFFLE_BLOCK_ROWS = 1 << 18  # rows scattered at a time (40 MiB); the bucket draws depend on it
SHUFFLE_SAVE_BLOCKS = 16  # scatter blocks between checkpoints (fsync + state.json)
# Gather's memory per row: the bucket, its permuted copy, the permutation (int64).
SHUFFLE_BYTES_PER_ROW = 2 * fmt.RAW_BYTES_PER_SAMPLE + 8


def shuffle_buckets(num_samples, memory_bytes, block_rows):
    """Bucket count K of the two-pass shuffle: a bucket (num_samples / K rows, 1.1x for the
    random spread of the sizes) with its permuted copy, and a scatter block of block_rows
    (with its grouped copy and draws), fit memory_bytes."""
    least = 3 * block_rows * fmt.RAW_BYTES_PER_SAMPLE
    if memory_bytes < least:
        raise InputError(f"--shuffle_memory_bytes: {memory_bytes}, need at least {least} (the "
                         f"scatter's blocks of {block_rows} samples)")
    return max(1, -(-int(num_samples * SHUFFLE_BYTES_PER_ROW * 1.1) // memory_bytes))


def _scatter_block(work, rows, seed, block_index, bucket_rows):
    """Appends each row of rows (int32 [n, 40]) to a bucket drawn uniformly at random (from
    seed and block_index only); bucket_rows (int64 [K]) counts the rows of each bucket."""
    buckets = len(bucket_rows)
    draws = np.random.default_rng([seed, 0, block_index]).integers(0, buckets, len(rows))
    order = np.argsort(draws, kind="stable")
    counts = np.bincount(draws, minlength=buckets)
    grouped = rows[order]
    first = 0
    for k in np.flatnonzero(counts):
        part = grouped[first:first + counts[k]]
        fd = os.open(work.bucket_path(k), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, memoryview(part).cast("B"),
                      int(bucket_rows[k]) * fmt.RAW_BYTES_PER_SAMPLE)
        finally:
            os.close(fd)
        bucket_rows[k] += counts[k]
        first += counts[k]


def _cut_buckets_back(work, bucket_rows):
    """Truncates each bucket file to the rows the last checkpoint recorded (int64 [K])."""
    for k, rows in enumerate(bucket_rows):
        size = int(rows) * fmt.RAW_BYTES_PER_SAMPLE
        if size or os.path.exists(work.bucket_path(k)):
            with open(work.bucket_path(k), "ab") as f:
                f.truncate(size)


def _save_scatter(work, state, bucket_rows, rows_scattered):
    """A scatter checkpoint: the buckets fsynced, their sizes recorded in state.json."""
    for k in np.flatnonzero(bucket_rows):
        fmt.fsync_path(work.bucket_path(k))
    state["shuffle"]["bucket_rows"] = [int(c) for c in bucket_rows]
    state["shuffle"]["rows_scattered"] = rows_scattered
    work.save(state)


def _scatter(work, state, num_samples, progress, on_checkpoint):
    """Pass 3a: train_data.bin.partial (in day order) -> K bucket files, resumable at the
    last checkpoint (bucket files cut back to the sizes it recorded)."""
    seed, block_rows = state["options"]["seed"], state["options"]["shuffle_block_rows"]
    bucket_rows = np.asarray(state["shuffle"]["bucket_rows"], np.int64)
    _cut_buckets_back(work, bucket_rows)
    start = state["shuffle"]["rows_scattered"]  # a multiple of block_rows, or num_samples
    while start < num_samples:
        block = start // block_rows
        count = min(block_rows, num_samples - start) * fmt.RAW_INTS_PER_SAMPLE
        rows = np.fromfile(work.train_partial, fmt.RAW_DTYPE, count=count,
                           offset=start * fmt.RAW_BYTES_PER_SAMPLE)
        if rows.size != count:
            raise InputError(f"{work.train_partial}: shorter than its {num_samples} samples; "
                             f"delete {work.dir} or pass --overwrite")
        _scatter_block(work, rows.reshape(-1, fmt.RAW_INTS_PER_SAMPLE), seed, block,
                       bucket_rows)
        start = min(start + block_rows, num_samples)
        progress.update(start)
        if (block + 1) % SHUFFLE_SAVE_BLOCKS == 0 or start == num_samples:
            _save_scatter(work, state, bucket_rows, start)
            on_checkpoint("scatter", block + 1)
    state["shuffle"]["scatter_complete"] = True
    work.save(state)
    os.remove(work.train_partial)  # its rows are all in the buckets now: disk for the output


def _gather(work, state, progress, on_checkpoint):
    """Pass 3b: each bucket, permuted in memory (from seed and its index), written in bucket
    order to train_data.bin.shuffled; resumable at the first bucket not recorded done."""
    seed, record = state["options"]["seed"], state["shuffle"]
    bucket_rows = record["bucket_rows"]
    if record["buckets_done"] == 0:
        with open(work.train_shuffled, "wb") as f:
            f.truncate(sum(bucket_rows) * fmt.RAW_BYTES_PER_SAMPLE)
    fd = os.open(work.train_shuffled, os.O_WRONLY)
    try:
        for k in range(record["buckets_done"], record["buckets"]):
            first, n = sum(bucket_rows[:k]), bucket_rows[k]
            if n:
                rows = np.fromfile(work.bucket_path(k), fmt.RAW_DTYPE)
                if rows.size != n * fmt.RAW_INTS_PER_SAMPLE:
                    raise InputError(f"{work.bucket_path(k)}: {rows.size * 4} bytes, expected "
                                     f"{n * fmt.RAW_BYTES_PER_SAMPLE}; delete {work.dir} or "
                                     f"pass --overwrite")
                rows = rows.reshape(n, fmt.RAW_INTS_PER_SAMPLE)
                permuted = rows[np.random.default_rng([seed, 1, k]).permutation(n)]
                del rows
                os.pwrite(fd, memoryview(permuted).cast("B"), first * fmt.RAW_BYTES_PER_SAMPLE)
                del permuted
                os.fsync(fd)
            record["buckets_done"] = k + 1
            work.save(state)
            on_checkpoint("gather", k)
            if os.path.exists(work.bucket_path(k)):
                os.remove(work.bucket_path(k))
            progress.update(first + n)
    finally:
        os.close(fd)


def _start_shuffle(work, state, num_samples):
    """Adds state["shuffle"] (the bucket count, nothing done yet) unless a resumed run has it."""
    if "shuffle" in state:
        return
    options = state["options"]
    buckets = shuffle_buckets(num_samples, options["shuffle_memory_bytes"],
                              options["shuffle_block_rows"])
    state["shuffle"] = {"buckets": buckets, "rows_scattered": 0, "bucket_rows": [0] * buckets,
                        "scatter_complete": False, "buckets_done": 0}
    work.save(state)


def shuffle_train(work, state, num_samples, progress_stream, progress_seconds,
                  on_checkpoint=lambda stage, number: None):
    """Pass 3: permutes the num_samples samples of the WorkDir's train_data.bin.partial
    (options seed, shuffle_block_rows and shuffle_memory_bytes in state["options"]) and
    leaves the result under that name. on_checkpoint("scatter", blocks scattered) and
    on_checkpoint("gather", bucket) are called after each checkpoint. -> timings (s)."""
    _start_shuffle(work, state, num_samples)
    record, timings = state["shuffle"], {}
    steps = [("scatter", record["scatter_complete"],
              lambda progress: _scatter(work, state, num_samples, progress, on_checkpoint)),
             ("gather", record["buckets_done"] == record["buckets"],
              lambda progress: _gather(work, state, progress, on_checkpoint))]
    for name, complete, step in steps:
        if complete:
            continue
        start = time.perf_counter()
        step(Progress(f"preprocess_criteo shuffle ({name}, {record['buckets']} buckets)",
                      num_samples, unit="M samples", scale=1e6, seconds=progress_seconds,
                      stream=progress_stream))
        timings[f"shuffle_{name}_s"] = time.perf_counter() - start
    if os.path.exists(work.train_shuffled):
        os.replace(work.train_shuffled, work.train_partial)
    return timings
