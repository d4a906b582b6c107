"""The two on-disk formats of this benchmark and what they share.

HugeCTR raw binary (input of split_bin.py, output of synthetic_data.py): one sample is
40 little-endian int32 = 160 bytes: label, 13 dense integers, 26 categorical ids.

Split format (output of split_bin.py, input of dataset.py), one directory per file:
  label.bin          int8     [N]       0 or 1
  dense.bin          float16  [N, 13]   DENSE_TRANSFORM already applied
  category_<i>.bin   int8/16/32/64 [N]  narrowest signed type holding vocab_sizes[i]
  metadata.json      format_version, num_samples, vocab_sizes, files (name -> dtype, shape),
                     dense_transform, source (name, size_bytes)

Also the one home of what the converters and the reader share: their error (InputError), the
check of labels and ids (check_labels, check_ids), and how this project writes files:
atomically (atomic_file, write_json_atomic), after a check at start that the place takes a
file (check_writable_directory, check_writable_file), and with the leftovers of killed
writers removed on the next run (remove_dead_leftovers).
"""

import contextlib
import json
import math
import os
import re
import shutil
import sys

import numpy as np

NUM_DENSE = 13
NUM_CATEGORICAL = 26
RAW_INTS_PER_SAMPLE = 1 + NUM_DENSE + NUM_CATEGORICAL
RAW_BYTES_PER_SAMPLE = 4 * RAW_INTS_PER_SAMPLE  # 160
RAW_DTYPE = np.dtype("<i4")
ID_DTYPE = np.dtype(np.int32)  # the ids' dtype in the batches (dataset.py)
MAX_VOCAB_SIZE = int(np.iinfo(ID_DTYPE).max) + 1  # ids 0 .. MAX_VOCAB_SIZE - 1 fit ID_DTYPE

FORMAT_VERSION = 1
METADATA_NAME = "metadata.json"
LABEL_FILE = "label.bin"
DENSE_FILE = "dense.bin"
LABEL_DTYPE = np.dtype(np.int8)
DENSE_DTYPE = np.dtype(np.float16)

# The seed's transform. preprocess_criteo.py stores max(x, 0) (the MLPerf reference's raw
# files; see its docstring for the sources); log(x + 3) is finite for every value >= -2,
# so raw files from other converters (e.g. with a +1 bias: Criteo's -3 stored as -2) still
# convert. Values below DENSE_MIN are rejected by split_bin.py.
DENSE_TRANSFORM = "log(x + 3)"
DENSE_MIN = -2

# Criteo Terabyte with the 40M hash cap (SOK's benchmark, MLPerf DLRM v1).
CRITEO_TB_VOCAB_SIZES = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)


class InputError(ValueError):
    """Bad input or options of a converter (preprocess_criteo.py, split_bin.py): the message
    is one line naming the file, the place in it (line, sample, field) and the value."""


def scaled_vocab_sizes(sizes=CRITEO_TB_VOCAB_SIZES, factor=1000):
    """Shrinks a vocabulary list for CPU runs: sizes above `factor` become max(factor, v // factor)."""
    return tuple(v if v <= factor else max(factor, v // factor) for v in sizes)


VOCAB_PRESETS = {"criteo_tb": CRITEO_TB_VOCAB_SIZES, "criteo_tb_scaled": scaled_vocab_sizes()}


def category_file(feature):
    return f"category_{feature}.bin"


def check_vocab_sizes(sizes, name="vocab_sizes", expected_len=NUM_CATEGORICAL):
    """Raises ValueError, its message starting with `name`, unless sizes is a list of
    expected_len (None: any number of) integers in [1, MAX_VOCAB_SIZE]."""
    if not isinstance(sizes, (list, tuple)):
        raise ValueError(f"{name} is {sizes!r}, expected a list of integers")
    if expected_len is not None and len(sizes) != expected_len:
        raise ValueError(f"{name}: expected {expected_len} entries (one per categorical "
                         f"feature), got {len(sizes)}")
    for i, size in enumerate(sizes):
        if not (isinstance(size, int) and not isinstance(size, bool)
                and 1 <= size <= MAX_VOCAB_SIZE):
            raise ValueError(f"{name}[{i}] is {size!r}, expected an integer in [1, "
                             f"{MAX_VOCAB_SIZE}] (ids are read as {ID_DTYPE.name})")


def parse_vocab_sizes(value, expected_len=NUM_CATEGORICAL):
    """A preset name (VOCAB_PRESETS) | '[1, 2, ...]' | '1,2,...' -> tuple of ints in
    [1, MAX_VOCAB_SIZE]. Never evaluates code."""
    text = value.strip()
    if text in VOCAB_PRESETS:
        sizes = VOCAB_PRESETS[text]
    else:
        try:
            sizes = json.loads(text if text.startswith("[") else f"[{text}]")
        except json.JSONDecodeError as err:
            raise ValueError(f"vocab_sizes: cannot parse {value!r} as a JSON list, a comma-"
                             f"separated list or one of {sorted(VOCAB_PRESETS)}: {err}") from None
    check_vocab_sizes(sizes, "vocab_sizes", expected_len)
    return tuple(sizes)


def category_dtype(vocab_size):
    """Narrowest signed integer dtype that holds ids in [0, vocab_size)."""
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocab size {vocab_size} does not fit int64")


def file_layout(num_samples, vocab_sizes):
    """name -> (dtype, shape) of every data file of the split format."""
    layout = {LABEL_FILE: (LABEL_DTYPE, (num_samples,)),
              DENSE_FILE: (DENSE_DTYPE, (num_samples, NUM_DENSE))}
    for feature, vocab in enumerate(vocab_sizes):
        layout[category_file(feature)] = (category_dtype(vocab), (num_samples,))
    return layout


def make_metadata(num_samples, vocab_sizes, source_name, source_size):
    return {
        "format_version": FORMAT_VERSION,
        "num_samples": int(num_samples),
        "vocab_sizes": [int(v) for v in vocab_sizes],
        "dense_transform": DENSE_TRANSFORM,
        "files": {name: {"dtype": dtype.name, "shape": list(shape)}
                  for name, (dtype, shape) in file_layout(num_samples, vocab_sizes).items()},
        "source": {"name": source_name, "size_bytes": int(source_size)},
    }


def _check_metadata_fields(meta, path):
    """Raises ValueError naming path, the key and its value unless meta (metadata.json's
    contents) has every key, of the right type and meaning; the files are checked apart."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(meta).__name__}")
    for key in ("format_version", "num_samples", "vocab_sizes", "dense_transform", "files"):
        if key not in meta:
            raise ValueError(f"{path}: no key {key!r}")
    version = meta["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(f"{path}: format_version {version!r} is not supported "
                         f"(this reader knows {FORMAT_VERSION})")
    if meta["dense_transform"] != DENSE_TRANSFORM:
        raise ValueError(f"{path}: dense_transform {meta['dense_transform']!r} is not "
                         f"{DENSE_TRANSFORM!r}")
    num_samples = meta["num_samples"]
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ValueError(f"{path}: num_samples is {num_samples!r}, expected an integer >= 0")
    check_vocab_sizes(meta["vocab_sizes"], f"{path}: vocab_sizes")
    if not isinstance(meta["files"], dict):
        raise ValueError(f"{path}: files is {meta['files']!r}, expected an object "
                         f"(file name -> dtype, shape)")


def read_metadata(directory):
    """Loads and checks directory/metadata.json (every key's type and meaning, and the files
    beside it); returns the dict. ValueError or FileNotFoundError naming the file, the key and
    the value."""
    path = os.path.join(directory, METADATA_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (create the directory with split_bin.py)")
    with open(path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
    _check_metadata_fields(meta, path)
    num_samples = meta["num_samples"]
    for name, (dtype, shape) in file_layout(num_samples, meta["vocab_sizes"]).items():
        entry = meta["files"].get(name)
        if (not isinstance(entry, dict) or entry.get("dtype") != dtype.name
                or entry.get("shape") != list(shape)):
            raise ValueError(f"{path}: files[{name!r}] is {entry}, expected dtype {dtype.name} "
                             f"shape {list(shape)}")
        file_path = os.path.join(directory, name)
        if not os.path.isfile(file_path):
            raise FileNotFoundError(f"{file_path}: missing (listed in {path})")
        expected = dtype.itemsize * math.prod(shape)
        actual = os.path.getsize(file_path)
        if actual != expected:
            raise ValueError(f"{file_path}: {actual} bytes, but {path} says {num_samples} "
                             f"samples of {dtype.name} x {math.prod(shape[1:])} = {expected} bytes")
    return meta


def id_limits(vocab_sizes, rows):
    """uint32 [rows, F]: the F vocabulary sizes in every row; check_ids' bounds for batches of
    up to `rows` samples."""
    return np.tile(np.asarray(vocab_sizes, np.uint32), (rows, 1))


def check_labels(labels, first_sample, path, error=InputError):
    """Raises error("PATH: sample S: label is V, expected 0 or 1") for the first label of
    labels (int8 or int32 [n], samples first_sample..) that is not 0 or 1."""
    unsigned = labels.view(f"u{labels.dtype.itemsize}")  # negatives wrap: one compare
    if len(labels) and unsigned.max() > 1:
        i = int(np.flatnonzero(unsigned > 1)[0])
        raise error(f"{path}: sample {first_sample + i}: label is {labels[i]}, expected 0 or 1")


def check_ids(ids, limits, first_sample, path_of_feature, error=InputError):
    """Raises error("PATH: sample S: categorical feature F is V, outside [0, VOCAB)") for the
    first id of ids (int32 [n, F], samples first_sample..) outside [0, vocab). limits:
    id_limits(vocab_sizes, rows), tiled again here if n > rows; path_of_feature(f) -> the
    file to name."""
    if len(ids) > len(limits):
        limits = id_limits(limits[0], len(ids))
    # Negative ids wrap to >= 2**31 > any vocabulary: one unsigned compare checks both ends,
    # against the limits tiled per row (a broadcast over rows of 26 is 3x slower).
    out_of_range = ids.view(np.uint32) >= limits[:len(ids)]
    if out_of_range.any():
        i, feature = (int(x) for x in np.argwhere(out_of_range)[0])
        raise error(f"{path_of_feature(feature)}: sample {first_sample + i}: categorical "
                    f"feature {feature} is {ids[i, feature]}, outside [0, {limits[0, feature]})")


def fsync_path(path):
    """Flushes a file's or a directory's entry to disk (a directory: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path, mode="w"):
    """Opens a temporary beside path (path.tmp-PID) for writing; when the block ends it is
    flushed, fsynced and renamed to path. A failure removes the temporary and raises."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, obj):
    """Writes obj as JSON to path through atomic_file."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def check_writable_directory(directory):
    """Creates directory if missing and checks that it takes a new file (one made and removed
    at once); raises OSError naming the path where not."""
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write-test.tmp-{os.getpid()}")
    with open(probe, "w"):
        pass
    os.remove(probe)


def check_writable_file(path):
    """Checks that write_json_atomic(path, ...) can succeed: path is not a directory and its
    directory exists and takes a new file. Raises OSError naming the path where not."""
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(20, "Not a directory", directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(2, "No such directory", directory)
    check_writable_directory(directory)


def process_exists(pid):
    """Whether a process of that PID runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_dead_leftovers(directory, pattern, tool, stream=sys.stderr):
    """Removes the entries of `directory` (files or directories) whose names fullmatch the
    regex `pattern`, its group 1 the PID of the process that made them, where that process no
    longer runs (killed outright, it could not clean up); says so on stream ("TOOL: removed
    PATH, left by process PID that no longer runs"). -> the removed paths."""
    removed = []
    for entry in sorted(os.listdir(directory)):
        match = re.fullmatch(pattern, entry)
        path = os.path.join(directory, entry)
        if match is None or process_exists(int(match.group(1))):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(path)
        if stream is not None:
            stream.write(f"{tool}: removed {path}, left by process {match.group(1)} that no "
                         f"longer runs\n")
    return removed
