"""preprocess_criteo.py's throughput per pass and worker count, and its memory at 40M.

    python3 -m bench.bench_preprocess WORK_DIR [--megabytes=300] [--workers=1,2] [--gzip]
    python3 -m bench.bench_preprocess WORK_DIR --memory_check
    python3 -m bench.bench_preprocess WORK_DIR --shuffle_check [--shuffle_megabytes=640]
        [--shuffle_memory_bytes=268435456]

Generates (once) Criteo-shaped TSV days in WORK_DIR/tsv: 3 train days and a test day,
label with a 3.4% click rate, 13 dense columns of heavy-tailed integers (I2 with a few
negatives), 26 hex columns whose values are drawn Zipf-like (id = floor(pool * u**3)) from
per-feature pools shaped like criteo_tb's vocabularies, hashed to 8 hex digits; each column
has its own missing rate (0-20%, about 10% on average). Then runs the converter with each
worker count and prints MB/s of input per pass: in all, per worker, and per CPU-second
(user + system time of the main process and its workers: the per-core rate without the
other processes that share the cores).

--memory_check measures the peak memory of the 40M-entry structures with criteo_tb's
vocabulary sizes: the pass-1 seen arrays (filled to those sizes) and their checkpoint, then
the pass-2 tables, and one worker's own memory (both passes over one day with tiny tables);
each in its own process, peak RSS (shared pages included) from /proc/self/status VmHWM.

--shuffle_check times the train shuffle (pass 3: scatter to buckets, permute each bucket) on a
raw file of --shuffle_megabytes of random rows, with --shuffle_memory_bytes setting the bucket
count, in its own process: MB/s of each step and its peak RSS over the imports.
"""

import argparse
import gzip
import io
import multiprocessing
import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

import data_format as fmt
import preprocess_criteo as pc
from criteo import files, reading, shuffle, vocabulary
from criteo.workers import (ConvertTask, ScanTask, WorkerContext, convert_chunk,
                            scan_chunk, worker_context)

ROWS_PER_CHUNK = 100_000
SKEW = 3.0


def _hash32(feature, ids):
    """splitmix64 of (feature, id) -> uint32, so the hex values look like Criteo's."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) + np.uint64((feature + 1) * 0x9E3779B97F4A7C15 % (1 << 64))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(32)).astype(np.uint32)


def _chunk_table(rng, n, missing):
    """One chunk of n Criteo-shaped rows as a pyarrow table (nulls are written empty)."""
    columns = {"label": pa.array(rng.random(n) < 0.034).cast(pa.int8())}
    dense = np.floor(np.exp(rng.normal(0.5, 2.0, (n, fmt.NUM_DENSE)))).astype(np.int64) - 1
    dense[:, 1] -= (rng.random(n) < 0.02) * rng.integers(1, 4, n)  # I2: a few down to -3
    for j in range(fmt.NUM_DENSE):
        mask = rng.random(n) < missing[j]
        columns[f"I{j + 1}"] = pa.array(dense[:, j], mask=mask)
    pools = np.minimum(np.asarray(fmt.CRITEO_TB_VOCAB_SIZES), 4 * n)
    for f in range(fmt.NUM_CATEGORICAL):
        ids = np.floor(pools[f] * rng.random(n) ** SKEW).astype(np.int64)
        hexes = np.char.mod("%08x", _hash32(f, ids))
        mask = rng.random(n) < missing[fmt.NUM_DENSE + f]
        columns[f"C{f + 1}"] = pa.array(hexes, pa.string(), mask=mask)
    return pa.table(columns)


def generate(directory, megabytes, seed=0):
    """Writes day_0 .. day_3 of about megabytes / 4 MB each (once); -> their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"day_{d}") for d in range(4)]
    if all(os.path.exists(p) for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    missing = rng.uniform(0.0, 0.2, fmt.NUM_DENSE + fmt.NUM_CATEGORICAL)
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    for path in paths:
        with fmt.atomic_file(path, "wb") as f:
            while f.tell() < megabytes * 1e6 / len(paths):
                chunk = io.BytesIO()
                pacsv.write_csv(_chunk_table(rng, ROWS_PER_CHUNK, missing), chunk,
                                write_options=options)
                f.write(chunk.getvalue())
    return paths


def gzip_copies(paths, directory):
    os.makedirs(directory, exist_ok=True)
    for path in paths:
        target = os.path.join(directory, os.path.basename(path) + ".gz")
        if not os.path.exists(target):
            with open(path, "rb") as src, fmt.atomic_file(target, "wb") as out, \
                    gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
    return directory


def _peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _memory_pass1(vocab_path, queue):
    start = _peak_rss_mb()
    seen = vocabulary.SeenValues.allocate(pc.HASH_MOD)
    for f, n in enumerate(fmt.CRITEO_TB_VOCAB_SIZES):
        step = pc.HASH_MOD // n
        values = np.arange(0, step * n, step, dtype=np.uint32)  # spread like hashes
        seen.mark(f, values)
        del values
    filled = _peak_rss_mb()
    t = time.perf_counter()
    counts = vocabulary.write_vocabulary(vocab_path, pc.HASH_MOD, seen)
    queue.put(("pass 1", start, filled, _peak_rss_mb(), time.perf_counter() - t, counts))


def _memory_pass2(vocab_path, queue):
    start = _peak_rss_mb()
    t = time.perf_counter()
    tables = vocabulary.build_id_tables(vocab_path)
    took = time.perf_counter() - t
    nbytes = sum(table.nbytes for table in tables)
    queue.put(("pass 2", start, nbytes / 2**20, _peak_rss_mb(), took, None))


def _memory_worker(path, queue):
    """A worker's own memory: pass 1 and pass 2 of one file with tiny tables (hash_mod 1000)."""
    seen = vocabulary.SeenValues.allocate(1000)
    start = _peak_rss_mb()
    chunks = reading.input_chunks(0, path, 1 << 40)
    with worker_context(WorkerContext(1000, pc.DEFAULT_BLOCK_BYTES, seen=seen)):
        lines = sum(scan_chunk(ScanTask(c, True)).lines for c in chunks)
    vocab = path + ".vocab"
    vocabulary.write_vocabulary(vocab, 1000, seen)
    context = WorkerContext(1000, pc.DEFAULT_BLOCK_BYTES,
                            id_tables=vocabulary.build_id_tables(vocab), unseen_ids=np.full(26, -1))
    out = path + ".out"
    with open(out, "wb") as f:
        f.truncate(lines * fmt.RAW_BYTES_PER_SAMPLE)
    with worker_context(context):
        for c in chunks:
            convert_chunk(ConvertTask(c, out, 0, lines, None))
    os.remove(vocab)
    os.remove(out)
    queue.put(("worker", start, None, _peak_rss_mb(), None, None))


def _shuffle_run(work_dir, megabytes, memory_bytes, queue):
    work = files.WorkDir(work_dir)
    os.makedirs(work.dir, exist_ok=True)
    n = int(megabytes * 1e6) // fmt.RAW_BYTES_PER_SAMPLE
    rng = np.random.default_rng(0)
    with open(work.train_partial, "wb") as f:
        for first in range(0, n, 1 << 16):  # small pieces: a low peak before the shuffle
            rng.integers(0, 1 << 20, (min(1 << 16, n - first), 40), np.int32).tofile(f)
    start = _peak_rss_mb()
    state = {"options": {"seed": 123, "shuffle_block_rows": shuffle.SHUFFLE_BLOCK_ROWS,
                         "shuffle_memory_bytes": memory_bytes}}
    timings = shuffle.shuffle_train(work, state, n, None, 10.0)
    peak = _peak_rss_mb()
    shutil.rmtree(work_dir)
    queue.put((n, state["shuffle"]["buckets"], timings, start, peak))


def shuffle_check(work_dir, megabytes, memory_bytes):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_shuffle_run,
                       args=(os.path.join(work_dir, "shuffle"), megabytes, memory_bytes, queue))
    proc.start()
    n, buckets, timings, start, peak = queue.get()
    proc.join()
    mb = n * fmt.RAW_BYTES_PER_SAMPLE / 1e6
    print(f"shuffle of {n} samples ({mb:.0f} MB), --shuffle_memory_bytes={memory_bytes} -> "
          f"{buckets} buckets: scatter {timings['shuffle_scatter_s']:.2f} s "
          f"({mb / timings['shuffle_scatter_s']:.0f} MB/s), gather "
          f"{timings['shuffle_gather_s']:.2f} s ({mb / timings['shuffle_gather_s']:.0f} MB/s); "
          f"peak RSS {peak:.0f} MiB (+{peak - start:.0f} MiB over the imports and the "
          f"input's generation); load average {os.getloadavg()[0]:.1f}")


def memory_check(work_dir):
    vocab_path = os.path.join(work_dir, "memory_check_vocabulary.bin")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    tsv_day = generate(os.path.join(work_dir, "tsv"), 300)[0]
    for target, arg in ((_memory_pass1, vocab_path), (_memory_pass2, vocab_path),
                        (_memory_worker, tsv_day)):
        proc = ctx.Process(target=target, args=(arg, queue))
        proc.start()
        name, start, middle, peak, took, counts = queue.get()
        proc.join()
        if name == "pass 1":
            print(f"pass 1: seen arrays filled to criteo_tb's sizes: peak RSS {middle:.0f} MiB "
                  f"(process start {start:.0f} MiB); with the checkpoint: {peak:.0f} MiB; "
                  f"checkpoint written in {took:.1f} s ({sum(counts) / 1e6:.1f}M values)")
        elif name == "pass 2":
            print(f"pass 2: tables {middle:.0f} MiB; peak RSS {peak:.0f} MiB (process start "
                  f"{start:.0f} MiB); built in {took:.1f} s")
        else:
            print(f"one worker, both passes over {os.path.getsize(tsv_day) / 1e6:.0f} MB with "
                  f"--block_bytes={pc.DEFAULT_BLOCK_BYTES}: peak RSS {peak:.0f} MiB "
                  f"(+{peak - start:.0f} MiB over the imports)")
    os.remove(vocab_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--megabytes", type=float, default=300.0, help="TSV size of all days")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--gzip", action="store_true", help="also time .gz copies of the days")
    parser.add_argument("--memory_check", action="store_true")
    parser.add_argument("--shuffle_check", action="store_true")
    parser.add_argument("--shuffle_megabytes", type=float, default=640.0)
    parser.add_argument("--shuffle_memory_bytes", type=int, default=256 << 20)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    if args.memory_check:
        memory_check(args.work_dir)
        return
    if args.shuffle_check:
        shuffle_check(args.work_dir, args.shuffle_megabytes, args.shuffle_memory_bytes)
        return
    tsv = os.path.join(args.work_dir, "tsv")
    paths = generate(tsv, args.megabytes)
    inputs = [("plain", tsv)]
    if args.gzip:
        inputs.append(("gzip", gzip_copies(paths, os.path.join(args.work_dir, "gz"))))
    total_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"input: {len(paths)} days, {total_mb:.1f} MB TSV; {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f} at the start")
    print("| input | workers | pass 1 s | pass 1 MB/s | per worker | per CPU-s | pass 2 s "
          "| pass 2 MB/s | per worker | per CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, directory in inputs:
        for workers in [int(w) for w in args.workers.split(",")]:
            meta = pc.preprocess(directory, os.path.join(args.work_dir, "out"), [0, 1, 2], 3,
                                 workers=workers, overwrite=True, progress_stream=None)
            timings = meta["timings_last_run_s"]
            t1, t2 = timings["pass1_s"], timings["pass2_s"]
            c1, c2 = timings["pass1_cpu_s"], timings["pass2_cpu_s"]
            # Pass 1 reads every day (--vocab=all); pass 2 the train days and the test day's
            # first half (in TSV megabytes, also for .gz input).
            lines = {i["day"]: i["lines"] for i in meta["inputs"]}
            sizes = [os.path.getsize(p) / 1e6 for p in paths]
            mb2 = sum(sizes[:3]) + sizes[3] * meta["test_samples"] / lines[3]
            print(f"| {kind} | {workers} | {t1:.2f} | {total_mb / t1:.1f} | "
                  f"{total_mb / t1 / workers:.1f} | {total_mb / c1:.1f} | {t2:.2f} | "
                  f"{mb2 / t2:.1f} | {mb2 / t2 / workers:.1f} | {mb2 / c2:.1f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
