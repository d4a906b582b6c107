"""criteo/workers.run_in_workers: every task's result once, and on a task's error or a
worker's death the error raised with no worker left running."""

import multiprocessing
import os
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
        os._exit(3)  # as a worker killed from outside or out of memory
    time.sleep(0 if task < 4 else 60)
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


def test_a_worker_that_dies_is_an_error_naming_its_exit_code():
    with pytest.raises(RuntimeError, match=r"a worker process \(pid \d+\) ended with exit code "
                                           r"3 before the tasks were done"):
        _run(_exit_on_4, list(range(12)))
    assert multiprocessing.active_children() == []


def test_no_tasks_start_no_workers():
    assert _run(_square, []) == []
