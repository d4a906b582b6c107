"""Model-parallel embedding tables for DLRM: SOK 2.x, or TensorFlow + Horovod alltoall.

Every backend maps categorical ids [B, F] (ids[:, f] in [0, vocab_sizes[f])) to vectors
[B, F, D] (float16 or float32; the model casts them to its own dtype). Its tables (float32)
are row-sharded over the Horovod ranks; each rank holds only its own rows, its table
gradients come back as tf.IndexedSlices of the local shard, and `apply_gradients` applies
plain SGD to those rows. They are never allreduced.

Initial values (both backends): the row of feature f holding id i has global row number
offset[f] + i (offset = exclusive cumsum of vocab_sizes); the default draws it from
uniform(-1/sqrt(vocab_sizes[f]), +1/sqrt(vocab_sizes[f])) (MLPerf's DLRM rule). The draws
come from a stateless generator keyed by (seed, first global row of the block filled), so
they are reproducible for one seed and one number of ranks, but differ between rank counts.
An `initializer(global_rows int64 [n]) -> float32 [n, D]` replaces them (e.g. one that reads a
full numpy table, to start runs on different rank counts from identical tables).

Start-up order: hvd.init(), then pin the GPU, then create_embedding (the SOK backend calls
sok.init() when it is constructed).
"""

import os
from typing import Protocol, runtime_checkable

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd

import xla

BACKENDS = ("auto", "sok", "tf")


def uniform_initializer(vocab_sizes, dim, seed=0):
    """-> initializer(global_rows int64 [n]) -> float32 [n, D], uniform(+-1/sqrt(vocab_f))."""
    ends = np.cumsum(vocab_sizes).astype(np.int64)
    bounds = tf.constant(1.0 / np.sqrt(np.asarray(vocab_sizes, np.float64)), tf.float32)

    def initializer(global_rows):
        global_rows = tf.convert_to_tensor(global_rows, tf.int64)
        features = tf.searchsorted(ends, global_rows, side="right")              # [n]
        row_bounds = tf.gather(bounds, features)[:, tf.newaxis]                # [n, 1]
        block_seed = tf.stack([tf.constant(seed, tf.int64), tf.reduce_min(global_rows)])
        unit = tf.random.stateless_uniform([tf.size(global_rows), dim], seed=block_seed,
                                           minval=-1.0, maxval=1.0)
        return unit * row_bounds
    return initializer


def feature_offsets(vocab_sizes):
    """[F] -> [F] int64: first global row of each feature's table (exclusive cumsum)."""
    return np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]]).astype(np.int64)


def global_keys(ids, offsets):
    """ids int32|int64 [B, F], offsets int64 [F] (feature_offsets) -> int64 [B*F]: each
    lookup's global row of the fused table, sample by sample, feature by feature."""
    return tf.reshape(tf.cast(ids, tf.int64) + offsets, [-1])


# Tables are filled in place in blocks of 1/64 of a shard (at least 32 MiB): the initializer's
# temporaries stay a few percent of the table, and a 90 GiB table takes 64 scatters.
_INIT_BLOCKS, _MIN_INIT_BLOCK_BYTES = 64, 1 << 25


def _blocks(table):
    """-> (start, stop) local row ranges of a shard [rows, D] in blocks of 1/64 of it (at
    least 32 MiB): what one scatter of fill_shard, or one read of save_shard, moves."""
    local_rows, dim = table.shape
    block_rows = max(1, _MIN_INIT_BLOCK_BYTES // (4 * dim), -(-local_rows // _INIT_BLOCKS))
    return [(start, min(start + block_rows, local_rows))
            for start in range(0, local_rows, block_rows)]


def fill_shard(table, initializer, rank, num_ranks, offset=0):
    """Writes initializer's rows into a rank's shard, in place (scatters of blocks, never a
    read or copy of the whole table): local row i of table [rows, D] float32 holds global
    row offset + i * num_ranks + rank."""
    for start, stop in _blocks(table):
        local = tf.range(start, stop, dtype=tf.int64)
        table.scatter_update(tf.IndexedSlices(
            tf.cast(initializer(offset + local * num_ranks + rank), tf.float32), local))


def save_shard(table, path):
    """Writes a shard [rows, D] float32 to path as .npy, block by block (never a second copy of
    the shard in host memory), and fsyncs it."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": tuple(table.shape)})
        for start, stop in _blocks(table):
            f.write(np.ascontiguousarray(table[start:stop].numpy(), "<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())


def all_finite(table):
    """-> whether every value of a shard [rows, D] is finite, checked block by block (no
    temporary of the whole shard's size)."""
    return all(bool(tf.reduce_all(tf.math.is_finite(table[start:stop])))
               for start, stop in _blocks(table))


def shard_file_initializer(paths, rows, dim):
    """The saved shards of a table [rows, D] (paths in rank order, written by save_shard on
    len(paths) ranks) -> initializer(table rows int64 [n]) -> float32 [n, D] for fill_shard:
    row k is read from shard k % N at local row k // N, so a checkpoint fills the shards of
    any number of ranks. The files are memory-mapped: only the rows asked for are read."""
    num_saved = len(paths)
    shards = []
    for rank, path in enumerate(paths):
        shard = np.load(path, mmap_mode="r")
        expected = (len(range(rank, rows, num_saved)), dim)
        if shard.shape != expected or shard.dtype != np.float32:
            raise ValueError(f"{path}: a shard of {shard.shape} {shard.dtype}, expected "
                             f"{expected} float32 (rank {rank} of {num_saved}, {rows} rows)")
        shards.append(shard)

    def initializer(table_rows):
        table_rows = table_rows.numpy()
        owners = table_rows % num_saved
        vectors = np.empty((len(table_rows), dim), np.float32)
        for owner in np.unique(owners):
            picked = owners == owner
            vectors[picked] = shards[owner][table_rows[picked] // num_saved]
        return tf.constant(vectors)
    return initializer


SOK_API = ("init", "Variable", "lookup_sparse", "SGD", "filter_variables")  # SOK 2.x's


class SOKUnavailable(RuntimeError):
    """sparse_operation_kit is missing, fails to import, or is not SOK 2.x.
    .reason: a short phrase for the start-up line."""

    def __init__(self, reason, detail):
        super().__init__("the sok embedding backend needs SparseOperationKit 2.x (merlin-sok "
                         f">= 2.0, GPU only): {detail}. Use --embedding=tf instead.")
        self.reason = reason


def _import_sok():
    """-> the sparse_operation_kit module, if it is SOK 2.x; else raises SOKUnavailable."""
    try:
        import sparse_operation_kit as sok
    except ModuleNotFoundError as error:
        if error.name != "sparse_operation_kit":
            raise SOKUnavailable(f"SOK failed to import ({error!r})", f"import failed: {error!r}")
        raise SOKUnavailable("SOK is not installed", "sparse_operation_kit is not installed")
    except Exception as error:  # SOK raises a plain Exception when its library is missing
        raise SOKUnavailable(f"SOK failed to import ({error!r})", f"import failed: {error!r}")
    version = str(getattr(sok, "__version__", "unknown"))
    major = version.split(".")[0]
    missing = [name for name in SOK_API if not hasattr(sok, name)]
    if missing or not major.isdigit() or int(major) < 2:
        where = getattr(sok, "__file__", None) or "an unknown path"
        raise SOKUnavailable(
            f"SOK {version} found, the sok backend needs 2.x",
            f"found sparse_operation_kit {version} at {where}"
            + (f", which has no sok.{', sok.'.join(missing)} (SOK 1.x?)" if missing else ""))
    return sok


SOK_PATCHES = "gpu/sok_patches/ (applied by gpu/build_sok.sh)"


def unpatched_sok_warning(sok, on_gpu):
    """-> None, or a one-line warning when sok (the module) is a SOK 2.1.0 build without this
    project's patches running on a GPU: as released, its host-device copies race with TF 2.15's
    streams ("an illegal memory access" at full scale). A patched build lists them in
    sparse_operation_kit._version.DLRM_PATCHES (gpu/sok_patches/04-mark-patched-build.patch)."""
    if not on_gpu or getattr(getattr(sok, "_version", None), "DLRM_PATCHES", None):
        return None
    version = str(getattr(sok, "__version__", "unknown"))
    return (f"warning: SOK {version} without the patches of {SOK_PATCHES}: as released it "
            f"races with TensorFlow 2.15's streams and aborts ('an illegal memory access') or "
            f"stalls at full scale; rebuild it with gpu/build_sok.sh")


def _init_sok(sok):
    """sok.init(), once per process: SOK 2.x raises when its communication tool is set twice
    ("Communication tool cannot be set more than once"), e.g. for a second table set."""
    try:
        sok.init()
    except RuntimeError as error:
        if "more than once" not in str(error):
            raise


def resolve_backend(backend):
    """"auto" | "sok" | "tf" -> (the backend to build, why: one plain phrase).
    auto takes sok where sparse_operation_kit imports and is SOK 2.x, else tf."""
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend, "asked for"
    try:
        sok = _import_sok()
    except SOKUnavailable as error:
        return "tf", f"auto: {error.reason}"
    return "sok", f"auto: SOK {getattr(sok, '__version__', '2.x')} imports"


@runtime_checkable
class EmbeddingBackend(Protocol):
    """What every backend provides (TFEmbedding, SOKEmbedding), on this rank.

    name: "tf" or "sok". vocab_sizes: [F] rows of each feature. dim: D. compress: whether a
    lookup deduplicates the batch's keys. checkpoint_layout: a phrase naming the tables'
    layout (a checkpoint records it; restore takes only the same).
    """
    name: str
    vocab_sizes: list
    dim: int
    compress: bool
    checkpoint_layout: str

    @property
    def variables(self):
        """-> [the local table shards] (tf.Variable-like, float32 [rows, D])."""

    def __call__(self, ids):
        """ids int32|int64 [B, F] -> vectors float16|float32 [B, F, D] (a collective on N
        ranks: every rank calls it, with the same B)."""

    def apply_gradients(self, grads, lr):
        """SGD on the local rows: grads of `variables` (tf.IndexedSlices), lr float32 scalar;
        lr 0 changes nothing, even where grads hold inf or nan."""

    def exclude_tables(self, variables):
        """-> variables without this backend's tables (the dense ones)."""

    def save(self, directory):
        """Writes this rank's part of the tables into directory (a collective)."""

    def restore(self, directory, saved_num_ranks):
        """Fills the tables from save's files of saved_num_ranks ranks; ValueError naming the
        file if they do not fit."""


def create_embedding(backend, vocab_sizes, dim, compress=False, initializer=None, seed=0,
                     vector_dtype=tf.float32, fused_table_ops=True, jit_compile=False):
    """Builds the tables of one embedding backend on this rank (after hvd.init()).
    -> an EmbeddingBackend.

    backend: "sok", "tf", or "auto" (see resolve_backend).
    compress: deduplicate the keys of a batch before the exchange.
    initializer: optional initializer(global_rows int64 [n]) -> float32 [n, dim].
    vector_dtype: the tf backend's vectors' dtype (float16 under AMP: its exchange carries
      half the bytes); the sok backend's are float32 (SOK exchanges them in the table's dtype).
    fused_table_ops: the tf backend gathers (with the cast to vector_dtype) and updates its
      table by the kernels of embedding_ops/ (built by `make -C embedding_ops`), one pass
      each; else by TF's gather, cast, scaling and scatter_sub.
    jit_compile: without fused_table_ops, the tf backend XLA-compiles its gather with the cast
      (TF's own Cast kernel takes 3x the gather's time on a GPU) and the scaling of its
      gradients, on one rank without compress (static shapes).
    """
    backend, _ = resolve_backend(backend)
    initializer = initializer or uniform_initializer(vocab_sizes, dim, seed)
    if backend == "sok":
        return SOKEmbedding(vocab_sizes, dim, compress, initializer)
    return TFEmbedding(vocab_sizes, dim, compress, initializer, vector_dtype, fused_table_ops,
                       jit_compile)


def scaled_gradient(grad, lr, dtype):
    """lr * grad in dtype, exactly 0 where lr is 0 (even where grad is inf or nan). A where,
    not tf.math.multiply_no_nan: with that, a skipped step changed the weights on the H200."""
    grad, lr = tf.cast(grad, dtype), tf.cast(lr, dtype)
    return tf.where(tf.equal(lr, 0), tf.zeros([], dtype), grad * lr)


class TFEmbedding(tf.Module):
    """One fused table over all features, row-sharded over the ranks like SOK's variables.

    Global row r = offset[f] + id lives on rank r % N at local row r // N. On one rank a lookup
    is one local gather. On N ranks it sends each key to its owner (hvd.alltoall with splits),
    gathers there, and sends the vectors back in `vector_dtype` (float16 under AMP: half the
    bytes each way); the gradients take the same two exchanges in reverse to the owner's shard.
    The exchange is built from fixed-size device ops only (one-hot counts and cumsums, no
    sort, bincount or invert_permutation), so nothing in it needs host memory.
    The local gather and the SGD update are embedding_ops' kernels (fused_table_ops), or TF's
    ops (see create_embedding).
    """

    def __init__(self, vocab_sizes, dim, compress, initializer, vector_dtype=tf.float32,
                 fused_table_ops=True, jit_compile=False):
        super().__init__(name="tf")
        self._table_ops = None
        if fused_table_ops:
            import embedding_ops
            embedding_ops.load_ops()  # a missing build fails here, with the build command
            self._table_ops = embedding_ops
        self.vocab_sizes = list(vocab_sizes)
        self.dim = dim
        self.compress = compress
        self.vector_dtype = tf.as_dtype(vector_dtype)
        self.num_ranks = hvd.size()
        self._offsets = tf.constant(feature_offsets(vocab_sizes))
        local_rows = len(range(hvd.rank(), sum(vocab_sizes), self.num_ranks))
        self.table = tf.Variable(tf.zeros([local_rows, dim], tf.float32), name="embedding_table")
        fill_shard(self.table, initializer, hvd.rank(), self.num_ranks)
        # XLA compiles each input shape anew: only one rank without compress has static shapes
        # (K = B * F keys); there TF's gather with its cast, and the update's scaling, compile.
        compiled = (jit_compile and not fused_table_ops and self.num_ranks == 1
                    and not compress)
        self._gather = xla.compiled(compiled)(self.gather_rows)
        self._scaled = xla.compiled(compiled)(scaled_gradient)

    def gather_rows(self, local_rows):
        """local_rows int64 [K] -> vector_dtype [K, D]: this rank's rows, cast in the same pass
        (fused) or after the gather. Its gradient is IndexedSlices of the local shard."""
        if self._table_ops is not None:
            return self._table_ops.gather(self.table, local_rows, self.vector_dtype)
        return tf.cast(tf.gather(self.table, local_rows), self.vector_dtype)

    @property
    def variables(self):
        return [self.table]

    checkpoint_layout = "tf: one table, global row r on rank r % N"

    def save(self, directory):
        """Writes this rank's shard to directory/embedding_table.rank{R}.npy (every rank)."""
        save_shard(self.table, os.path.join(directory, f"embedding_table.rank{hvd.rank()}.npy"))

    def restore(self, directory, saved_num_ranks):
        """Fills this rank's shard from save's files of saved_num_ranks ranks: any number,
        the rows are re-sharded by global row."""
        paths = [os.path.join(directory, f"embedding_table.rank{rank}.npy")
                 for rank in range(saved_num_ranks)]
        fill_shard(self.table, shard_file_initializer(paths, sum(self.vocab_sizes), self.dim),
                   hvd.rank(), self.num_ranks)

    def exclude_tables(self, variables):
        tables = {table.ref() for table in self.variables}
        return [v for v in variables if v.ref() not in tables]

    def __call__(self, ids):
        """ids int32 or int64 [B, F] -> vector_dtype [B, F, D]."""
        keys = global_keys(ids, self._offsets)                                 # [B*F]
        if self.compress:
            keys, key_of_lookup = tf.unique(keys)                              # [U], [B*F]
        if self.num_ranks == 1:
            vectors = self._gather(keys)                                       # [K, D]
        else:
            vectors = self._exchange(keys)
        if self.compress:
            vectors = tf.gather(vectors, key_of_lookup)                        # [B*F, D]
        return tf.reshape(vectors, [-1, len(self.vocab_sizes), self.dim])

    def _exchange(self, keys):
        """keys int64 [K] -> their rows from the owning ranks, vector_dtype [K, D].

        slot[k]: where key k goes in the send buffer, grouped by owner and in order within an
        owner (a stable counting sort from one-hot counts)."""
        owners = tf.cast(keys % self.num_ranks, tf.int32)                      # [K]
        one_hot = tf.one_hot(owners, self.num_ranks, dtype=tf.int32)            # [K, N]
        send_splits = tf.reduce_sum(one_hot, 0)                                # [N]
        before_in_owner = tf.reduce_sum(tf.cumsum(one_hot, 0, exclusive=True) * one_hot, 1)
        slot = tf.gather(tf.cumsum(send_splits, exclusive=True), owners) + before_in_owner
        send_keys = tf.scatter_nd(slot[:, tf.newaxis], keys, tf.shape(keys))   # [K]
        received_keys, received_splits = hvd.alltoall(send_keys, splits=send_splits)
        local_vectors = self._gather(received_keys // self.num_ranks)         # [R, D]
        vectors_by_slot, _ = hvd.alltoall(local_vectors, splits=received_splits)
        # gather_nd (not gather): its gradient is dense, what the alltoall gradient takes.
        return tf.gather_nd(vectors_by_slot, slot[:, tf.newaxis])             # [K, D]

    def apply_gradients(self, grads, lr):
        """Plain SGD on the local rows: table -= lr * grad. grads of self.variables
        (IndexedSlices of the local shard; duplicate rows add up in the scatter); lr a scalar
        (the trainer folds AMP's unscaling into it). lr 0 leaves the rows as they are, even
        where grad holds inf or nan (a step that AMP's loss scaling skips)."""
        for table, grad in zip(self.variables, grads):
            if self._table_ops is not None:  # scaling and scatter in one kernel
                self._table_ops.sgd_update(table, grad.indices, grad.values, lr)
            else:
                table.scatter_sub(tf.IndexedSlices(self._scaled(grad.values, lr, table.dtype),
                                                   grad.indices, grad.dense_shape))


class SOKEmbedding(tf.Module):
    """SOK 2.x: one row-sharded sok.Variable ("distributed" mode) over all features, looked up
    in one call.

    Global row r = offset[f] + id lives on rank r % N at local row r // N (the tf backend's
    layout). The batch's B*F keys go to SOK as one input of B*F one-key rows (with compress,
    the batch's unique keys only), so a step has one lookup, one gradient, one scaling and
    one finiteness check for the whole table (one table per feature had 26 of each and a
    stack, 3.8 ms a step on an H200: BENCHMARKS.md).
    The vectors come back in the table's float32 (SOK exchanges them inside, in its dtype);
    the model casts them in its compiled dense part.
    SOK 2.x needs every rank to bring the same number of keys to a lookup (it allgathers them
    and derives the local batch from their count; kit_src/lookup/kernels/
    embedding_collection.cc): the batches are equal (the evaluation's last one is padded,
    see dataset.py), and under compress on N ranks the unique keys are padded with key 0 up to
    the largest count over the ranks (one scalar allreduce; the padding's vectors are unused,
    so its gradients are 0).
    Calls sok.init() on construction (once per process), so it must come after hvd.init() and
    the GPU pinning.
    """

    checkpoint_layout = "sok: one fused table"

    def __init__(self, vocab_sizes, dim, compress, initializer):
        super().__init__(name="sok")
        self._sok = _import_sok()
        _init_sok(self._sok)
        self.vocab_sizes = list(vocab_sizes)
        self.dim = dim
        self.compress = compress
        self._offsets = tf.constant(feature_offsets(vocab_sizes))
        # SOK allocates the local shard (rows rank, rank + N, ... of the table); zeros first,
        # then filled in blocks like the tf backend's table (no whole-shard temporaries).
        # Named: sok.dump names its files after the variable (unnamed, it is "Variable").
        self.table = self._sok.Variable(shape=[sum(vocab_sizes), dim], dtype=tf.float32,
                                        initializer=lambda shape, dtype: tf.zeros(shape, dtype),
                                        name="sok_table")
        fill_shard(self.table, initializer, hvd.rank(), hvd.size())
        self._optimizer = self._sok.SGD(lr=1.0)

    @property
    def sok(self):
        """The sparse_operation_kit module in use."""
        return self._sok

    @property
    def variables(self):
        return [self.table]

    def save(self, directory):
        """sok.dump of the table into directory (a collective: SOK gathers the shards to
        rank 0, which writes a key and a weight file, named after the variable)."""
        self._sok.dump(directory, self.variables)

    def restore(self, directory, saved_num_ranks):
        """sok.load of save's files, on as many ranks as saved them only: SOK 2.1.0's load of
        a sok.Variable assigns the rows it keeps in the files' order, not by their keys
        (dump_load.py, load_table_to_filesystem_static), which on another rank count puts
        rows in the wrong places."""
        if saved_num_ranks != hvd.size():
            raise ValueError(f"{directory}: saved by the sok backend on {saved_num_ranks} "
                             f"ranks; sok.load (SOK 2.1.0) restores only onto as many ranks, "
                             f"not {hvd.size()} (the tf backend re-shards)")
        self._sok.load(directory, self.variables)

    def exclude_tables(self, variables):
        _, others = self._sok.filter_variables(variables)
        return others

    def __call__(self, ids):
        """ids int32 or int64 [B, F] -> float32 [B, F, D]."""
        keys = global_keys(ids, self._offsets)                                    # [B*F]
        if self.compress:
            keys, key_of_lookup = tf.unique(keys)                                 # [U], [B*F]
            if hvd.size() > 1:  # the same number of keys on every rank: pad to the largest U
                most = hvd.allreduce(tf.size(keys), op=hvd.Max, name="sok_unique_keys")
                keys = tf.pad(keys, [[0, most - tf.size(keys)]])                  # [U_max]
        one_key_rows = tf.RaggedTensor.from_uniform_row_length(keys, 1, validate=False)
        vectors, = self._sok.lookup_sparse([self.table], [one_key_rows], combiners=["sum"])
        if self.compress:
            vectors = tf.gather(vectors, key_of_lookup)                           # [B*F, D]
        return tf.reshape(vectors, [-1, len(self.vocab_sizes), self.dim])

    def apply_gradients(self, grads, lr):
        """sok.SGD on the local rows: grads of self.variables (IndexedSlices), lr a scalar
        (the trainer folds AMP's unscaling into it); lr 0 leaves the rows as they are, even
        where grad holds inf or nan. The rate goes into the gradients (SGD's own lr stays 1)."""
        scaled = [tf.IndexedSlices(scaled_gradient(g.values, lr, table.dtype), g.indices,
                                   g.dense_shape) for g, table in zip(grads, self.variables)]
        return self._optimizer.apply_gradients(zip(scaled, self.variables))
