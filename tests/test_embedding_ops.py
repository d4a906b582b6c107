"""embedding_ops: the table's gather and SGD update kernels against numpy (float64), on every
device TensorFlow lists (the CPU here; the GPU too on the GPU machine)."""

import numpy as np
import pytest
import tensorflow as tf

DEVICES = [device.name for device in tf.config.list_logical_devices()
           if device.device_type in ("CPU", "GPU")]
DTYPES = [tf.float32, tf.float16]


@pytest.fixture(scope="module")
def ops(built_embedding_ops):
    return built_embedding_ops


def _problem(rows, dim, num_keys, seed):
    """-> table float32 [rows, dim], keys int64 [num_keys] with repeats, grads float32."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((rows, dim)).astype(np.float32)
    keys = rng.integers(0, rows, num_keys).astype(np.int64)
    keys[: num_keys // 4] = keys[0]  # one row many times
    grads = rng.standard_normal((num_keys, dim)).astype(np.float32)
    return table, keys, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [8, 6, 128])  # float4 rows (D % 4 == 0) and not
def test_gather_converts_the_rows(ops, device, dtype, dim):
    table, keys, _ = _problem(50, dim, 333, seed=dim)
    with tf.device(device):
        variable = tf.Variable(table)
        vectors = ops.gather(variable, tf.constant(keys), dtype)
        empty = ops.gather(variable, tf.zeros([0], tf.int64), dtype)
    assert vectors.dtype == dtype and vectors.shape == (333, dim)
    expected = table[keys].astype(dtype.as_numpy_dtype)  # numpy's round to nearest even
    np.testing.assert_array_equal(vectors.numpy(), expected)
    assert empty.shape == (0, dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_gradient_is_the_rows_of_the_upstream_gradient(ops, device, dtype):
    table, keys, grads = _problem(20, 8, 40, seed=1)
    upstream = grads.astype(dtype.as_numpy_dtype)
    with tf.device(device):
        variable = tf.Variable(table)

        @tf.function
        def gradient():
            with tf.GradientTape() as tape:
                vectors = ops.gather(variable, tf.constant(keys), dtype)
                loss = tf.reduce_sum(tf.cast(vectors, tf.float32) * tf.cast(upstream, tf.float32))
            return tape.gradient(loss, variable)
        grad = gradient()
    assert isinstance(grad, tf.IndexedSlices) and grad.values.dtype == dtype
    np.testing.assert_array_equal(grad.indices.numpy(), keys)
    np.testing.assert_array_equal(grad.values.numpy(), upstream)
    np.testing.assert_array_equal(grad.dense_shape.numpy(), table.shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [8, 6, 128])
def test_sgd_update_adds_up_repeated_rows(ops, device, dtype, dim):
    table, keys, grads = _problem(64, dim, 2000, seed=2 + dim)
    grads = grads.astype(dtype.as_numpy_dtype)
    rate = 0.375
    expected = table.astype(np.float64)
    np.subtract.at(expected, keys, rate * grads.astype(np.float64))
    with tf.device(device):
        variable = tf.Variable(table)
        ops.sgd_update(variable, tf.constant(keys), tf.constant(grads), tf.constant(rate))
    # 500 additions into one row in float32, in any order: a bound well above their rounding.
    np.testing.assert_allclose(variable.numpy(), expected, rtol=0, atol=2e-4)
    untouched = np.setdiff1d(np.arange(64), keys)
    np.testing.assert_array_equal(variable.numpy()[untouched], table[untouched])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_at_rate_zero_changes_nothing_even_for_inf_and_nan(ops, device, dtype):
    table, keys, grads = _problem(16, 8, 30, seed=3)
    grads[0, 0], grads[1, 1] = np.inf, np.nan
    with tf.device(device):
        variable = tf.Variable(table)
        grads = tf.constant(grads.astype(dtype.as_numpy_dtype))
        ops.sgd_update(variable, tf.constant(keys), grads, tf.constant(0.0))
    np.testing.assert_array_equal(variable.numpy(), table)


@pytest.mark.parametrize("device", DEVICES)
def test_a_value_read_before_an_update_keeps_its_values(ops, device):
    """TF's copy-on-read rule for sparse writes: a read sharing the buffer is not changed."""
    table, keys, grads = _problem(16, 8, 10, seed=4)
    with tf.device(device):
        variable = tf.Variable(table)
        before = variable.read_value()
        ops.sgd_update(variable, tf.constant(keys), tf.constant(grads), tf.constant(1.0))
        after = variable.read_value()
    np.testing.assert_array_equal(before.numpy(), table)
    assert not np.array_equal(after.numpy(), table)


def test_rows_outside_the_table_are_refused_on_the_cpu(ops):
    with tf.device("/CPU:0"):
        variable = tf.Variable(np.zeros((5, 4), np.float32))
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"rows\[1\] = 5 is not in \[0, 5\)"):
            ops.gather(variable, tf.constant([0, 5], tf.int64), tf.float32)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"rows\[0\] = -1 is not in"):
            ops.sgd_update(variable, tf.constant([-1], tf.int64), tf.zeros([1, 4]),
                           tf.constant(1.0))
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"grads must be \[1, 4\]"):
            ops.sgd_update(variable, tf.constant([0], tf.int64), tf.zeros([1, 3]),
                           tf.constant(1.0))
    np.testing.assert_array_equal(variable.numpy(), 0.0)


def test_a_table_that_is_not_a_matrix_is_refused_when_traced(ops):
    """The shape function checks the variable's rank (a 1-D one crashed the process)."""
    vector = tf.Variable(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="must be rank 2"):
        tf.function(lambda: ops.gather(vector, tf.constant([0], tf.int64), tf.float32))()


def test_a_missing_build_names_the_build_command(ops, tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "_ops", None)
    with pytest.raises(ImportError, match="make -C .*embedding_ops"):
        ops.load_ops(str(tmp_path / "missing.so"))
