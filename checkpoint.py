"""Checkpoints of a training run: saved every N steps and at the end, resumed exactly.

    DIR/.lock              the lock: one run at a time writes DIR (lock_directory)
    DIR/ckpt-00001000/     one checkpoint, named after its step (batches trained so far)
        meta.json          where the run was (step, epoch, batch in the epoch), the trainer's
                           state (updates applied: the LR schedule's position; the AMP loss
                           scale and its counters), what a resumed run must share with it
                           (global batch, batches per epoch, vocab sizes, dim, table layout,
                           dense shapes), the number of ranks that saved it, and every other
                           file's size and sha256
        dense.npz          the dense variables (rank 0's; every rank holds the same)
        tables/            the embedding backend's files (embedding.py): every rank's shard
                           (tf), or sok.dump's (sok)

One writer: a run takes DIR's lock before anything else (lock_directory) and holds it until it
ends; a second run on DIR is refused, naming the holder. So a save may remove what it finds
of earlier runs: only a dead run can have left it.

Atomic: a checkpoint is written under ckpt-XXXXXXXX.partial/, its files read back and hashed
(spread over the ranks), meta.json written last and read back, then renamed by rank 0; only
then are older checkpoints removed. Each stage ends with the ranks agreeing that all of it
succeeded: an I/O error on one rank (a full disk) stops every rank with a CheckpointError
carrying that rank's message, and the .partial is removed. A save killed at any point leaves
the previous checkpoint the latest: .partial directories are never read, and the next save
removes them.

Checked at resume, before anything is restored or trained: every field of meta.json (types,
ranges, the position within the epoch and against the step and the updates applied), every
file's size and sha256 against meta.json (spread over the ranks), the dense weights and
tables finite after loading.

Every rank must see DIR (on several hosts, a shared filesystem): each writes its shard there,
and a resume on another number of ranks reads the shards of all.
"""

import atexit
import datetime
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import uuid

import horovod.tensorflow as hvd
import numpy as np

import data_format as fmt
import embedding as embeddings

_NAME = re.compile(r"ckpt-(\d{8})$")
_OURS = re.compile(r"ckpt-\d{8}(\.partial)?$")  # what a save may remove of earlier runs
FORMAT_VERSION = 2  # 2: meta.json holds every file's size and sha256
LOCK_NAME = ".lock"
META_NAME = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint this run cannot write or continue; the message names the file, the field
    and the values."""


def _together(stage, what, work):
    """Runs work() on this rank, then every rank learns every rank's outcome (one allgather
    named after `stage`, so no rank waits on one that failed) -> the list of every rank's
    result, in rank order. If any rank failed, CheckpointError on every rank, with the first
    failing rank's own message."""
    error = None
    try:
        outcome = (None, work())
    except Exception as caught:  # an I/O error, a bad file: not a kill (KeyboardInterrupt)
        error = caught
        message = str(caught) if isinstance(caught, CheckpointError) else f"{what}: {caught}"
        outcome = (message, None)
    outcomes = hvd.allgather_object(outcome, name=f"checkpoint_{stage}")
    failures = [(rank, message) for rank, (message, _) in enumerate(outcomes) if message]
    if failures:
        rank, message = failures[0]
        suffix = "" if hvd.size() == 1 else f" (rank {rank})"
        raise CheckpointError(f"{message}{suffix}") from error
    return [result for _, result in outcomes]


class DirectoryLock:
    """An exclusive flock on DIRECTORY/.lock, held by this process until release() or its end:
    the kernel drops it when the process dies, however it dies. While held, the file holds the
    holder's record {"host", "pid", "started", "run"}; release() empties it, so a record found
    on taking the lock was left by a holder that died without releasing it (.taken_over).

    Raises CheckpointError naming the holder if another process holds it, OSError where the
    directory or the file cannot be made or written."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(
                    f"{directory} is in use by another run ({_describe(_read_record(self._fd))})"
                    f": one run at a time writes a checkpoint directory; wait for it to end, "
                    f"or use another directory") from None
            self.taken_over = _read_record(self._fd)  # a dead holder's, or None
            self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                           "started": datetime.datetime.now().astimezone().isoformat(
                               timespec="seconds"),
                           "run": uuid.uuid4().hex}
            _write_record(self._fd, self.record)
        except BaseException:
            os.close(self._fd)
            raise
        atexit.register(self.release)

    def release(self):
        """Empties the record and drops the lock (a second call does nothing)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # the record stays: the next holder will call it a dead one's
        os.close(self._fd)
        self._fd = None


def _read_record(fd):
    """The lock file's holder record (dict), None when empty, {} when unreadable."""
    data = os.pread(fd, 4096, 0)
    if not data:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(fd, record):
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)


def _describe(record):
    if not record:
        return "a holder that has not written its record yet" if record is None else \
            "a holder whose record is unreadable"
    return (f"pid {record.get('pid')} on host {record.get('host')}, started "
            f"{record.get('started')}")


_HELD = {}  # realpath of a directory -> this process's DirectoryLock of it (None off rank 0)


def lock_directory(directory, log=print):
    """One writer per checkpoint directory, taken before anything is written (a collective:
    every rank calls it; again for the same directory, it returns at once).

    Rank 0 takes DIRECTORY's DirectoryLock (creating the directory) and keeps it for the
    process's life; the other ranks wait for its verdict (a broadcast), so no rank writes
    before the lock is held. On one machine that one lock excludes every process of another
    run: a second run's rank 0 fails to take it. Then every rank checks its own view: that it
    reads rank 0's record in DIRECTORY/.lock (the same directory; on several hosts only a
    shared file system gives that) and that the directory takes a new file. A lock whose holder
    died is taken over, and `log` (rank 0) says whose. What this does not cover: if rank 0
    dies while other ranks of its run still write, the lock is free until the launcher has
    ended them (horovodrun does at the first exit); across hosts, flock is only as good as the
    shared file system's locking (README).

    Raises CheckpointError on every rank: the holder's record, or the rank's I/O error."""
    key = os.path.realpath(directory)
    if key in _HELD:
        return
    verdict = None
    if hvd.rank() == 0:
        try:
            lock = DirectoryLock(directory)
            verdict = (None, lock.record["run"], lock.taken_over)
        except (CheckpointError, OSError) as error:
            lock, verdict = None, (f"{error}" if isinstance(error, CheckpointError) else
                                   f"{directory}: cannot write there ({error})", None, None)
    refusal, run, taken_over = hvd.broadcast_object(verdict, root_rank=0,
                                                    name="checkpoint_lock")
    if refusal:
        raise CheckpointError(refusal)
    if hvd.rank() == 0 and taken_over is not None:
        log(f"{directory}: took over the lock of {_describe(taken_over)}, which ended without "
            f"releasing it")
    try:
        _together("lock_view", f"{directory}: cannot write there",
                  lambda: _check_view(directory, run))
    except CheckpointError:
        if hvd.rank() == 0:
            lock.release()
        raise
    _HELD[key] = lock if hvd.rank() == 0 else None


def _check_view(directory, run):
    """Raises CheckpointError unless this rank reads rank 0's lock record (`run`) in directory
    and can write there."""
    path = os.path.join(directory, LOCK_NAME)
    try:
        with open(path) as f:
            seen = json.load(f).get("run")
    except (OSError, ValueError, AttributeError):
        seen = None
    if seen != run:
        raise CheckpointError(f"{path}: rank {hvd.rank()} does not see rank 0's lock there: "
                              f"every rank must see the same checkpoint directory (on several "
                              f"hosts, a shared file system)")
    fmt.check_writable_directory(directory)


def unlock_directory(directory):
    """Releases what lock_directory took for directory in this process (no collective)."""
    lock = _HELD.pop(os.path.realpath(directory), None)
    if lock is not None:
        lock.release()


def _file_record(path):
    """-> {"bytes": size, "sha256": hex digest} of the file at path, read in blocks."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": digest}


def _checkpoint_files(path):
    """-> the sorted paths, relative to path, of a checkpoint's files but meta.json."""
    found = []
    for root, _, names in os.walk(path):
        found += [os.path.relpath(os.path.join(root, name), path) for name in names]
    return sorted(name for name in found if name != META_NAME)


def _hash_share(path):
    """-> {relative name: _file_record} of this rank's share (every size()-th file) of path's
    files."""
    names = _checkpoint_files(path)[hvd.rank()::hvd.size()]
    return {name: _file_record(os.path.join(path, name)) for name in names}


def _verify_share(path, files):
    """Raises CheckpointError unless path's files are exactly those of `files` (meta.json's:
    name -> size, sha256), each of its size; this rank's share also of its sha256."""
    meta_path = os.path.join(path, META_NAME)
    present = _checkpoint_files(path)
    missing, unlisted = sorted(set(files) - set(present)), sorted(set(present) - set(files))
    if missing:
        raise CheckpointError(f"{os.path.join(path, missing[0])}: missing (listed in "
                              f"{meta_path})")
    if unlisted:
        raise CheckpointError(f"{os.path.join(path, unlisted[0])}: not listed in {meta_path}")
    for name in present:
        size = os.path.getsize(os.path.join(path, name))
        if size != files[name]["bytes"]:
            raise CheckpointError(f"{os.path.join(path, name)}: {size} bytes, {meta_path} "
                                  f"says {files[name]['bytes']}")
    for name, record in _hash_share(path).items():
        if record["sha256"] != files[name]["sha256"]:
            raise CheckpointError(f"{os.path.join(path, name)}: sha256 {record['sha256']}, "
                                  f"{meta_path} says {files[name]['sha256']}: the file "
                                  f"changed or is damaged")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _field(meta, meta_path, key):
    """meta's value at the dotted key ("position.step"); CheckpointError if absent."""
    value = meta
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise CheckpointError(f"{meta_path}: no {key}")
        value = value[part]
    return value


def _integer(meta, meta_path, key, low, high=None):
    """meta's integer at key, checked to lie in [low, high] (high None: no bound)."""
    value = _field(meta, meta_path, key)
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise CheckpointError(f"{meta_path}: {key} is {value!r}, expected an integer {bound}")
    return value


def _check_position(meta, meta_path, batches_per_epoch):
    """position: step, epoch, epoch_step within the epoch and agreeing with one another and
    with the updates applied (+ the steps AMP skipped). -> step."""
    step = _integer(meta, meta_path, "position.step", 0)
    epoch = _integer(meta, meta_path, "position.epoch", 0)
    epoch_step = _integer(meta, meta_path, "position.epoch_step", 0, batches_per_epoch)
    if step != epoch * batches_per_epoch + epoch_step:
        raise CheckpointError(f"{meta_path}: position.step is {step}, but epoch {epoch} and "
                              f"epoch_step {epoch_step} at {batches_per_epoch} batches per "
                              f"epoch make {epoch * batches_per_epoch + epoch_step}")
    updates = _integer(meta, meta_path, "trainer.step", 0, step)
    if _field(meta, meta_path, "trainer.first_nonfinite_loss_step") != -1:
        raise CheckpointError(f"{meta_path}: trainer.first_nonfinite_loss_step is "
                              f"{meta['trainer']['first_nonfinite_loss_step']!r}, expected -1 "
                              f"(no checkpoint is saved after a non-finite loss)")
    skipped = 0
    if _field(meta, meta_path, "trainer.loss_scale") is not None:
        scale = _field(meta, meta_path, "trainer.loss_scale.scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or \
                not (math.isfinite(scale) and scale > 0):
            raise CheckpointError(f"{meta_path}: trainer.loss_scale.scale is {scale!r}, "
                                  f"expected a finite number > 0")
        _integer(meta, meta_path, "trainer.loss_scale.finite_steps", 0)
        skipped = _integer(meta, meta_path, "trainer.loss_scale.skipped_steps", 0)
    if updates + skipped != step:
        raise CheckpointError(f"{meta_path}: trainer.step is {updates} and {skipped} steps "
                              f"were skipped, but position.step is {step}")
    return step


def _check_progress(meta, meta_path, step):
    """progress: the evaluations so far ({step, auc}) and the step the target was met."""
    evaluations = _field(meta, meta_path, "progress.evaluations")
    if not isinstance(evaluations, list):
        raise CheckpointError(f"{meta_path}: progress.evaluations is {evaluations!r}, "
                              f"expected a list")
    for i, evaluation in enumerate(evaluations):
        auc = evaluation.get("auc", "absent") if isinstance(evaluation, dict) else None
        if not (isinstance(evaluation, dict) and _is_int(evaluation.get("step"))
                and 0 <= evaluation["step"] <= step
                and (auc is None or (isinstance(auc, float) and 0.0 <= auc <= 1.0))):
            raise CheckpointError(f"{meta_path}: progress.evaluations[{i}] is {evaluation!r}, "
                                  f"expected {{step: 0..{step}, auc: a number in [0, 1] or "
                                  f"null}}")
    if _field(meta, meta_path, "progress.target_step") is not None:
        _integer(meta, meta_path, "progress.target_step", 0, step)


def _check_files(meta, meta_path):
    """files: relative path -> {bytes, sha256}, every path inside the checkpoint."""
    files = _field(meta, meta_path, "files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{meta_path}: files is {files!r}, expected an object")
    for name, record in files.items():
        inside = os.path.normpath(name) == name and not os.path.isabs(name) and \
            not name.startswith("..") and name != META_NAME
        if not (inside and isinstance(record, dict) and _is_int(record.get("bytes"))
                and record["bytes"] >= 0 and isinstance(record.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", record["sha256"])):
            raise CheckpointError(f"{meta_path}: files[{name!r}] is {record!r}, expected "
                                  f"{{bytes: size, sha256: 64 hex digits}} of a file inside "
                                  f"the checkpoint")


class Checkpoints:
    """The checkpoints of `trainer` (a trainer.Trainer, its model built) in `directory`, which
    this process locks (lock_directory: a collective) unless it already holds it.
    batch_shuffle_seed: the training data's shuffle seed (None: batches in file order), which
    a resumed run must share to continue the same batch order."""

    def __init__(self, directory, trainer, log=print, batch_shuffle_seed=None):
        lock_directory(directory, log)
        self.directory = directory
        self.trainer = trainer
        self.batch_shuffle_seed = batch_shuffle_seed

    def _must_match(self, batches_per_epoch):
        """What a resumed run must share with the saved one (JSON values)."""
        model = self.trainer.model
        return {"global_batch_size": self.trainer.global_batch,
                "batches_per_epoch": batches_per_epoch,
                "vocab_sizes": list(model.vocab_sizes),
                "embedding_dim": model.embedding.dim,
                "table_layout": model.embedding.checkpoint_layout,
                "batch_shuffle_seed": self.batch_shuffle_seed}

    def latest(self):
        """-> the newest complete checkpoint's path, or None."""
        if not os.path.isdir(self.directory):
            return None
        steps = [int(m.group(1)) for m in map(_NAME.match, os.listdir(self.directory)) if m]
        return os.path.join(self.directory, f"ckpt-{max(steps):08d}") if steps else None

    def load_meta(self, path, batches_per_epoch):
        """-> path's meta.json (its "position": step, epoch, epoch_step; "progress": fit's),
        every field checked; CheckpointError naming the file, the field and its value (both
        values where this run cannot continue it)."""
        meta_path = os.path.join(path, META_NAME)
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({error})") \
                from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{meta_path}: expected a JSON object, got a "
                                  f"{type(meta).__name__}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: format_version {meta.get('format_version')!r}, "
                                  f"this program reads {FORMAT_VERSION}")
        for field, value in self._must_match(batches_per_epoch).items():
            if meta.get(field) != value:
                raise CheckpointError(f"{meta_path}: {field} is {meta.get(field)!r}, this run "
                                      f"has {value!r}: it cannot continue that checkpoint")
        _integer(meta, meta_path, "num_ranks", 1)
        step = _check_position(meta, meta_path, batches_per_epoch)
        _check_progress(meta, meta_path, step)
        _check_files(meta, meta_path)
        shapes = [list(v.shape) for v in self.trainer.model.dense_variables]
        if _field(meta, meta_path, "dense_shapes") != shapes:
            raise CheckpointError(f"{meta_path}: dense_shapes {meta['dense_shapes']}, this "
                                  f"model has {shapes}")
        return meta

    def restore(self, path, meta):
        """Checks path's files against meta's sizes and sha256 (each rank a share), then loads
        its dense variables, trainer state and tables, and checks them finite (meta: load_meta's;
        the model built). A collective: every rank calls it."""
        _together("verify", f"verifying {path}", lambda: _verify_share(path, meta["files"]))
        _together("restore", f"restoring {path}", lambda: self._restore(path, meta))

    def _restore(self, path, meta):
        trainer = self.trainer
        variables = trainer.model.dense_variables
        dense_path = os.path.join(path, "dense.npz")
        try:
            dense = np.load(dense_path)
            values = [dense[f"dense_{i}"] for i in range(len(variables))]
        except Exception as error:  # missing, truncated (not a zip), a variable absent
            raise CheckpointError(f"{dense_path}: unreadable ({error!r})") from None
        for i, (variable, value) in enumerate(zip(variables, values)):
            if list(value.shape) != list(variable.shape):
                raise CheckpointError(f"{dense_path}: dense_{i} is {list(value.shape)}, this "
                                      f"model's is {list(variable.shape)}")
            if not np.isfinite(value).all():
                raise CheckpointError(f"{dense_path}: dense_{i} holds a non-finite value "
                                      f"(nan or inf): refusing to train on it")
        # A missing or mis-shaped shard names its file; sok's rank-count rule says why.
        tables = os.path.join(path, "tables")
        trainer.model.embedding.restore(tables, meta["num_ranks"])
        for i, table in enumerate(trainer.model.embedding_variables):
            if not embeddings.all_finite(table):
                raise CheckpointError(f"{tables}: table {i} (rank {hvd.rank()}'s shard as "
                                      f"restored) holds a non-finite value (nan or inf): "
                                      f"refusing to train on it")
        for variable, value in zip(variables, values):  # all checked: the state goes in last
            variable.assign(value)
        trainer.restore_state(meta["trainer"])

    def save(self, step, epoch, epoch_step, batches_per_epoch, progress):
        """Writes the checkpoint of `step` (a collective: every rank calls it); -> its path.
        progress: JSON values of the loop's own to keep (evaluations so far, ...). A failed
        save removes its .partial and raises CheckpointError on every rank."""
        rank = hvd.rank()
        final = os.path.join(self.directory, f"ckpt-{step:08d}")
        partial = final + ".partial"
        tables = os.path.join(partial, "tables")

        def start():
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)  # a killed save of the same step
                os.makedirs(tables)

        def write():
            self.trainer.model.embedding.save(tables)
            if rank == 0:
                with open(os.path.join(partial, "dense.npz"), "wb") as f:
                    np.savez(f, **{f"dense_{i}": v.numpy()
                                   for i, v in enumerate(self.trainer.model.dense_variables)})
                    f.flush()
                    os.fsync(f.fileno())
            fmt.fsync_path(tables)

        try:
            _together("start", f"starting checkpoint {partial}", start)
            _together("write", f"writing checkpoint {partial}", write)  # every rank's part
            shares = _together("hash", f"hashing checkpoint {partial}",
                               lambda: _hash_share(partial))
            files = {name: record for share in shares for name, record in share.items()}
            _together("commit", f"committing checkpoint {final}", lambda: self._commit(
                partial, final, self._meta(step, epoch, epoch_step, batches_per_epoch,
                                           progress, files)))
        except CheckpointError:
            if rank == 0:  # every rank is past the failed stage: nothing writes there now
                shutil.rmtree(partial, ignore_errors=True)
            raise
        return final

    def _meta(self, step, epoch, epoch_step, batches_per_epoch, progress, files):
        """meta.json's contents for a save of `step`."""
        return dict(
            format_version=FORMAT_VERSION, num_ranks=hvd.size(),
            position={"step": step, "epoch": epoch, "epoch_step": epoch_step},
            trainer=self.trainer.state(),
            progress=progress,
            dense_shapes=[list(v.shape) for v in self.trainer.model.dense_variables],
            files=files,
            **self._must_match(batches_per_epoch))

    def _commit(self, partial, final, meta):
        """Rank 0: meta.json into partial, read back and every file checked there by size,
        the rename to final, then the removal of older checkpoints and stale partial saves."""
        if hvd.rank() != 0:
            return
        meta_path = os.path.join(partial, META_NAME)
        fmt.write_json_atomic(meta_path, meta)
        fmt.fsync_path(partial)
        with open(meta_path) as f:
            written = json.load(f)
        for name, record in written["files"].items():
            if os.path.getsize(os.path.join(partial, name)) != record["bytes"]:
                raise CheckpointError(f"{os.path.join(partial, name)}: not of the size "
                                      f"{meta_path} records")
        os.rename(partial, final)
        fmt.fsync_path(self.directory)
        for name in os.listdir(self.directory):  # this directory's lock is ours: all are
            path = os.path.join(self.directory, name)  # a dead run's or our own older ones
            if _OURS.match(name) and path != final:
                shutil.rmtree(path, ignore_errors=True)
