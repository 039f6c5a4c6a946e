"""The ordered map over worker processes that generate and process share."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.data import parallel


def squares(chunk: list[int]) -> tuple[int, list[int]]:
    return os.getpid(), [n * n for n in chunk]


def fails_on_13(chunk: list[int]) -> list[int]:
    if 13 in chunk:
        raise CnnpipeError("image 13 cannot be decoded; remove it")
    return chunk


def dies(chunk: list[int]) -> list[int]:
    os._exit(1)


def marks_its_start(folder: Path, chunk: list[int]) -> list[int]:
    (folder / f"started-{chunk[0]}").touch()
    return chunk


def test_results_come_in_order_from_other_processes_with_progress(monkeypatch, capsys):
    monkeypatch.setattr(parallel, "PROGRESS_S", 0.0)
    items = list(range(50))
    with parallel.Pool(2) as pool:
        done = list(pool.map(squares, items, "test: squared", chunk=4))
    assert [n for _, chunk in done for n in chunk] == [n * n for n in items]
    assert os.getpid() not in {pid for pid, _ in done}  # all done in workers
    here = list(parallel.Pool(1).map(squares, items, "test: squared", chunk=4))
    assert [chunk for _, chunk in here] == [chunk for _, chunk in done]
    assert {pid for pid, _ in here} == {os.getpid()}
    lines = capsys.readouterr().out.splitlines()
    assert "test: squared: 4/50" in lines and "test: squared: 48/50" in lines
    assert not multiprocessing.active_children()  # the workers stopped with the pool


def test_too_little_work_for_two_chunks_starts_no_process():
    with parallel.Pool(4) as pool:
        ((pid, result),) = list(pool.map(squares, [1, 2, 3], "test", chunk=10))
        assert pid == os.getpid() and result == [1, 4, 9]
        assert not multiprocessing.active_children()


def test_an_error_in_a_worker_is_raised_here_and_the_workers_are_stopped():
    with pytest.raises(CnnpipeError, match="^image 13 cannot be decoded; remove it$"):
        with parallel.Pool(2) as pool:
            for _ in pool.map(fails_on_13, list(range(40)), "test", chunk=2):
                pass
    assert not multiprocessing.active_children()


def test_a_worker_that_dies_fails_the_map_with_one_line_instead_of_hanging_it():
    with pytest.raises(CnnpipeError) as caught:
        with parallel.Pool(2) as pool:
            list(pool.map(dies, list(range(10)), "process: train images", chunk=2))
    message = str(caught.value)
    assert message.startswith("process: train images: a worker process died")
    assert parallel.PROCESSES_ENV in message and "\n" not in message


def test_only_a_few_chunks_per_worker_are_given_out_at_a_time(tmp_path):
    """Memory grows by a few chunks per worker, not with the data: with one result taken,
    at most IN_FLIGHT chunks per worker and the one that replaced it have been started."""
    import functools

    work = functools.partial(marks_its_start, tmp_path)
    with parallel.Pool(2) as pool:
        results = pool.map(work, list(range(100)), "test", chunk=5)
        next(results)
        time.sleep(0.5)  # time for the workers to start whatever they were given
        started = len(list(tmp_path.iterdir()))
        assert started <= parallel.IN_FLIGHT * 2 + 1, started
        assert len(list(results)) == 19


def test_the_process_count_is_the_usable_cores_or_the_environments(monkeypatch):
    monkeypatch.delenv(parallel.PROCESSES_ENV, raising=False)
    assert parallel.available() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(parallel.PROCESSES_ENV, "3")
    assert parallel.available() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(parallel.PROCESSES_ENV, bad)
        with pytest.raises(CnnpipeError, match=f"^{parallel.PROCESSES_ENV}='{bad}': not a number"):
            parallel.available()
