"""checkpoint.py: a run saved and resumed equals the run never interrupted (in this process on
one rank with AMP; through main.py on 2 ranks, and re-sharded 2 -> 1 and 1 -> 2), a killed
save leaves the last good checkpoint and a failed one nothing, bad checkpoints (another run's,
a corrupted position, damaged or non-finite files) are refused with the file and field before
anything is deleted, one run at a time holds a directory, TensorBoard or the profiler
failing mid-run ends nothing, and the sok backend goes through sok.dump / sok.load (SOK's rules:
tests/sok_stand_in.py)."""

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import horovod.tensorflow as hvd
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, SMALL_VOCAB as VOCAB, main_command, run_main, run_main_alone
import checkpoint
import dataset
import embedding
import model as dlrm
import split_bin
import synthetic_data
import trainer as training

hvd.init()

GLOBAL_BATCH = 64
BATCHES_PER_EPOCH = 6
DIM = 8
# The schedule turns within the resumed steps (warmup to 3, decay from 6 on): a resume at the
# wrong schedule position changes them.
MAIN_FLAGS = ["--global_batch_size=64", "--embedding=tf", "--embedding_dim=8",
              "--bottom_mlp=16,8", "--top_mlp=16,8,1", "--lr=0.5", "--warmup_steps=3",
              "--decay_start_step=6", "--decay_steps=4", "--epochs=2", "--log_interval=1",
              "--eval_interval=0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train/ of 6 batches of 64 (+ 5 samples, dropped) and test/, split format."""
    root = tmp_path_factory.mktemp("ckpt_data")
    synthetic_data.generate(str(root / "raw"), GLOBAL_BATCH * BATCHES_PER_EPOCH + 5, 100, VOCAB,
                            seed=4, progress_stream=None)
    for name in ["train", "test"]:
        split_bin.split(str(root / "raw" / f"{name}_data.bin"), str(root / name), VOCAB,
                        progress_stream=None)
    return str(root)


def _trainer(seed, amp):
    """A small DLRM on the tf backend; seed sets the tables and the dense weights."""
    tables = embedding.create_embedding("tf", VOCAB, DIM, seed=seed,
                                        vector_dtype=tf.float16 if amp else tf.float32)
    net = dlrm.DLRM(tables, VOCAB, bottom_mlp=(16, DIM), top_mlp=(16, 8, 1), seed=seed)
    schedule = training.LearningRateSchedule(0.5, warmup_steps=3, decay_start_step=6,
                                             decay_steps=4)
    # growth_interval 2: the scale doubles during the run, so its counters must be restored.
    loss_scale = training.DynamicLossScale(initial_scale=64.0, growth_interval=2) if amp else None
    return training.Trainer(net, schedule, GLOBAL_BATCH, loss_scale=loss_scale)


def _state(trainer):
    model = trainer.model
    return [v.numpy() for v in model.dense_variables + model.embedding_variables]


def _losses(lines):
    """main.py's / fit's log lines -> {step: loss}."""
    found = {}
    for line in lines:
        match = re.search(r"epoch \d+ step (\d+): loss ([\d.]+)", line)
        if match:
            found[int(match.group(1))] = float(match.group(2))
    return found


@pytest.fixture
def amp_policy():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


def test_resume_in_process_equals_the_uninterrupted_run_with_amp(data_dir, tmp_path,
                                                                 amp_policy):
    """9 steps against 6 (the end of epoch 0) + save + resume into a model initialised
    differently + 3 (epoch 1): same weights, tables, schedule position, loss scale state.
    The batches are shuffled: epoch 1 continues in its own order."""
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=2,
                                 shuffle_seed=5)
    whole_lines, resumed_lines = [], []
    whole = _trainer(seed=0, amp=True)
    training.fit(whole, train, None, epochs=2, max_steps=9, log_interval=1,
                 log=whole_lines.append)

    first = _trainer(seed=0, amp=True)
    checkpoints = checkpoint.Checkpoints(str(tmp_path / "ck"), first)
    training.fit(first, train, None, epochs=2, max_steps=6, checkpoints=checkpoints,
                 log=lambda line: None)
    saved = checkpoints.latest()
    assert os.path.basename(saved) == "ckpt-00000006"

    resumed = _trainer(seed=1, amp=True)
    # Its own tables (seed 1) are far from the saved ones: only the restore can make it agree.
    assert np.abs(resumed.model.embedding.table.numpy()
                  - first.model.embedding.table.numpy()).max() > 1e-2
    report = training.fit(resumed, train, None, epochs=2, max_steps=9, log_interval=1,
                          log=resumed_lines.append,
                          checkpoints=checkpoint.Checkpoints(str(tmp_path / "ck"), resumed),
                          resume_from=saved)
    assert report["steps"] == 9 and report["resumed_from_step"] == 6
    assert sorted(_losses(resumed_lines)) == [7, 8, 9]
    for step, loss in _losses(resumed_lines).items():  # printed with 5 decimals
        assert loss == pytest.approx(_losses(whole_lines)[step], abs=2e-5), step
    # Same process, same kernels: bit-identical on the CPU; on a GPU, kernels that add with
    # atomics sum in a varying order, and fp16 rounds the differences up (seen on the H200:
    # single weights off by up to 2.5e-6). A wrong data position or schedule step is ~1e-2.
    for got, expected in zip(_state(resumed), _state(whole)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert int(resumed.step) == int(whole.step) == 9
    for name in ("scale", "finite_steps", "skipped_steps"):
        assert getattr(resumed.loss_scale, name).numpy() == getattr(whole.loss_scale, name).numpy()
    assert float(whole.loss_scale.scale) > 64.0  # the scale did grow in the run
    # The resumed run saved its end: the old checkpoint is gone.
    assert sorted(os.listdir(tmp_path / "ck")) == [".lock", "ckpt-00000009"]


def test_resumed_run_that_met_its_auc_target_stops_at_once(data_dir, tmp_path):
    """The evaluations and the step the target was met travel in the checkpoint."""
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=0)
    test = dataset.SplitDataset(os.path.join(data_dir, "test"), GLOBAL_BATCH, training=False,
                                prefetch=0)
    first = _trainer(seed=0, amp=False)
    first_report = training.fit(first, train, test, max_steps=9, eval_interval=2,
                                auc_target=0.01, log=lambda line: None,
                                checkpoints=checkpoint.Checkpoints(str(tmp_path), first))
    assert first_report["steps"] == 2 and first_report["target_reached_at_step"] == 2
    resumed = _trainer(seed=1, amp=False)
    lines = []
    report = training.fit(resumed, train, test, max_steps=9, eval_interval=2, auc_target=0.01,
                          checkpoints=checkpoint.Checkpoints(str(tmp_path), resumed),
                          resume_from=str(tmp_path / "ckpt-00000002"), log=lines.append)
    assert report["steps"] == 2 and report["target_reached_at_step"] == 2
    assert report["evaluations"] == first_report["evaluations"] and report["auc"] is not None
    assert not any(line.startswith("epoch") for line in lines)  # no step trained


def _table(checkpoint_dir, rows):
    """A checkpoint's tf shards reassembled by hand: global row g is shard g % N, row g // N."""
    paths = sorted(os.listdir(os.path.join(checkpoint_dir, "tables")))
    shards = [np.load(os.path.join(checkpoint_dir, "tables", p)) for p in paths]
    assert paths == [f"embedding_table.rank{r}.npy" for r in range(len(shards))]
    table = np.full((rows, DIM), np.nan, np.float32)
    for rank, shard in enumerate(shards):
        table[rank::len(shards)] = shard
    assert not np.isnan(table).any()
    return table


def _checkpoint_names(directory):
    return sorted(name for name in os.listdir(directory) if name != checkpoint.LOCK_NAME)


def _final(directory):
    """The one checkpoint of a finished main.py run's directory -> (name, table, dense); the
    run's lock released (its record emptied)."""
    (name,) = _checkpoint_names(directory)
    assert os.path.getsize(os.path.join(directory, checkpoint.LOCK_NAME)) == 0
    path = os.path.join(directory, name)
    dense = np.load(os.path.join(path, "dense.npz"))
    return name, _table(path, sum(VOCAB)), [dense[k] for k in sorted(dense.files)]


def _run(data_dir, checkpoint_dir, steps, num_ranks, *extra):
    proc = run_main(f"--data_dir={data_dir}", *MAIN_FLAGS, f"--early_stop={steps}",
                 f"--checkpoint_dir={checkpoint_dir}", *extra, num_ranks=num_ranks)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_main_resumes_on_2_ranks_and_reshards_2_to_1_and_1_to_2(data_dir, tmp_path):
    """Through main.py: 8 steps on 2 ranks against 5 + resume + 3 (within 1e-6) and against 5
    on 2 ranks resumed on 1; 8 steps on 1 rank against 5 on 1 resumed on 2 (within the 2e-5 of
    1 against 2 ranks, as test_training's; the initial tables depend on the rank count).
    Step 6 ends epoch 0: the resumed runs cross it."""
    whole_log = _run(data_dir, tmp_path / "whole", 8, 2)
    _run(data_dir, tmp_path / "whole_one", 8, 1)
    _run(data_dir, tmp_path / "two", 5, 2)
    _run(data_dir, tmp_path / "one", 5, 1)
    shutil.copytree(tmp_path / "two", tmp_path / "two_to_one")
    shutil.copytree(tmp_path / "one", tmp_path / "one_at_5")
    # main.py shuffles the batches by default (--shuffle_seed=0); another seed cannot continue.
    shutil.copytree(tmp_path / "two", tmp_path / "two_seed_1")
    proc = run_main(f"--data_dir={data_dir}", *MAIN_FLAGS, "--early_stop=8", "--resume",
                    f"--checkpoint_dir={tmp_path / 'two_seed_1'}", "--shuffle_seed=1",
                    num_ranks=1)
    assert proc.returncode != 0
    assert "batch_shuffle_seed is 0, this run has 1: it cannot continue" in proc.stderr, \
        proc.stderr
    resumed_log = _run(data_dir, tmp_path / "two", 8, 2, "--resume")
    _run(data_dir, tmp_path / "two_to_one", 8, 1, "--resume")
    _run(data_dir, tmp_path / "one", 8, 2, "--resume")
    assert "step 5 (epoch 0, batch 5), 5 updates applied" in resumed_log
    assert "took over the lock" not in resumed_log  # the first run released it

    name, table, dense = _final(tmp_path / "whole")
    assert name == "ckpt-00000008"
    losses, resumed_losses = _losses(whole_log.splitlines()), _losses(resumed_log.splitlines())
    assert sorted(resumed_losses) == [6, 7, 8]
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(losses[step], abs=2e-5), step
    for run, reference, tolerance in [("two", "whole", 1e-6), ("two_to_one", "whole", 2e-5),
                                      ("one", "whole_one", 2e-5)]:
        _, expected_table, expected_dense = _final(tmp_path / reference)
        got_name, got_table, got_dense = _final(tmp_path / run)
        assert got_name == name, run
        np.testing.assert_allclose(got_table, expected_table, rtol=0, atol=tolerance,
                                   err_msg=run)
        for got, expected in zip(got_dense, expected_dense):
            np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance, err_msg=run)
    assert os.listdir(tmp_path / "two_to_one" / name / "tables") == ["embedding_table.rank0.npy"]
    # The 3 resumed steps moved the weights: agreeing runs are not runs that did nothing.
    _, table_one, dense_one = _final(tmp_path / "whole_one")
    _, table_at_5, dense_at_5 = _final(tmp_path / "one_at_5")
    assert np.abs(table_one - table_at_5).max() > 1e-3
    assert max(np.abs(a - b).max() for a, b in zip(dense_one, dense_at_5)) > 1e-3


def test_killed_save_leaves_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    trainer = _trainer(seed=0, amp=False)
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=0)
    checkpoints = checkpoint.Checkpoints(str(tmp_path), trainer)
    training.fit(trainer, train, None, max_steps=2, checkpoints=checkpoints, log=lambda l: None)
    good = checkpoints.latest()

    def dies_halfway(directory):
        open(os.path.join(directory, "embedding_table.rank0.npy"), "wb").write(b"\x93NUMPY")
        raise KeyboardInterrupt  # as a kill: nothing after this line of the save runs
    progress = {"evaluations": [], "target_step": None}
    monkeypatch.setattr(trainer.model.embedding, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(3, 0, 3, BATCHES_PER_EPOCH, progress)
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt-00000002", "ckpt-00000003.partial"]
    assert checkpoints.latest() == good  # the partial save is never read

    def disk_full(directory):
        raise OSError(28, "No space left on device", directory)
    monkeypatch.setattr(trainer.model.embedding, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"writing checkpoint .*ckpt-00000003.partial: \[Errno 28\] No "
                             r"space left on device"):
        checkpoints.save(3, 0, 3, BATCHES_PER_EPOCH, progress)
    # A failed save removes its .partial (the killed one's too, which it had replaced).
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt-00000002"]
    assert checkpoints.latest() == good
    monkeypatch.undo()

    def meta_disk_full(path, obj):  # the disk fills up while meta.json is written
        with open(f"{path}.tmp-{os.getpid()}", "w") as f:
            f.write("{")
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(checkpoint.fmt, "write_json_atomic", meta_disk_full)
    with pytest.raises(checkpoint.CheckpointError, match=r"committing checkpoint .*ckpt-"
                                                         r"00000003: .*No space left"):
        checkpoints.save(3, 0, 3, BATCHES_PER_EPOCH, progress)
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt-00000002"]
    monkeypatch.undo()
    (tmp_path / "ckpt-notes.txt").write_text("mine")  # not a name of ours: kept
    checkpoints.save(3, 0, 3, BATCHES_PER_EPOCH, progress)
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt-00000003", "ckpt-notes.txt"]


def test_checkpoints_another_run_cannot_continue_are_refused(data_dir, tmp_path):
    trainer = _trainer(seed=0, amp=False)
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=0)
    checkpoints = checkpoint.Checkpoints(str(tmp_path), trainer)
    training.fit(trainer, train, None, max_steps=1, checkpoints=checkpoints, log=lambda l: None)
    path = checkpoints.latest()
    meta = os.path.join(path, "meta.json")
    with pytest.raises(checkpoint.CheckpointError,
                       match=re.escape(f"{meta}: batches_per_epoch is 6, this run has 7")):
        checkpoints.load_meta(path, 7)
    other = training.Trainer(trainer.model, trainer.lr_schedule, 2 * GLOBAL_BATCH)
    with pytest.raises(checkpoint.CheckpointError, match="global_batch_size is 64, this run "
                                                         "has 128"):
        checkpoint.Checkpoints(str(tmp_path), other).load_meta(path, BATCHES_PER_EPOCH)
    # main.py: one line. While this process holds the directory, another run is refused
    # before any work, naming the holder; then a directory holding a checkpoint is not
    # overwritten without --resume.
    holder = json.load(open(tmp_path / checkpoint.LOCK_NAME))
    assert holder["pid"] == os.getpid()
    flags = [f"--data_dir={data_dir}", *MAIN_FLAGS, "--early_stop=2",
             f"--checkpoint_dir={tmp_path}"]
    proc = run_main_alone(*flags)
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"main.py: error: {tmp_path} is in use by another run (pid {os.getpid()} on host "
        f"{holder['host']}, started {holder['started']}): one run at a time writes a checkpoint "
        f"directory; wait for it to end, or use another directory")
    assert "embedding backend" not in proc.stdout  # refused before the model was made
    checkpoint.unlock_directory(str(tmp_path))
    assert os.path.getsize(tmp_path / checkpoint.LOCK_NAME) == 0  # released: the record gone
    proc = run_main_alone(*flags)
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"main.py: error: --checkpoint_dir={tmp_path} holds a checkpoint (ckpt-00000001), "
        f"which this run would replace: pass --resume to continue it, or another directory")
    assert "took over" not in proc.stdout
    assert sorted(os.listdir(tmp_path)) == [".lock", "ckpt-00000001"]


@pytest.fixture(scope="module")
def saved_at_4(data_dir, tmp_path_factory):
    """A checkpoint directory of a 1-rank run saved at step 4 (epoch 0, batch 4), unlocked."""
    directory = str(tmp_path_factory.mktemp("saved_at_4"))
    trainer = _trainer(seed=0, amp=False)
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=0)
    training.fit(trainer, train, None, max_steps=4, log=lambda line: None,
                 checkpoints=checkpoint.Checkpoints(directory, trainer))
    checkpoint.unlock_directory(directory)
    return directory


def _copy_checkpoints(source, directory):
    """A copy of a checkpoint directory without its lock file -> the copied ckpt-00000004."""
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns(checkpoint.LOCK_NAME))
    return os.path.join(directory, "ckpt-00000004")


def _edit_meta(path, edit):
    meta_path = os.path.join(path, "meta.json")
    meta = json.load(open(meta_path))
    edit(meta)
    json.dump(meta, open(meta_path, "w"))
    return meta_path


def _contents(directory):
    """{relative path: sha256} of every file under directory but the lock."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if name != checkpoint.LOCK_NAME:
                found[os.path.relpath(path, directory)] = hashlib.sha256(
                    open(path, "rb").read()).hexdigest()
    return found


def _resume_must_fail(data_dir, directory, path, message):
    """fit resumed from path must raise CheckpointError with message, before training, and
    leave every file of directory as it was (a save every step would otherwise replace it)."""
    before = _contents(directory)
    trainer, lines = _trainer(seed=1, amp=False), []
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=0)
    with pytest.raises(checkpoint.CheckpointError) as raised:
        training.fit(trainer, train, None, max_steps=9, log_interval=1, log=lines.append,
                     checkpoints=checkpoint.Checkpoints(directory, trainer), checkpoint_every=1,
                     resume_from=path)
    assert str(raised.value) == message
    assert not lines and int(trainer.step) == 0  # nothing resumed, nothing trained
    assert _contents(directory) == before
    checkpoint.unlock_directory(directory)


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m["position"].update(step=-5, epoch_step=-5),
     "position.step is -5, expected an integer >= 0"),
    (lambda m: m["position"].update(epoch_step=-5), "position.epoch_step is -5, expected an "
                                                    "integer in [0, 6]"),
    (lambda m: m["position"].update(epoch_step=1000), "position.epoch_step is 1000, expected "
                                                      "an integer in [0, 6]"),
    (lambda m: m.update(position=[4, 0, 4]), "no position.step"),
    (lambda m: m["position"].pop("epoch"), "no position.epoch"),
    (lambda m: m["position"].update(step="4"), "position.step is '4', expected an integer >= 0"),
    (lambda m: m["position"].update(step=True), "position.step is True, expected an integer "
                                                ">= 0"),
    (lambda m: m["position"].update(step=10, epoch=1),  # consistent, but 4 updates applied
     "trainer.step is 4 and 0 steps were skipped, but position.step is 10"),
    (lambda m: m["position"].update(step=5),
     "position.step is 5, but epoch 0 and epoch_step 4 at 6 batches per epoch make 4"),
    (lambda m: m["trainer"].update(step=3),
     "trainer.step is 3 and 0 steps were skipped, but position.step is 4"),
    (lambda m: m["trainer"].update(first_nonfinite_loss_step=2),
     "trainer.first_nonfinite_loss_step is 2, expected -1 (no checkpoint is saved after a "
     "non-finite loss)"),
    (lambda m: m["progress"].update(target_step=99),
     "progress.target_step is 99, expected an integer in [0, 4]"),
    (lambda m: m["progress"].update(evaluations=[{"step": 2, "auc": "0.7"}]),
     "progress.evaluations[0] is {'step': 2, 'auc': '0.7'}, expected {step: 0..4, auc: a "
     "number in [0, 1] or null}"),
    (lambda m: m.update(num_ranks=0), "num_ranks is 0, expected an integer >= 1"),
    (lambda m: m["files"].update({"../elsewhere": m["files"]["dense.npz"]}),
     "files['../elsewhere'] is {'bytes': <BYTES>, 'sha256': '<SHA256>'}, expected {bytes: size, "
     "sha256: 64 hex digits} of a file inside the checkpoint"),
    (lambda m: m.update(dense_shapes=[[13, 16]]), "dense_shapes [[13, 16]], this model has "
                                                  "<SHAPES>"),
])
def test_a_corrupted_meta_json_is_refused_before_anything_is_restored_or_deleted(
        data_dir, saved_at_4, tmp_path, edit, problem):
    """Every field is checked: a step of -5 used to train 5 batches, save ckpt-00000000 and
    delete the real checkpoint; an epoch_step past the epoch ended the run untrained."""
    path = _copy_checkpoints(saved_at_4, str(tmp_path / "ck"))
    original = json.load(open(os.path.join(path, "meta.json")))
    meta_path = _edit_meta(path, edit)
    problem = problem.replace("<BYTES>", str(original["files"]["dense.npz"]["bytes"])).replace(
        "<SHA256>", original["files"]["dense.npz"]["sha256"]).replace(
        "<SHAPES>", str(original["dense_shapes"]))
    _resume_must_fail(data_dir, str(tmp_path / "ck"), path, f"{meta_path}: {problem}")


def test_main_refuses_a_step_of_minus_5_with_one_line_and_keeps_the_checkpoint(
        data_dir, saved_at_4, tmp_path):
    directory = str(tmp_path / "ck")
    path = _copy_checkpoints(saved_at_4, directory)
    meta_path = _edit_meta(path, lambda m: m["position"].update(step=-5, epoch_step=-5))
    before = _contents(directory)
    proc = run_main_alone(f"--data_dir={data_dir}", *MAIN_FLAGS, "--early_stop=9",
                          "--checkpoint_every_steps=1", f"--checkpoint_dir={directory}",
                          "--resume", "--shuffle_batches=false")  # saved_at_4: file order
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"main.py: error: {meta_path}: position.step is -5, expected an integer >= 0")
    assert not re.search(r"epoch \d+ step", proc.stdout)  # no step trained
    assert _contents(directory) == before
    assert sorted(os.listdir(directory)) == [".lock", "ckpt-00000004"]


def _rewrite_npy_with_nan(path):
    shard = np.load(path)
    shard[3, 1] = np.nan
    np.save(path, shard)


def _rewrite_npz_with_nan(path):
    dense = dict(np.load(path))
    dense["dense_0"][0, 0] = np.nan
    with open(path, "wb") as f:
        np.savez(f, **dense)


def _record_again(path, name):
    """meta.json's size and sha256 of path/name brought up to date (a file edited with its
    checksum: only the content checks can catch it)."""
    with open(os.path.join(path, name), "rb") as f:
        data = f.read()
    _edit_meta(path, lambda m: m["files"].update({name: {
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}))


SHARD = "tables/embedding_table.rank0.npy"


@pytest.mark.parametrize("damage, problem", [
    (lambda p: os.remove(os.path.join(p, SHARD)), f"{{path}}/{SHARD}: missing (listed in "
                                                  f"{{meta}})"),
    (lambda p: open(os.path.join(p, "dense.npz"), "r+b").truncate(100),
     "{path}/dense.npz: 100 bytes, {meta} says {dense_bytes}"),
    (lambda p: open(os.path.join(p, "tables", "extra.npy"), "wb").close(),
     "{path}/tables/extra.npy: not listed in {meta}"),
    (lambda p: _rewrite_npy_with_nan(os.path.join(p, SHARD)),
     f"{{path}}/{SHARD}: sha256 NEW, {{meta}} says OLD: the file changed or is damaged"),
    (lambda p: _rewrite_npz_with_nan(os.path.join(p, "dense.npz")),
     "{path}/dense.npz: sha256 NEW, {meta} says OLD: the file changed or is damaged"),
    (lambda p: (_rewrite_npz_with_nan(os.path.join(p, "dense.npz")),
                _record_again(p, "dense.npz")),
     "{path}/dense.npz: dense_0 holds a non-finite value (nan or inf): refusing to train on it"),
    (lambda p: (_rewrite_npy_with_nan(os.path.join(p, SHARD)), _record_again(p, SHARD)),
     "{path}/tables: table 0 (rank 0's shard as restored) holds a non-finite value (nan or "
     "inf): refusing to train on it"),
])
def test_damaged_or_nonfinite_checkpoint_files_are_refused(data_dir, saved_at_4, tmp_path,
                                                           damage, problem):
    """Each file's size and sha256 are checked against meta.json, the weights for nan/inf:
    NaN written into dense.npz or a shard used to be restored, trained on and saved again."""
    path = _copy_checkpoints(saved_at_4, str(tmp_path / "ck"))
    original = json.load(open(os.path.join(path, "meta.json")))["files"]
    damage(path)
    name = SHARD if SHARD in problem else "dense.npz"
    new = (hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
           if os.path.exists(os.path.join(path, name)) else None)
    message = problem.format(path=path, meta=os.path.join(path, "meta.json"),
                             dense_bytes=original["dense.npz"]["bytes"]).replace(
        "NEW", str(new)).replace("OLD", original[name]["sha256"])
    _resume_must_fail(data_dir, str(tmp_path / "ck"), path, message)


class _WriterFailingAt:
    """A TensorBoard writer whose `fail_at`-th write raises ENOSPC, as a disk filling up."""

    def __init__(self, real, fail_at):
        self.real, self.fail_at, self.writes = real, fail_at, 0

    def as_default(self):
        self.writes += 1
        if self.writes >= self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")
        return self.real.as_default()

    def flush(self):
        self.real.flush()


def test_telemetry_failing_mid_run_warns_once_and_the_run_and_its_checkpoint_go_on(
        data_dir, tmp_path):
    """TensorBoard's disk fills up at the third write; the profiler's trace (steps 2-3) cannot
    be written (its directory lies under a regular file): each warns once, nothing else."""
    trainer = _trainer(seed=0, amp=False)
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=0)
    writer = _WriterFailingAt(tf.summary.create_file_writer(str(tmp_path / "tb")), fail_at=3)
    (tmp_path / "file.txt").write_text("x")
    lines = []
    report = training.fit(trainer, train, None, max_steps=5, log_interval=1, log=lines.append,
                          summary_writer=writer, profile=(1, 3, str(tmp_path / "file.txt" / "p")),
                          checkpoints=checkpoint.Checkpoints(str(tmp_path / "ck"), trainer))
    assert report["steps"] == 5 and int(trainer.step) == 5
    assert writer.writes == 3  # nothing more tried after the failure
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: the profiler failed ({tmp_path / 'file.txt'} is not a "
                        f"directory); it writes no more, training goes on",  # after step 3
                        "warning: TensorBoard failed ([Errno 28] No space left on device: "
                        "'events.out.tfevents'); it writes no more, training goes on"]
    assert not any(line.startswith("profiler trace") for line in lines)
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == [
        f"epoch 0 step {step}" for step in range(1, 6)]
    written = set()
    for path in glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            written |= {(value.tag, event.step) for value in event.summary.value}
    assert {step for tag, step in written if tag == "loss"} == {1, 2}
    ckpt = str(tmp_path / "ck" / "ckpt-00000005")
    assert checkpoint.Checkpoints(str(tmp_path / "ck"), trainer).load_meta(
        ckpt, BATCHES_PER_EPOCH)["position"]["step"] == 5
    checkpoint.unlock_directory(str(tmp_path / "ck"))


def _wait_for_checkpoint(directory, process, log_path, timeout=300):
    """Polls until directory holds a complete checkpoint; fails if `process` ended first."""
    deadline = time.monotonic() + timeout
    while not (os.path.isdir(directory) and any(re.fullmatch(r"ckpt-\d{8}", name)
                                                for name in os.listdir(directory))):
        assert process.poll() is None, "the first run ended: " + open(log_path).read()
        assert time.monotonic() < deadline, f"no checkpoint after {timeout} s"
        time.sleep(0.2)


def test_one_run_at_a_time_holds_a_checkpoint_directory(data_dir, tmp_path):
    """Two runs on one directory (2 CPU ranks each): the second, started while the first
    trains and saves, is refused at start with one line naming the directory and the holder,
    and leaves the first running. The first killed outright (its lock record left behind), a
    third run takes the lock over, says whose, resumes from the first's last checkpoint (its
    checksums verified) and ends with one checkpoint and the lock released."""
    directory = str(tmp_path / "ck")
    long_run = [f for f in MAIN_FLAGS if not f.startswith("--epochs")] + ["--epochs=100000"]
    cmd, env = main_command(f"--data_dir={data_dir}", *long_run, "--checkpoint_every_steps=2",
                            f"--checkpoint_dir={directory}")
    log_path = str(tmp_path / "first.log")
    with open(log_path, "w") as log:
        first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    holder = None
    try:
        _wait_for_checkpoint(directory, first, log_path)
        holder = json.load(open(os.path.join(directory, checkpoint.LOCK_NAME)))
        second = run_main(f"--data_dir={data_dir}", *MAIN_FLAGS, "--early_stop=3", "--seed=1",
                          f"--checkpoint_dir={directory}", "--resume")
        assert first.poll() is None  # the first run goes on
    finally:
        # Rank 0 (the holder) first: killed with horovodrun, whose middlemen then SIGTERM the
        # ranks, it could see rank 1 end first and exit on its own, releasing the lock (the
        # takeover line was missing once in a full test run). Then horovodrun; rank 1 follows.
        if holder is not None:
            os.kill(holder["pid"], signal.SIGKILL)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode != 0
    ours = [line for line in (second.stdout + second.stderr).splitlines()
            if "main.py: error:" in line]
    assert ours == [f"[0]<stderr>:main.py: error: {directory} is in use by another run (pid "
                    f"{holder['pid']} on host {holder['host']}, started {holder['started']}): "
                    f"one run at a time writes a checkpoint directory; wait for it to end, or "
                    f"use another directory"], second.stdout + second.stderr
    assert "embedding backend" not in second.stdout  # refused before any work
    _wait_for_exit(holder["pid"])
    latest = max(int(name[5:13]) for name in os.listdir(directory)
                 if re.fullmatch(r"ckpt-\d{8}", name))
    third = run_main(f"--data_dir={data_dir}", *long_run, f"--early_stop={latest + 2}",
                     f"--checkpoint_dir={directory}", "--resume")
    assert third.returncode == 0, third.stdout + third.stderr
    assert (f"{directory}: took over the lock of pid {holder['pid']} on host {holder['host']}, "
            f"started {holder['started']}, which ended without releasing it") in third.stdout
    assert f"resumed from {directory}/ckpt-{latest:08d}: step {latest}" in third.stdout
    assert sorted(os.listdir(directory)) == [".lock", f"ckpt-{latest + 2:08d}"]
    assert os.path.getsize(os.path.join(directory, checkpoint.LOCK_NAME)) == 0


def _wait_for_exit(pid, timeout=60):
    """Waits until no process `pid` runs (the killed run's rank 0, which held the lock)."""
    deadline = time.monotonic() + timeout
    while checkpoint.fmt.process_exists(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout} s"
        time.sleep(0.2)


def test_sok_backend_saves_through_sok_dump_and_restores_through_sok_load(tmp_path,
                                                                          monkeypatch):
    """On SOK's rules (the stand-in: files named after the variables, load assigning in file
    order): the named table round-trips; another rank count is refused."""
    import sok_stand_in
    # The stand-in goes into sys.modules: put back what was there (nothing, on CPU) after.
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", None)
    sok = sok_stand_in.install()
    full = np.random.default_rng(2).standard_normal((sum(VOCAB), DIM)).astype(np.float32)
    saved = embedding.create_embedding(
        "sok", VOCAB, DIM, initializer=lambda rows: tf.gather(tf.constant(full), rows))
    directory = str(tmp_path / "sok")
    saved.save(directory)
    assert os.listdir(directory) == ["sok_table_0.npz"]  # named after the variable
    sok_stand_in.install()  # a new process's SOK
    restored = embedding.create_embedding("sok", VOCAB, DIM)
    restored.restore(directory, 1)
    (table,) = restored.variables
    np.testing.assert_array_equal(table.numpy(), full)
    with pytest.raises(ValueError, match="saved by the sok backend on 2 ranks; sok.load"):
        restored.restore(directory, 2)
    assert sok.init_calls == 1


def _sok_dump(checkpoint_dir):
    """sok.dump's files -> {table: rows in key order}. SOK 2.1.0's layout (dump_load.py): a
    296-byte header, then the keys (int64) or the rows (float32) gathered from the ranks."""
    tables = os.path.join(checkpoint_dir, "tables")
    found = {}
    for name in sorted(os.listdir(tables)):
        if name.endswith("-key"):
            keys = np.fromfile(os.path.join(tables, name), np.int64, offset=296)
            rows = np.fromfile(os.path.join(tables, name[:-4] + "-weight"), np.float32,
                               offset=296).reshape(len(keys), DIM)
            assert np.array_equal(np.sort(keys), np.arange(len(keys))), name
            found[name[:-4]] = rows[np.argsort(keys)]
    return found


if embedding.resolve_backend("auto")[0] == "sok":  # SOK 2.x imports: the GPU machine
    def test_real_sok_resumes_through_sok_dump_and_load(data_dir, tmp_path):
        """The real SOK, one rank: 8 steps against 5 + sok.dump + sok.load + 3, per table."""
        _run(data_dir, tmp_path / "whole", 8, 1, "--embedding=sok")
        _run(data_dir, tmp_path / "part", 5, 1, "--embedding=sok")
        (name_at_5,) = _checkpoint_names(tmp_path / "part")
        at_5 = _sok_dump(os.path.join(tmp_path / "part", name_at_5))
        log = _run(data_dir, tmp_path / "part", 8, 1, "--embedding=sok", "--resume")
        assert "step 5 (epoch 0, batch 5)" in log
        (name,) = _checkpoint_names(tmp_path / "whole")
        assert _checkpoint_names(tmp_path / "part") == [name] == ["ckpt-00000008"]
        whole = _sok_dump(os.path.join(tmp_path / "whole", name))
        resumed = _sok_dump(os.path.join(tmp_path / "part", name))
        assert sorted(whole) == sorted(resumed) == ["sok_table_0"]
        assert len(whole["sok_table_0"]) == sum(VOCAB)
        for table, rows in whole.items():
            np.testing.assert_allclose(resumed[table], rows, rtol=0, atol=1e-6, err_msg=table)
        assert max(np.abs(whole[t] - at_5[t]).max() for t in whole) > 1e-3  # steps 6-8 moved
        dense = [np.load(os.path.join(tmp_path / run, name, "dense.npz")) for run in
                 ("whole", "part")]
        for key in dense[0].files:
            np.testing.assert_allclose(dense[1][key], dense[0][key], rtol=0, atol=1e-6)
