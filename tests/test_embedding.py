"""embedding.py: the tf backend on 1, 2 and 4 ranks against numpy; the sok backend on
sok_stand_in.py (SOK 2.x's rules, on CPU ranks) on 1, 2 and 3 ranks, and on the real SOK 2.x
on 1 rank where it imports (the GPU machine)."""

import inspect
import os
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
import horovod.tensorflow as hvd

from conftest import horovodrun
import embedding
import embedding_worker as worker
import model
import sok_stand_in
import xla

WORKER = os.path.join(os.path.dirname(__file__), "embedding_worker.py")


@pytest.fixture(autouse=True, scope="module")
def one_rank():
    hvd.init()  # this process alone: one rank


def _reference_step(full_table, ids, weights):
    """float64 numpy: the global rows of ids, and the table after one SGD step on
    loss = sum(table[rows] * weights) (every occurrence of a row adds its weights)."""
    rows = ids.astype(np.int64) + embedding.feature_offsets(worker.VOCAB_SIZES)
    table = full_table.astype(np.float64)
    gradient = np.zeros_like(table)
    np.add.at(gradient, rows.reshape(-1), weights.reshape(-1, worker.DIM).astype(np.float64))
    return table[rows], table - worker.LEARNING_RATE * gradient


# tf: the table's gather and update by embedding_ops' kernels; tf-unfused: by TF's ops.
RANKS = {"tf": (1, 2, 4), "tf-unfused": (1, 2), "sok-stand-in": (2, 3)}  # sok on 1 rank: below
if embedding.resolve_backend("auto")[0] == "sok":  # SOK 2.x imports (a GPU machine): the real one
    RANKS["sok"] = (1,)  # one rank per GPU (NCCL refuses two ranks on one GPU)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(backend, num_ranks) -> {compress: [per-rank npz dict]}, from one horovodrun -np N
    per (backend, num_ranks), on first use."""
    results = {}

    def run(backend, num_ranks):
        if (backend, num_ranks) not in results:
            out_dir = tmp_path_factory.mktemp(f"{backend}_np{num_ranks}")
            horovodrun(num_ranks, WORKER, out_dir, backend, timeout=240)
            results[backend, num_ranks] = {
                compress: [dict(np.load(out_dir / f"rank{r}_compress{int(compress)}.npz"))
                           for r in range(num_ranks)]
                for compress in (False, True)}
        return results[backend, num_ranks]
    return run


@pytest.mark.parametrize("backend,num_ranks",
                         [(b, n) for b, counts in RANKS.items() for n in counts])
@pytest.mark.parametrize("compress", [False, True])
def test_backend_matches_numpy(runs, backend, num_ranks, compress):
    full_table, ids, weights = worker.global_problem()
    expected_vectors, expected_table = _reference_step(full_table, ids, weights)
    ranks = runs(backend, num_ranks)[compress]
    updated_table = np.full(expected_table.shape, np.nan)
    for rank, result in enumerate(ranks):
        assert str(result["name"]) == worker.backend_name(backend)
        # Only this rank's rows: shapes and values.
        rows = worker.shard_rows(worker.VOCAB_SIZES, rank, num_ranks)
        assert int(result["num_shards"]) == 1
        assert result["initial_shard0"].shape == (len(rows), worker.DIM)
        np.testing.assert_array_equal(result["initial_shard0"], full_table[rows])
        updated_table[rows] = result["updated_shard0"]
        # Lookup of the local slice of the global batch, eager and in a tf.function.
        local = slice(rank * worker.GLOBAL_BATCH // num_ranks,
                      (rank + 1) * worker.GLOBAL_BATCH // num_ranks)
        np.testing.assert_array_equal(result["eager_output"], expected_vectors[local])
        np.testing.assert_array_equal(result["function_output"], expected_vectors[local])
        assert list(result["gradient_types"]) == ["IndexedSlices"]
    # The union of the shards is the numpy update of the full table.
    np.testing.assert_allclose(updated_table, expected_table, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_ranks", RANKS["sok-stand-in"])
def test_sok_lookups_bring_the_same_number_of_keys_on_every_rank(runs, num_ranks):
    """The stand-in refuses a lookup with 1 + rank rows on each rank (as SOK does); under
    compress the backend pads each rank's unique keys to the largest count, so the same
    lookup goes through (and the training step above, whose ranks have different numbers of
    unique keys, matched numpy)."""
    for rank, result in enumerate(runs("sok-stand-in", num_ranks)[False]):
        assert sok_stand_in.SAME_KEYS_RULE in str(result["unequal_error"]), rank
    for result in runs("sok-stand-in", num_ranks)[True]:
        assert str(result["unequal_error"]) == ""
    _, ids, _ = worker.global_problem()
    rows = ids + embedding.feature_offsets(worker.VOCAB_SIZES)
    per_rank = np.split(rows, num_ranks)
    assert len({len(np.unique(r)) for r in per_rank}) > 1  # the padding was needed


@pytest.mark.parametrize("num_ranks", [1, 2, 4])
def test_compress_changes_nothing(runs, num_ranks):
    """Lookups are bit-identical; updates differ at most by the rounding of summing a row's
    duplicate gradients in another order (compress sums them before the exchange)."""
    for plain, compressed in zip(runs("tf", num_ranks)[False], runs("tf", num_ranks)[True]):
        for key in ("eager_output", "function_output"):
            np.testing.assert_array_equal(plain[key], compressed[key])
        np.testing.assert_allclose(plain["updated_shard0"], compressed["updated_shard0"],
                                   rtol=0, atol=1e-6)


def test_default_initializer_bounds_per_feature():
    vocab_sizes = [4, 100, 1]
    init = embedding.uniform_initializer(vocab_sizes, dim=64, seed=3)
    values = init(tf.range(sum(vocab_sizes), dtype=tf.int64)).numpy()
    assert values.shape == (105, 64) and values.dtype == np.float32
    for rows, vocab in [(slice(0, 4), 4), (slice(4, 104), 100), (slice(104, 105), 1)]:
        bound = 1 / np.sqrt(vocab)
        assert np.abs(values[rows]).max() <= bound
        assert np.abs(values[rows]).max() > 0.8 * bound  # spread over the whole range
    np.testing.assert_array_equal(values, init(tf.range(105, dtype=tf.int64)).numpy())


def test_bad_backend_and_missing_sok(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        embedding.create_embedding("keras", [3], 2)
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", None)  # import fails
    with pytest.raises(RuntimeError, match="SparseOperationKit"):
        embedding.create_embedding("sok", [3], 2)
    assert embedding.create_embedding("auto", [3], 2).name == "tf"


@pytest.mark.parametrize("backend, options", [("tf", {}), ("tf", {"fused_table_ops": False}),
                                              ("sok", {}), ("sok", {"compress": True})])
def test_both_backends_keep_the_contract(monkeypatch, backend, options):
    """embedding.EmbeddingBackend, written once: every attribute, and each method with its
    parameters (sok on the stand-in)."""
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", sok_stand_in.StandInSOK())
    emb = embedding.create_embedding(backend, [3, 5], 4, **options)
    assert isinstance(emb, embedding.EmbeddingBackend)
    assert emb.name == backend and emb.vocab_sizes == [3, 5] and emb.dim == 4
    assert emb.compress == options.get("compress", False)
    assert isinstance(emb.checkpoint_layout, str) and emb.checkpoint_layout.startswith(backend)
    for method in ("__call__", "apply_gradients", "exclude_tables", "save", "restore"):
        expected = inspect.signature(getattr(embedding.EmbeddingBackend, method))
        got = inspect.signature(getattr(type(emb), method))
        assert list(got.parameters) == list(expected.parameters), (method, got, expected)
    (table,) = emb.variables
    assert table.shape == (8, 4) and table.dtype == tf.float32
    assert emb(tf.constant([[0, 4], [2, 1]])).shape == (2, 2, 4)


def test_sok_backend_on_a_stand_in(monkeypatch):
    sok = sok_stand_in.StandInSOK()
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", sok)
    vocab_sizes, dim = [3, 5, 2], 4
    full_table = np.random.default_rng(0).standard_normal((10, dim)).astype(np.float32)
    emb = embedding.create_embedding("auto", vocab_sizes, dim,
                                     initializer=lambda rows: tf.gather(full_table, rows))
    assert emb.name == "sok" and sok.init_calls == 1
    assert len(sok.tables) == 1  # one fused table, global row offset[f] + id
    np.testing.assert_array_equal(emb.variables[0].numpy(), full_table)

    dlrm = model.DLRM(emb, vocab_sizes, bottom_mlp=(8, dim), top_mlp=(8, 1))
    ids = np.array([[0, 4, 1], [2, 4, 0]], np.int32)
    inputs = (tf.zeros([2, 13]), tf.constant(ids))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(dlrm(inputs))
    assert len(sok.lookup_calls) == 1  # all features in one call
    (params, (ragged,), combiners), = sok.lookup_calls
    assert [p.ref() for p in params] == [sok.tables[0].ref()] and combiners == ["sum"]
    assert ragged.dtype == tf.int64  # one key a row, sample by sample, feature by feature
    np.testing.assert_array_equal(ragged.to_list(),
                                  (ids + np.array([0, 3, 8])).reshape(-1, 1))
    np.testing.assert_array_equal(emb(tf.constant(ids)).numpy(),
                                  full_table[ids + np.array([0, 3, 8])])
    table_refs = {t.ref() for t in sok.tables}
    assert {v.ref() for v in dlrm.embedding_variables} == table_refs
    assert not table_refs & {v.ref() for v in dlrm.dense_variables}
    assert len(dlrm.dense_variables) + 1 == len(dlrm.trainable_variables)

    before = [t.numpy() for t in sok.tables]
    grads = tape.gradient(loss, dlrm.embedding_variables)
    emb.apply_gradients(grads, tf.constant(0.25))
    lr, grads_and_vars = sok.sgd_updates[0]
    assert float(lr.numpy()) == 1.0  # the rate is folded into the gradients
    assert [v.ref() for _, v in grads_and_vars] == [t.ref() for t in sok.tables]
    for (scaled, table), grad, old in zip(grads_and_vars, grads, before):
        assert isinstance(scaled, tf.IndexedSlices)
        dense_grad = tf.convert_to_tensor(grad).numpy()
        np.testing.assert_allclose(tf.convert_to_tensor(scaled).numpy(), 0.25 * dense_grad,
                                   rtol=1e-6)
        np.testing.assert_allclose(table.numpy(), old - 0.25 * dense_grad, rtol=1e-6)


def test_sok_backend_compress_looks_up_unique_keys(monkeypatch):
    sok = sok_stand_in.StandInSOK()
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", sok)
    vocab_sizes, dim = [3, 5, 2], 4
    full_table = np.random.default_rng(1).standard_normal((10, dim)).astype(np.float32)
    emb = embedding.create_embedding("sok", vocab_sizes, dim, compress=True,
                                     initializer=lambda rows: tf.gather(full_table, rows))
    assert len(sok.tables) == 1 and sok.tables[0].shape == (10, dim)
    ids = np.array([[0, 4, 1], [2, 4, 1], [0, 4, 0]], np.int32)
    vectors = emb(tf.constant(ids))
    global_rows = ids + np.array([0, 3, 8])
    np.testing.assert_array_equal(vectors.numpy(), full_table[global_rows])
    (params, sp_ids, combiners), = sok.lookup_calls
    keys = sp_ids[0].values.numpy()
    assert sorted(keys) == sorted(set(global_rows.ravel()))  # each key once
    assert combiners == ["sum"]

    weights = np.random.default_rng(2).standard_normal((3, 3, dim)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(emb(tf.constant(ids)) * weights)
    emb.apply_gradients(tape.gradient(loss, emb.variables), tf.constant(0.5))
    expected = full_table.astype(np.float64)
    np.subtract.at(expected, global_rows.ravel(), 0.5 * weights.reshape(-1, dim))
    np.testing.assert_allclose(sok.tables[0].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_sok_initializer_fills_each_rank_with_its_own_rows(monkeypatch):
    """Rank 1 of 3: SOK asks for the local shard (rows 1, 4, 7, ... of the fused table)."""
    sok = sok_stand_in.StandInSOK()
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", sok)
    monkeypatch.setattr(embedding.hvd, "rank", lambda: 1)
    monkeypatch.setattr(embedding.hvd, "size", lambda: 3)
    vocab_sizes, dim = [7, 4], 2
    full_table = np.random.default_rng(3).standard_normal((11, dim)).astype(np.float32)
    emb = embedding.create_embedding("sok", vocab_sizes, dim,
                                     initializer=lambda rows: tf.gather(full_table, rows))
    (shard,) = emb.variables
    np.testing.assert_array_equal(shard.numpy(), full_table[[1, 4, 7, 10]])


def test_sok_init_runs_once_per_process(monkeypatch):
    """SOK 2.x raises on a second sok.init(): a second table set in the process still builds."""
    sok = sok_stand_in.StandInSOK()
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", sok)
    for _ in range(2):
        assert embedding.create_embedding("sok", [3, 2], 2).name == "sok"
    assert sok.init_calls == 2 and len(sok.tables) == 2
    with pytest.raises(RuntimeError, match="more than once"):
        sok.init()  # the stand-in keeps SOK's rule


def test_sok_1x_is_refused_with_the_version_found(monkeypatch):
    sok_1x = types.ModuleType("sparse_operation_kit")
    sok_1x.__version__, sok_1x.__file__ = "1.1.4", "/site-packages/sparse_operation_kit/__init__.py"
    sok_1x.Init = sok_1x.DistributedEmbedding = lambda *args, **kwargs: None  # SOK 1.x's API
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", sok_1x)
    with pytest.raises(embedding.SOKUnavailable) as error:
        embedding.create_embedding("sok", [3], 2)
    message = str(error.value)
    assert "needs SparseOperationKit 2.x" in message and "found sparse_operation_kit 1.1.4" in message
    assert "/site-packages/sparse_operation_kit/__init__.py" in message
    assert "no sok.init" in message and "--embedding=tf" in message
    assert embedding.resolve_backend("auto") == ("tf", "auto: SOK 1.1.4 found, the sok backend needs 2.x")
    sok_2x = sok_stand_in.StandInSOK()
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", sok_2x)
    assert embedding.resolve_backend("auto") == ("sok", "auto: SOK 2.1.0 imports")


def test_an_unpatched_sok_is_named_on_a_gpu_only():
    released = types.ModuleType("sparse_operation_kit")
    released.__version__ = "2.1.0"
    released._version = types.ModuleType("sparse_operation_kit._version")
    warning = embedding.unpatched_sok_warning(released, on_gpu=True)
    assert warning.startswith("warning: SOK 2.1.0 without the patches of gpu/sok_patches/")
    assert "an illegal memory access" in warning and "gpu/build_sok.sh" in warning
    assert embedding.unpatched_sok_warning(released, on_gpu=False) is None
    released._version.DLRM_PATCHES = ("stream-ordered-copies",)
    assert embedding.unpatched_sok_warning(released, on_gpu=True) is None


def test_the_build_marks_every_patch_it_applies():
    """gpu/sok_patches/04 writes DLRM_PATCHES into the build: it names each other patch file."""
    import re
    folder = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gpu", "sok_patches")
    names = sorted(os.listdir(folder))
    assert names[-1] == "04-mark-patched-build.patch" and len(names) == 4
    with open(os.path.join(folder, names[-1])) as f:
        marked = re.search(r"^\+DLRM_PATCHES = \((.*)\)$", f.read(), re.M).group(1)
    assert [name.strip(' "') for name in marked.split(",")] == \
        [re.sub(r"^\d\d-|\.patch$", "", name) for name in names[:-1]]


def test_startup_builds_the_table_in_place():
    """Filling the table never reads or copies all of it: the peak host memory of building a
    1 GiB table stays within 1.25x the table (a whole-table read or copy would make it 2x)."""
    import json
    import subprocess
    from conftest import ROOT
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__),
                                                        "startup_memory_worker.py")],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
                                             CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["table_bytes"] == 4_194_304 * 64 * 4
    growth = got["peak_after"] - got["rss_before"]
    assert 0.9 * got["table_bytes"] < growth < 1.25 * got["table_bytes"], got
    assert got["checksum_rows"] != 0.0  # the last rows were filled too


@pytest.mark.parametrize("device", [d.name for d in tf.config.list_logical_devices()
                                    if d.device_type in ("CPU", "GPU")])
@pytest.mark.parametrize("compiled", [False, True])
def test_scaled_gradient_is_zero_at_rate_zero_even_for_inf_and_nan(device, compiled):
    """The update of a step that AMP skips: rate 0 must leave the rows as they are."""
    scale = xla.compiled(compiled)(embedding.scaled_gradient)
    grad = np.array([[1.5, -np.inf], [np.nan, np.inf], [-2.0, 0.0]], np.float32)
    with tf.device(device):
        skipped = scale(tf.constant(grad.astype(np.float16)), tf.constant(0.0), tf.float32)
        applied = scale(tf.constant(grad), tf.constant(0.5), tf.float32)
    assert skipped.dtype == tf.float32
    np.testing.assert_array_equal(skipped.numpy(), np.zeros((3, 2), np.float32))
    np.testing.assert_array_equal(applied.numpy(), grad * 0.5)  # halving is exact
