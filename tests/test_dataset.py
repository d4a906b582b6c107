"""dataset.py: sharding (no sample lost or repeated), values, errors, horovodrun -np 2."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import horovodrun, write_raw
import data_format as fmt
import dataset
import split_bin

VOCAB = [10, 300, 70000] + [20] * 23
WORKER = os.path.join(os.path.dirname(__file__), "dataset_worker.py")


def _make_split(tmp_path, rng, n, name="split"):
    label = rng.integers(0, 2, n)
    dense = rng.integers(0, 5000, (n, 13))
    categorical = (rng.random((n, 26)) * np.asarray(VOCAB)).astype(np.int64)
    raw = write_raw(tmp_path / f"{name}.raw", label, dense, categorical)
    split_bin.split(str(tmp_path / f"{name}.raw"), str(tmp_path / name), VOCAB,
                    progress_stream=None)
    return str(tmp_path / name), raw


@pytest.mark.parametrize("num_samples", [0, 1, 5, 63, 64, 65, 1000, 1023])
@pytest.mark.parametrize("num_ranks", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_batch_ranges_cover_each_sample_once(num_samples, num_ranks, batch_size):
    global_batch = num_ranks * batch_size
    per_rank_eval = [dataset.batch_ranges(num_samples, batch_size, r, num_ranks, False)
                     for r in range(num_ranks)]
    per_rank_train = [dataset.batch_ranges(num_samples, batch_size, r, num_ranks, True)
                      for r in range(num_ranks)]
    for per_rank, expected_count in [(per_rank_eval, num_samples),
                                     (per_rank_train, num_samples // global_batch * global_batch)]:
        assert len({len(ranges) for ranges in per_rank}) == 1  # same number of steps everywhere
        seen = np.zeros(num_samples, np.int64)
        for ranges in per_rank:
            for start, count, rows in ranges:
                assert 0 <= count <= rows <= batch_size
                seen[start:start + count] += 1
        assert seen.sum() == expected_count and seen.max(initial=0) <= 1
        assert (seen[:expected_count] == 1).all()
        # Every rank's i-th batch has the same number of rows (SOK's rule for a lookup).
        for step in zip(*per_rank):
            assert len({rows for _, _, rows in step}) == 1
    # The seed's layout for full batches: global batch i, rank r -> [i*G + r*B, i*G + (r+1)*B).
    for r, ranges in enumerate(per_rank_train):
        assert ranges == [(i * global_batch + r * batch_size, batch_size, batch_size)
                          for i in range(num_samples // global_batch)]
    # The remainder is spread as evenly as possible, padded to ceil(rest / N) rows.
    rest = num_samples % global_batch
    if rest:
        tail = [ranges[-1] for ranges in per_rank_eval]
        assert max(c for _, c, _ in tail) - min(c for _, c, _ in tail) <= 1
        assert tail[0][2] == -(-rest // num_ranks)


def test_values_and_types_match_the_raw_file(tmp_path, rng):
    data_dir, raw = _make_split(tmp_path, rng, 103)
    for num_ranks in [1, 2, 3]:
        for rank in range(num_ranks):
            for prefetch in [0, 2]:
                ds = dataset.SplitDataset(data_dir, 8, rank, num_ranks, training=False,
                                          prefetch=prefetch)
                ranges = dataset.batch_ranges(103, 8, rank, num_ranks, False)
                assert len(ds) == len(ranges)
                for epoch in range(2):  # a second epoch reads the same
                    for ((dense, categorical), label), (start, count, size) in zip(ds, ranges):
                        rows = raw[start:start + count]
                        assert dense.dtype.name == "float32" and dense.shape == (size, 13)
                        assert categorical.dtype.name == "int32" and categorical.shape == (size, 26)
                        assert label.dtype.name == "float32" and label.shape == (size, 1)
                        np.testing.assert_array_equal(categorical.numpy()[:count], rows[:, 14:])
                        np.testing.assert_array_equal(label.numpy()[:count, 0], rows[:, 0])
                        np.testing.assert_allclose(dense.numpy()[:count],
                                                   np.log(rows[:, 1:14] + 3.0), rtol=1e-3)
                        # padding: dense 0, ids 0, label -1
                        assert (dense.numpy()[count:] == 0).all()
                        assert (categorical.numpy()[count:] == 0).all()
                        assert (label.numpy()[count:] == -1).all()


def test_an_abandoned_iterator_stops_its_thread(tmp_path, rng):
    import gc
    import threading
    import time
    data_dir, _ = _make_split(tmp_path, rng, 200)
    ds = dataset.SplitDataset(data_dir, 4, prefetch=2)
    before = threading.active_count()
    batches = iter(ds)
    next(batches)
    assert threading.active_count() == before + 1
    del batches
    gc.collect()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_errors(tmp_path, rng):
    data_dir, _ = _make_split(tmp_path, rng, 50)
    with pytest.raises(ValueError, match="global batch 64 .* larger than the dataset"):
        dataset.SplitDataset(data_dir, 32, 0, 2, training=True)
    assert len(dataset.SplitDataset(data_dir, 32, 1, 2, training=False)) == 1

    meta_path = os.path.join(data_dir, "metadata.json")
    meta = json.load(open(meta_path))
    json.dump(dict(meta, format_version=99), open(meta_path, "w"))
    with pytest.raises(ValueError, match="format_version 99"):
        dataset.SplitDataset(data_dir, 4)
    json.dump(meta, open(meta_path, "w"))

    with open(os.path.join(data_dir, "category_2.bin"), "ab") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"category_2.bin: 204 bytes.* 200 bytes"):
        dataset.SplitDataset(data_dir, 4)
    os.remove(os.path.join(data_dir, "category_2.bin"))
    with pytest.raises(FileNotFoundError, match="category_2.bin: missing"):
        dataset.SplitDataset(data_dir, 4)
    with pytest.raises(FileNotFoundError, match="metadata.json: missing"):
        dataset.SplitDataset(str(tmp_path / "nowhere"), 4)


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _set_vocab(feature, value):
    return lambda meta: meta["vocab_sizes"].__setitem__(feature, value)


VOCAB_RANGE = "expected an integer in [1, 2147483648] (ids are read as int32)"


@pytest.mark.parametrize("edit, problem", [
    (lambda meta: meta["vocab_sizes"].pop(), "vocab_sizes: expected 26 entries (one per "
                                             "categorical feature), got 25"),
    (lambda meta: meta["vocab_sizes"].append(5), "vocab_sizes: expected 26 entries (one per "
                                                 "categorical feature), got 27"),
    (_set_vocab(2, -3), f"vocab_sizes[2] is -3, {VOCAB_RANGE}"),
    (_set_vocab(2, 0), f"vocab_sizes[2] is 0, {VOCAB_RANGE}"),
    (_set_vocab(2, "70000"), f"vocab_sizes[2] is '70000', {VOCAB_RANGE}"),
    (_set_vocab(0, 10.0), f"vocab_sizes[0] is 10.0, {VOCAB_RANGE}"),
    (_set_vocab(0, 2**31 + 1), f"vocab_sizes[0] is 2147483649, {VOCAB_RANGE}"),
    (_set("vocab_sizes", {"0": 10}), "vocab_sizes is {'0': 10}, expected a list of integers"),
    (lambda meta: meta.pop("num_samples"), "no key 'num_samples'"),
    (lambda meta: meta.pop("files"), "no key 'files'"),
    (_set("num_samples", 50.0), "num_samples is 50.0, expected an integer >= 0"),
    (_set("num_samples", -1), "num_samples is -1, expected an integer >= 0"),
    (_set("num_samples", "50"), "num_samples is '50', expected an integer >= 0"),
    (_set("files", []), "files is [], expected an object (file name -> dtype, shape)"),
    (lambda meta: meta["files"].__setitem__("label.bin", "int8"),
     "files['label.bin'] is int8, expected dtype int8 shape [50]"),
    ("a list", "expected a JSON object, got a list"),
])
def test_metadata_json_is_checked_for_meaning(tmp_path, rng, edit, problem):
    """Each defect is one ValueError naming the file, the key and the value; the file is only
    read. 25 or 27 vocabularies used to train on 25/27 features, -3 to train with a warning."""
    data_dir, _ = _make_split(tmp_path, rng, 50)
    meta_path = os.path.join(data_dir, "metadata.json")
    meta = json.load(open(meta_path))
    if edit == "a list":
        meta = [meta]
    else:
        edit(meta)
    json.dump(meta, open(meta_path, "w"))
    written = open(meta_path).read()
    with pytest.raises(ValueError) as raised:
        dataset.SplitDataset(data_dir, 4)
    assert str(raised.value) == f"{meta_path}: {problem}"
    assert open(meta_path).read() == written


def test_synthetic_dataset_has_the_same_signature():
    ds = dataset.SyntheticDataset(6, VOCAB, num_batches=9)
    batches = list(ds)
    assert len(ds) == len(batches) == 9
    (dense, categorical), label = batches[-1]
    assert dense.dtype.name == "float32" and dense.shape == (6, 13)
    assert categorical.dtype.name == "int32" and categorical.shape == (6, 26)
    assert (categorical.numpy() < np.asarray(VOCAB)).all() and (categorical.numpy() >= 0).all()
    assert label.shape == (6, 1) and set(np.unique(label.numpy())) <= {0.0, 1.0}


def test_reader_under_horovodrun(tmp_path, rng):
    data_dir, raw = _make_split(tmp_path, rng, 77)
    horovodrun(2, WORKER, data_dir, 5, tmp_path)
    labels, ids = [], []
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert got["num_ranks"] == 2
        # 77 = 7 global batches of 10 + 7: the last is 4 + 3 samples, rank 1's padded to 4.
        assert len(got["label"]) == 7 * 5 + 4
        samples = got["label"][:, 0] != dataset.PAD_LABEL
        assert (~samples).sum() == rank
        ids.append(got["categorical"][samples])
        labels.append(got["label"][samples])
    # Evaluation mode: the two ranks together read every sample exactly once.
    ids = np.concatenate(ids)
    order = np.lexsort(ids.T[::-1])
    expected = raw[:, 14:]
    np.testing.assert_array_equal(ids[order], expected[np.lexsort(expected.T[::-1])])
    assert len(ids) == 77


@pytest.mark.parametrize("prefetch", [0, 2])
def test_reader_refuses_an_id_outside_its_vocabulary_and_a_bad_label(tmp_path, rng, prefetch):
    data_dir, _ = _make_split(tmp_path, rng, 100)
    # A file of the right size whose values split_bin.py would have refused.
    ids = np.memmap(os.path.join(data_dir, "category_2.bin"), np.int32, "r+")  # vocab 70000
    ids[57] = 70000
    ids.flush()
    with pytest.raises(dataset.DataError) as error:
        list(dataset.SplitDataset(data_dir, 8, 1, 2, training=True, prefetch=prefetch))
    assert str(error.value) == (f"{os.path.join(data_dir, 'category_2.bin')}: sample 57: "
                                f"categorical feature 2 is 70000, outside [0, 70000)")
    ids[57] = -1
    ids.flush()
    with pytest.raises(dataset.DataError, match="sample 57: categorical feature 2 is -1, outside"):
        list(dataset.SplitDataset(data_dir, 8, 1, 2, training=True, prefetch=prefetch))
    assert len(list(dataset.SplitDataset(data_dir, 8, 0, 2, training=True))) == 6  # rank 0 reads fine
    with pytest.raises(dataset.DataError, match="sample 57"):  # a read of more than a batch
        dataset.SplitDataset(data_dir, 8).read_numpy(0, 100)
    ids[57] = 69999
    ids.flush()
    labels = np.memmap(os.path.join(data_dir, "label.bin"), np.int8, "r+")
    labels[99] = 2
    labels.flush()
    with pytest.raises(dataset.DataError, match=r"label.bin: sample 99: label is 2, expected 0 or 1"):
        list(dataset.SplitDataset(data_dir, 8, 1, 2, training=False, prefetch=prefetch))


def test_batches_put_on_a_device_carry_int64_ids():
    """On a device the ids travel as int64 (TF keeps int32 GPU tensors in host memory), with
    the same values as the host batches."""
    host = next(iter(dataset.SyntheticDataset(8, [5, 70000] + [3] * 24, 1, seed=3)))
    placed = next(iter(dataset.SyntheticDataset(8, [5, 70000] + [3] * 24, 1, seed=3,
                                                device="/CPU:0")))
    (host_dense, host_ids), host_label = host
    (dense, ids), label = placed
    assert host_ids.dtype == tf.int32 and ids.dtype == tf.int64
    np.testing.assert_array_equal(ids.numpy(), host_ids.numpy())
    np.testing.assert_array_equal(dense.numpy(), host_dense.numpy())
    np.testing.assert_array_equal(label.numpy(), host_label.numpy())


def test_shuffled_batch_order_is_one_permutation_on_every_rank_and_under_resume(tmp_path, rng):
    """3 ranks x 4 samples, 101 samples: 8 global batches (5 samples dropped). Per epoch the
    ranks read slices of the same global batches, in a permutation of them that depends on
    (seed, epoch) only; batches(start, epoch) is that epoch's tail."""
    data_dir, raw = _make_split(tmp_path, rng, 101)
    ranks = [dataset.SplitDataset(data_dir, 4, r, 3, prefetch=0, shuffle_seed=7)
             for r in range(3)]
    orders = []
    for epoch in range(3):
        global_batches = []  # per step, the 12 samples' ids as the 3 ranks read them
        for batches in zip(*(ds.batches(0, epoch) for ds in ranks)):
            global_batches.append(np.concatenate([b[0][1].numpy() for b in batches]))
        # Which global batch of the file each step read (a by-hand slice of the raw rows).
        order = []
        for ids in global_batches:
            matches = [i for i in range(8) if np.array_equal(ids, raw[12 * i:12 * i + 12, 14:])]
            assert len(matches) == 1  # the ranks' slices form one global batch, in rank order
            order.append(matches[0])
        assert sorted(order) == list(range(8))
        assert order == dataset.batch_order(8, 7, epoch).tolist()
        orders.append(order)
        for start in (1, 5, 8):  # a resumed epoch: the same order from batch `start` on
            tail = [b[0][1].numpy() for b in ranks[1].batches(start, epoch)]
            assert len(tail) == 8 - start
            for ids, i in zip(tail, order[start:]):
                np.testing.assert_array_equal(ids, raw[12 * i + 4:12 * i + 8, 14:])
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(8))
    again = dataset.SplitDataset(data_dir, 4, 0, 3, prefetch=2, shuffle_seed=7)
    first = [b[0][1].numpy() for b in again.batches(0, 1)]
    assert all(np.array_equal(a, raw[12 * i:12 * i + 4, 14:]) for a, i in zip(first, orders[1]))
    assert dataset.batch_order(8, 8, 0).tolist() != orders[0]  # another seed, another order
    unshuffled = dataset.SplitDataset(data_dir, 4, 0, 3, prefetch=0)
    assert [b[0][1].numpy().tolist() for b in unshuffled.batches(0, 2)] == [
        raw[12 * i:12 * i + 4, 14:].tolist() for i in range(8)]
    with pytest.raises(ValueError, match="shuffle_seed is for training data"):
        dataset.SplitDataset(data_dir, 4, training=False, shuffle_seed=7)
