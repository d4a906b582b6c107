"""The worker pool: forked processes that inherit a pass's WorkerContext (the shared arrays
are not copied), die with the main process, and work on one InputChunk per task: pass 1
scans it into the seen arrays (scan_chunk), pass 2 converts it and writes its rows in place
(convert_chunk).
"""

import contextlib
import ctypes
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import traceback
from typing import NamedTuple, Optional

import numpy as np

import data_format as fmt
from criteo import parsing, reading
from criteo.reading import InputChunk
from criteo.vocabulary import SeenValues
from data_format import InputError

DENSE_FLOOR = 0  # stored dense = max(x, DENSE_FLOOR), the MLPerf reference's files
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class WorkerContext:
    """What a pass's workers share with the main process (inherited at the fork).
    Pass 1 has seen (where scan_chunk marks the values it parses); pass 2 has id_tables (per
    feature, hashed value -> id + 1, 0: not in the vocabulary) and unseen_ids (int64 [26]:
    the id of a value not in the vocabulary, --vocab=train's; -1: such a value is an error)."""
    hash_mod: int
    block_bytes: int  # bytes parsed at a time
    seen: Optional[SeenValues] = None
    id_tables: Optional[list] = None
    unseen_ids: Optional[np.ndarray] = None
    bytes_read: object = None  # input bytes consumed so far (a shared Value), for progress


_context = None  # what scan_chunk and convert_chunk read: set by worker_context


class ScanTask(NamedTuple):
    chunk: InputChunk
    parse: bool  # False: count the lines only (the test day under --vocab=train)


class ChunkLines(NamedTuple):
    day: int
    index: int  # the chunk's index in its day
    lines: int


class ConvertTask(NamedTuple):
    chunk: InputChunk
    out_path: str
    out_first_row: int  # where the chunk's first row goes in out_path, in samples
    expected_rows: int  # the chunk's lines in pass 1
    row_limit: Optional[int]  # convert only this many rows (the test day's first half)


class ConvertedChunk(NamedTuple):
    day: int
    index: int  # the chunk's index in its day
    rows: int
    clamped: np.ndarray  # int64 [13]: negative dense values stored as DENSE_FLOOR


def _worker_init():
    """Workers ignore Ctrl-C (the main process stops them) and, on Linux, die with the main
    process (a SIGKILLed run leaves no workers behind)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the main process died before prctl
            os._exit(1)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def worker_context(context):
    """Makes the WorkerContext the one scan_chunk and convert_chunk read, in this process and
    in the workers it forks meanwhile (run_in_workers does, around its pool)."""
    global _context
    _context = context
    try:
        yield
    finally:
        _context = None


class WorkerTraceback(Exception):
    """Where a worker's error was raised: its traceback, as text (the raised error's cause)."""

    def __str__(self):
        return "\n" + self.args[0]


def _send_error(connection, error):
    """Sends (False, error, its traceback text); an error that cannot be pickled goes as a
    RuntimeError naming it."""
    text = traceback.format_exc()
    try:
        connection.send((False, error, text))
    except Exception:  # its pickling failed: its message still reaches the user
        connection.send((False, RuntimeError(f"in a worker process: {error!r}"), text))


def _worker(job, tasks, next_task, connection):
    """A worker process (after _worker_init): takes the next task index from the shared
    counter and sends (True, job(task), None) down its pipe, until no task is left; on an
    error sends it (_send_error) and ends."""
    _worker_init()
    while True:
        with next_task.get_lock():
            index = next_task.value
            next_task.value += 1
        if index >= len(tasks):
            return
        try:
            connection.send((True, job(tasks[index]), None))
        except Exception as error:  # raised again in the main process
            _send_error(connection, error)
            return


def _start_workers(fork, count, job, tasks, pool):
    """Forks `count` workers (_worker) into pool: {the main process's end of a worker's pipe:
    the worker's process} (filled as they start: a failed start leaves the started ones in
    it, to be killed)."""
    next_task = fork.Value("q", 0)
    for _ in range(count):
        receive, send = fork.Pipe(duplex=False)
        process = fork.Process(target=_worker, args=(job, tasks, next_task, send), daemon=True)
        try:
            process.start()
        except BaseException:
            receive.close()
            raise
        finally:
            send.close()
        pool[receive] = process


def _ended_early(process):
    """-> the error for a worker that ended before the tasks were done (an OSError: the
    converter's one-line error, with its resume hint)."""
    how = (f"was killed by signal {-process.exitcode} (out of memory?)" if process.exitcode < 0
           else f"ended with exit code {process.exitcode}")
    return ChildProcessError(f"a worker process (pid {process.pid}) {how} before the tasks "
                             f"were done")


def _results(pool, count, poll_seconds, on_poll):
    """Yields the workers' `count` results in completion order; calls on_poll() every
    poll_seconds while waiting. Raises a task's exception (from its WorkerTraceback), or
    ChildProcessError if a worker ended without sending one (killed, out of memory)."""
    running = dict(pool)
    for _ in range(count):
        while True:
            ready = multiprocessing.connection.wait(list(running), timeout=poll_seconds)
            if not ready:
                on_poll()
                continue
            try:
                ok, value, where = ready[0].recv()
                break
            except EOFError:  # the worker ended: its tasks done, or it died
                process = running.pop(ready[0])
                process.join()
                if process.exitcode != 0 or not running:
                    raise _ended_early(process) from None
        if not ok:
            raise value from WorkerTraceback(where)
        yield value


def run_in_workers(job, tasks, context, workers, progress, on_result, poll_seconds):
    """Runs job(task) for every task in at most `workers` forked processes that inherit
    context; calls on_result(result) in the main process in completion order and reports
    the input bytes read to progress (a progress.Progress). On an error (a task's, or a
    worker that died) the workers are killed at once and the error raised.

    Each worker has its own pipe and takes task indices from a shared counter; the main
    process reads the bytes counter without its lock: nothing it waits on can be left locked
    by a killed worker (multiprocessing.Pool's shutdown after an error hung once on such a
    lock)."""
    if not tasks:
        return
    fork = multiprocessing.get_context("fork")
    bytes_read = fork.Value("q", 0)

    def report_progress():
        progress.update(min(bytes_read.get_obj().value, progress.total - 1))

    pool = {}
    try:
        with worker_context(dataclasses.replace(context, bytes_read=bytes_read)):
            _start_workers(fork, min(workers, len(tasks)), job, tasks, pool)
        for result in _results(pool, len(tasks), poll_seconds, report_progress):
            on_result(result)
            report_progress()
    finally:
        for connection, process in pool.items():
            if process.is_alive():
                process.kill()
            process.join()
            connection.close()


def scan_chunk(task):
    """Pass 1: ScanTask -> ChunkLines; marks the chunk's hashed values in the context's seen
    arrays (unless the task only counts lines)."""
    chunk, lines = task.chunk, 0
    for block in reading.chunk_blocks(chunk, _context.block_bytes, _context.bytes_read):
        if not task.parse:
            lines += reading.lines_in_block(block.data)
            continue
        try:
            parsed = parsing.parse_block(block.data, _context.hash_mod)
        except parsing.BadBlock:
            raise reading.bad_line_error(chunk, block, lines) from None
        for feature, values in enumerate(parsed.hashed):
            _context.seen.mark(feature, values)
        lines += len(parsed.label)
    return ChunkLines(chunk.day, chunk.index, lines)


def _first_lines(data, count):
    """The first `count` lines of bytes of whole lines (all of them if fewer)."""
    if data.count(b"\n") < count:
        return data
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    return data[:ends[count - 1] + 1]


def _raw_rows(parsed, chunk, clamped):
    """ParsedBlock -> int32 [n, 40] raw rows (dense clamped to DENSE_FLOOR, counted per
    feature into clamped int64 [13]; categorical values mapped to ids by the context's
    tables)."""
    out = np.empty((len(parsed.label), parsing.NUM_FIELDS), fmt.RAW_DTYPE)
    out[:, 0] = parsed.label
    for j, values in enumerate(parsed.dense):
        low = values < DENSE_FLOOR
        if low.any():
            clamped[j] += int(low.sum())
            values = np.maximum(values, DENSE_FLOOR)
        out[:, 1 + j] = values
    for feature, values in enumerate(parsed.hashed):
        column = out[:, 1 + fmt.NUM_DENSE + feature]
        np.subtract(_context.id_tables[feature][values], 1, out=column, dtype=np.int32,
                    casting="unsafe")
        missing = column < 0
        if missing.any():
            if _context.unseen_ids[feature] < 0:
                i = int(np.flatnonzero(missing)[0])
                raise InputError(
                    f"{chunk.path}: {parsing.describe_field(1 + fmt.NUM_DENSE + feature)}: "
                    f"hashed value {int(values[i])} is not in the vocabulary pass 1 built (the "
                    f"file changed since pass 1? rerun with --overwrite)")
            column[missing] = _context.unseen_ids[feature]
    return out


def convert_chunk(task):
    """Pass 2: ConvertTask -> ConvertedChunk; writes the chunk's raw rows at out_first_row
    of out_path."""
    chunk = task.chunk
    clamped = np.zeros(fmt.NUM_DENSE, np.int64)
    rows = 0
    fd = os.open(task.out_path, os.O_WRONLY)
    try:
        for block in reading.chunk_blocks(chunk, _context.block_bytes, _context.bytes_read):
            data = block.data
            if task.row_limit is not None:
                if task.row_limit <= rows:
                    break
                data = _first_lines(data, task.row_limit - rows)
            try:
                parsed = parsing.parse_block(data, _context.hash_mod)
            except parsing.BadBlock:
                raise reading.bad_line_error(chunk, block._replace(data=data), rows) from None
            out = _raw_rows(parsed, chunk, clamped)
            written = os.pwrite(fd, memoryview(out).cast("B"),
                                (task.out_first_row + rows) * fmt.RAW_BYTES_PER_SAMPLE)
            if written != out.nbytes:
                raise OSError(f"{task.out_path}: short write ({written} of {out.nbytes} bytes)")
            rows += len(out)
    finally:
        os.close(fd)
    want = task.expected_rows if task.row_limit is None else min(task.expected_rows,
                                                                 task.row_limit)
    if rows != want:
        raise InputError(f"{chunk.path}: chunk {chunk.index} has {rows} lines now, {want} in "
                         f"pass 1 (the file changed? rerun with --overwrite)")
    return ConvertedChunk(chunk.day, chunk.index, rows, clamped)
