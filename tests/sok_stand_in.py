"""A stand-in for the part of SOK 2.x that the sok backend uses, on plain TF variables and
Horovod, for CPU ranks. It keeps SOK's rules, so CI catches a backend that breaks them:

- `init()` raises on a second call, as SOK 2.1.0's does ("Communication tool cannot be set more
  than once").
- `Variable(shape=[rows, dim], initializer, dtype)` holds rank r's shard (rows r, r + N, ...),
  created with initializer(shape=[local rows, dim]): SOK's "distributed" variable.
- `lookup_sparse(params, sp_ids, combiners)` (one id per row, the only form the backend uses)
  raises unless every rank brings the same number of rows to each lookup: SOK allgathers the
  keys and derives the local batch from their count (kit_src/lookup/kernels/
  embedding_collection.cc: `input_len % (num_lookups_ * num_gpus_) == 0`). On N ranks it looks
  up through an allgather of the keys and an allreduce of the owners' rows, so the gradients
  reach each owner's shard as IndexedSlices.
- `SGD(lr).apply_gradients(grads_and_vars)`: rows -= lr * grad on the local shard.
- `dump(path, vars)` / `load(path, vars)`: as SOK 2.1.0's for a sok.Variable (dump_load.py):
  rank 0 writes each table's keys (local row i of rank r: key i * N + r) and rows, gathered
  rank after rank, into a file named after the variable; load reads the whole file on every
  rank, keeps the keys it owns (key % N == rank) and assigns those rows in file order. The
  stand-in raises where SOK would silently overwrite: two tables with one name.

Calls are recorded (init_calls, lookup_calls, sgd_updates) for the tests to inspect.
`install()` puts a fresh one into sys.modules["sparse_operation_kit"].
"""

import os
import re
import sys
import types

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf

SAME_KEYS_RULE = "every rank must bring the same number of keys to a lookup"


class StandInSOK(types.ModuleType):

    def __init__(self):
        super().__init__("sparse_operation_kit")
        self.__version__ = "2.1.0"
        self.__file__ = __file__
        self.init_calls = 0
        self.lookup_calls = []
        self.sgd_updates = []
        self.tables = []
        stand_in = self

        class SGD:
            def __init__(self, lr):
                self.lr = tf.Variable(lr)

            def apply_gradients(self, grads_and_vars):
                grads_and_vars = list(grads_and_vars)
                stand_in.sgd_updates.append((self.lr, grads_and_vars))
                for grad, table in grads_and_vars:
                    table.scatter_sub(tf.IndexedSlices(grad.values * self.lr, grad.indices))

        self.SGD = SGD

    def init(self):
        self.init_calls += 1
        if self.init_calls > 1:
            raise RuntimeError("[SOK INFO] Communication tool cannot be set more than once")

    def Variable(self, shape, initializer, dtype, name=None):
        rows, dim = shape
        local_rows = len(range(hvd.rank(), rows, hvd.size()))
        table = tf.Variable(initializer(shape=(local_rows, dim), dtype=dtype), name=name)
        self.tables.append(table)
        return table

    @staticmethod
    def _table_file(path, table):
        return os.path.join(path, re.sub(r"[^A-Za-z0-9_]", "_", table.name) + ".npz")

    def dump(self, path, tables):
        names = [self._table_file(path, table) for table in tables]
        if len(set(names)) != len(names):
            raise RuntimeError(f"SOK stand-in: tables with one name overwrite each other's "
                               f"files in sok.dump: {[t.name for t in tables]}")
        os.makedirs(path, exist_ok=True)
        rank, num_ranks = hvd.rank(), hvd.size()
        for table, name in zip(tables, names):
            keys = tf.range(table.shape[0], dtype=tf.int64) * num_ranks + rank
            all_keys, all_rows = hvd.allgather(keys), hvd.allgather(tf.convert_to_tensor(table))
            if rank == 0:
                np.savez(name, keys=all_keys.numpy(), rows=all_rows.numpy())
        hvd.allreduce(tf.constant(0), name="sok_stand_in_dump_done")

    def load(self, path, tables):
        rank, num_ranks = hvd.rank(), hvd.size()
        for table in tables:
            saved = np.load(self._table_file(path, table))
            table.assign(saved["rows"][saved["keys"] % num_ranks == rank])
        hvd.allreduce(tf.constant(0), name="sok_stand_in_load_done")

    def lookup_sparse(self, params, sp_ids, combiners):
        """params: shards; sp_ids: ragged int64 [B, 1] each -> [B, D] each."""
        self.lookup_calls.append((list(params), list(sp_ids), list(combiners)))
        if hvd.size() == 1:
            return [tf.gather(table, ids.values) for table, ids in zip(params, sp_ids)]
        return [self._distributed_lookup(table, ids.values, f"sok_stand_in_{i}")
                for i, (table, ids) in enumerate(zip(params, sp_ids))]

    def _distributed_lookup(self, table, keys, name):
        """keys int64 [B] -> [B, D]: owner of row k is rank k % N, at local row k // N."""
        rank, num_ranks = hvd.rank(), hvd.size()
        counts = hvd.allgather(tf.reshape(tf.size(keys, tf.int64), [1]), name=name + "_counts")
        check = tf.debugging.assert_equal(counts, tf.fill([num_ranks], counts[0]),
                                          message=f"SOK stand-in: {SAME_KEYS_RULE}")
        with tf.control_dependencies([check]):
            all_keys = hvd.allgather(keys, name=name + "_keys")                      # [N*B]
        # Rows this rank does not own read a zero row appended to the shard (so an empty
        # shard works too, with the same graph on every rank).
        local_rows = table.shape[0]
        padded = tf.concat([table, tf.zeros([1, table.shape[1]], table.dtype)], 0)
        owned = tf.equal(all_keys % num_ranks, rank)
        rows = tf.gather(padded, tf.where(owned, all_keys // num_ranks, local_rows))  # [N*B, D]
        vectors = hvd.allreduce(rows, op=hvd.Sum, name=name + "_rows")            # [N*B, D]
        size = tf.size(keys)
        return vectors[rank * size:(rank + 1) * size]

    def filter_variables(self, variables):
        tables = {table.ref() for table in self.tables}
        return ([v for v in variables if v.ref() in tables],
                [v for v in variables if v.ref() not in tables])


def install():
    """-> a fresh StandInSOK, now what `import sparse_operation_kit` gives."""
    sok = StandInSOK()
    sys.modules["sparse_operation_kit"] = sok
    return sok
