"""Converts the Criteo 1TB click logs (TSV) to HugeCTR raw binary train_data.bin / test_data.bin.

    python3 preprocess_criteo.py INPUT_DIR OUT_DIR [--train_days=0-22] [--test_day=23]
        [--vocab=all|train] [--shuffle=total|none] [--seed=123] [--shuffle_memory_bytes=B]
        [--allow_empty_days] [--workers=N] [--overwrite]

INPUT_DIR holds day_0 .. day_23, each plain or gzip-compressed (day_K or day_K.gz). A line is
label, 13 integer columns I1..I13, 26 hexadecimal columns C1..C26, tab-separated; any field
but the label may be empty (missing). OUT_DIR receives

  train_data.bin            the training days' lines, shuffled (below), 160 bytes each:
  test_data.bin             40 little-endian int32 = label, 13 dense, 26 categorical ids
                            (the layout split_bin.py reads; data_format.py)
  preprocess_metadata.json  the rules below, vocabulary sizes, input files (name, size,
                            lines), sample counts, options
  preprocess_vocabulary.bin the vocabularies: id i of feature f is the i-th smallest hashed
                            value of f (layout under "Vocabulary file")

Rules (MLPerf DLRM v1 reference, facebookresearch/dlrm data_utils.py):
  label        "0" or "1"; anything else (also empty) is an error.
  categorical  hashed = int(field, 16) % 40,000,000 (--hash_mod), field of 1-8 hex digits,
               upper or lower case. Missing (empty) -> hashed value 0, as the reference does
               (it replaces every empty field with "0" before int(x, 16)): missing shares the
               id of the genuine values 00000000, 02625a00 (= 40M), ... . A distinct id for
               missing would add one to the count of each feature with missing values and
               so could not reproduce criteo_tb's sizes (below).
  ids          per feature, the vocabulary is the set of hashed values seen in the
               vocabulary days; id = rank of the hashed value in ascending order (0 for the
               smallest). The reference numbers ids by first appearance instead: a
               permutation of ours within each feature, same sizes. Deterministic and
               independent of --workers and of the chunking.
  vocabulary   --vocab=all (default): vocabulary days = train days + the WHOLE test day
               (both halves), as the reference does (its dictionaries span days 0-23);
               every converted value is in the vocabulary, vocab_size = number of distinct
               hashed values. --vocab=train: the train days only; a test value never seen in
               training maps to the reserved id vocab_size - 1, vocab_size = distinct + 1
               (the reserved id exists for every feature, whether or not it is used).
  dense        missing -> 0; stored = max(x, 0), no bias: the MLPerf reference's files hold
               that (facebookresearch/dlrm data_utils.py, processCriteoAdData:
               X_int[X_int < 0] = 0, stored as is; log(x + 1) only when loading), MLPerf
               v1.0's HugeCTR submission trains on those files (mlcommons/
               training_results_v1.0, */benchmarks/dlrm/implementations/hugectr/
               README.md: the reference makes day_train.bin / day_test.bin), and
               HugeCTR's own converter (tools/dlrm_script/dlrm_raw_utils.h:
               process_data_rows writes the value read, missing -> 0; process_dense_features
               clamps negatives to 0; data_preprocess adds a dense_bias that defaults to 0).
               No source adds +1. Negative values (Criteo has -1 .. -3) are counted per
               feature in the metadata (dense_negative_clamped_to_0). Stored values are >= 0,
               so split_bin.py's log(x + 3) is finite for all of them. A value above int32's
               maximum, or a non-integer, is an error.
  split        train = every line of the train days (0-22), in order; test = the first
               ceil(L / 2) lines of the test day (L = its line count), as the reference's
               numpy_to_binary (midpoint = ceil(L / 2)): day 23's 178,274,637 lines (the
               Criteo total 4,373,472,329 minus REFERENCE.md's 4,195,197,692 train samples)
               -> 89,137,319, REFERENCE.md's test count (floor would give 89,137,318).

criteo_tb's sizes (data_format.CRITEO_TB_VOCAB_SIZES) are, we believe, reproduced by
--vocab=all with the 40M modulo and missing -> 0: they are the reference's day_fea_count.npz,
len(dictionary) per feature, whose dictionaries collect int(x, 16) % 40M ("" -> "0") over all
24 days, day 23 included (getCriteoAdData loops over days=24 before counting). --vocab=train
gives distinct-in-days-0-22 + 1 instead, which differs. NOT verified on the real data (it is
not on this machine): compare preprocess_metadata.json's vocab_sizes and its
"matches_criteo_tb" after a full run.

Parsing: pyarrow's C++ CSV reader (use_threads=False: one per worker process) on blocks of
--block_bytes cut at line ends, with explicit column types: int64 for label and dense (empty
-> null -> 0), binary (not string: no UTF-8 check) for the hex columns; no quoting. The hex
columns are then decoded in numpy straight from each column's offsets and data buffers:
where every value is 8 digits or empty (Criteo's files) the data buffer already is a
contiguous [k, 8] byte array; otherwise each value's last 8 bytes are gathered, left-padded
with "0". A 256-entry table turns ASCII into nibbles (anything else is flagged), nibble pairs
become bytes, each row's 4 bytes are read as one big-endian uint32, then % hash_mod. No
Python code runs per line; a block that fails any check (pyarrow's parse, label not 0/1,
int32 overflow, a bad hex digit, a "\r", an "x": pyarrow would read "0x1f" as an integer)
is rescanned line by line in Python only to name the bad line. pyarrow rather than numpy
alone because the integer columns have variable widths, rather than Python's csv module
because that is a Python loop per line; its parse is most of a worker's time.

Two passes, both over all --workers processes (default os.cpu_count()):
  pass 1 (vocabulary)  per feature a 40M-entry uint8 array "seen" in memory shared by all
                       workers (26 x 40 MB = 1.04 GB for any number of workers); workers
                       store 1 at each hashed value they parse. Concurrent stores of the same
                       byte value cannot lose anything, so the result (a set union) is
                       deterministic. The test day's lines are counted (--vocab=train) or
                       parsed into the vocabulary too (--vocab=all).
  pass 2 (convert)     value -> id tables (26 x 40M entries of uint8/uint16/uint32, the
                       narrowest holding vocab_size + 1: 2.4 GB for criteo_tb's sizes, 4.2 GB
                       at most) in shared memory; workers parse, map, and pwrite their rows at
                       the offsets pass 1's per-chunk line counts give.
Plain files are split into chunks of --chunk_bytes (64 MiB) starting at line starts, so every
worker has work at any core count. A .gz file is inflated by one worker (zlib is sequential):
with gz inputs at most 24 workers are busy; decompress first (e.g. pigz -d) to use more.

Shuffle (pass 3, --shuffle=total, the default; the reference's --data-randomize=total in
data_utils.py concatCriteoAdData): the train samples in a uniform random permutation, a
bucketed two-pass Fisher-Yates-Rao shuffle. Scatter: the ordered train file is read in blocks
of --shuffle_block_rows; each sample goes to one of K bucket files, drawn uniformly from
default_rng([seed, 0, block]). Gather: bucket k is read, permuted by
default_rng([seed, 1, k]).permutation and written after buckets 0..k-1. Given the bucket
draws, each bucket's order is uniform, so the whole is a uniform permutation. K is the
smallest count at which a bucket (1.1x its expected size) and its permuted copy fit
--shuffle_memory_bytes; the output depends on seed, K and the block size only (not on
--workers or the chunking). The test day keeps its order, as the reference's day 23. Disk:
the ordered file and the buckets during the scatter, then the buckets and the output.

Resuming: OUT_DIR/.preprocess_criteo/ holds state.json (written atomically), the pass-1
vocabulary checkpoint and train_data.bin.partial / test_data.bin.partial, preallocated to
their final sizes (known from pass 1's line counts). Pass 1 saves the vocabulary (atomically)
after each completed day; pass 2 writes each day's rows in place, fsyncs and records the day.
Rather than one file per day renamed into place and concatenated at the end, this needs no
second copy of the 671 GB (disk space and a copy's time) for the same guarantee. A killed run
(any signal, Ctrl-C, an I/O error, power loss after the fsync) rerun with the same command
starts at the days not recorded; the workers die with the main process (PR_SET_PDEATHSIG).
The shuffle records the bucket sizes every SHUFFLE_SAVE_BLOCKS scatter blocks (buckets cut
back to them on resume) and each bucket written by the gather. Bad input data instead
removes the work directory (fixing the file changes it, which would
restart the run anyway). The checkpoint
is the union over the done days plus possibly values of unfinished days: harmless, since
those days' values belong to the final union anyway, as long as the files do not change; a
rerun finds every input's size and mtime as recorded or starts over (it says so). A rerun
with other options is refused. The partial outputs are renamed to train_data.bin /
test_data.bin only when complete, so a valid-looking partial output never exists; the
metadata is written last and then the work directory is removed. An existing output without
a work directory needs --overwrite. Inputs are only read.

Memory, for any number of workers (bench/bench_preprocess.py --memory_check, 26 features
filled to criteo_tb's sizes with values spread over [0, 40M) like hashes): pass 1, the shared
seen arrays: 1.04 GB reserved, 0.6-0.8 GiB resident (a feature with few values touches few
pages); a checkpoint reads 512 x 4 KiB blocks at a time (a few MB). Pass 2, the shared
tables: 2.29 GiB reserved for criteo_tb's sizes (4.2 GB at most), 1.7 GiB resident after
building. Each worker adds about 135 MiB at --block_bytes=8 MiB (a block, its arrow table
and numpy temporaries). The shuffle stays under --shuffle_memory_bytes (bench_preprocess.py
--shuffle_check: 251 MiB peak RSS at 256 MiB). No structure grows with the input's size.

Errors: bad input stops the run with one line naming the file, the line number (and byte
offset, in the decompressed stream for .gz), the field and its value: a wrong field count, a
label not 0/1, a non-integer dense value, a categorical value that is not 1-8 hex digits, a
carriage return, a UTF-8 byte-order mark (anywhere: pyarrow would skip one at the start of
each block it parses). Also refused: a day file without lines (unless --allow_empty_days), a
day_K that is a directory; a truncated or bad .gz names the decompressed byte reached.
Exit status 2 (130 on Ctrl-C); no train_data.bin / test_data.bin is
written and the work directory is removed.

Vocabulary file (preprocess_vocabulary.bin): magic b"CRTOVOC1", uint64 hash_mod, 26 uint64
counts, then for each feature in order its count sorted little-endian uint32 hashed values.

This file is the command line; the converter is the package criteo/, one module per job:
parsing (a block of lines -> columns; the bad line named), reading (day files -> chunks ->
blocks), vocabulary (the shared seen arrays and id tables; the vocabulary file), workers (the
pool and what a worker does with a chunk in each pass), shuffle (pass 3), files (the outputs
and the work directory), metadata (preprocess_metadata.json), pipeline (preprocess(): one
run, its passes in order).
"""

import argparse
import json
import os
import re
import sys

from criteo.files import WORK_NAME
from criteo.parsing import HASH_MOD
from criteo.pipeline import (DEFAULT_BLOCK_BYTES, DEFAULT_CHUNK_BYTES, DEFAULT_SEED,
                             DEFAULT_SHUFFLE_MEMORY, preprocess)
from criteo.shuffle import SHUFFLE_BLOCK_ROWS
from data_format import InputError


def parse_days(text):
    """'0-22' | '0,3,5-7' -> sorted tuple of distinct ints."""
    days = set()
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise InputError(f"days: cannot parse {text!r} (expected e.g. '0-22' or '0,1,5-7')")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise InputError(f"days: empty range {part!r}")
        days.update(range(first, last + 1))
    return tuple(sorted(days))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir", help="directory holding day_0 .. day_23 (plain or .gz)")
    parser.add_argument("out_dir", help="directory for train_data.bin, test_data.bin and "
                                        "preprocess_metadata.json")
    parser.add_argument("--train_days", default="0-22", help="e.g. '0-22' or '0,1,5-7'")
    parser.add_argument("--test_day", type=int, default=23,
                        help="day whose first ceil(lines/2) lines form test_data.bin")
    parser.add_argument("--vocab", choices=("all", "train"), default="all",
                        help="'all': vocabulary over the train days and the whole test day "
                             "(MLPerf, criteo_tb's sizes); 'train': train days only, unseen "
                             "test values -> reserved id vocab_size - 1")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="worker processes (default: all cores)")
    parser.add_argument("--hash_mod", type=int, default=HASH_MOD,
                        help="categorical values are int(hex, 16) %% hash_mod")
    parser.add_argument("--chunk_bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                        help="plain input files are split into chunks of this size")
    parser.add_argument("--block_bytes", type=int, default=DEFAULT_BLOCK_BYTES,
                        help="bytes parsed at a time by a worker (its memory: ~16x this)")
    parser.add_argument("--shuffle", choices=("total", "none"), default="total",
                        help="'total': train samples in a uniform random permutation of days "
                             "0-22's samples (MLPerf reference); 'none': file order")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of --shuffle=total's permutation")
    parser.add_argument("--shuffle_memory_bytes", type=int, default=DEFAULT_SHUFFLE_MEMORY,
                        help="memory for the shuffle's buckets (sets their number)")
    parser.add_argument("--shuffle_block_rows", type=int, default=SHUFFLE_BLOCK_ROWS,
                        help="samples the shuffle scatters at a time (the permutation depends "
                             "on it, on --seed and on the bucket count)")
    parser.add_argument("--allow_empty_days", action="store_true",
                        help="accept a day file without lines (refused by default: usually "
                             "a failed download)")
    parser.add_argument("--progress_seconds", type=float, default=5.0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs and any unfinished run's state")
    args = parser.parse_args(argv)
    try:
        meta = preprocess(args.input_dir, args.out_dir, parse_days(args.train_days),
                          args.test_day, args.vocab, args.workers, args.hash_mod,
                          args.chunk_bytes, args.block_bytes, args.overwrite,
                          shuffle=args.shuffle, seed=args.seed,
                          shuffle_memory_bytes=args.shuffle_memory_bytes,
                          shuffle_block_rows=args.shuffle_block_rows,
                          allow_empty_days=args.allow_empty_days,
                          progress_seconds=args.progress_seconds)
    except InputError as err:
        print(f"preprocess_criteo.py: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        work = os.path.join(args.out_dir, WORK_NAME)
        kept = (f" (the days completed so far are kept in {work}: rerun the same command "
                f"to resume)" if os.path.isdir(work) else "")
        print(f"preprocess_criteo.py: error: {err}{kept}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preprocess_criteo.py: interrupted; rerun the same command to resume at the "
              "first unfinished day", file=sys.stderr)
        return 130
    print(f"preprocess_criteo.py: wrote {meta['train_samples']} train and "
          f"{meta['test_samples']} test samples to {os.path.abspath(args.out_dir)}; "
          f"vocab_sizes {json.dumps(meta['vocab_sizes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
