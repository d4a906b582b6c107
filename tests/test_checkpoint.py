"""checkpoint.py: a run saved and resumed equals the run never interrupted (in this process on
one rank with AMP; through main.py on 2 ranks, and re-sharded 2 -> 1 and 1 -> 2), a killed
save leaves the last good checkpoint, bad checkpoints are refused with the file and field, and
the sok backend goes through sok.dump / sok.load (SOK's rules: tests/sok_stand_in.py)."""

import os
import re
import shutil
import subprocess
import sys

import horovod.tensorflow as hvd
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, run_main
import checkpoint
import dataset
import embedding
import model as dlrm
import split_bin
import synthetic_data
import trainer as training

hvd.init()

VOCAB = [7, 300, 41, 2, 90, 1000] + [13, 29, 3, 55, 120, 17, 9, 64, 200, 31, 5, 77,
                                     11, 150, 23, 8, 44, 6, 19, 250]
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
    differently + 3 (epoch 1): same weights, tables, schedule position, loss scale state."""
    train = dataset.SplitDataset(os.path.join(data_dir, "train"), GLOBAL_BATCH, prefetch=2)
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
    assert os.listdir(tmp_path / "ck") == ["ckpt-00000009"]


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


def _final(directory):
    (name,) = os.listdir(directory)
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
    resumed_log = _run(data_dir, tmp_path / "two", 8, 2, "--resume")
    _run(data_dir, tmp_path / "two_to_one", 8, 1, "--resume")
    _run(data_dir, tmp_path / "one", 8, 2, "--resume")
    assert "step 5 (epoch 0, batch 5), 5 updates applied" in resumed_log

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
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000002", "ckpt-00000003.partial"]
    assert checkpoints.latest() == good  # the partial save is never read

    def disk_full(directory):
        raise OSError(28, "No space left on device", directory)
    monkeypatch.setattr(trainer.model.embedding, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"writing checkpoint .*ckpt-00000003.partial: \[Errno 28\] No "
                             r"space left on device"):
        checkpoints.save(3, 0, 3, BATCHES_PER_EPOCH, progress)
    assert checkpoints.latest() == good
    monkeypatch.undo()
    checkpoints.save(3, 0, 3, BATCHES_PER_EPOCH, progress)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000003"]  # and the next save removes it


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
    os.remove(os.path.join(path, "tables", "embedding_table.rank0.npy"))
    with pytest.raises(checkpoint.CheckpointError, match="embedding_table.rank0.npy"):
        checkpoints.restore(path, checkpoints.load_meta(path, BATCHES_PER_EPOCH))
    dense = os.path.join(path, "dense.npz")
    with open(dense, "r+b") as f:
        f.truncate(100)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(f"{dense}: unreadable")):
        checkpoints.restore(path, checkpoints.load_meta(path, BATCHES_PER_EPOCH))
    # main.py: one line; a directory holding a checkpoint is not overwritten without --resume.
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--data_dir={data_dir}",
                           *MAIN_FLAGS, "--early_stop=2", f"--checkpoint_dir={tmp_path}"],
                          cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"main.py: error: --checkpoint_dir={tmp_path} holds a checkpoint (ckpt-00000001), "
        f"which this run would replace: pass --resume to continue it, or another directory")
    assert os.listdir(tmp_path) == ["ckpt-00000001"]


def test_sok_backend_saves_through_sok_dump_and_restores_through_sok_load(tmp_path,
                                                                          monkeypatch):
    """On SOK's rules (the stand-in: files named after the variables, load assigning in file
    order): the 26 named tables round-trip; another rank count is refused."""
    import sok_stand_in
    # The stand-in goes into sys.modules: put back what was there (nothing, on CPU) after.
    monkeypatch.setitem(sys.modules, "sparse_operation_kit", None)
    for compress in (False, True):
        sok = sok_stand_in.install()
        full = np.random.default_rng(2).standard_normal((sum(VOCAB), DIM)).astype(np.float32)
        saved = embedding.create_embedding(
            "sok", VOCAB, DIM, compress=compress,
            initializer=lambda rows: tf.gather(tf.constant(full), rows))
        directory = str(tmp_path / f"c{int(compress)}")
        saved.save(directory)
        assert len(os.listdir(directory)) == len(saved.tables) == (1 if compress else 26)
        sok_stand_in.install()  # a new process's SOK
        restored = embedding.create_embedding("sok", VOCAB, DIM, compress=compress)
        restored.restore(directory, 1)
        for got, expected in zip(restored.tables, saved.tables):
            np.testing.assert_array_equal(got.numpy(), expected.numpy())
        offsets = embedding.feature_offsets(VOCAB)
        np.testing.assert_array_equal(restored.tables[-1].numpy(),
                                      full if compress else full[offsets[-1]:])
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
        (name_at_5,) = os.listdir(tmp_path / "part")
        at_5 = _sok_dump(os.path.join(tmp_path / "part", name_at_5))
        log = _run(data_dir, tmp_path / "part", 8, 1, "--embedding=sok", "--resume")
        assert "step 5 (epoch 0, batch 5)" in log
        (name,) = os.listdir(tmp_path / "whole")
        assert os.listdir(tmp_path / "part") == [name] == ["ckpt-00000008"]
        whole = _sok_dump(os.path.join(tmp_path / "whole", name))
        resumed = _sok_dump(os.path.join(tmp_path / "part", name))
        assert sorted(whole) == sorted(resumed) == sorted(f"sok_table_{i}_0" for i in range(26))
        assert [len(whole[f"sok_table_{i}_0"]) for i in range(26)] == VOCAB
        for table, rows in whole.items():
            np.testing.assert_allclose(resumed[table], rows, rtol=0, atol=1e-6, err_msg=table)
        assert max(np.abs(whole[t] - at_5[t]).max() for t in whole) > 1e-3  # steps 6-8 moved
        dense = [np.load(os.path.join(tmp_path / run, name, "dense.npz")) for run in
                 ("whole", "part")]
        for key in dense[0].files:
            np.testing.assert_allclose(dense[1][key], dense[0][key], rtol=0, atol=1e-6)
