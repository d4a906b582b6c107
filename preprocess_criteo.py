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
"""

import argparse
import gzip
import json
import mmap
import multiprocessing
import os
import re
import resource
import shutil
import signal
import sys
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (imported before the workers fork, not in each)
import pyarrow.csv as pacsv

import data_format as fmt
from progress import Progress

HASH_MOD = 40_000_000
MISSING_HASH = 0
DENSE_FLOOR = 0  # stored dense = max(x, DENSE_FLOOR), the MLPerf reference's files
INT32_MAX = np.iinfo(np.int32).max
NUM_FIELDS = 1 + fmt.NUM_DENSE + fmt.NUM_CATEGORICAL
FIELD_NAMES = (["label"] + [f"I{i}" for i in range(1, fmt.NUM_DENSE + 1)]
               + [f"C{i}" for i in range(1, fmt.NUM_CATEGORICAL + 1)])
TRAIN_NAME, TEST_NAME = "train_data.bin", "test_data.bin"
METADATA_NAME = "preprocess_metadata.json"
VOCAB_NAME = "preprocess_vocabulary.bin"
WORK_NAME = ".preprocess_criteo"
STATE_VERSION = 2
VOCAB_MAGIC = b"CRTOVOC1"
DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_BLOCK_BYTES = 8 << 20
DEFAULT_SEED = 123  # the seed of the reference's mlperf branch (its permutation differs)
DEFAULT_SHUFFLE_MEMORY = 4 << 30
UTF8_BOM = b"\xef\xbb\xbf"
TOUCH_SHIFT = 12  # pass 1 also marks 4096-value blocks touched; a checkpoint reads only those

RULES = {
    "label": "'0' or '1'; anything else, empty included, is an error",
    "categorical": "hashed = int(field, 16) % hash_mod (1-8 hex digits, either case); "
                   "missing (empty) -> hashed 0, shared with genuine values = 0 mod hash_mod "
                   "(MLPerf reference: empty -> '0')",
    "ids": "per feature, id = rank of the hashed value among the vocabulary's values in "
           "ascending order",
    "vocabulary": "vocab=all: values of the train days and the whole test day, vocab_size = "
                  "distinct values (MLPerf reference); vocab=train: train days only, a test "
                  "value unseen in training -> reserved id vocab_size - 1, vocab_size = "
                  "distinct + 1",
    "dense": "missing -> 0; stored = max(x, 0), no bias (MLPerf reference data_utils.py "
             "processCriteoAdData; HugeCTR dlrm_raw_utils.h); negatives counted; non-integer "
             "or int32 overflow is an error",
    "split": "train = all lines of the train days in day order; test = the first ceil(L/2) "
             "lines of the test day (MLPerf reference numpy_to_binary midpoint)",
    "order": "shuffle=total (default): the train samples in a uniform random permutation "
             "from the seed (MLPerf reference: data_utils.py concatCriteoAdData, "
             "--data-randomize=total); the test samples in file order; shuffle=none: train "
             "days in order, lines in file order",
}


class InputError(ValueError):
    """Bad input or options: the message names the file, line, field and value."""


# Hooks for the tests: called as AFTER_DAY(pass_number, day) once a day is recorded done; the
# shuffle calls AFTER_DAY(3, scatter blocks done) at each checkpoint and AFTER_DAY(4, bucket)
# once a bucket is written.
AFTER_DAY = None

# Set in the main process before the pool forks; the workers inherit them.
_G = {}


# ----------------------------------------------------------------------------- parsing

_HEX_LUT = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i
_AR8 = np.arange(8)
_PAD8 = np.frombuffer(b"00000000", np.uint8)

_READ_COLUMN_TYPES = {name: (pa.int64() if i <= fmt.NUM_DENSE else pa.binary())
                      for i, name in enumerate(FIELD_NAMES)}
_PARSE_OPTIONS = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                    newlines_in_values=False, ignore_empty_lines=False)
_CONVERT_OPTIONS = pacsv.ConvertOptions(column_types=_READ_COLUMN_TYPES, null_values=[""],
                                        strings_can_be_null=False,
                                        quoted_strings_can_be_null=False, check_utf8=False)


class _BadBlock(Exception):
    """A block failed a vectorised check; the line-by-line scan names the line."""


def _hex_digits(chars, mod):
    """uint8 [k, 8] ASCII hex digits -> uint32 [k] = int(digits, 16) % mod."""
    nibbles = np.take(_HEX_LUT, chars)
    if nibbles.size and nibbles.max() == 255:
        raise _BadBlock
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    values = packed.view(">u4").reshape(len(chars)).astype(np.uint32)
    np.remainder(values, np.uint32(mod), out=values)
    return values


def _hex_column(arr, mod):
    """pyarrow binary array of 0-8 hex digits -> uint32 hashed values (empty -> 0)."""
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int32, count=n + 1, offset=4 * arr.offset)
    data = (np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None and bufs[2].size
            else _PAD8)
    lengths = np.diff(offsets)
    if n == 0:
        return np.zeros(0, np.uint32)
    full = lengths == 8
    if np.count_nonzero(full) * 8 == offsets[-1] - offsets[0]:
        # Every value is 8 digits or empty (Criteo's files): the values' bytes are one
        # contiguous [k, 8] array, no gather needed.
        values = _hex_digits(data[offsets[0]:offsets[-1]].reshape(-1, 8), mod)
        if len(values) == n:
            return values
        out = np.zeros(n, np.uint32)  # missing -> 0
        out[full] = values
        return out
    if lengths.max() > 8:
        raise _BadBlock
    # Values of 1-7 digits: gather each value's last 8 bytes, left-pad with "0".
    idx = (offsets[1:].astype(np.int64) - 8)[:, None] + _AR8
    np.clip(idx, 0, len(data) - 1, out=idx)
    chars = data[idx]
    chars[_AR8 < (8 - lengths)[:, None]] = ord("0")
    return _hex_digits(chars, mod)


def _parse_block(buf, mod):
    """Block of whole lines -> (label int64 [n], dense list of 13 int64 [n] (missing 0),
    hashed list of 26 uint32 [n]). Raises _BadBlock if any line is bad."""
    # pyarrow's int64 parser also takes "0x1f", and skips a UTF-8 byte-order mark at the start
    # of every block; no valid line holds an x, a \r or a BOM.
    if (buf.find(b"\r") >= 0 or buf.find(b"x") >= 0 or buf.find(b"X") >= 0
            or buf.find(UTF8_BOM) >= 0):
        raise _BadBlock
    try:
        table = pacsv.read_csv(
            pa.py_buffer(buf),
            read_options=pacsv.ReadOptions(column_names=FIELD_NAMES, use_threads=False,
                                           block_size=len(buf) + 1024),
            parse_options=_PARSE_OPTIONS, convert_options=_CONVERT_OPTIONS)
    except pa.ArrowInvalid:
        raise _BadBlock from None
    columns = [table.column(i).combine_chunks() if table.column(i).num_chunks != 1
               else table.column(i).chunk(0) for i in range(NUM_FIELDS)]
    label_arr = columns[0]
    if label_arr.null_count:
        raise _BadBlock
    label = label_arr.to_numpy()
    if len(label) and (label.min() < 0 or label.max() > 1):
        raise _BadBlock
    dense = []
    for arr in columns[1:1 + fmt.NUM_DENSE]:
        values = (arr.fill_null(0) if arr.null_count else arr).to_numpy()
        if len(values) and values.max() > INT32_MAX:
            raise _BadBlock
        dense.append(values)
    hashed = [_hex_column(arr, mod) for arr in columns[1 + fmt.NUM_DENSE:]]
    return label, dense, hashed


_INT_RE = re.compile(rb"-?[0-9]+")
_HEX_RE = re.compile(rb"[0-9A-Fa-f]{1,8}")


def _show(value):
    text = value.decode("latin-1")
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _field(j):
    return f"field {j + 1} ({FIELD_NAMES[j]})"


def _line_problem(line):
    """The first thing wrong with one line (bytes, no line end), or None."""
    if b"\r" in line:
        return "contains a carriage return (\\r); Criteo's files end lines with \\n only"
    if UTF8_BOM in line:
        return "contains a UTF-8 byte-order mark (bytes EF BB BF); Criteo's files have none"
    fields = line.split(b"\t")
    if len(fields) != NUM_FIELDS:
        return f"has {len(fields)} tab-separated fields, expected {NUM_FIELDS}"
    label = fields[0].strip(b" ")
    if label not in (b"0", b"1"):
        return ("label is empty (missing)" if not label
                else f"label {_show(fields[0])} is not 0 or 1")
    for j in range(1, 1 + fmt.NUM_DENSE):
        value = fields[j].strip(b" ")
        if not value:
            continue
        if not _INT_RE.fullmatch(value):
            return f"{_field(j)} {_show(fields[j])} is not an integer"
        if int(value) > INT32_MAX:
            return f"{_field(j)} {int(value)} is too large (does not fit int32)"
        if int(value) < -(1 << 63):
            return f"{_field(j)} {int(value)} is too small (does not fit int64)"
    for j in range(1 + fmt.NUM_DENSE, NUM_FIELDS):
        if fields[j] and not _HEX_RE.fullmatch(fields[j]):
            return f"{_field(j)} {_show(fields[j])} is not a hexadecimal number of 1-8 digits"
    return None


def _first_bad_line(buf):
    """-> (line index in buf, byte offset of that line in buf, problem) or None."""
    offset = 0
    lines = buf.split(b"\n")
    if buf.endswith(b"\n"):
        lines.pop()
    for i, line in enumerate(lines):
        problem = _line_problem(line)
        if problem is not None:
            return i, offset, problem
        offset += len(line) + 1
    return None


def _count_newlines(path, end):
    count = 0
    with open(path, "rb") as f:
        while end > 0:
            data = f.read(min(end, 16 << 20))
            if not data:
                break
            count += data.count(b"\n")
            end -= len(data)
    return count


def _raise_bad_block(unit, buf, block_offset, lines_before):
    """Names the first bad line of buf (at byte block_offset of the file or stream;
    lines_before lines of the unit precede it) and raises InputError."""
    _, path, gz = unit[:3]
    found = _first_bad_line(buf)
    if found is None:  # the vectorised checks and the line scan disagree: say what we know
        raise InputError(f"{path}: the block of lines starting at byte {block_offset} "
                         f"does not parse (pyarrow rejects it), but no single bad line was "
                         f"found in it")
    i, in_block, problem = found
    offset = block_offset + in_block
    if gz:
        line = lines_before + i + 1
        where = f"line {line} (byte {offset} of the decompressed stream)"
    else:
        line = _count_newlines(path, offset) + 1
        where = f"line {line} (byte {offset})"
    raise InputError(f"{path}: {where}: {problem}")


# ----------------------------------------------------------------------------- reading

def _align(f, pos, size):
    """The first line start at or after pos (pos itself if the byte before it is '\\n')."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    f.seek(pos - 1)
    start = pos - 1
    while True:
        data = f.read(1 << 16)
        if not data:
            return size
        i = data.find(b"\n")
        if i >= 0:
            return start + i + 1
        start += len(data)


def _read_gz(f, want, path, position):
    """Up to `want` bytes of the gzip.GzipFile f (fewer only at the end of the stream), read
    in pieces so that bad or truncated data is reported at the decompressed byte reached
    (position: that of the first byte asked for)."""
    pieces, got = [], 0
    while got < want:
        try:
            piece = f.read1(want - got)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise InputError(f"{path}: bad gzip data after {position + got} decompressed "
                             f"bytes: {err}") from None
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _unit_blocks(unit, block_bytes):
    """Yields (block of whole lines, byte offset of the block in the file or decompressed
    stream), and adds the input bytes consumed to the shared progress counter."""
    _, path, gz, index, chunk_bytes = unit
    counter = _G.get("progress")
    if gz:
        raw = open(path, "rb")
        f = gzip.GzipFile(fileobj=raw, mode="rb")
        start, remaining = 0, None
    else:
        f = raw = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
        start = _align(f, index * chunk_bytes, size)
        end = _align(f, (index + 1) * chunk_bytes, size)
        f.seek(start)
        remaining = end - start
    with raw, f:
        carry, offset, consumed = b"", start, raw.tell()
        while True:
            want = block_bytes if remaining is None else min(block_bytes, remaining)
            if gz:
                data = _read_gz(f, want, path, offset + len(carry))
            else:
                data = f.read(want) if want > 0 else b""
            if remaining is not None:
                if want > 0 and not data:
                    raise InputError(f"{path}: ended before byte {end} "
                                     f"(file changed while reading?)")
                remaining -= len(data)
            at_end = not data or remaining == 0
            if counter is not None:
                now = raw.tell()
                with counter.get_lock():
                    counter.value += now - consumed
                consumed = now
            buf = carry + data if carry else data
            if at_end:
                if buf:
                    yield buf, offset
                return
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                carry = buf
                continue
            yield (buf[:cut] if cut < len(buf) else buf), offset
            offset += cut
            carry = buf[cut:]


def _lines_in_block(buf):
    return buf.count(b"\n") + (0 if buf.endswith(b"\n") else 1)


# ----------------------------------------------------------------------------- workers

def _worker_init():
    """Workers ignore Ctrl-C (the main process stops them) and, on Linux, die with the main
    process (a SIGKILLed run leaves no workers behind)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the main process died before prctl
            os._exit(1)
    except (OSError, AttributeError):
        pass


def _pass1_unit(task):
    """Parses one chunk into the shared seen arrays (or only counts its lines).
    -> (day, unit index, lines)."""
    unit, parse, block_bytes = task
    seen, touched, mod = _G.get("seen"), _G.get("touched"), _G["mod"]
    lines = 0
    for buf, offset in _unit_blocks(unit, block_bytes):
        if not parse:
            lines += _lines_in_block(buf)
            continue
        try:
            label, _, hashed = _parse_block(buf, mod)
        except _BadBlock:
            _raise_bad_block(unit, buf, offset, lines)
        for f, values in enumerate(hashed):
            seen[f][values] = 1
            touched[f][values >> TOUCH_SHIFT] = 1
        lines += len(label)
    return unit[0], unit[3], lines


def _pass2_unit(task):
    """Converts one chunk and writes its rows at out_first (in samples) of out_path.
    -> (day, unit index, rows, negative dense values clamped to 0, per feature)."""
    unit, block_bytes, out_path, out_first, expected, limit = task
    tables, unseen, mod = _G["tables"], _G["unseen"], _G["mod"]
    clamped = np.zeros(fmt.NUM_DENSE, np.int64)
    rows = 0
    fd = os.open(out_path, os.O_WRONLY)
    try:
        for buf, offset in _unit_blocks(unit, block_bytes):
            if limit is not None:
                left = limit - rows
                if left <= 0:
                    break
                if buf.count(b"\n") >= left:
                    ends = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
                    buf = buf[:ends[left - 1] + 1]
            try:
                label, dense, hashed = _parse_block(buf, mod)
            except _BadBlock:
                _raise_bad_block(unit, buf, offset, rows)
            n = len(label)
            out = np.empty((n, NUM_FIELDS), fmt.RAW_DTYPE)
            out[:, 0] = label
            for j, values in enumerate(dense):
                low = values < DENSE_FLOOR
                if low.any():
                    clamped[j] += int(low.sum())
                    values = np.maximum(values, DENSE_FLOOR)
                out[:, 1 + j] = values
            for f, values in enumerate(hashed):
                column = out[:, 1 + fmt.NUM_DENSE + f]
                np.subtract(tables[f][values], 1, out=column, dtype=np.int32, casting="unsafe")
                missing = column < 0
                if missing.any():
                    if unseen[f] < 0:
                        i = int(np.flatnonzero(missing)[0])
                        raise InputError(
                            f"{unit[1]}: {_field(1 + fmt.NUM_DENSE + f)}: hashed value "
                            f"{int(values[i])} is not in the vocabulary pass 1 built (the "
                            f"file changed since pass 1? rerun with --overwrite)")
                    column[missing] = unseen[f]
            written = os.pwrite(fd, memoryview(out).cast("B"),
                                (out_first + rows) * fmt.RAW_BYTES_PER_SAMPLE)
            if written != out.nbytes:
                raise OSError(f"{out_path}: short write ({written} of {out.nbytes} bytes)")
            rows += n
    finally:
        os.close(fd)
    want = expected if limit is None else min(expected, limit)
    if rows != want:
        raise InputError(f"{unit[1]}: chunk {unit[3]} has {rows} lines now, {want} in pass 1 "
                         f"(the file changed? rerun with --overwrite)")
    return unit[0], unit[3], rows, clamped


# ----------------------------------------------------------------------------- shared memory

def _shared_array(shape, dtype):
    """A zero-filled array in anonymous shared memory (inherited by forked workers; pages
    are only allocated when touched)."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype,
                         count=int(np.prod(shape))).reshape(shape)


def _allocate_seen(mod):
    """The shared seen arrays: uint8 [26, mod rounded up to a touch block] and the touched
    blocks uint8 [26, blocks]."""
    blocks = (mod + (1 << TOUCH_SHIFT) - 1) >> TOUCH_SHIFT
    seen = _shared_array((fmt.NUM_CATEGORICAL, blocks << TOUCH_SHIFT), np.uint8)
    touched = _shared_array((fmt.NUM_CATEGORICAL, blocks), np.uint8)
    return seen, touched


def _seen_values(seen, touched, f, group=512):
    """Yields the sorted hashed values marked in seen[f], a few touched blocks at a time
    (bounded temporaries). Reads copies: workers may be writing (values of an unfinished
    day) meanwhile."""
    block = 1 << TOUCH_SHIFT
    blocks = np.flatnonzero(touched[f].copy())
    rows_of = seen[f].reshape(-1, block)
    for first in range(0, len(blocks), group):
        some = blocks[first:first + group]
        # Fancy indexing copies; flatnonzero is ~20x faster on bool than on uint8 (and than
        # nonzero of a 2-D array).
        flat = np.flatnonzero(rows_of[some].view(np.bool_))
        yield ((some[flat >> TOUCH_SHIFT].astype(np.uint32) << np.uint32(TOUCH_SHIFT))
               + (flat & (block - 1)).astype(np.uint32))


def _write_vocab(path, mod, seen, touched):
    """Writes the vocabulary file (atomically); returns the 26 counts."""
    counts = []
    header = len(VOCAB_MAGIC) + 8 * (1 + fmt.NUM_CATEGORICAL)
    with fmt.atomic_file(path, "wb") as out:
        out.seek(header)
        for f in range(fmt.NUM_CATEGORICAL):
            counts.append(0)
            for values in _seen_values(seen, touched, f):
                values.astype("<u4").tofile(out)
                counts[-1] += len(values)
        out.seek(0)
        out.write(VOCAB_MAGIC + np.asarray([mod] + counts, "<u8").tobytes())
    return counts


def _iter_vocab(path):
    """Yields (hash_mod, feature, sorted uint32 hashed values) of a vocabulary file, one
    feature at a time."""
    with open(path, "rb") as f:
        head = f.read(len(VOCAB_MAGIC) + 8 * (1 + fmt.NUM_CATEGORICAL))
        if len(head) < len(VOCAB_MAGIC) + 8 * (1 + fmt.NUM_CATEGORICAL) or \
                not head.startswith(VOCAB_MAGIC):
            raise InputError(f"{path}: not a vocabulary file of preprocess_criteo.py")
        numbers = np.frombuffer(head[len(VOCAB_MAGIC):], "<u8")
        mod, counts = int(numbers[0]), [int(c) for c in numbers[1:]]
        for feature, count in enumerate(counts):
            values = np.fromfile(f, "<u4", count=count).astype(np.uint32)
            if len(values) != count or (count and (values[-1] >= mod
                                                   or np.any(values[1:] <= values[:-1]))):
                raise InputError(f"{path}: feature {feature}: damaged (delete it, or the "
                                 f"work directory it is in)")
            yield mod, feature, values


def read_vocab(path):
    """-> (hash_mod, list of 26 sorted uint32 arrays): the vocabulary file's contents."""
    items = list(_iter_vocab(path))
    return items[0][0], [values for _, _, values in items]


def _table_dtype(n):
    """Narrowest unsigned type holding 0..n (tables store id + 1; 0 = not in vocabulary)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dtype).max:
            return dtype
    raise InputError(f"vocabulary of {n} values does not fit uint32")


def _build_tables(vocab_path):
    """Shared hashed value -> id + 1 tables (0: not in the vocabulary), one per feature,
    built from the vocabulary file one feature at a time."""
    tables = []
    for mod, _, values in _iter_vocab(vocab_path):
        dtype = _table_dtype(len(values))
        table = _shared_array((mod,), dtype)
        table[values] = np.arange(1, len(values) + 1, dtype=dtype)
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------- shuffle

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


def _bucket_path(work, k):
    return os.path.join(work.dir, f"shuffle_bucket_{k:05d}.bin")


def _scatter_block(work, rows, seed, block_index, bucket_rows, buckets):
    """Appends each row of rows (int32 [n, 40]) to a bucket drawn uniformly at random (from
    seed and block_index only); bucket_rows (int64 [K]) counts the rows of each bucket."""
    draws = np.random.default_rng([seed, 0, block_index]).integers(0, buckets, len(rows))
    order = np.argsort(draws, kind="stable")
    counts = np.bincount(draws, minlength=buckets)
    grouped = rows[order]
    first = 0
    for k in np.flatnonzero(counts):
        part = grouped[first:first + counts[k]]
        fd = os.open(_bucket_path(work, k), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, memoryview(part).cast("B"),
                      int(bucket_rows[k]) * fmt.RAW_BYTES_PER_SAMPLE)
        finally:
            os.close(fd)
        bucket_rows[k] += counts[k]
        first += counts[k]


def _shuffle_scatter(work, state, num_samples, seed, block_rows, progress):
    """Pass 3a: train_data.bin.partial (in day order) -> K bucket files, resumable at the
    last checkpoint (bucket files cut back to the sizes it recorded)."""
    sh = state["shuffle"]
    buckets = sh["buckets"]
    bucket_rows = np.asarray(sh["bucket_rows"], np.int64)
    for k in range(buckets):  # drop what was appended after the last checkpoint
        size = int(bucket_rows[k]) * fmt.RAW_BYTES_PER_SAMPLE
        if size or os.path.exists(_bucket_path(work, k)):
            with open(_bucket_path(work, k), "ab") as f:
                f.truncate(size)
    start = sh["rows_scattered"]  # a multiple of block_rows, or num_samples
    while start < num_samples:
        block = start // block_rows
        count = min(block_rows, num_samples - start) * fmt.RAW_INTS_PER_SAMPLE
        rows = np.fromfile(work.train_partial, fmt.RAW_DTYPE, count=count,
                           offset=start * fmt.RAW_BYTES_PER_SAMPLE)
        if rows.size != count:
            raise InputError(f"{work.train_partial}: shorter than its {num_samples} samples; "
                             f"delete {work.dir} or pass --overwrite")
        rows = rows.reshape(-1, fmt.RAW_INTS_PER_SAMPLE)
        _scatter_block(work, rows, seed, block, bucket_rows, buckets)
        start = min(start + block_rows, num_samples)
        progress.update(start)
        if (block + 1) % SHUFFLE_SAVE_BLOCKS == 0 or start == num_samples:
            for k in np.flatnonzero(bucket_rows):
                fmt.fsync_path(_bucket_path(work, k))
            sh["bucket_rows"] = [int(c) for c in bucket_rows]
            sh["rows_scattered"] = start
            work.save(state)
            if AFTER_DAY is not None:
                AFTER_DAY(3, block + 1)
    sh["scatter_complete"] = True
    work.save(state)
    os.remove(work.train_partial)  # its rows are all in the buckets now: disk for the output


def _shuffle_gather(work, state, seed, progress):
    """Pass 3b: each bucket, permuted in memory (from seed and its index), written in bucket
    order to train_data.bin.shuffled; resumable at the first bucket not recorded done."""
    sh = state["shuffle"]
    bucket_rows = sh["bucket_rows"]
    total = sum(bucket_rows)
    if sh["buckets_done"] == 0:
        with open(work.train_shuffled, "wb") as f:
            f.truncate(total * fmt.RAW_BYTES_PER_SAMPLE)
    fd = os.open(work.train_shuffled, os.O_WRONLY)
    try:
        for k in range(sh["buckets_done"], sh["buckets"]):
            first, n = sum(bucket_rows[:k]), bucket_rows[k]
            if n:
                rows = np.fromfile(_bucket_path(work, k), fmt.RAW_DTYPE)
                if rows.size != n * fmt.RAW_INTS_PER_SAMPLE:
                    raise InputError(f"{_bucket_path(work, k)}: {rows.size * 4} bytes, "
                                     f"expected {n * fmt.RAW_BYTES_PER_SAMPLE}; delete "
                                     f"{work.dir} or pass --overwrite")
                rows = rows.reshape(n, fmt.RAW_INTS_PER_SAMPLE)
                permuted = rows[np.random.default_rng([seed, 1, k]).permutation(n)]
                del rows
                os.pwrite(fd, memoryview(permuted).cast("B"),
                          first * fmt.RAW_BYTES_PER_SAMPLE)
                del permuted
                os.fsync(fd)
            sh["buckets_done"] = k + 1
            work.save(state)
            if AFTER_DAY is not None:
                AFTER_DAY(4, k)
            if os.path.exists(_bucket_path(work, k)):
                os.remove(_bucket_path(work, k))
            progress.update(first + n)
    finally:
        os.close(fd)


def _shuffle_train(work, state, num_samples, progress_stream, progress_seconds):
    """Pass 3: the train samples as a uniform random permutation (a two-pass, bucketed
    Fisher-Yates-Rao shuffle): each sample to one of K buckets uniformly at random, then each
    bucket permuted uniformly in memory and the buckets concatenated. Leaves the result as
    work.train_partial. -> timings (s)."""
    seed, block_rows = state["options"]["seed"], state["options"]["shuffle_block_rows"]
    if "shuffle" not in state:
        buckets = shuffle_buckets(num_samples, state["options"]["shuffle_memory_bytes"],
                                  block_rows)
        state["shuffle"] = {"buckets": buckets, "rows_scattered": 0, "bucket_rows": [0] * buckets,
                            "scatter_complete": False, "buckets_done": 0}
        work.save(state)
    sh, timings = state["shuffle"], {}
    for name, step, complete in (
            ("scatter", lambda p: _shuffle_scatter(work, state, num_samples, seed, block_rows,
                                                   p),
             sh["scatter_complete"]),
            ("gather", lambda p: _shuffle_gather(work, state, seed, p),
             sh["buckets_done"] == sh["buckets"])):
        if complete:
            continue
        start = time.perf_counter()
        progress = Progress(f"preprocess_criteo shuffle ({name}, {sh['buckets']} buckets)",
                            num_samples, unit="M samples", scale=1e6,
                            seconds=progress_seconds, stream=progress_stream)
        step(progress)
        timings[f"shuffle_{name}_s"] = time.perf_counter() - start
    if os.path.exists(work.train_shuffled):
        os.replace(work.train_shuffled, work.train_partial)
    return timings


# ----------------------------------------------------------------------------- orchestration

def _shuffle_metadata(state):
    """The metadata's record of the train samples' order: method, seed, bucket count."""
    options = state["options"]
    if options["shuffle"] == "none":
        return {"method": "none (days in order, lines in file order)"}
    return {"method": "total: uniform random permutation of the train samples, two-pass "
                      "bucketed (Fisher-Yates-Rao): bucket of each sample drawn uniformly, "
                      "each bucket permuted in memory, buckets concatenated",
            "seed": options["seed"], "buckets": state["shuffle"]["buckets"],
            "memory_bytes": options["shuffle_memory_bytes"],
            "block_rows": options["shuffle_block_rows"],
            "generator": f"numpy {np.__version__} default_rng (PCG64); bucket draws "
                         f"default_rng([seed, 0, block]), permutations "
                         f"default_rng([seed, 1, bucket])"}


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


def find_inputs(input_dir, days):
    """day -> path of day_K or day_K.gz in input_dir."""
    if not os.path.isdir(input_dir):
        raise InputError(f"{input_dir}: not a directory (expected the directory holding "
                         f"day_0 .. day_23)")
    paths = {}
    for day in days:
        candidates = [os.path.join(input_dir, f"day_{day}{ext}") for ext in ("", ".gz")]
        for path in candidates:
            if os.path.exists(path) and not os.path.isfile(path):
                kind = "a directory" if os.path.isdir(path) else "not a regular file"
                raise InputError(f"{path}: is {kind}, expected the day's TSV file (plain or "
                                 f".gz)")
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise InputError(f"{input_dir}: no day_{day} or day_{day}.gz")
        if len(found) > 1:
            raise InputError(f"{input_dir}: both day_{day} and day_{day}.gz exist; keep one")
        paths[day] = found[0]
    return paths


def _fingerprint(path):
    st = os.stat(path)
    return {"name": os.path.basename(path), "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _units(day, path, chunk_bytes):
    gz = path.endswith(".gz")
    if gz:
        return [(day, path, True, 0, 0)]
    size = os.path.getsize(path)
    return [(day, path, False, k, chunk_bytes) for k in range(max(1, -(-size // chunk_bytes)))]


def _cpu_seconds():
    """CPU time (user + system) of this process and its waited-for children (the workers of
    finished pools)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _run_units(func, tasks, workers, progress, on_result, poll_seconds):
    """Runs func over tasks in a pool of forked workers (results in completion order)."""
    if not tasks:
        return
    _G["progress"].value = 0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
        results = pool.imap_unordered(func, tasks, chunksize=1)
        for _ in range(len(tasks)):
            while True:
                try:
                    result = results.next(timeout=poll_seconds)
                    break
                except multiprocessing.TimeoutError:
                    progress.update(min(_G["progress"].value, progress.total - 1))
            on_result(result)
            progress.update(min(_G["progress"].value, progress.total - 1))


class _Work:
    """The work directory: state.json and the partial files."""

    def __init__(self, out_dir):
        self.dir = os.path.join(out_dir, WORK_NAME)
        self.state_path = os.path.join(self.dir, "state.json")
        self.vocab_path = os.path.join(self.dir, "vocabulary.bin")
        self.train_partial = os.path.join(self.dir, TRAIN_NAME + ".partial")
        self.test_partial = os.path.join(self.dir, TEST_NAME + ".partial")
        self.train_shuffled = os.path.join(self.dir, TRAIN_NAME + ".shuffled")

    def load(self):
        if not os.path.isfile(self.state_path):
            return None
        with open(self.state_path) as f:
            return json.load(f)

    def save(self, state):
        fmt.write_json_atomic(self.state_path, state)


def _remove_dead_temporaries(out_dir, work_dir, stream):
    """Removes the *.tmp-PID files of atomic writes (metadata, state, vocabulary) that a
    killed run left in out_dir and work_dir (where the PID no longer runs), saying so."""
    leftovers = [(out_dir, rf"{re.escape(METADATA_NAME)}\.tmp-(\d+)"),
                 (work_dir, r"(?:state\.json|vocabulary\.bin)\.tmp-(\d+)")]
    for directory, pattern in leftovers:
        if os.path.isdir(directory):
            fmt.remove_dead_leftovers(directory, pattern, "preprocess_criteo", stream)


def preprocess(input_dir, out_dir, train_days=tuple(range(23)), test_day=23, vocab="all",
               workers=None, hash_mod=HASH_MOD, chunk_bytes=DEFAULT_CHUNK_BYTES,
               block_bytes=DEFAULT_BLOCK_BYTES, overwrite=False, shuffle="total",
               seed=DEFAULT_SEED, shuffle_memory_bytes=DEFAULT_SHUFFLE_MEMORY,
               shuffle_block_rows=SHUFFLE_BLOCK_ROWS, allow_empty_days=False,
               progress_stream=sys.stderr, progress_seconds=5.0):
    """Converts INPUT_DIR's day files to OUT_DIR/{train,test}_data.bin; returns the metadata
    dict (also written to OUT_DIR/preprocess_metadata.json). See the module docstring."""
    say = (lambda text: (progress_stream.write(f"preprocess_criteo: {text}\n"),
                         progress_stream.flush())) if progress_stream else (lambda text: None)
    train_days = tuple(sorted(set(int(d) for d in train_days)))
    test_day = int(test_day)
    workers = int(workers or os.cpu_count() or 1)
    if not train_days:
        raise InputError("--train_days: no days")
    if test_day in train_days:
        raise InputError(f"--test_day {test_day} is also a train day")
    if vocab not in ("all", "train"):
        raise InputError(f"--vocab: {vocab!r}, expected 'all' or 'train'")
    if shuffle not in ("total", "none"):
        raise InputError(f"--shuffle: {shuffle!r}, expected 'total' or 'none'")
    if shuffle == "total":
        shuffle_buckets(1, shuffle_memory_bytes, shuffle_block_rows)  # checks it up front
    if not 1 <= hash_mod <= INT32_MAX:
        raise InputError(f"--hash_mod: {hash_mod}, expected 1 .. {INT32_MAX}")
    if workers < 1 or chunk_bytes < 1 or block_bytes < 1:
        raise InputError("--workers, --chunk_bytes and --block_bytes must be positive")
    paths = find_inputs(input_dir, train_days + (test_day,))
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: is a file, not a directory")
    os.makedirs(out_dir, exist_ok=True)
    finals = {name: os.path.join(out_dir, name)
              for name in (TRAIN_NAME, TEST_NAME, METADATA_NAME, VOCAB_NAME)}
    work = _Work(out_dir)
    _remove_dead_temporaries(out_dir, work.dir, progress_stream)
    if overwrite:
        shutil.rmtree(work.dir, ignore_errors=True)
        for path in finals.values():
            if os.path.exists(path):
                os.remove(path)
    elif not os.path.isdir(work.dir):
        existing = [p for p in finals.values() if os.path.exists(p)]
        if existing:
            raise InputError(f"{existing[0]}: already exists (pass --overwrite to replace "
                             f"the outputs)")

    options = {"train_days": list(train_days), "test_day": test_day, "vocab": vocab,
               "hash_mod": hash_mod, "chunk_bytes": chunk_bytes, "shuffle": shuffle}
    if shuffle == "total":
        options.update(seed=seed, shuffle_memory_bytes=shuffle_memory_bytes,
                       shuffle_block_rows=shuffle_block_rows)
    inputs = {str(d): _fingerprint(p) for d, p in paths.items()}
    state = work.load()
    if state is not None:
        if state.get("version") != STATE_VERSION or state.get("options") != options:
            raise InputError(f"{work.dir}: an unfinished run with other options "
                             f"({state.get('options')}) is there; rerun it with those options "
                             f"or pass --overwrite to start over")
        changed = [v["name"] for d, v in inputs.items() if state["inputs"].get(d) != v]
        if changed:
            say(f"inputs changed since the unfinished run ({', '.join(changed)}): "
                f"starting over")
            shutil.rmtree(work.dir)
            state = None
    if state is None:
        os.makedirs(work.dir, exist_ok=True)
        state = {"version": STATE_VERSION, "options": options, "inputs": inputs,
                 "pass1": {"days_done": [], "unit_lines": {}, "complete": False},
                 "pass2": {"days_done": [], "clamped": {}, "complete": False}}
        work.save(state)
    else:
        say(f"resuming: pass 1 days done {state['pass1']['days_done']}, pass 2 days done "
            f"{state['pass2']['days_done']}")

    try:
        return _run_passes(input_dir, out_dir, paths, finals, work, state, train_days,
                           test_day, vocab, workers, hash_mod, chunk_bytes, block_bytes,
                           allow_empty_days, progress_stream, progress_seconds, say)
    except InputError:
        # Bad input data: fixing it changes the file, which restarts the run anyway, so
        # nothing of this run is worth keeping.
        shutil.rmtree(work.dir, ignore_errors=True)
        raise
    finally:
        _G.clear()


def _run_passes(input_dir, out_dir, paths, finals, work, state, train_days, test_day, vocab,
                workers, hash_mod, chunk_bytes, block_bytes, allow_empty_days,
                progress_stream, progress_seconds, say):
    vocab_days = train_days + ((test_day,) if vocab == "all" else ())
    all_days = train_days + (test_day,)
    _G.clear()
    _G["mod"] = hash_mod
    _G["progress"] = multiprocessing.get_context("fork").Value("q", 0)
    timings = {}

    # Pass 1: vocabulary (and line counts).
    p1 = state["pass1"]
    if not p1["complete"]:
        seen, touched = _allocate_seen(hash_mod)
        _G["seen"], _G["touched"] = seen, touched
        if os.path.exists(work.vocab_path):
            for _, f, values in _iter_vocab(work.vocab_path):
                seen[f][values] = 1
                touched[f][values >> TOUCH_SHIFT] = 1
        todo = [d for d in all_days if d not in p1["days_done"]]
        units = {d: _units(d, paths[d], chunk_bytes) for d in todo}
        pending = {d: len(u) for d, u in units.items()}
        lines = {d: [None] * len(u) for d, u in units.items()}
        tasks = [(u, d in vocab_days, block_bytes) for d in todo for u in units[d]]
        progress = Progress("preprocess_criteo pass 1 (vocabulary)",
                            sum(os.path.getsize(paths[d]) for d in todo), unit="MB",
                            scale=1e6, seconds=progress_seconds, stream=progress_stream)

        def pass1_done(result):
            day, index, n = result
            lines[day][index] = n
            pending[day] -= 1
            if pending[day] == 0:
                if sum(lines[day]) == 0 and not allow_empty_days:
                    raise InputError(f"{paths[day]}: holds no lines (a failed download?); "
                                     f"pass --allow_empty_days to accept an empty day")
                if day in vocab_days:
                    _write_vocab(work.vocab_path, hash_mod, seen, touched)
                p1["unit_lines"][str(day)] = lines[day]
                p1["days_done"] = sorted(p1["days_done"] + [day])
                work.save(state)
                if AFTER_DAY is not None:
                    AFTER_DAY(1, day)

        start, cpu = time.perf_counter(), _cpu_seconds()
        _run_units(_pass1_unit, tasks, workers, progress, pass1_done, progress_seconds)
        progress.update(progress.total)
        counts = _write_vocab(work.vocab_path, hash_mod, seen, touched)
        timings["pass1_s"] = time.perf_counter() - start
        timings["pass1_cpu_s"] = _cpu_seconds() - cpu
        del seen, touched
        _G.pop("seen"), _G.pop("touched")
        p1["distinct"] = counts
        p1["complete"] = True
        work.save(state)
        say(f"pass 1 done in {timings['pass1_s']:.1f} s: distinct hashed values {counts}")

    day_lines = {d: sum(p1["unit_lines"][str(d)]) for d in all_days}
    train_samples = sum(day_lines[d] for d in train_days)
    test_lines = day_lines[test_day]
    test_samples = (test_lines + 1) // 2  # ceil(L / 2)
    if train_samples == 0:
        raise InputError(f"{input_dir}: the train days hold no lines")
    distinct = p1["distinct"]
    if vocab == "train":
        vocab_sizes = [c + 1 for c in distinct]
        unseen = np.asarray(distinct, np.int64)
    else:
        vocab_sizes = list(distinct)
        unseen = np.full(fmt.NUM_CATEGORICAL, -1, np.int64)

    # Pass 2: conversion.
    p2 = state["pass2"]
    if not p2["complete"]:
        build_s, build_cpu = time.perf_counter(), _cpu_seconds()
        _G["tables"] = _build_tables(work.vocab_path)
        build_s, build_cpu = time.perf_counter() - build_s, _cpu_seconds() - build_cpu
        _G["unseen"] = unseen
        partials = (work.train_partial, work.test_partial)
        if p2["days_done"] and not all(os.path.exists(p) for p in partials):
            say(f"a partial output in {work.dir} is missing: pass 2 starts over")
            p2["days_done"], p2["clamped"] = [], {}
            work.save(state)
        for path, n in zip(partials, (train_samples, test_samples)):
            size = n * fmt.RAW_BYTES_PER_SAMPLE
            if not os.path.exists(path) or not p2["days_done"]:
                with open(path, "wb") as f:
                    f.truncate(size)
            elif os.path.getsize(path) != size:
                raise InputError(f"{path}: {os.path.getsize(path)} bytes, expected {size}; "
                                 f"delete {work.dir} or pass --overwrite")
        todo = [d for d in all_days if d not in p2["days_done"]]
        tasks, pending, total_bytes = [], {}, 0
        first = 0
        for d in all_days:
            is_test = d == test_day
            if is_test:
                first = 0
            unit_lines = p1["unit_lines"][str(d)]
            for u, n in zip(_units(d, paths[d], chunk_bytes), unit_lines):
                limit = None
                if is_test:
                    limit = test_samples - first
                    if limit <= 0:
                        break
                if d in todo:
                    out = work.test_partial if is_test else work.train_partial
                    tasks.append((u, block_bytes, out, first, n, limit))
                    pending[d] = pending.get(d, 0) + 1
                    size = os.path.getsize(paths[d])
                    total_bytes += (size if u[2] else min(chunk_bytes, size - u[3] * chunk_bytes))
                first += n
            if d in todo and d not in pending:  # a day without lines
                pending[d] = 0
        clamped = {d: np.zeros(fmt.NUM_DENSE, np.int64) for d in todo}
        progress = Progress("preprocess_criteo pass 2 (convert)", max(total_bytes, 1),
                            unit="MB", scale=1e6, seconds=progress_seconds,
                            stream=progress_stream)

        def day_done(day):
            for path in (work.train_partial, work.test_partial):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            p2["clamped"][str(day)] = [int(c) for c in clamped[day]]
            p2["days_done"] = sorted(p2["days_done"] + [day])
            work.save(state)
            if AFTER_DAY is not None:
                AFTER_DAY(2, day)

        def pass2_done(result):
            day, _, _, c = result
            clamped[day] += c
            pending[day] -= 1
            if pending[day] == 0:
                day_done(day)

        for d in [d for d in todo if pending[d] == 0]:
            day_done(d)
        start, cpu = time.perf_counter(), _cpu_seconds() - build_cpu
        _run_units(_pass2_unit, tasks, workers, progress, pass2_done, progress_seconds)
        progress.update(progress.total)
        timings["pass2_s"] = time.perf_counter() - start + build_s
        timings["pass2_cpu_s"] = _cpu_seconds() - cpu
        _G.pop("tables")
        p2["complete"] = True
        work.save(state)
        say(f"pass 2 done in {timings['pass2_s']:.1f} s")

    # Pass 3: shuffle the train samples (the test day keeps its order, as the reference).
    options = state["options"]
    if options["shuffle"] == "total":
        timings.update(_shuffle_train(work, state, train_samples, progress_stream,
                                      progress_seconds))
        say(f"shuffle done: {state['shuffle']['buckets']} buckets")

    # Finish: rename into place, metadata last, then remove the work directory.
    for partial, name in ((work.train_partial, TRAIN_NAME), (work.test_partial, TEST_NAME),
                          (work.vocab_path, VOCAB_NAME)):
        if os.path.exists(partial):
            os.replace(partial, finals[name])
        elif not os.path.exists(finals[name]):
            raise InputError(f"{partial}: missing (delete {work.dir} or pass --overwrite)")
    clamped_total = np.zeros(fmt.NUM_DENSE, np.int64)
    for c in p2["clamped"].values():
        clamped_total += np.asarray(c, np.int64)
    meta = {
        "format": "HugeCTR raw binary: 160 bytes per sample, 40 little-endian int32 "
                  "(label, 13 dense, 26 categorical ids in [0, vocab_size))",
        "tool": "preprocess_criteo.py",
        "rules": RULES,
        "hash_mod": hash_mod,
        "missing_categorical_hashed_value": MISSING_HASH,
        "dense_floor": DENSE_FLOOR,
        "vocab": vocab,
        "vocab_days": list(vocab_days),
        "train_days": list(train_days),
        "test_day": test_day,
        "vocab_sizes": vocab_sizes,
        "distinct_hashed_values": list(distinct),
        "unseen_id": ([int(c) for c in distinct] if vocab == "train" else None),
        "matches_criteo_tb": tuple(vocab_sizes) == fmt.CRITEO_TB_VOCAB_SIZES,
        "train_samples": train_samples,
        "test_samples": test_samples,
        "test_day_lines": test_lines,
        "dense_negative_clamped_to_0": {FIELD_NAMES[1 + j]: int(c)
                                   for j, c in enumerate(clamped_total) if c},
        "inputs": [dict(state["inputs"][str(d)], day=d, lines=day_lines[d]) for d in all_days],
        "outputs": {TRAIN_NAME: {"samples": train_samples,
                                 "size_bytes": train_samples * fmt.RAW_BYTES_PER_SAMPLE},
                    TEST_NAME: {"samples": test_samples,
                                "size_bytes": test_samples * fmt.RAW_BYTES_PER_SAMPLE},
                    VOCAB_NAME: {"layout": "magic b'CRTOVOC1', uint64 hash_mod, 26 uint64 "
                                 "counts, then per feature its sorted <u4 hashed values; id i "
                                 "of feature f = its i-th value"}},
        "shuffle": _shuffle_metadata(state),
        "options": {"chunk_bytes": chunk_bytes, "block_bytes": block_bytes},
        "timings_last_run_s": {k: round(v, 3) for k, v in timings.items()},
    }
    fmt.write_json_atomic(finals[METADATA_NAME], meta)
    shutil.rmtree(work.dir)
    return meta


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
