"""Splits a HugeCTR raw binary file into the split format that dataset.py reads.

    python3 split_bin.py RAW_FILE OUT_DIR --vocab_sizes=criteo_tb [--overwrite]

The output is built in a temporary directory beside OUT_DIR and renamed into place only
when complete, so a failure or Ctrl-C never leaves an OUT_DIR that looks valid. The input
is only read. Memory is bounded by --chunk_samples (160 bytes per sample in flight).
"""

import argparse
import os
import queue
import re
import shutil
import sys
import threading

import numpy as np

import data_format as fmt
from data_format import InputError
from progress import Progress

CACHE_BLOCK_ROWS = 4096  # samples converted at a time, in L2 cache


def split(raw_path, out_dir, vocab_sizes, overwrite=False, chunk_samples=1 << 18,
          progress_stream=sys.stderr, progress_seconds=10.0, block_rows=CACHE_BLOCK_ROWS):
    """Writes out_dir in the split format from the raw file raw_path; returns the metadata.
    Reads chunk_samples samples at a time and converts them block_rows at a time."""
    if len(vocab_sizes) != fmt.NUM_CATEGORICAL:
        raise InputError(f"--vocab_sizes: {len(vocab_sizes)} entries, expected "
                         f"{fmt.NUM_CATEGORICAL} (one per categorical feature)")
    if os.path.isdir(raw_path):
        raise InputError(f"{raw_path}: is a directory; expected the raw binary file "
                         f"(e.g. train_data.bin)")
    if not os.path.isfile(raw_path):
        raise InputError(f"{raw_path}: no such file")
    size = os.path.getsize(raw_path)
    num_samples, remainder = divmod(size, fmt.RAW_BYTES_PER_SAMPLE)
    if remainder:
        raise InputError(f"{raw_path}: size {size} bytes is not a multiple of "
                         f"{fmt.RAW_BYTES_PER_SAMPLE} (remainder {remainder})")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: is a file, not a directory; OUT_DIR must be a directory "
                         f"to create (or to replace with --overwrite)")
    if os.path.exists(out_dir) and not overwrite:
        raise InputError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    real_raw, real_out = os.path.realpath(raw_path), os.path.realpath(out_dir)
    if os.path.commonpath([real_raw, real_out]) == real_out:
        raise InputError(f"{raw_path}: the input lies inside OUT_DIR {out_dir}, which "
                         f"--overwrite would delete; choose another OUT_DIR")

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # What a killed split_bin of this output left (.NAME.partial-PID/, .NAME.old-PID/).
    fmt.remove_dead_leftovers(parent, rf"\.{re.escape(os.path.basename(out_dir))}"
                                      rf"\.(?:partial|old)-(\d+)", "split_bin", progress_stream)
    tmp_dir = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{os.getpid()}")
    os.mkdir(tmp_dir)
    try:
        _write_split(raw_path, tmp_dir, num_samples, vocab_sizes, chunk_samples, block_rows,
                     progress_stream, progress_seconds)
        meta = fmt.make_metadata(num_samples, vocab_sizes, os.path.basename(raw_path), size)
        fmt.write_json_atomic(os.path.join(tmp_dir, fmt.METADATA_NAME), meta)
        if os.path.exists(out_dir):
            old = os.path.join(parent, f".{os.path.basename(out_dir)}.old-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(tmp_dir, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return meta


def _read_chunks(raw_path, num_samples, chunk_samples, buffers, ready, free):
    """Reader thread: fills the free buffers in file order, puts (first, n) or an error on ready."""
    try:
        with open(raw_path, "rb", buffering=0) as src:
            for index, first in enumerate(range(0, num_samples, chunk_samples)):
                n = min(chunk_samples, num_samples - first)
                slot = free.get()
                if slot is None:
                    return
                view = buffers[slot][:n]
                got = src.readinto(memoryview(view).cast("B"))
                if got != n * fmt.RAW_BYTES_PER_SAMPLE:
                    raise InputError(f"{raw_path}: short read at sample {first} (file changed?)")
                ready.put((slot, first, n))
    except BaseException as err:  # handed to the main thread, which raises it
        ready.put(err)


class _ChunkConverter:
    """Converts raw int32 [n, 40] chunks to the split format's columns, in blocks of
    block_rows samples that stay in L2 cache (the 26 strided column reads of a whole chunk
    would each stream it from memory)."""

    def __init__(self, raw_path, vocab_sizes, chunk_samples, block_rows):
        self.raw_path = raw_path
        self.block_rows = block_rows
        self.label = np.empty(chunk_samples, fmt.LABEL_DTYPE)
        self.dense = np.empty((chunk_samples, fmt.NUM_DENSE), fmt.DENSE_DTYPE)
        self.categories = [np.empty(chunk_samples, fmt.category_dtype(v)) for v in vocab_sizes]
        self._id_limits = fmt.id_limits(vocab_sizes, block_rows)
        self._log_dense = np.empty((block_rows, fmt.NUM_DENSE), np.float32)

    def convert(self, raw, first_sample):
        """raw: int32 [n, 40] -> fills label[:n], dense[:n], categories[f][:n]."""
        for a in range(0, len(raw), self.block_rows):
            block = raw[a:a + self.block_rows]
            b = a + len(block)
            self._check(block, first_sample + a)
            log_dense = self._log_dense[:len(block)]
            np.add(block[:, 1:1 + fmt.NUM_DENSE], 3, out=log_dense, dtype=np.float32,
                   casting="unsafe")
            np.log(log_dense, out=log_dense)
            np.copyto(self.dense[a:b], log_dense, casting="unsafe")
            np.copyto(self.label[a:b], block[:, 0], casting="unsafe")
            for feature, column in enumerate(self.categories):
                np.copyto(column[a:b], block[:, 1 + fmt.NUM_DENSE + feature], casting="unsafe")

    def _check(self, block, first_sample):
        """Raises InputError for a label not in {0, 1}, a dense value below DENSE_MIN or an
        id outside [0, vocab)."""
        fmt.check_labels(block[:, 0], first_sample, self.raw_path)
        dense = block[:, 1:1 + fmt.NUM_DENSE]
        if dense.min() < fmt.DENSE_MIN:
            i, j = np.argwhere(dense < fmt.DENSE_MIN)[0]
            raise InputError(f"{self.raw_path}: sample {first_sample + i}: dense feature {j} "
                             f"is {dense[i, j]}, below {fmt.DENSE_MIN} "
                             f"({fmt.DENSE_TRANSFORM} needs x > -3)")
        fmt.check_ids(block[:, 1 + fmt.NUM_DENSE:], self._id_limits, first_sample,
                      lambda feature: self.raw_path)


def _write_split(raw_path, tmp_dir, num_samples, vocab_sizes, chunk_samples, block_rows,
                 progress_stream, progress_seconds):
    """Reads in a background thread (two buffers), converts and writes in this one."""
    converter = _ChunkConverter(raw_path, vocab_sizes, chunk_samples, block_rows)
    buffers = [np.empty((chunk_samples, fmt.RAW_INTS_PER_SAMPLE), fmt.RAW_DTYPE) for _ in range(2)]
    ready, free = queue.Queue(), queue.Queue()
    for slot in range(len(buffers)):
        free.put(slot)
    reader = threading.Thread(target=_read_chunks, daemon=True,
                              args=(raw_path, num_samples, chunk_samples, buffers, ready, free))
    names = [fmt.LABEL_FILE, fmt.DENSE_FILE] + [fmt.category_file(f) for f in range(len(vocab_sizes))]
    outputs = [open(os.path.join(tmp_dir, name), "wb") for name in names]
    progress = Progress("split_bin", num_samples * fmt.RAW_BYTES_PER_SAMPLE,
                        seconds=progress_seconds, stream=progress_stream)
    reader.start()
    try:
        done = 0
        while done < num_samples:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            slot, first, n = item
            converter.convert(buffers[slot][:n], first)
            free.put(slot)
            columns = [converter.label, converter.dense] + converter.categories
            for out, column in zip(outputs, columns):
                out.write(column[:n])
            done = first + n
            progress.update(done * fmt.RAW_BYTES_PER_SAMPLE)
    finally:
        free.put(None)
        for out in outputs:
            out.close()
        reader.join()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_file", help="HugeCTR raw binary (160 bytes per sample)")
    parser.add_argument("out_dir", help="directory to create in the split format")
    parser.add_argument("--vocab_sizes", required=True,
                        help="JSON list, comma-separated list, or the preset 'criteo_tb'")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--chunk_samples", type=int, default=1 << 18,
                        help="samples per read (memory: 160 bytes each, plus outputs)")
    args = parser.parse_args(argv)
    try:
        vocab_sizes = fmt.parse_vocab_sizes(args.vocab_sizes, expected_len=None)
        meta = split(args.raw_file, args.out_dir, vocab_sizes, overwrite=args.overwrite,
                     chunk_samples=args.chunk_samples)
    except (InputError, ValueError, OSError) as err:
        print(f"split_bin.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("split_bin.py: interrupted; no output written", file=sys.stderr)
        return 130
    print(f"split_bin.py: wrote {meta['num_samples']} samples to {os.path.abspath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
