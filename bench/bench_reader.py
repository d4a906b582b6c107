"""Reader throughput: dataset.SplitDataset against the seed's naive approach, in one run.

    python3 -m bench.bench_reader DATA_DIR [--batch_size=16384] [--repeats=3]
    horovodrun -np 2 --gloo -H localhost:2 python3 -m bench.bench_reader DATA_DIR --horovod

Naive (the seed's approach): per batch, one np.fromfile per feature file, astype int64,
concatenate, convert to tensors. Files should be in page cache (a first pass warms them).
With --horovod every rank reads its own slice and prints its samples/s. "range check alone"
times the reader's per-batch check of ids and labels by itself (included in SplitDataset's
figures).
"""

import argparse
import os
import time

import numpy as np
import tensorflow as tf

import data_format as fmt
import dataset


def naive_batches(data_dir, batch_ranges, meta):
    """The seed's reader: one fromfile per file per batch, int64, concatenate."""
    layout = fmt.file_layout(meta["num_samples"], meta["vocab_sizes"])
    for start, count, _ in batch_ranges:
        columns = []
        for f in range(len(meta["vocab_sizes"])):
            dtype = layout[fmt.category_file(f)][0]
            ids = np.fromfile(os.path.join(data_dir, fmt.category_file(f)), dtype=dtype,
                              count=count, offset=start * dtype.itemsize)
            columns.append(ids.astype(np.int64).reshape(count, 1))
        dense = np.fromfile(os.path.join(data_dir, fmt.DENSE_FILE), dtype=fmt.DENSE_DTYPE,
                            count=count * fmt.NUM_DENSE,
                            offset=start * fmt.NUM_DENSE * fmt.DENSE_DTYPE.itemsize)
        label = np.fromfile(os.path.join(data_dir, fmt.LABEL_FILE), dtype=fmt.LABEL_DTYPE,
                            count=count, offset=start * fmt.LABEL_DTYPE.itemsize)
        yield ((tf.convert_to_tensor(dense.astype(np.float32)),
                tf.convert_to_tensor(np.concatenate(columns, axis=1))),
               tf.convert_to_tensor(label.astype(np.float32).reshape(count, 1)))


def timed(batches):
    start = time.perf_counter()
    samples = sum(int(label.shape[0]) for _, label in batches)
    return samples / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("--batch_size", type=int, default=16384, help="per rank")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--horovod", action="store_true")
    args = parser.parse_args()
    rank, size = 0, 1
    if args.horovod:
        import horovod.tensorflow as hvd
        hvd.init()
        rank, size = hvd.rank(), hvd.size()
    results = {}
    for prefetch in [0, 4]:
        ds = dataset.SplitDataset(args.data_dir, args.batch_size, rank, size, prefetch=prefetch)
        timed(iter(ds))  # warm the page cache
        results[f"SplitDataset prefetch={prefetch}"] = max(timed(iter(ds))
                                                           for _ in range(args.repeats))
    ranges = dataset.batch_ranges(ds.num_samples, args.batch_size, rank, size, True)
    # What the reader's range check (ids in [0, vocab), labels 0/1) costs, alone, on the
    # batches the reader returns.
    batches = []
    for first, count, _ in ranges[:16]:
        _, categorical, label = ds.read_numpy(first, count)
        batches.append((first, categorical, label[:, 0].astype(np.int8)))

    def check_only():
        start = time.perf_counter()
        for first, categorical, raw_label in batches:
            ds.check(first, categorical, raw_label)
        return sum(len(b[2]) for b in batches) / (time.perf_counter() - start)
    results["range check alone"] = max(check_only() for _ in range(args.repeats))
    results["naive (seed)"] = max(timed(naive_batches(args.data_dir, ranges, ds.meta))
                                  for _ in range(args.repeats))
    for name, rate in results.items():
        print(f"rank {rank}/{size}: {name:28s} {rate / 1e6:7.2f} M samples/s "
              f"(batch {args.batch_size}, {len(ds)} batches)", flush=True)


if __name__ == "__main__":
    main()
