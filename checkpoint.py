"""Checkpoints of a training run: saved every N steps and at the end, resumed exactly.

    DIR/ckpt-00001000/     one checkpoint, named after its step (batches trained so far)
        meta.json          where the run was (step, epoch, batch in the epoch), the trainer's
                           state (updates applied: the LR schedule's position; the AMP loss
                           scale and its counters), what a resumed run must share with it
                           (global batch, batches per epoch, vocab sizes, dim, table layout,
                           dense shapes) and the number of ranks that saved it
        dense.npz          the dense variables (rank 0's; every rank holds the same)
        tables/            the embedding backend's files (embedding.py): every rank's shard
                           (tf), or sok.dump's (sok)

Atomic: a checkpoint is written under ckpt-XXXXXXXX.partial/ and renamed by rank 0 once every
rank has written its part and meta.json (last) is in; only then are older checkpoints removed.
Each stage ends with the ranks agreeing that all of it succeeded: an I/O error on one rank (a
full disk) stops every rank with a CheckpointError instead of leaving the others waiting.
A save killed at any point leaves the previous checkpoint the latest: .partial directories are
never read, and the next save removes them. Every rank must see DIR (on several hosts, a
shared filesystem): each writes its shard there, and a resume on another number of ranks reads
the shards of all.
"""

import json
import os
import re
import shutil

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf

import data_format as fmt

_NAME = re.compile(r"ckpt-(\d{8})$")
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint this run cannot continue; the message names the file, field and values."""


def _together(stage, what, work):
    """Runs work() on this rank, then every rank learns whether all succeeded (one allreduce
    named after `stage`, so no rank waits on one that failed) -> work's result. If any rank failed, CheckpointError
    on every rank: the failing rank's own message there, a pointer to it on the others."""
    error = None
    try:
        result = work()
    except Exception as caught:  # an I/O error, a bad file: not a kill (KeyboardInterrupt)
        error, result = caught, None
    failed = int(hvd.allreduce(tf.constant(0 if error is None else 1, tf.int32), op=hvd.Sum,
                               name=f"checkpoint_{stage}"))
    if isinstance(error, CheckpointError):
        raise error
    if error is not None:
        raise CheckpointError(f"{what}: {error}") from error
    if failed:
        raise CheckpointError(f"{what}: failed on {failed} other rank(s), which say why")
    return result


def _fsync_directory(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """The checkpoints of `trainer` (a trainer.Trainer, its model built) in `directory`."""

    def __init__(self, directory, trainer):
        self.directory = directory
        self.trainer = trainer

    def _must_match(self, batches_per_epoch):
        """What a resumed run must share with the saved one (JSON values)."""
        model = self.trainer.model
        return {"global_batch_size": self.trainer.global_batch,
                "batches_per_epoch": batches_per_epoch,
                "vocab_sizes": list(model.vocab_sizes),
                "embedding_dim": model.embedding.dim,
                "table_layout": model.embedding.checkpoint_layout}

    def latest(self):
        """-> the newest complete checkpoint's path, or None."""
        if not os.path.isdir(self.directory):
            return None
        steps = [int(m.group(1)) for m in map(_NAME.match, os.listdir(self.directory)) if m]
        return os.path.join(self.directory, f"ckpt-{max(steps):08d}") if steps else None

    def load_meta(self, path, batches_per_epoch):
        """-> path's meta.json (its "position": step, epoch, epoch_step; "progress": fit's);
        CheckpointError naming the file, the field and both values where this run cannot
        continue it."""
        meta_path = os.path.join(path, "meta.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({error})") \
                from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: format_version {meta.get('format_version')!r}, "
                                  f"this program reads {FORMAT_VERSION}")
        for field in ("num_ranks", "position", "trainer", "progress", "dense_shapes"):
            if field not in meta:
                raise CheckpointError(f"{meta_path}: no {field}")
        for field, value in self._must_match(batches_per_epoch).items():
            if meta.get(field) != value:
                raise CheckpointError(f"{meta_path}: {field} is {meta.get(field)!r}, this run "
                                      f"has {value!r}: it cannot continue that checkpoint")
        return meta

    def restore(self, path, meta):
        """Loads path's dense variables, trainer state and tables (meta: load_meta's; the model
        built). A collective: every rank calls it."""
        _together("restore", f"restoring {path}", lambda: self._restore(path, meta))

    def _restore(self, path, meta):
        trainer = self.trainer
        variables = trainer.model.dense_variables
        shapes = [list(v.shape) for v in variables]
        if meta["dense_shapes"] != shapes:
            raise CheckpointError(f"{os.path.join(path, 'meta.json')}: dense_shapes "
                                  f"{meta['dense_shapes']}, this model has {shapes}")
        dense_path = os.path.join(path, "dense.npz")
        try:
            dense = np.load(dense_path)
            values = [dense[f"dense_{i}"] for i in range(len(variables))]
        except Exception as error:  # missing, truncated (not a zip), a variable absent
            raise CheckpointError(f"{dense_path}: unreadable ({error!r})") from None
        for i, (variable, value) in enumerate(zip(variables, values)):
            if list(value.shape) != shapes[i]:
                raise CheckpointError(f"{dense_path}: dense_{i} is {list(value.shape)}, this "
                                      f"model's is {shapes[i]}")
        for variable, value in zip(variables, values):
            variable.assign(value)
        state = meta["trainer"]
        trainer.step.assign(state["step"])
        trainer.first_nonfinite_loss_step.assign(state["first_nonfinite_loss_step"])
        if trainer.loss_scale is not None and state["loss_scale"] is not None:
            trainer.loss_scale.scale.assign(state["loss_scale"]["scale"])
            trainer.loss_scale.finite_steps.assign(state["loss_scale"]["finite_steps"])
            trainer.loss_scale.skipped_steps.assign(state["loss_scale"]["skipped_steps"])
        # A missing or mis-shaped shard names its file; sok's rank-count rule says why.
        trainer.model.embedding.restore(os.path.join(path, "tables"), meta["num_ranks"])

    def save(self, step, epoch, epoch_step, batches_per_epoch, progress):
        """Writes the checkpoint of `step` (a collective: every rank calls it); -> its path.
        progress: JSON values of the loop's own to keep (evaluations so far, ...)."""
        trainer, rank = self.trainer, hvd.rank()
        final = os.path.join(self.directory, f"ckpt-{step:08d}")
        partial = final + ".partial"
        tables = os.path.join(partial, "tables")

        def start():
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)  # a killed save of the same step
                os.makedirs(tables)

        def write():
            trainer.model.embedding.save(tables)
            if rank == 0:
                with open(os.path.join(partial, "dense.npz"), "wb") as f:
                    np.savez(f, **{f"dense_{i}": v.numpy()
                                   for i, v in enumerate(trainer.model.dense_variables)})
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_directory(tables)

        def commit():
            if rank != 0:
                return
            loss_scale = trainer.loss_scale
            meta = dict(
                format_version=FORMAT_VERSION, num_ranks=hvd.size(),
                position={"step": step, "epoch": epoch, "epoch_step": epoch_step},
                trainer={"step": int(trainer.step.numpy()),
                         "first_nonfinite_loss_step":
                             int(trainer.first_nonfinite_loss_step.numpy()),
                         "loss_scale": None if loss_scale is None else {
                             "scale": float(loss_scale.scale.numpy()),
                             "finite_steps": int(loss_scale.finite_steps.numpy()),
                             "skipped_steps": int(loss_scale.skipped_steps.numpy())}},
                progress=progress,
                dense_shapes=[list(v.shape) for v in trainer.model.dense_variables],
                **self._must_match(batches_per_epoch))
            fmt.write_json_atomic(os.path.join(partial, "meta.json"), meta)
            _fsync_directory(partial)
            os.rename(partial, final)
            _fsync_directory(self.directory)
            for name in os.listdir(self.directory):  # older checkpoints, stale partial saves
                path = os.path.join(self.directory, name)
                if name.startswith("ckpt-") and path != final:
                    shutil.rmtree(path, ignore_errors=True)

        _together("start", f"starting checkpoint {partial}", start)
        _together("write", f"writing checkpoint {partial}", write)  # every rank's part on disk
        _together("commit", f"committing checkpoint {final}", commit)
        return final
