"""model.py: dot interaction against numpy float64 (values, gradients, layout), DLRM forward."""

import numpy as np
import pytest
import tensorflow as tf
import horovod.tensorflow as hvd

import embedding
import model


@pytest.fixture(autouse=True, scope="module")
def one_rank():
    hvd.init()  # this process alone: one rank


def numpy_interaction(features):
    """float64 [B, F, D] -> [B, W]: row 0, then x_i . x_j for (1,0), (2,0), (2,1), ..., zeros."""
    batch, num_features, dim = features.shape
    pairs = [(i, j) for i in range(num_features) for j in range(i)]
    width = -(-(dim + len(pairs)) // 8) * 8
    output = np.zeros((batch, width))
    output[:, :dim] = features[:, 0]
    for p, (i, j) in enumerate(pairs):
        output[:, dim + p] = np.einsum("bd,bd->b", features[:, i], features[:, j])
    return output


def numpy_interaction_gradient(features, upstream):
    """d sum(numpy_interaction(features) * upstream) / d features, float64."""
    num_features, dim = features.shape[1:]
    gradient = np.zeros_like(features)
    gradient[:, 0] += upstream[:, :dim]
    pairs = [(i, j) for i in range(num_features) for j in range(i)]
    for p, (i, j) in enumerate(pairs):
        weight = upstream[:, dim + p, np.newaxis]
        gradient[:, i] += weight * features[:, j]
        gradient[:, j] += weight * features[:, i]
    return gradient


def test_interaction_layout_by_hand():
    features = tf.constant([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    # x0, then x1.x0 = 11, x2.x0 = 17, x2.x1 = 39, then zeros up to width 8.
    np.testing.assert_array_equal(model.dot_interaction(features).numpy(),
                                  [[1, 2, 11, 17, 39, 0, 0, 0]])


@pytest.mark.parametrize("num_features, dim, expected_width",
                         [(2, 1, 8), (2, 7, 8), (3, 5, 8), (4, 3, 16), (27, 128, 480),
                          (27, 127, 480), (5, 6, 16)])
def test_interaction_width(num_features, dim, expected_width):
    assert model.interaction_width(num_features, dim) == expected_width
    output = model.dot_interaction(tf.ones([2, num_features, dim]))
    assert output.shape == (2, expected_width)


@pytest.mark.parametrize("batch, num_features, dim",
                         [(1, 2, 1), (1, 27, 16), (3, 2, 5), (4, 5, 3), (2, 9, 7), (5, 27, 8)])
def test_interaction_values_and_gradients_match_numpy(batch, num_features, dim):
    rng = np.random.default_rng(batch * 100 + num_features * 10 + dim)
    features = rng.standard_normal((batch, num_features, dim))
    expected = numpy_interaction(features)
    upstream = rng.standard_normal(expected.shape)
    for dtype, tolerance in [(tf.float64, 1e-12), (tf.float32, 1e-5)]:
        inputs = tf.constant(features, dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            output = model.dot_interaction(inputs)
            loss = tf.reduce_sum(output * tf.constant(upstream, dtype))
        assert output.dtype == dtype
        np.testing.assert_allclose(output.numpy(), expected, rtol=tolerance, atol=tolerance)
        assert not output.numpy()[:, dim + num_features * (num_features - 1) // 2:].any()
        np.testing.assert_allclose(tape.gradient(loss, inputs).numpy(),
                                   numpy_interaction_gradient(features, upstream),
                                   rtol=tolerance, atol=tolerance)


def test_interaction_in_a_function_with_unknown_batch_and_float16():
    interact = tf.function(model.dot_interaction,
                           input_signature=[tf.TensorSpec([None, 4, 3], tf.float16)])
    features = np.random.default_rng(0).standard_normal((6, 4, 3))
    output = interact(tf.constant(features, tf.float16))
    assert output.dtype == tf.float16 and output.shape == (6, 16)
    np.testing.assert_allclose(output.numpy().astype(np.float64), numpy_interaction(features),
                               rtol=1e-2, atol=1e-2)


VOCAB_SIZES = [4, 7, 1, 3]
DIM = 4


def _full_table():
    return np.random.default_rng(5).standard_normal((sum(VOCAB_SIZES), DIM)).astype(np.float32)


def _tiny_dlrm(**kwargs):
    table = tf.constant(_full_table())
    emb = embedding.create_embedding("tf", VOCAB_SIZES, DIM,
                                     initializer=lambda rows: tf.gather(table, rows))
    options = dict(bottom_mlp=(8, DIM), top_mlp=(16, 8, 1))
    options.update(kwargs)
    return model.DLRM(emb, VOCAB_SIZES, **options)


def _inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((batch, 13)).astype(np.float32)
    categorical = np.stack([rng.integers(0, v, batch) for v in VOCAB_SIZES], 1).astype(np.int32)
    return dense, categorical


def _numpy_dlrm(dlrm, dense, categorical):
    """float64 forward of dlrm from its weights: the model's definition, written out."""
    def mlp(x, layers, relu_last):
        for k, layer in enumerate(layers):
            kernel, bias = (w.numpy().astype(np.float64) for w in layer.weights)
            x = x @ kernel + bias
            if relu_last or k < len(layers) - 1:
                x = np.maximum(x, 0)
        return x
    bottom = mlp(dense.astype(np.float64), dlrm.bottom_layers, relu_last=True)
    rows = categorical + embedding.feature_offsets(VOCAB_SIZES)
    vectors = _full_table().astype(np.float64)[rows]
    features = np.concatenate([bottom[:, np.newaxis], vectors], axis=1)
    return mlp(numpy_interaction(features), dlrm.top_layers, relu_last=False)


@pytest.mark.parametrize("batch", [1, 5])
def test_dlrm_forward_matches_numpy(batch):
    dlrm = _tiny_dlrm()
    dense, categorical = _inputs(batch)
    logits = dlrm((tf.constant(dense), tf.constant(categorical)), training=True)
    assert logits.shape == (batch, 1) and logits.dtype == tf.float32
    np.testing.assert_allclose(logits.numpy(), _numpy_dlrm(dlrm, dense, categorical),
                               rtol=1e-5, atol=1e-5)
    # 2 bottom + 3 top layers, kernel and bias each; the one table apart.
    assert len(dlrm.dense_variables) == 10
    assert [v.ref() for v in dlrm.embedding_variables] == [dlrm.embedding.table.ref()]
    assert len(dlrm.trainable_variables) == 11


def test_dlrm_uses_the_given_interaction():
    seen = []

    def recording_interaction(features):
        seen.append(features.shape.as_list())
        return model.dot_interaction(features)
    dlrm = _tiny_dlrm(interaction=recording_interaction)
    dense, categorical = _inputs(3)
    dlrm((tf.constant(dense), tf.constant(categorical)))
    assert seen == [[3, 1 + len(VOCAB_SIZES), DIM]]


def test_amp_keeps_tables_and_logits_float32():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        dlrm = _tiny_dlrm()
        dense, categorical = _inputs(3)
        with tf.GradientTape() as tape:
            logits = dlrm((tf.constant(dense), tf.constant(categorical)))
        table_grad, = tape.gradient(logits, dlrm.embedding_variables)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32 and logits.shape == (3, 1)
    assert dlrm.embedding.table.dtype == tf.float32
    assert isinstance(table_grad, tf.IndexedSlices) and table_grad.dtype == tf.float32
    for layer in dlrm.bottom_layers + dlrm.top_layers[:-1]:
        assert layer.compute_dtype == "float16" and layer.kernel.dtype == tf.float32
    assert dlrm.top_layers[-1].compute_dtype == "float32"  # the logit layer
    np.testing.assert_allclose(logits.numpy(), _numpy_dlrm(dlrm, dense, categorical),
                               rtol=2e-2, atol=2e-2)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="embedding dim"):
        _tiny_dlrm(bottom_mlp=(8, DIM + 1))
    with pytest.raises(ValueError, match="logit"):
        _tiny_dlrm(top_mlp=(8, 2))


def test_seeded_initialisation():
    def dense_weights(seed):
        dlrm = _tiny_dlrm(seed=seed, top_mlp=(1024, 1))
        dense, categorical = _inputs(2)
        dlrm((tf.constant(dense), tf.constant(categorical)))
        return dlrm, [v.numpy() for v in dlrm.dense_variables]
    dlrm, first = dense_weights(3)
    _, again = dense_weights(3)
    _, other = dense_weights(4)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    # GlorotNormal kernels, Normal(sqrt(1/units)) biases: the 1024-wide top layer.
    kernel, bias = (w.numpy() for w in dlrm.top_layers[0].weights)
    fan_in = kernel.shape[0]
    assert abs(kernel.std() / np.sqrt(2 / (fan_in + 1024)) - 1) < 0.1
    assert abs(bias.std() / np.sqrt(1 / 1024) - 1) < 0.1
