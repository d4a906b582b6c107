"""custom_interact's TF op on every device TF lists (the CPU, and GPUs where TF has them)
against a float64 numpy reference and model.dot_interaction.

float32 is exact fp32 in these tests (TF32 off), except where a test turns TF32 on: then the
GPU's tensor-core path computes fp32 inputs in TF32, and only then."""

import numpy as np
import pytest
import tensorflow as tf

DEVICES = ["/CPU:0"] + [d.name for d in tf.config.list_logical_devices("GPU")]
GPUS = DEVICES[1:]


@pytest.fixture(scope="module")
def ci(built_custom_interact):
    return built_custom_interact


@pytest.fixture(autouse=True)
def exact_fp32():
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(True)


@pytest.fixture(params=DEVICES)
def device(request):
    """Runs the test's ops on each device in turn."""
    with tf.device(request.param):
        yield request.param


def on(device, tensor):
    """Asserts the op ran where it was asked to (no silent fallback to another device)."""
    assert tensor.device.endswith(device.replace("/", "")), (tensor.device, device)
    return tensor


def ref_forward(x):
    """float64 numpy reference: [B, F, D] -> [B, D + F(F-1)/2 padded to 8]."""
    x = x.astype(np.float64)
    B, F, D = x.shape
    gram = np.einsum("bid,bjd->bij", x, x)
    rows, cols = np.tril_indices(F, -1)  # row-major strict lower triangle: (1,0), (2,0), (2,1)...
    width = -(-(D + len(rows)) // 8) * 8
    out = np.zeros((B, width))
    out[:, :D] = x[:, 0]
    out[:, D:D + len(rows)] = gram[:, rows, cols]
    return out


def ref_backward(x, g):
    """float64 gradient of sum(g * ref_forward(x)) w.r.t. x."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    B, F, D = x.shape
    rows, cols = np.tril_indices(F, -1)
    s = np.zeros((B, F, F))
    s[:, rows, cols] = g[:, D:D + len(rows)]
    s = s + s.transpose(0, 2, 1)
    dx = np.einsum("bij,bjd->bid", s, x)
    dx[:, 0] += g[:, :D]
    return dx


def rel_err(a, ref):
    return np.linalg.norm(np.asarray(a, np.float64) - ref) / np.linalg.norm(ref)


def test_reference_layout():
    # Pins the layout itself with hand-checkable numbers: B=1, F=3, D=2.
    x = np.array([[[1., 2.], [3., 4.], [5., 6.]]])
    expected = [1, 2, 1 * 3 + 2 * 4, 1 * 5 + 2 * 6, 3 * 5 + 4 * 6, 0, 0, 0]
    np.testing.assert_array_equal(ref_forward(x)[0], expected)


TOL = {tf.float64: 1e-12, tf.float32: 1e-6, tf.float16: 2e-3, tf.bfloat16: 1.5e-2}
SHAPES = [(1, 27, 128), (3, 1, 5), (1, 2, 1), (5, 7, 9), (2, 27, 128), (4, 33, 17), (1, 64, 3)]


def random_case(rng, shape, dtype):
    """Random x and upstream gradient, rounded to dtype (the reference sees the same values)."""
    B, F, D = shape
    width = -(-(D + F * (F - 1) // 2) // 8) * 8
    x = tf.cast(rng.standard_normal(shape), dtype)
    g = tf.cast(rng.standard_normal((B, width)), dtype)
    return x, g


CASES = [(device, dtype) for device in DEVICES for dtype in TOL
         if not (device in GPUS and dtype == tf.float64)]  # float64: CPU kernel only


@pytest.mark.parametrize("device_name, dtype", CASES, ids=lambda c: getattr(c, "name", c))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_and_gradients_vs_numpy(ci, rng, shape, device_name, dtype):
    x, g = random_case(rng, shape, dtype)
    with tf.device(device_name), tf.GradientTape() as tape:
        tape.watch(x)
        y = on(device_name, ci.dot_interact(x))
        dx = on(device_name, tape.gradient(y, x, output_gradients=g))
    assert y.dtype == dtype and dx.dtype == dtype
    x64, g64 = x.numpy().astype(np.float64), g.numpy().astype(np.float64)
    ref_y = ref_forward(x64)
    assert y.shape == ref_y.shape
    assert np.all(np.isfinite(y.numpy().astype(np.float64)))
    assert rel_err(y.numpy(), ref_y) < TOL[dtype]
    assert np.all(y.numpy()[:, shape[2] + shape[1] * (shape[1] - 1) // 2:] == 0)
    np.testing.assert_array_equal(y.numpy()[:, :shape[2]], x.numpy()[:, 0])
    assert rel_err(dx.numpy(), ref_backward(x64, g64)) < TOL[dtype]


def test_random_shapes(ci, rng, device):
    for _ in range(10):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 40)), int(rng.integers(1, 70)))
        x, g = random_case(rng, shape, tf.float32)
        x64, g64 = x.numpy().astype(np.float64), g.numpy().astype(np.float64)
        assert rel_err(ci.dot_interact(x).numpy(), ref_forward(x64)) < 1e-6, shape
        assert rel_err(ci.dot_interact_grad(x, g).numpy(), ref_backward(x64, g64)) < 1e-6, shape


def test_large_batch(ci, rng, device):
    # Enough samples that the CPU kernel splits the batch over threads (and the GPU's fast
    # path, D = 128 and F <= 32, runs many blocks).
    x, g = random_case(rng, (257, 27, 128), tf.float32)
    x64, g64 = x.numpy().astype(np.float64), g.numpy().astype(np.float64)
    assert rel_err(on(device, ci.dot_interact(x)).numpy(), ref_forward(x64)) < 1e-6
    assert rel_err(ci.dot_interact_grad(x, g).numpy(), ref_backward(x64, g64)) < 1e-6


@pytest.mark.parametrize("device_name", DEVICES)
def test_float32_uses_tf32_only_on_a_gpu_and_only_when_tf_allows_it(ci, rng, device_name):
    x, g = random_case(rng, (512, 27, 128), tf.float32)  # the tensor-core path's shape
    x64, g64 = x.numpy().astype(np.float64), g.numpy().astype(np.float64)
    errors = {}
    for tf32 in (False, True):
        tf.config.experimental.enable_tensor_float_32_execution(tf32)
        with tf.device(device_name):
            errors[tf32] = (rel_err(on(device_name, ci.dot_interact(x)).numpy(), ref_forward(x64)),
                            rel_err(ci.dot_interact_grad(x, g).numpy(), ref_backward(x64, g64)))
    assert max(errors[False]) < 1e-6, errors  # exact fp32
    if device_name in GPUS:
        assert 1e-5 < min(errors[True]) and max(errors[True]) < 1e-3, errors  # TF32: ~3e-4
    else:
        assert max(errors[True]) < 1e-6, errors  # the CPU kernel has no TF32


def test_compute_gradient(ci, rng):
    x = tf.constant(rng.standard_normal((2, 5, 3)))
    theoretical, numerical = tf.test.compute_gradient(ci.dot_interact, [x])
    assert theoretical[0].shape == (2 * 16, 2 * 5 * 3)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)


def test_matches_model_interaction(ci, rng, device):
    model = pytest.importorskip("model")
    for shape in [(1, 27, 128), (6, 5, 7)]:
        x, g = random_case(rng, shape, tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours, theirs = ci.dot_interact(x), model.dot_interaction(x)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tape.gradient(ours, x, output_gradients=g),
                                   tape.gradient(theirs, x, output_gradients=g),
                                   rtol=1e-5, atol=1e-5)


def test_static_shape_inference(ci):
    @tf.function(input_signature=[tf.TensorSpec([None, 27, 128], tf.float16)])
    def f(x):
        y = ci.dot_interact(x)
        assert y.shape.as_list() == [None, 480]
        return y
    assert f(tf.ones([2, 27, 128], tf.float16)).shape == (2, 480)


def test_bad_shapes_raise(ci, device):
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        ci.dot_interact(tf.ones([2, 3]))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        ci.dot_interact_grad(tf.ones([2, 3, 4]), tf.ones([2, 9]))


def test_missing_library_names_build_command(ci, tmp_path, monkeypatch):
    monkeypatch.setattr(ci, "_ops", None)
    with pytest.raises(ImportError, match="make -C"):
        ci.load_ops(str(tmp_path / "none.so"))
