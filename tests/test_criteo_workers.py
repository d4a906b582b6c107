"""criteo/workers.run_in_workers: every task's result once, and on a task's error or a
worker's death the error raised with no worker left running."""

import multiprocessing
import os
import re
import signal
import time

import pytest

from criteo import workers
from data_format import InputError
from progress import Progress

CONTEXT = workers.WorkerContext(hash_mod=1, block_bytes=1)


def _run(job, tasks, count=3):
    """-> the results of run_in_workers(job, tasks) on `count` workers, in arrival order."""
    results = []
    workers.run_in_workers(job, tasks, CONTEXT, count, Progress("test", 1, stream=None),
                           results.append, poll_seconds=0.05)
    return results


def _square(task):
    time.sleep(0.01 * (task % 3))  # out of order
    return task * task


def _fail_on_5_while_others_sleep(task):
    if task == 5:
        raise InputError("task 5: bad line")
    time.sleep(0 if task < 5 else 60)
    return task


def _exit_on_4(task):
    if task == 4:
        os._exit(3)
    time.sleep(0 if task < 4 else 60)
    return task


def _killed_on_4(task):
    if task == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer
    time.sleep(0 if task < 4 else 60)
    return task


def _killed_holding_the_progress_lock(task):
    if task == 4:
        workers._context.bytes_read.get_lock().acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0 if task < 4 else 60)
    return task


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle")


def _unpicklable_error_on_2(task):
    if task == 2:
        raise _Unpicklable("the message")
    return task


def test_every_task_runs_once_and_its_result_reaches_the_main_process():
    results = _run(_square, list(range(40)))
    assert sorted(results) == [task * task for task in range(40)]
    assert multiprocessing.active_children() == []


def test_a_tasks_error_is_raised_and_the_other_workers_are_killed():
    """The workers still busy (60 s tasks) are killed: run_in_workers does not wait for them."""
    start = time.monotonic()
    with pytest.raises(InputError, match="task 5: bad line"):
        _run(_fail_on_5_while_others_sleep, list(range(12)))
    assert multiprocessing.active_children() == []
    assert time.monotonic() - start < 50  # not after the 60 s tasks


def test_the_error_keeps_the_workers_traceback_as_its_cause():
    with pytest.raises(InputError) as raised:
        _run(_fail_on_5_while_others_sleep, list(range(12)))
    assert isinstance(raised.value.__cause__, workers.WorkerTraceback)
    assert "in _fail_on_5_while_others_sleep" in str(raised.value.__cause__)


@pytest.mark.parametrize("job, how", [(_exit_on_4, "ended with exit code 3"),
                                      (_killed_on_4, "was killed by signal 9 (out of memory?)")])
def test_a_worker_that_dies_is_an_oserror_naming_how(job, how):
    """An OSError: preprocess_criteo.py's one-line error, with its resume hint."""
    with pytest.raises(ChildProcessError) as raised:
        _run(job, list(range(12)))
    assert re.fullmatch(rf"a worker process \(pid \d+\) {re.escape(how)} before the tasks "
                        rf"were done", str(raised.value))
    assert multiprocessing.active_children() == []


def test_a_worker_killed_holding_the_progress_counters_lock_does_not_hang_the_run():
    """The main process reads the counter without its lock (30 s alarm: a hang fails)."""
    def hung(*_):
        raise TimeoutError("run_in_workers hung")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(ChildProcessError, match="was killed by signal 9"):
            _run(_killed_holding_the_progress_lock, list(range(12)))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_an_error_that_cannot_be_pickled_still_names_itself():
    with pytest.raises(RuntimeError, match=r"in a worker process: _Unpicklable\('the message'\)"):
        _run(_unpicklable_error_on_2, list(range(6)))
    assert multiprocessing.active_children() == []


def test_no_tasks_start_no_workers():
    assert _run(_square, []) == []
