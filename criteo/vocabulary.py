"""The vocabularies, in memory the forked workers share: pass 1's seen arrays (which hashed
values occur), the vocabulary file they are saved to (after each day, and as an output), and
pass 2's value -> id tables built from that file.

Vocabulary file: magic b"CRTOVOC1", uint64 hash_mod, 26 uint64 counts, then for each feature
in order its count sorted little-endian uint32 hashed values; id i of feature f is its i-th.
"""

import mmap
from typing import NamedTuple

import numpy as np

import data_format as fmt
from data_format import InputError

VOCAB_MAGIC = b"CRTOVOC1"
TOUCH_SHIFT = 12  # pass 1 also marks 4096-value blocks touched; a checkpoint reads only those
_HEADER_BYTES = len(VOCAB_MAGIC) + 8 * (1 + fmt.NUM_CATEGORICAL)


def shared_zeros(shape, dtype):
    """A zero-filled array in anonymous shared memory (inherited by forked workers; pages
    are only allocated when touched)."""
    count = int(np.prod(shape))
    nbytes = max(1, count * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=count).reshape(shape)


class SeenValues(NamedTuple):
    """Pass 1's record of the hashed values that occur, in shared memory: seen uint8
    [26, hash_mod rounded up to a touch block] (1: the value occurs), touched uint8
    [26, blocks] (1: a value of that 2**TOUCH_SHIFT block occurs)."""
    seen: np.ndarray
    touched: np.ndarray

    @classmethod
    def allocate(cls, hash_mod):
        blocks = (hash_mod + (1 << TOUCH_SHIFT) - 1) >> TOUCH_SHIFT
        return cls(shared_zeros((fmt.NUM_CATEGORICAL, blocks << TOUCH_SHIFT), np.uint8),
                   shared_zeros((fmt.NUM_CATEGORICAL, blocks), np.uint8))

    def mark(self, feature, values):
        """Records the hashed values (uint32 [n]) of a feature as seen. Concurrent marks of
        the same byte by several workers store the same 1: nothing is lost."""
        self.seen[feature][values] = 1
        self.touched[feature][values >> TOUCH_SHIFT] = 1

    def sorted_values(self, feature, group=512):
        """Yields the sorted hashed values seen for a feature, a few touched blocks at a time
        (bounded temporaries). Reads copies: workers may be writing (values of an unfinished
        day) meanwhile."""
        block = 1 << TOUCH_SHIFT
        blocks = np.flatnonzero(self.touched[feature].copy())
        rows_of = self.seen[feature].reshape(-1, block)
        for first in range(0, len(blocks), group):
            some = blocks[first:first + group]
            # Fancy indexing copies; flatnonzero is ~20x faster on bool than on uint8 (and than
            # nonzero of a 2-D array).
            flat = np.flatnonzero(rows_of[some].view(np.bool_))
            yield ((some[flat >> TOUCH_SHIFT].astype(np.uint32) << np.uint32(TOUCH_SHIFT))
                   + (flat & (block - 1)).astype(np.uint32))


def write_vocabulary(path, hash_mod, seen_values):
    """Writes the vocabulary file of SeenValues (atomically). -> the 26 counts."""
    counts = []
    with fmt.atomic_file(path, "wb") as out:
        out.seek(_HEADER_BYTES)
        for feature in range(fmt.NUM_CATEGORICAL):
            counts.append(0)
            for values in seen_values.sorted_values(feature):
                values.astype("<u4").tofile(out)
                counts[-1] += len(values)
        out.seek(0)
        out.write(VOCAB_MAGIC + np.asarray([hash_mod] + counts, "<u8").tobytes())
    return counts


class FeatureVocabulary(NamedTuple):
    """One feature's part of a vocabulary file."""
    hash_mod: int
    feature: int
    values: np.ndarray  # uint32 [count], sorted: id i is values[i]


def iter_vocabulary(path):
    """Yields the FeatureVocabulary of each feature of a vocabulary file, in order, one
    feature in memory at a time. InputError if the file is damaged."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
        if len(head) < _HEADER_BYTES or not head.startswith(VOCAB_MAGIC):
            raise InputError(f"{path}: not a vocabulary file of preprocess_criteo.py")
        numbers = np.frombuffer(head[len(VOCAB_MAGIC):], "<u8")
        hash_mod, counts = int(numbers[0]), [int(c) for c in numbers[1:]]
        for feature, count in enumerate(counts):
            values = np.fromfile(f, "<u4", count=count).astype(np.uint32)
            if len(values) != count or (count and (values[-1] >= hash_mod
                                                   or np.any(values[1:] <= values[:-1]))):
                raise InputError(f"{path}: feature {feature}: damaged (delete it, or the "
                                 f"work directory it is in)")
            yield FeatureVocabulary(hash_mod, feature, values)


def read_vocabulary(path):
    """-> (hash_mod, list of 26 sorted uint32 arrays): a vocabulary file's contents."""
    features = list(iter_vocabulary(path))
    return features[0].hash_mod, [f.values for f in features]


def _table_dtype(n):
    """Narrowest unsigned type holding 0..n (tables store id + 1; 0 = not in vocabulary)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dtype).max:
            return dtype
    raise InputError(f"vocabulary of {n} values does not fit uint32")


def build_id_tables(path):
    """-> per feature, a shared table [hash_mod] of hashed value -> id + 1 (0: not in the
    vocabulary), the narrowest unsigned dtype; built from the vocabulary file at path one
    feature at a time."""
    tables = []
    for vocab in iter_vocabulary(path):
        dtype = _table_dtype(len(vocab.values))
        table = shared_zeros((vocab.hash_mod,), dtype)
        table[vocab.values] = np.arange(1, len(vocab.values) + 1, dtype=dtype)
        tables.append(table)
    return tables
