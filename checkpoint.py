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


def _barrier(name):
    hvd.allreduce(tf.constant(0.0), name=f"checkpoint_{name}")


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
        """-> path's meta.json (its "position": step, epoch, epoch_step); CheckpointError naming the
        file, the field and both values where this run cannot continue it."""
        meta_path = os.path.join(path, "meta.json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({error})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: format_version {meta.get('format_version')!r}, "
                             f"this program reads {FORMAT_VERSION}")
        for field, value in self._must_match(batches_per_epoch).items():
            if meta.get(field) != value:
                raise CheckpointError(f"{meta_path}: {field} is {meta.get(field)!r}, this run has "
                                 f"{value!r}: it cannot continue that checkpoint")
        return meta

    def restore(self, path, meta):
        """Loads path's dense variables, trainer state and tables (meta: load_meta's; the model
        built). A collective: every rank calls it."""
        trainer = self.trainer
        variables = trainer.model.dense_variables
        shapes = [list(v.shape) for v in variables]
        if meta["dense_shapes"] != shapes:
            raise CheckpointError(f"{os.path.join(path, 'meta.json')}: dense_shapes "
                             f"{meta['dense_shapes']}, this model has {shapes}")
        try:
            dense = np.load(os.path.join(path, "dense.npz"))
            values = [dense[f"dense_{i}"] for i in range(len(variables))]
        except (OSError, ValueError, KeyError) as error:
            raise CheckpointError(f"{os.path.join(path, 'dense.npz')}: unreadable ({error})") \
                from None
        for variable, value in zip(variables, values):
            variable.assign(value)
        state = meta["trainer"]
        trainer.step.assign(state["step"])
        trainer.first_nonfinite_loss_step.assign(state["first_nonfinite_loss_step"])
        if trainer.loss_scale is not None and state["loss_scale"] is not None:
            trainer.loss_scale.scale.assign(state["loss_scale"]["scale"])
            trainer.loss_scale.finite_steps.assign(state["loss_scale"]["finite_steps"])
            trainer.loss_scale.skipped_steps.assign(state["loss_scale"]["skipped_steps"])
        try:
            trainer.model.embedding.restore(os.path.join(path, "tables"), meta["num_ranks"])
        except (OSError, ValueError) as error:  # a missing or mis-shaped shard; sok's rule
            raise CheckpointError(str(error)) from None
        _barrier("restored")

    def save(self, step, epoch, epoch_step, batches_per_epoch):
        """Writes the checkpoint of `step` (a collective: every rank calls it); -> its path."""
        trainer, rank = self.trainer, hvd.rank()
        final = os.path.join(self.directory, f"ckpt-{step:08d}")
        partial = final + ".partial"
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)  # a killed save of the same step
            os.makedirs(os.path.join(partial, "tables"))
        _barrier("started")
        trainer.model.embedding.save(os.path.join(partial, "tables"))
        if rank == 0:
            variables = trainer.model.dense_variables
            with open(os.path.join(partial, "dense.npz"), "wb") as f:
                np.savez(f, **{f"dense_{i}": v.numpy() for i, v in enumerate(variables)})
                f.flush()
                os.fsync(f.fileno())
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
                dense_shapes=[list(v.shape) for v in variables],
                **self._must_match(batches_per_epoch))
        _barrier("written")  # every rank's shard is on disk
        if rank == 0:
            fmt.write_json_atomic(os.path.join(partial, "meta.json"), meta)
            _fsync_directory(partial)
            os.rename(partial, final)
            _fsync_directory(self.directory)
            for name in os.listdir(self.directory):  # older checkpoints, stale partial saves
                path = os.path.join(self.directory, name)
                if name.startswith("ckpt-") and path != final:
                    shutil.rmtree(path, ignore_errors=True)
        _barrier("committed")
        return final
