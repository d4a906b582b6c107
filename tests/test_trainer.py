"""trainer.py: LR schedule against a by-hand table, loss scaling, non-finite loss, report."""

import glob
import os
import shutil
import subprocess
import sys
import time

import horovod.tensorflow as hvd
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
import embedding
import trainer as training

hvd.init()
CUDA_INCLUDE = "/usr/local/cuda/include"  # nvtx3/ headers


def test_lr_schedule_by_hand():
    schedule = training.LearningRateSchedule(24.0, warmup_steps=4, decay_start_step=10,
                                             decay_steps=4)
    by_hand = {0: 6.0, 1: 12.0, 2: 18.0, 3: 24.0, 4: 24.0, 9: 24.0,
               10: 24.0, 11: 24.0 * (3 / 4) ** 2, 12: 24.0 * (2 / 4) ** 2, 13: 24.0 / 16,
               14: 0.0, 15: 0.0, 100: 0.0, 10**6: 0.0}  # clamped: never rises again
    for step, expected in by_hand.items():
        got = float(schedule(tf.constant(step, tf.int64)))
        assert got == pytest.approx(expected, abs=1e-5), step


def test_schedule_steps_scale_with_the_batch():
    default = training.LearningRateSchedule.for_global_batch(24.0, 55296)
    assert (default.warmup_steps, default.decay_start_step, default.decay_steps) == \
        (2750, 49315, 27772)
    at_64k = training.LearningRateSchedule.for_global_batch(24.0, 65536)
    # 2750 * 55296 / 65536 = 2320.3; 49315 * 0.84375 = 41609.5; 27772 * 0.84375 = 23432.6
    assert (at_64k.warmup_steps, at_64k.decay_start_step, at_64k.decay_steps) == \
        (2320, 41610, 23433)
    overridden = training.LearningRateSchedule.for_global_batch(24.0, 65536, decay_steps=7)
    assert (overridden.warmup_steps, overridden.decay_start_step, overridden.decay_steps) == \
        (2320, 41610, 7)
    assert training.scale_steps(training.REFERENCE_EVAL_INTERVAL, 65536) == 3200
    with pytest.raises(ValueError, match="warmup_steps"):
        training.LearningRateSchedule(1.0, 10, 5, 3)


class _TableEmbedding:
    """A one-rank stand-in for the part of embedding.EmbeddingBackend the trainer uses:
    name, variables, __call__ ([B, F] -> [B, F, D]) and apply_gradients."""
    name = "test"

    def __init__(self, rows, dim):
        self.table = tf.Variable(tf.random.stateless_uniform([rows, dim], [1, 2], -0.1, 0.1))
        self.variables = [self.table]

    def __call__(self, ids):
        return tf.gather(self.table, ids)

    def apply_gradients(self, grads, lr):  # lr 0 (a skipped step) leaves the rows as they are
        self.table.scatter_sub(tf.IndexedSlices(
            embedding.scaled_gradient(grads[0].values, lr, tf.float32), grads[0].indices))


class _TinyModel(tf.keras.Model):
    """A stand-in for model.DLRM with what the Trainer uses (call, embedding,
    embedding_variables, dense_variables): logit = dense @ w + sum of the looked-up vectors'
    first component."""

    def __init__(self):
        super().__init__()
        self.embedding = _TableEmbedding(10, 2)
        self.linear = tf.keras.layers.Dense(1)

    def call(self, inputs, training=False):
        dense, ids = inputs
        vectors = tf.cast(self.embedding(ids), self.compute_dtype)
        return tf.cast(self.linear(dense) + tf.reduce_sum(vectors[:, :, :1], axis=1), tf.float32)

    @property
    def embedding_variables(self):
        return self.embedding.variables

    @property
    def dense_variables(self):
        return self.linear.trainable_variables


def _batch(dense_value=1.0):
    dense = tf.fill([4, 3], dense_value)
    ids = tf.constant([[0, 1], [2, 3], [4, 5], [1, 1]], tf.int32)
    return (dense, ids), tf.constant([[1.0], [0.0], [1.0], [0.0]])


class _Batches(list):
    """A list of batches with the datasets' batches(start, epoch) (the same every epoch)."""

    def batches(self, start=0, epoch=0):
        return iter(self[start:])


def _snapshot(model):
    return [v.numpy().copy() for v in model.dense_variables + model.embedding_variables]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_loss_scaling_skips_a_step_on_an_injected_inf(jit_compile):
    model = _TinyModel()
    scale = training.DynamicLossScale(initial_scale=1024.0, growth_interval=2)
    trainer = training.Trainer(model, lambda step: tf.constant(0.1), global_batch=4,
                               loss_scale=scale, jit_compile=jit_compile)
    features, label = _batch()
    trainer.build_and_broadcast(features)
    before = _snapshot(model)
    trainer.train_step(*_batch(np.inf))
    assert all((a == b).all() for a, b in zip(before, _snapshot(model)))  # skipped everywhere
    assert float(scale.scale) == 512.0 and int(scale.skipped_steps) == 1
    trainer.check_loss()  # under AMP a non-finite loss skips the step, it does not stop the run
    trainer.train_step(features, label)
    assert not all((a == b).all() for a, b in zip(before, _snapshot(model)))  # applied
    assert float(scale.scale) == 512.0
    trainer.train_step(features, label)
    assert float(scale.scale) == 1024.0  # grew after 2 finite steps in a row
    assert int(scale.skipped_steps) == 1
    assert int(trainer.step) == 2  # the skipped step did not advance the schedule


def test_loss_scaled_update_equals_the_unscaled_one():
    updates = []
    for scale in [None, training.DynamicLossScale(initial_scale=2.0 ** 12)]:
        tf.keras.utils.set_random_seed(3)
        model = _TinyModel()
        trainer = training.Trainer(model, lambda step: tf.constant(0.5), 4, loss_scale=scale)
        trainer.build_and_broadcast(_batch()[0])
        before = _snapshot(model)
        trainer.train_step(*_batch())
        updates.append([a - b for a, b in zip(_snapshot(model), before)])
    for unscaled, scaled in zip(*updates):
        np.testing.assert_allclose(scaled, unscaled, rtol=1e-5, atol=1e-7)
        assert np.abs(unscaled).max() > 0


@pytest.mark.parametrize("jit_compile", [False, True])
def test_sgd_update_matches_a_by_hand_gradient(jit_compile):
    model = _TinyModel()
    trainer = training.Trainer(model, lambda step: tf.constant(0.5), global_batch=4,
                               jit_compile=jit_compile)
    (dense, ids), label = _batch()
    trainer.build_and_broadcast((dense, ids))
    kernel, bias = [v.numpy().astype(np.float64) for v in model.dense_variables]
    table = model.embedding.table.numpy().astype(np.float64)
    logits = dense.numpy() @ kernel + bias + table[ids.numpy(), 0].sum(1, keepdims=True)
    residual = (1 / (1 + np.exp(-logits)) - label.numpy()) / 4  # d mean BCE / d logit
    expected_table = table.copy()
    np.subtract.at(expected_table[:, 0], ids.numpy().ravel(), 0.5 * np.repeat(residual, 2))
    trainer.train_step((dense, ids), label)
    np.testing.assert_allclose(model.dense_variables[0].numpy(),
                               kernel - 0.5 * dense.numpy().T @ residual, rtol=1e-5)
    np.testing.assert_allclose(model.dense_variables[1].numpy(), bias - 0.5 * residual.sum(0),
                               rtol=1e-5)
    np.testing.assert_allclose(model.embedding.table.numpy(), expected_table, rtol=1e-5,
                               atol=1e-7)


def test_nonfinite_fp32_loss_names_the_step():
    model = _TinyModel()
    trainer = training.Trainer(model, lambda step: tf.constant(0.1), global_batch=4)
    trainer.build_and_broadcast(_batch()[0])
    trainer.train_step(*_batch())
    trainer.check_loss()
    trainer.train_step(*_batch(np.nan))
    trainer.train_step(*_batch())
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1"):
        trainer.check_loss()


def _auc_by_hand(labels, scores):
    """Mann-Whitney: the share of (positive, negative) pairs ranked right, ties count 1/2."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None].astype(np.float64) - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_evaluation_drops_the_padding_rows():
    model = _TinyModel()
    trainer = training.Trainer(model, lambda step: tf.constant(0.1), global_batch=4)
    (dense, ids), label = _batch()
    trainer.build_and_broadcast((dense, ids))
    dense = tf.constant([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0], [-2.0, 1.0, 0.5], [0.0, 0.0, 3.0]])
    # The last batch: two samples, then two padding rows whose scores would rank above or
    # below every sample (so counting them as samples of either label changes the AUC).
    last_dense = tf.constant([[2.0, 1.0, -1.0], [0.0, 1.0, 1.0], [50.0] * 3, [-50.0] * 3])
    last_label = tf.constant([[0.0], [1.0], [-1.0], [-1.0]])
    batches = [((dense, ids), label), ((last_dense, ids), last_label)]
    auc, num_samples = trainer.evaluate(batches)
    scores = np.concatenate([tf.sigmoid(model((dense, ids))).numpy()[:, 0],
                             tf.sigmoid(model((last_dense, ids))).numpy()[:2, 0]])
    labels = np.array([1, 0, 1, 0, 0, 1])
    assert num_samples == 6
    assert auc == pytest.approx(_auc_by_hand(labels, scores), abs=1e-6)
    with_padding = _auc_by_hand(np.array([1, 0, 1, 0, 0, 1, 1, 0]),
                                np.concatenate([scores, [1.0, 0.0]]))
    assert abs(auc - with_padding) > 1e-3  # the test can tell the two apart


def _scalars(log_dir):
    """TensorBoard event files under log_dir -> {tag: {step: value}}."""
    found = {}
    for path in sorted(glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def test_fit_writes_the_logged_scalars_for_tensorboard(tmp_path):
    model = _TinyModel()
    scale = training.DynamicLossScale(initial_scale=256.0, growth_interval=1000)
    trainer = training.Trainer(model, lambda step: tf.constant(0.05), global_batch=4,
                               loss_scale=scale)
    batches = _Batches(_batch(value) for value in (1.0, 0.5, -1.0, 2.0))
    lines = []
    training.fit(trainer, batches, [_batch(0.3)], max_steps=4, log_interval=2,
                 eval_in_last=True, log=lines.append,
                 summary_writer=tf.summary.create_file_writer(str(tmp_path)))
    logged = {int(line.split()[3].rstrip(":")): float(line.split()[5])
              for line in lines if line.startswith("epoch")}
    found = _scalars(tmp_path)
    assert set(found) == {"loss", "lr", "samples_per_second", "loss_scale", "auc"}
    assert set(found["loss"]) == {2, 4} == set(logged)
    for step, loss in logged.items():  # the printed loss has 5 decimals
        assert found["loss"][step] == pytest.approx(loss, abs=1e-5)
    assert found["lr"] == {2: pytest.approx(0.05), 4: pytest.approx(0.05)}
    assert found["loss_scale"] == {2: 256.0, 4: 256.0}
    assert all(value > 0 for value in found["samples_per_second"].values())
    (dense, ids), label = _batch(0.3)
    scores = tf.sigmoid(model((dense, ids))).numpy()[:, 0]
    assert found["auc"] == {4: pytest.approx(_auc_by_hand(label.numpy()[:, 0], scores),
                                             abs=1e-6)}


class _SlowBatches(_Batches):
    """_Batches whose k-th batch (k from 0) takes delays[k] seconds to come."""

    def __init__(self, batches, delays):
        super().__init__(batches)
        self.delays = delays

    def batches(self, start=0, epoch=0):
        for k, batch in enumerate(self[start:], start):
            time.sleep(self.delays[k])
            yield batch


def test_the_report_gives_the_hosts_input_and_launch_time_per_step_after_the_first():
    """Batches that take 1 s (the first) then 30 ms to come, a step call that sleeps 1 s
    (the first) then 20 ms before the step: the report's host input and launch ms per step
    count the 4 steps after the first (with it: 280 and 270 ms)."""
    trainer = training.Trainer(_TinyModel(), lambda step: tf.constant(0.05), global_batch=4)
    batches = _SlowBatches([_batch(value) for value in (1.0, 0.5, -1.0, 2.0, 0.1)],
                           [1.0, 0.03, 0.03, 0.03, 0.03])
    step_delays, train_step = iter([1.0, 0.02, 0.02, 0.02, 0.02]), trainer.train_step

    def slow_step(*batch):
        time.sleep(next(step_delays))
        return train_step(*batch)
    trainer.train_step = slow_step
    report = training.fit(trainer, batches, None, max_steps=5, log=lambda line: None)
    assert 30 <= report["input_ms_per_iteration"] < 200
    assert 20 <= report["launch_ms_per_iteration"] < 200
    assert (f"host per step: {report['input_ms_per_iteration']:.2f} ms waiting for input, "
            f"{report['launch_ms_per_iteration']:.2f} ms launching the step"
            in training.format_report(report))


@pytest.fixture(scope="module")
def nvtx_recorder(tmp_path_factory):
    """tools/nvtx_recorder.c built against CUDA's NVTX headers (on every machine of this
    project's kinds): an NVTX tool that writes each range push and pop to $NVTX_RECORD."""
    library = str(tmp_path_factory.mktemp("nvtx") / "nvtx_recorder.so")
    proc = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", f"-I{CUDA_INCLUDE}", "-o", library,
                           os.path.join(ROOT, "tools", "nvtx_recorder.c")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"building the NVTX recorder failed:\n{proc.stderr}"
    return library


def test_nvtx_ranges_mark_the_loops_phases(nvtx_recorder, tmp_path):
    """main.py under an NVTX tool: one "step" and one "input" range per step (and the input
    that ends the epoch), "log" per log line, "evaluation", "checkpoint", all in domain DLRM,
    balanced and never nested in each other; without the tool, nothing is recorded."""
    record = tmp_path / "ranges.txt"
    flags = ["--use_synthetic_dataset", "--vocab_sizes=criteo_tb_scaled", "--embedding=tf",
             "--global_batch_size=128", "--embedding_dim=8", "--bottom_mlp=16,8",
             "--top_mlp=16,1", "--synthetic_steps=6", "--synthetic_eval_steps=2",
             "--log_interval=3", "--eval_in_last", f"--checkpoint_dir={tmp_path / 'ck'}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", NVTX_RECORD=str(record))
    for tool in (None, nvtx_recorder):
        if tool:
            env["NVTX_INJECTION64_PATH"] = tool
            shutil.rmtree(tmp_path / "ck")
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *flags], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert record.exists() == bool(tool)
    events = [line.split(" ", 2) for line in record.read_text().splitlines()]
    ours = [event for event in events if event[1] == "DLRM"]
    stack, opened = [], []
    for event in ours:
        if event[0] == "push":
            assert not stack, f"{event[2]} inside {stack}"  # the phases follow each other
            stack.append(event[2])
            opened.append(event[2])
        else:
            assert event == ["pop", "DLRM"] and stack, event
            stack.pop()
    assert not stack
    assert {name: opened.count(name) for name in set(opened)} == {
        "input": 7, "step": 6, "log": 2, "evaluation": 1, "checkpoint": 1}
    # In order: the 6 steps, each after its input; the epoch's end; checkpoint; evaluation.
    assert opened[:3] == ["input", "step", "input"]
    assert opened[-3:] == ["input", "checkpoint", "evaluation"]


def test_the_trainer_state_round_trips():
    """state() holds what a checkpoint keeps beside the variables; restore_state sets it."""
    scale = training.DynamicLossScale(initial_scale=1024.0, growth_interval=2)
    trainer = training.Trainer(_TinyModel(), lambda step: tf.constant(0.1), global_batch=4,
                               loss_scale=scale)
    features, label = _batch()
    trainer.build_and_broadcast(features)
    trainer.train_step(*_batch(np.inf))  # skipped: the scale halves
    for _ in range(3):
        trainer.train_step(features, label)
    state = trainer.state()
    assert state == {"step": 3, "first_nonfinite_loss_step": -1,
                     "loss_scale": {"scale": 1024.0, "finite_steps": 1, "skipped_steps": 1}}
    fresh = training.Trainer(_TinyModel(), lambda step: tf.constant(0.1), global_batch=4,
                             loss_scale=training.DynamicLossScale())
    fresh.restore_state(state)
    assert fresh.state() == state
    plain = training.Trainer(_TinyModel(), lambda step: tf.constant(0.1), global_batch=4)
    plain.restore_state(state)  # no loss scale here: only the step and the loss record
    assert plain.state() == {"step": 3, "first_nonfinite_loss_step": -1, "loss_scale": None}
