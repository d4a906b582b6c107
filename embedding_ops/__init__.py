"""The tf backend's embedding table ops as one device kernel each (CPU kernel; GPU kernel in
CUDA builds), on a float32 tf.Variable table [R, D]:

    gather(table, rows int64 [K], dtype) -> dtype [K, D]: table rows, converted (float16 or
        float32) in the same pass. Its gradient is IndexedSlices(grad in dtype, rows).
    sgd_update(table, rows int64 [K], grads [K, D] float16|float32, rate float32 []):
        table[rows[k]] -= rate * grads[k], converted to float32 first; repeated rows add up
        (on the GPU by atomics, in no fixed order). rate 0 leaves the table as it is, even
        where grads holds inf or nan (a step that AMP's loss scaling skips).

What they replace, TF's gather + cast and scale + scatter_sub, takes several kernels and
passes over the rows (BENCHMARKS.md). A row outside [0, R) is an error on the CPU; on the GPU
(no check without a host sync) the gather gives zeros and the update skips it.

Build first: `make -C embedding_ops` (CUDA build where nvcc is found, else CPU-only;
`CUDA=0` forces CPU-only).
"""

import os

import tensorflow as tf
# The seam to TF's internals: a custom op reading a variable through its handle must tell
# the gradient tape (and a tf.function's graph) that it read it, as tf.Variable.sparse_read
# does; variable_shape is the shape its gradient uses (a constant where the handle knows it).
from tensorflow.python.ops.resource_variable_ops import variable_accessed, variable_shape

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "_table_ops.so")
BUILD_COMMAND = f"make -C {os.path.dirname(os.path.abspath(__file__))}"

_ops = None


def load_ops(library=LIBRARY):
    """Loads the op library once; raises ImportError naming the build command if it is missing."""
    global _ops
    if _ops is None:
        if not os.path.exists(library):
            raise ImportError(f"embedding_ops: {library} is not built; run `{BUILD_COMMAND}` "
                              "(add CUDA=0 for a CPU-only build)")
        _ops = tf.load_op_library(library)
    return _ops


def gather(table, rows, dtype):
    """table float32 tf.Variable [R, D], rows int64 [K] -> dtype [K, D]."""
    variable_accessed(table)
    return load_ops().table_gather(table.handle, rows, T=dtype)


def sgd_update(table, rows, grads, rate):
    """table[rows] -= rate * grads (see the module docstring). -> the op (graph mode)."""
    return load_ops().table_sgd_update(table.handle, rows, grads, tf.cast(rate, tf.float32))


@tf.RegisterGradient("TableGather")
def _table_gather_gradient(op, grad):
    """-> IndexedSlices of the table: grad's rows (in the gather's dtype) at `rows`."""
    table_shape = variable_shape(op.inputs[0], tf.int64)
    return tf.IndexedSlices(tf.convert_to_tensor(grad), op.inputs[1], table_shape), None
