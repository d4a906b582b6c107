"""synthetic_data.py: determinism, the raw layout, and the recorded best AUC."""

import io
import os
import json

import numpy as np

from conftest import pairwise_auc
import data_format as fmt
import metrics
import synthetic_data

VOCAB = [5, 1000, 3, 70000] + [40] * 22


def test_roc_auc_against_pairwise_count(rng):
    for n in [2, 7, 500, 3000]:
        labels = rng.integers(0, 2, n)
        labels[0], labels[1] = 0, 1
        for scores in [np.round(rng.random(n), 1),                      # many ties
                       np.round(rng.standard_normal(n), 2),             # negatives and ties
                       rng.standard_normal(n).astype(np.float32)]:      # (almost) no ties
            expected = pairwise_auc(labels, scores.astype(np.float32))
            assert abs(metrics.roc_auc(labels, scores) - expected) < 1e-12
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert np.isnan(metrics.roc_auc([1, 1], [0.1, 0.2]))


def test_generator_is_deterministic_and_records_best_auc(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_data, "CHUNK_SAMPLES", 1000)  # several chunks
    info = synthetic_data.generate(str(tmp_path / "a"), 3000, 2500, VOCAB, seed=7)
    synthetic_data.generate(str(tmp_path / "b"), 3000, 2500, VOCAB, seed=7)
    synthetic_data.generate(str(tmp_path / "c"), 3000, 2500, VOCAB, seed=8)
    for name in ["train_data.bin", "test_data.bin"]:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes()
        assert a != (tmp_path / "c" / name).read_bytes()
    assert (tmp_path / "a" / "train_data.bin").stat().st_size == 3000 * 160

    raw = np.fromfile(tmp_path / "a" / "test_data.bin", "<i4").reshape(-1, 40)
    label, dense, ids = raw[:, 0], raw[:, 1:14], raw[:, 14:]
    assert set(np.unique(label)) == {0, 1}
    assert dense.min() >= 0 and (dense == 0).mean() > 0.05 and dense.max() > 1000  # heavy tail
    assert (ids >= 0).all() and (ids < np.asarray(VOCAB)).all()
    # Skew: the lowest 10% of feature 3's ids hold far more than 10% of the samples.
    assert (ids[:, 3] < 7000).mean() > 0.3

    prob = synthetic_data.true_probability(7, dense, ids)
    recorded = json.load(open(tmp_path / "a" / "synthetic.json"))
    assert recorded == info
    assert abs(recorded["best_test_auc"] - pairwise_auc(label, prob.astype(np.float32))) < 1e-9
    assert 0.7 < recorded["best_test_auc"] < 0.95  # a signal worth learning, not a trivial one
    # Labels follow the hidden probabilities: mean label matches mean probability.
    assert abs(label.mean() - prob.mean()) < 4 * np.sqrt(prob.mean() * (1 - prob.mean()) / len(prob))


def test_scaled_vocab_keeps_small_tables_and_shrinks_large_ones():
    scaled = fmt.scaled_vocab_sizes()
    assert len(scaled) == 26
    for full, small in zip(fmt.CRITEO_TB_VOCAB_SIZES, scaled):
        assert small == full if full <= 1000 else 1000 <= small <= full // 1000 + 1000
    assert sum(scaled) * 128 * 4 < 200e6  # the whole fp32 table at dim 128 stays small


def test_roc_auc_counts_plus_and_minus_zero_as_a_tie():
    assert metrics.roc_auc([1, 0], [0.0, -0.0]) == 0.5
    assert metrics.roc_auc([1, 0], [-0.0, 0.0]) == 0.5
    assert metrics.roc_auc([1, 0, 1], [-0.0, 0.0, 1.0]) == 0.75


def test_generator_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_data, "CHUNK_SAMPLES", 1000)
    messages = io.StringIO()
    synthetic_data.generate(str(tmp_path), 3000, 2000, VOCAB, progress_stream=messages,
                            progress_seconds=0)
    lines = messages.getvalue().splitlines()
    assert len(lines) == 5  # one per chunk: 3 of train, 2 of test
    assert lines[0].startswith("synthetic_data: ") and "M samples (20.0%)" in lines[0]
    assert "ETA" in lines[0]
    assert "(100.0%)" in lines[-1]


def test_roc_auc_tf_against_pairwise_count(rng):
    for n in [2, 7, 500, 3000]:
        labels = rng.integers(0, 2, n)
        labels[0], labels[1] = 0, 1
        for scores in [np.round(rng.random(n), 1), np.round(rng.standard_normal(n), 2),
                       rng.standard_normal(n).astype(np.float32),
                       np.where(rng.random(n) < 0.5, 0.0, -0.0)]:  # +0 and -0 only: all tied
            expected = pairwise_auc(labels, scores.astype(np.float32) + np.float32(0))
            assert abs(metrics.roc_auc_tf(labels.astype(np.float32), scores) - expected) < 1e-12
    assert np.isnan(metrics.roc_auc_tf(np.ones(3), np.arange(3.0)))
    assert np.isnan(metrics.roc_auc_tf(np.zeros(0), np.zeros(0)))


def test_generator_writes_the_same_bytes_with_several_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_data, "CHUNK_SAMPLES", 1000)  # 5 + 3 chunks
    one = synthetic_data.generate(str(tmp_path / "one"), 4500, 2100, VOCAB, seed=3,
                                  progress_stream=None)
    three = synthetic_data.generate(str(tmp_path / "three"), 4500, 2100, VOCAB, seed=3,
                                    progress_stream=None, workers=3)
    assert one == three
    for name in ["train_data.bin", "test_data.bin"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
    assert sorted(os.listdir(tmp_path / "three")) == ["synthetic.json", "test_data.bin",
                                                      "train_data.bin"]  # no partial left
