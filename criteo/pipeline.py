"""Orchestration: one run of the converter, preprocess(). Its options checked, OUT_DIR
prepared, the work directory's state resumed or started; then pass 1 (vocabulary), pass 2
(convert), pass 3 (shuffle), each resumable day by day (the shuffle by its checkpoints), and
the outputs moved into place with the metadata last.
"""

import dataclasses
import os
import resource
import shutil
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

import data_format as fmt
from criteo import files, metadata, parsing, reading, vocabulary
from criteo.files import WorkDir
from criteo.shuffle import SHUFFLE_BLOCK_ROWS, shuffle_buckets, shuffle_train
from criteo.vocabulary import SeenValues
from criteo.workers import (ConvertTask, ScanTask, WorkerContext, convert_chunk,
                            run_in_workers, scan_chunk)
from data_format import InputError
from progress import Progress

STATE_VERSION = 2
DEFAULT_CHUNK_BYTES = 64 << 20
DEFAULT_BLOCK_BYTES = 8 << 20
DEFAULT_SEED = 123  # the seed of the reference's mlperf branch (its permutation differs)
DEFAULT_SHUFFLE_MEMORY = 4 << 30


@dataclasses.dataclass(frozen=True)
class Options:
    """A run's options (preprocess()'s arguments)."""
    train_days: tuple
    test_day: int
    vocab: str  # "all" or "train"
    workers: int
    hash_mod: int
    chunk_bytes: int
    block_bytes: int
    shuffle: str  # "total" or "none"
    seed: int
    shuffle_memory_bytes: int
    shuffle_block_rows: int
    allow_empty_days: bool

    @property
    def all_days(self):
        return self.train_days + (self.test_day,)

    @property
    def vocab_days(self):
        """The days whose values make the vocabularies."""
        return self.train_days + ((self.test_day,) if self.vocab == "all" else ())

    def recorded(self):
        """The options state.json records: a rerun with others is refused."""
        options = {"train_days": list(self.train_days), "test_day": self.test_day,
                   "vocab": self.vocab, "hash_mod": self.hash_mod,
                   "chunk_bytes": self.chunk_bytes, "shuffle": self.shuffle}
        if self.shuffle == "total":
            options.update(seed=self.seed, shuffle_memory_bytes=self.shuffle_memory_bytes,
                           shuffle_block_rows=self.shuffle_block_rows)
        return options


@dataclasses.dataclass
class _Run:
    """What the steps of one run share."""
    options: Options
    input_dir: str
    out_dir: str  # absolute
    paths: dict  # day -> its input file
    work: WorkDir
    progress_stream: object  # a text stream, or None: silent
    progress_seconds: float
    on_checkpoint: Callable  # (stage, number), after each checkpoint (preprocess())
    state: dict = None  # state.json's contents

    def say(self, text):
        if self.progress_stream:
            self.progress_stream.write(f"preprocess_criteo: {text}\n")
            self.progress_stream.flush()

    def progress(self, title, total, unit="MB", scale=1e6):
        return Progress(f"preprocess_criteo {title}", total, unit=unit, scale=scale,
                        seconds=self.progress_seconds, stream=self.progress_stream)


class SampleCounts(NamedTuple):
    """The lines pass 1 counted and the samples they make."""
    day_lines: dict  # day -> lines
    train_samples: int
    test_lines: int  # of the test day
    test_samples: int  # ceil(test_lines / 2)


class Vocabularies(NamedTuple):
    """The vocabularies pass 1 built."""
    distinct: list  # per feature, the distinct hashed values
    sizes: list  # per feature, vocab_size (distinct, + 1 with --vocab=train)
    unseen_ids: np.ndarray  # int64 [26]: the id of a test value never seen; -1: none is


class _DayResults:
    """Collects the chunk results (with .day and .index) of each day and calls
    day_done(day, results in chunk order) once the last of a day's chunks is back."""

    def __init__(self, chunks_per_day, day_done):
        self._results = {day: [None] * n for day, n in chunks_per_day.items()}
        self._missing = dict(chunks_per_day)
        self._day_done = day_done

    def add(self, result):
        self._results[result.day][result.index] = result
        self._missing[result.day] -= 1
        if self._missing[result.day] == 0:
            self._day_done(result.day, self._results[result.day])


def _cpu_seconds():
    """CPU time (user + system) of this process and its waited-for children (the workers of
    finished pools)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _check(options):
    """Raises InputError naming the option and its value unless the options make sense."""
    if not options.train_days:
        raise InputError("--train_days: no days")
    if options.test_day in options.train_days:
        raise InputError(f"--test_day {options.test_day} is also a train day")
    if options.vocab not in ("all", "train"):
        raise InputError(f"--vocab: {options.vocab!r}, expected 'all' or 'train'")
    if options.shuffle not in ("total", "none"):
        raise InputError(f"--shuffle: {options.shuffle!r}, expected 'total' or 'none'")
    if options.shuffle == "total":  # the memory is enough for a scatter block
        shuffle_buckets(1, options.shuffle_memory_bytes, options.shuffle_block_rows)
    if not 1 <= options.hash_mod <= parsing.INT32_MAX:
        raise InputError(f"--hash_mod: {options.hash_mod}, expected 1 .. {parsing.INT32_MAX}")
    if options.workers < 1 or options.chunk_bytes < 1 or options.block_bytes < 1:
        raise InputError("--workers, --chunk_bytes and --block_bytes must be positive")


def _prepare_out_dir(out_dir, work, overwrite, stream):
    """Makes out_dir, removes what killed runs left (saying so on stream) and, with
    overwrite, every output and the work directory. InputError if an output exists without
    a work directory (a finished run) and without overwrite."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: is a file, not a directory")
    os.makedirs(out_dir, exist_ok=True)
    files.remove_dead_temporaries(out_dir, work, stream)
    outputs = [os.path.join(out_dir, name) for name in files.OUTPUT_NAMES]
    if overwrite:
        shutil.rmtree(work.dir, ignore_errors=True)
        for path in outputs:
            if os.path.exists(path):
                os.remove(path)
    elif not os.path.isdir(work.dir):
        existing = [p for p in outputs if os.path.exists(p)]
        if existing:
            raise InputError(f"{existing[0]}: already exists (pass --overwrite to replace "
                             f"the outputs)")


def _open_state(run):
    """-> the state of an unfinished run with the same options and unchanged inputs (it
    resumes), else a new one (saved)."""
    options = run.options.recorded()
    inputs = {str(d): files.fingerprint(p) for d, p in run.paths.items()}
    state = run.work.load()
    if state is not None:
        if state.get("version") != STATE_VERSION or state.get("options") != options:
            raise InputError(f"{run.work.dir}: an unfinished run with other options "
                             f"({state.get('options')}) is there; rerun it with those options "
                             f"or pass --overwrite to start over")
        changed = [v["name"] for d, v in inputs.items() if state["inputs"].get(d) != v]
        if changed:
            run.say(f"inputs changed since the unfinished run ({', '.join(changed)}): "
                    f"starting over")
            shutil.rmtree(run.work.dir)
            state = None
    if state is None:
        os.makedirs(run.work.dir, exist_ok=True)
        state = {"version": STATE_VERSION, "options": options, "inputs": inputs,
                 "pass1": {"days_done": [], "unit_lines": {}, "complete": False},
                 "pass2": {"days_done": [], "clamped": {}, "complete": False}}
        run.work.save(state)
    else:
        run.say(f"resuming: pass 1 days done {state['pass1']['days_done']}, pass 2 days done "
                f"{state['pass2']['days_done']}")
    return state


def _scanned_day(run, seen, day, results):
    """Pass 1's checkpoint once a day is scanned: the vocabulary so far saved (a vocabulary
    day), the day's chunk line counts and the day recorded in state.json."""
    lines = [result.lines for result in results]
    if sum(lines) == 0 and not run.options.allow_empty_days:
        raise InputError(f"{run.paths[day]}: holds no lines (a failed download?); pass "
                         f"--allow_empty_days to accept an empty day")
    if day in run.options.vocab_days:
        vocabulary.write_vocabulary(run.work.vocab_path, run.options.hash_mod, seen)
    record = run.state["pass1"]
    record["unit_lines"][str(day)] = lines
    record["days_done"] = sorted(record["days_done"] + [day])
    run.work.save(run.state)
    run.on_checkpoint("vocabulary", day)


def _vocabulary_pass(run):
    """Pass 1: every day's values into the shared seen arrays (the test day's lines only
    counted with --vocab=train), the vocabulary saved after each day. -> timings (s)."""
    record, options = run.state["pass1"], run.options
    if record["complete"]:
        return {}
    seen = SeenValues.allocate(options.hash_mod)
    if os.path.exists(run.work.vocab_path):  # the days an earlier run finished
        for feature_vocabulary in vocabulary.iter_vocabulary(run.work.vocab_path):
            seen.mark(feature_vocabulary.feature, feature_vocabulary.values)
    todo = [d for d in options.all_days if d not in record["days_done"]]
    chunks = {d: reading.input_chunks(d, run.paths[d], options.chunk_bytes) for d in todo}
    tasks = [ScanTask(c, d in options.vocab_days) for d in todo for c in chunks[d]]
    days = _DayResults({d: len(c) for d, c in chunks.items()},
                       lambda day, results: _scanned_day(run, seen, day, results))
    progress = run.progress("pass 1 (vocabulary)",
                            sum(os.path.getsize(run.paths[d]) for d in todo))
    start, cpu = time.perf_counter(), _cpu_seconds()
    run_in_workers(scan_chunk, tasks,
                   WorkerContext(options.hash_mod, options.block_bytes, seen=seen),
                   options.workers, progress, days.add, run.progress_seconds)
    progress.update(progress.total)
    counts = vocabulary.write_vocabulary(run.work.vocab_path, options.hash_mod, seen)
    timings = {"pass1_s": time.perf_counter() - start, "pass1_cpu_s": _cpu_seconds() - cpu}
    record["distinct"] = counts
    record["complete"] = True
    run.work.save(run.state)
    run.say(f"pass 1 done in {timings['pass1_s']:.1f} s: distinct hashed values {counts}")
    return timings


def _sample_counts(run):
    """-> SampleCounts from pass 1's line counts; InputError if the train days hold none."""
    chunk_lines = run.state["pass1"]["unit_lines"]
    day_lines = {d: sum(chunk_lines[str(d)]) for d in run.options.all_days}
    train_samples = sum(day_lines[d] for d in run.options.train_days)
    if train_samples == 0:
        raise InputError(f"{run.input_dir}: the train days hold no lines")
    test_lines = day_lines[run.options.test_day]
    return SampleCounts(day_lines, train_samples, test_lines, (test_lines + 1) // 2)


def _vocabularies(run):
    """-> Vocabularies from pass 1's distinct counts and --vocab."""
    distinct = run.state["pass1"]["distinct"]
    if run.options.vocab == "train":
        return Vocabularies(distinct, [c + 1 for c in distinct], np.asarray(distinct, np.int64))
    return Vocabularies(distinct, list(distinct), np.full(fmt.NUM_CATEGORICAL, -1, np.int64))


def _prepare_partial_outputs(run, counts):
    """Preallocates train_data.bin.partial and test_data.bin.partial at their final sizes
    (a resumed pass 2 keeps them, or starts over if one is missing)."""
    record = run.state["pass2"]
    partials = (run.work.train_partial, run.work.test_partial)
    if record["days_done"] and not all(os.path.exists(p) for p in partials):
        run.say(f"a partial output in {run.work.dir} is missing: pass 2 starts over")
        record["days_done"], record["clamped"] = [], {}
        run.work.save(run.state)
    for path, samples in zip(partials, (counts.train_samples, counts.test_samples)):
        size = samples * fmt.RAW_BYTES_PER_SAMPLE
        if not os.path.exists(path) or not record["days_done"]:
            with open(path, "wb") as f:
                f.truncate(size)
        elif os.path.getsize(path) != size:
            raise InputError(f"{path}: {os.path.getsize(path)} bytes, expected {size}; "
                             f"delete {run.work.dir} or pass --overwrite")


def _convert_tasks(run, counts, todo):
    """-> the ConvertTasks of the days in todo: each chunk's rows at their place in the
    train or the test output (of the test day, its first counts.test_samples lines)."""
    tasks, first_row = [], 0
    for day in run.options.all_days:
        is_test = day == run.options.test_day
        out_path = run.work.test_partial if is_test else run.work.train_partial
        if is_test:
            first_row = 0
        chunks = reading.input_chunks(day, run.paths[day], run.options.chunk_bytes)
        for chunk, lines in zip(chunks, run.state["pass1"]["unit_lines"][str(day)]):
            row_limit = counts.test_samples - first_row if is_test else None
            if row_limit is not None and row_limit <= 0:
                break
            if day in todo:
                tasks.append(ConvertTask(chunk, out_path, first_row, lines, row_limit))
            first_row += lines
    return tasks


def _converted_day(run, day, results):
    """Pass 2's checkpoint once a day is converted: the partial outputs fsynced, the day's
    clamped dense values and the day recorded in state.json."""
    for path in (run.work.train_partial, run.work.test_partial):
        fmt.fsync_path(path)
    clamped = np.zeros(fmt.NUM_DENSE, np.int64)
    for result in results:
        clamped += result.clamped
    record = run.state["pass2"]
    record["clamped"][str(day)] = [int(c) for c in clamped]
    record["days_done"] = sorted(record["days_done"] + [day])
    run.work.save(run.state)
    run.on_checkpoint("convert", day)


def _convert_pass(run, counts, unseen_ids):
    """Pass 2: every day's lines parsed, mapped to ids by the shared value -> id tables and
    written in place into the partial outputs. -> timings (s)."""
    record, options = run.state["pass2"], run.options
    if record["complete"]:
        return {}
    build_start, build_cpu = time.perf_counter(), _cpu_seconds()
    tables = vocabulary.build_id_tables(run.work.vocab_path)
    build_s, build_cpu = time.perf_counter() - build_start, _cpu_seconds() - build_cpu
    _prepare_partial_outputs(run, counts)
    todo = [d for d in options.all_days if d not in record["days_done"]]
    tasks = _convert_tasks(run, counts, todo)
    days = _DayResults({d: sum(t.chunk.day == d for t in tasks) for d in todo},
                       lambda day, results: _converted_day(run, day, results))
    progress = run.progress("pass 2 (convert)", max(1, sum(
        t.chunk.input_bytes(os.path.getsize(t.chunk.path)) for t in tasks)))
    for day in [d for d in todo if not any(t.chunk.day == d for t in tasks)]:
        _converted_day(run, day, [])  # a day without lines
    start, cpu = time.perf_counter(), _cpu_seconds() - build_cpu
    context = WorkerContext(options.hash_mod, options.block_bytes, id_tables=tables,
                            unseen_ids=unseen_ids)
    run_in_workers(convert_chunk, tasks, context, options.workers, progress, days.add,
                   run.progress_seconds)
    progress.update(progress.total)
    timings = {"pass2_s": time.perf_counter() - start + build_s,
               "pass2_cpu_s": _cpu_seconds() - cpu}
    record["complete"] = True
    run.work.save(run.state)
    run.say(f"pass 2 done in {timings['pass2_s']:.1f} s")
    return timings


def _move_outputs_into_place(run):
    """Renames the complete partial outputs and the vocabulary to their names in OUT_DIR."""
    for partial, name in ((run.work.train_partial, files.TRAIN_NAME),
                          (run.work.test_partial, files.TEST_NAME),
                          (run.work.vocab_path, files.VOCAB_NAME)):
        final = os.path.join(run.out_dir, name)
        if os.path.exists(partial):
            os.replace(partial, final)
        elif not os.path.exists(final):
            raise InputError(f"{partial}: missing (delete {run.work.dir} or pass --overwrite)")


def _run_passes(run):
    """The passes in order, then the outputs into place, the metadata last, the work
    directory removed. -> the metadata."""
    timings = _vocabulary_pass(run)
    counts, vocabularies = _sample_counts(run), _vocabularies(run)
    timings.update(_convert_pass(run, counts, vocabularies.unseen_ids))
    if run.options.shuffle == "total":  # the test day keeps its order, as the reference's
        timings.update(shuffle_train(run.work, run.state, counts.train_samples,
                                     run.progress_stream, run.progress_seconds,
                                     run.on_checkpoint))
        run.say(f"shuffle done: {run.state['shuffle']['buckets']} buckets")
    _move_outputs_into_place(run)
    meta = metadata.build_metadata(run.options, run.state, counts, vocabularies, timings)
    fmt.write_json_atomic(os.path.join(run.out_dir, files.METADATA_NAME), meta)
    shutil.rmtree(run.work.dir)
    return meta


def preprocess(input_dir, out_dir, train_days=tuple(range(23)), test_day=23, vocab="all",
               workers=None, hash_mod=parsing.HASH_MOD, chunk_bytes=DEFAULT_CHUNK_BYTES,
               block_bytes=DEFAULT_BLOCK_BYTES, overwrite=False, shuffle="total",
               seed=DEFAULT_SEED, shuffle_memory_bytes=DEFAULT_SHUFFLE_MEMORY,
               shuffle_block_rows=SHUFFLE_BLOCK_ROWS, allow_empty_days=False,
               progress_stream=sys.stderr, progress_seconds=5.0, on_checkpoint=None):
    """Converts INPUT_DIR's day files to OUT_DIR/{train,test}_data.bin; returns the metadata
    dict (also written to OUT_DIR/preprocess_metadata.json). See preprocess_criteo.py's
    docstring. on_checkpoint(stage, number), if given, is called each time the run has
    recorded its progress in the work directory (a run killed after it resumes from there):
    ("vocabulary", day) and ("convert", day) once pass 1 / pass 2 has done a day,
    ("scatter", blocks scattered) at each of the shuffle's scatter checkpoints,
    ("gather", bucket) once the shuffle has written a bucket."""
    options = Options(tuple(sorted(set(int(d) for d in train_days))), int(test_day), vocab,
                      int(workers or os.cpu_count() or 1), hash_mod, chunk_bytes, block_bytes,
                      shuffle, seed, shuffle_memory_bytes, shuffle_block_rows, allow_empty_days)
    _check(options)
    paths = reading.find_inputs(input_dir, options.all_days)
    out_dir = os.path.abspath(out_dir)
    work = WorkDir(out_dir)
    _prepare_out_dir(out_dir, work, overwrite, progress_stream)
    run = _Run(options, input_dir, out_dir, paths, work, progress_stream, progress_seconds,
               on_checkpoint or (lambda stage, number: None))
    run.state = _open_state(run)
    try:
        return _run_passes(run)
    except InputError:
        # Bad input data: fixing it changes the file, which restarts the run anyway, so
        # nothing of this run is worth keeping.
        shutil.rmtree(work.dir, ignore_errors=True)
        raise
