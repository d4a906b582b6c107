"""Per-rank batches of the split format (see data_format.py), and a synthetic twin.

Every dataset yields, per step, `((dense, categorical), label)` as TF tensors:
    dense        float32 [B, 13]   DENSE_TRANSFORM already applied by split_bin.py
    categorical  int32   [B, 26]   ids of feature f in [0, vocab_sizes[f]); int64 on a device
    label        float32 [B, 1]
Rank r of N, with per-rank batch B and global batch G = N * B, reads samples
[i*G + r*B, i*G + (r+1)*B) for global batch i (the seed's layout). Training drops the last
incomplete global batch and, with a shuffle seed, visits the global batches in a permutation
that is a function of (seed, epoch) only (batch_order). Evaluation keeps the last
incomplete global batch, spread over the ranks as evenly as possible
(rank r reads q + (r < m) samples, q, m = divmod(rest, N)) and padded so that every rank's
last batch has the same q + (m > 0) rows: SOK needs the same number of keys from every rank
in a lookup. Padding rows have dense 0, ids 0 and the label PAD_LABEL, which no sample has;
evaluation drops their predictions. So every test sample is read exactly once across the
ranks, and every rank yields the same number of batches of the same sizes.
"""

import os
import queue
import threading

import numpy as np
import tensorflow as tf

import data_format as fmt

CATEGORICAL_DTYPE = fmt.ID_DTYPE  # int32
PAD_LABEL = -1.0  # label of the padding rows of the last evaluation batch


class DataError(ValueError):
    """A split file holds a value the model must not see; the message names the file, the
    sample, the field and the value."""


def batch_ranges(num_samples, batch_size, rank, num_ranks, drop_remainder):
    """-> list of (start, count, rows) of rank's batches: count samples from start, padded to
    rows (the same on every rank). batch_size is per rank."""
    global_batch = batch_size * num_ranks
    full, rest = divmod(num_samples, global_batch)
    ranges = [(i * global_batch + rank * batch_size, batch_size, batch_size)
              for i in range(full)]
    if rest and not drop_remainder:
        q, m = divmod(rest, num_ranks)
        ranges.append((full * global_batch + rank * q + min(rank, m), q + (rank < m),
                       q + (m > 0)))
    return ranges


def batch_order(num_batches, seed, epoch):
    """-> int64 [num_batches]: the order of the global batches in `epoch`, a permutation drawn
    from (seed, epoch) alone, so every rank and a resumed run get the same one."""
    return np.random.default_rng([seed, epoch]).permutation(num_batches)


def pad_batch(dense, categorical, label, rows):
    """Appends padding rows (dense 0, ids 0, label PAD_LABEL) to the numpy arrays of a batch
    of n <= rows samples -> arrays of `rows` rows."""
    pad = rows - len(label)
    return (np.concatenate([dense, np.zeros((pad, dense.shape[1]), dense.dtype)]),
            np.concatenate([categorical, np.zeros((pad, categorical.shape[1]), categorical.dtype)]),
            np.concatenate([label, np.full((pad, 1), PAD_LABEL, label.dtype)]))


def _prefetch(items, make_batch, out, stop):
    """Thread body: puts make_batch(item) for each item on `out`, then StopIteration (or the
    error raised). Holds no reference to its _Prefetcher, so an abandoned one is collected
    and its __del__ stops this thread."""
    try:
        for item in items:
            batch = make_batch(item)
            while not stop.is_set():
                try:
                    out.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    pass
            if stop.is_set():
                return
    except BaseException as err:  # re-raised in the consumer
        out.put(err)
        return
    out.put(StopIteration())


class _Prefetcher:
    """Iterates make_batch(item) for item in items, `depth` batches ahead in a thread."""

    def __init__(self, items, make_batch, depth):
        self._queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        threading.Thread(target=_prefetch, args=(items, make_batch, self._queue, self._stop),
                         daemon=True).start()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, StopIteration):
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def __del__(self):
        self._stop.set()


class SplitDataset:
    """Rank `rank` of `num_ranks`'s batches of the split-format directory `data_dir`.

    batch_size is per rank. Iterating gives one epoch; iterate again for the next.
    prefetch: batches read ahead in a background thread (0 reads in the caller's thread).
    device: where the batches are put (e.g. "/GPU:0"), by the prefetch thread, ahead of the
      step that takes them; None leaves them in host memory.
    shuffle_seed: None reads the global batches in file order; an integer reads them in
      batch_order(len(self), shuffle_seed, epoch) (training only: every rank still reads its
      slice of the same global batch).
    """

    def __init__(self, data_dir, batch_size, rank=0, num_ranks=1, training=True, prefetch=4,
                 device=None, shuffle_seed=None):
        if shuffle_seed is not None and not training:
            raise ValueError("shuffle_seed is for training data (evaluation reads in order)")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_ranks:
            raise ValueError(f"rank {rank} outside [0, {num_ranks})")
        self.data_dir = data_dir
        self.meta = fmt.read_metadata(data_dir)
        self.num_samples = self.meta["num_samples"]
        self.vocab_sizes = tuple(self.meta["vocab_sizes"])
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.device = device
        self.shuffle_seed = shuffle_seed
        if training and batch_size * num_ranks > self.num_samples:
            raise ValueError(f"{data_dir}: global batch {batch_size * num_ranks} "
                             f"({num_ranks} ranks x {batch_size}) is larger than the dataset "
                             f"({self.num_samples} samples)")
        self._ranges = batch_ranges(self.num_samples, batch_size, rank, num_ranks,
                                    drop_remainder=training)
        layout = fmt.file_layout(self.num_samples, self.vocab_sizes)
        self._files = {name: self._map(name, dtype, shape) for name, (dtype, shape) in layout.items()}
        self._categories = [self._files[fmt.category_file(f)] for f in range(len(self.vocab_sizes))]
        self._id_limits = fmt.id_limits(self.vocab_sizes, batch_size)

    def _map(self, name, dtype, shape):
        if self.num_samples == 0:
            return np.empty(shape, dtype)
        return np.memmap(os.path.join(self.data_dir, name), dtype=dtype, mode="r", shape=shape)

    def __len__(self):
        return len(self._ranges)

    def read_numpy(self, start, count):
        """-> (dense float32 [count, 13], categorical int32 [count, 26], label float32 [count, 1]).

        Raises DataError for a label not 0/1 or an id outside [0, vocab): what reaches the
        model is always in range (a GPU gather would return zeros for it, a CPU one fail late)."""
        end = start + count
        dense = self._files[fmt.DENSE_FILE][start:end].astype(np.float32)
        raw_label = self._files[fmt.LABEL_FILE][start:end]
        categorical = np.empty((count, len(self._categories)), CATEGORICAL_DTYPE)
        for feature, column in enumerate(self._categories):
            categorical[:, feature] = column[start:end]
        self.check(start, categorical, raw_label)
        label = raw_label.astype(np.float32).reshape(count, 1)
        return dense, categorical, label

    def check(self, start, categorical, raw_label):
        """Raises DataError unless every id of categorical int32 [n, F] (samples start..) is in
        [0, vocab) and every label of raw_label int8 [n] is 0 or 1."""
        fmt.check_labels(raw_label, start, os.path.join(self.data_dir, fmt.LABEL_FILE), DataError)
        fmt.check_ids(categorical, self._id_limits, start,
                      lambda feature: os.path.join(self.data_dir, fmt.category_file(feature)),
                      DataError)

    def _make_batch(self, batch_range):
        start, count, rows = batch_range
        arrays = self.read_numpy(start, count)
        if rows > count:
            arrays = pad_batch(*arrays, rows)
        return _to_device(self.device, *arrays)

    def __iter__(self):
        return self.batches()

    def batches(self, start=0, epoch=0):
        """Epoch `epoch`'s batches from its batch `start` on (a resumed run skips without
        reading)."""
        ranges = self._ranges
        if self.shuffle_seed is not None:
            ranges = [ranges[i] for i in batch_order(len(ranges), self.shuffle_seed, epoch)]
        ranges = ranges[start:]
        if self.prefetch > 0:
            return _Prefetcher(ranges, self._make_batch, self.prefetch)
        return map(self._make_batch, ranges)


def _to_device(device, dense, categorical, label):
    """numpy arrays -> ((dense, categorical), label) tensors on `device` (None: host).

    On a device the ids go as int64: TF keeps int32 tensors of a GPU in host memory, so int32
    ids would be copied to the GPU inside the step (a synchronous 6.8 MB copy at batch 65536)."""
    if device is None:
        return (tf.convert_to_tensor(dense), tf.convert_to_tensor(categorical)), \
            tf.convert_to_tensor(label)
    with tf.device(device):
        return ((tf.identity(dense), tf.cast(categorical, tf.int64)), tf.identity(label))


class SyntheticDataset:
    """Random batches with SplitDataset's signature and no files, for profiling.

    A few batches are made once (on `device`, if given) and then cycled, so reading costs
    nothing.
    """

    def __init__(self, batch_size, vocab_sizes, num_batches, seed=0, distinct_batches=4,
                 device=None):
        rng = np.random.default_rng(seed)
        self.vocab_sizes = tuple(vocab_sizes)
        self.batch_size = batch_size
        self._num_batches = num_batches
        self._batches = []
        for _ in range(min(distinct_batches, max(num_batches, 1))):
            dense = np.log(rng.integers(0, 1000, (batch_size, fmt.NUM_DENSE)) + 3.0)
            categorical = (rng.random((batch_size, len(vocab_sizes))) *
                           np.asarray(vocab_sizes)).astype(CATEGORICAL_DTYPE)
            label = rng.integers(0, 2, (batch_size, 1))
            self._batches.append(_to_device(device, dense.astype(np.float32), categorical,
                                            label.astype(np.float32)))

    def __len__(self):
        return self._num_batches

    def __iter__(self):
        return self.batches()

    def batches(self, start=0, epoch=0):
        """One epoch's batches from batch `start` on (every epoch cycles the same batches)."""
        return (self._batches[i % len(self._batches)] for i in range(start, self._num_batches))
