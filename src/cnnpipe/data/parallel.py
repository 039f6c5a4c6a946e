"""All cores for the data: generate and process map their per-image work over worker processes.

The work (draw or check an image, convert one into a split array, ...) is cut into chunks of
CHUNK items, handed to forked worker processes, and the results are yielded in the order of the
chunks, so what a stage writes is the same bytes whatever the number of processes: that number
is not a param, DVC must not re-run a stage for it, and a lock reproduced on another machine
stays as committed. It is the cores this process may run on (os.sched_getaffinity), or
PROCESSES_ENV when set (1: all in this process).

Start-up is paid only when it pays: a map of fewer than two chunks runs in this process, and the
workers are started once per stage, at the first map that needs them, by fork (no re-import).
At most IN_FLIGHT chunks per worker are given out at a time, so memory grows by a few chunks
per worker, whatever the size of the data. Workers die with the stage (PR_SET_PDEATHSIG, also on
SIGKILL); a worker that dies (the OOM killer) fails the map instead of hanging it. A long map
prints a progress line every PROGRESS_S seconds.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.stage import progress

PROCESSES_ENV = "CNNPIPE_DATA_PROCESSES"
CHUNK = 256  # items per chunk: a fraction of a second of work for small images
IN_FLIGHT = 2  # chunks given to each worker at a time: one at work, one waiting
PROGRESS_S = 5.0
_PR_SET_PDEATHSIG = 1

Item = TypeVar("Item")
Result = TypeVar("Result")


def available() -> int:
    """The processes the data stages use: PROCESSES_ENV, else the cores this process may use."""
    value = os.environ.get(PROCESSES_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise CnnpipeError(
                f"{PROCESSES_ENV}={value!r}: not a number of processes; set it to 1 or more, or "
                "unset it to use every core"
            )
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_start(parent: int) -> None:
    """In each worker: die with the stage, leave Ctrl-C and SIGTERM to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the stage died before the kernel was asked to tell
        os._exit(1)


class Pool:
    """The worker processes of one stage, started at the first map that needs them and stopped
    on leaving the `with` block (killed at once when it is left by an error or a stop)."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes or available()
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.close(kill=error is not None)

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # Objects made so far are left alone by the workers' garbage collector, so their
            # pages stay shared with this process instead of being copied into each worker.
            gc.freeze()
            self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_worker_start,
                initargs=(os.getpid(),),
            )
        return self._executor

    def close(self, kill: bool = False) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if kill:
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()

    def map(
        self,
        work: Callable[[Sequence[Item]], Result],
        items: Sequence[Item],
        what: str,
        chunk: int | None = None,
    ) -> Iterator[Result]:
        """work(chunk) for each chunk of `items`, in order. `work` must be a module-level
        function (or a functools.partial of one): it is sent to the workers by name."""
        size = chunk or CHUNK
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        shown = _Progress(what, len(items))
        if self.processes < 2 or len(chunks) < 2:
            for part in chunks:
                yield work(part)
                shown.advance(len(part))
            return
        executor = self._start()
        pending: deque[tuple[Future, int]] = deque()
        todo = iter(chunks)
        for part in todo:
            pending.append((executor.submit(work, part), len(part)))
            if len(pending) >= IN_FLIGHT * self.processes:
                break
        while pending:
            future, count = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise CnnpipeError(
                    f"{what}: a worker process died (out of memory?); set {PROCESSES_ENV} "
                    "to fewer processes, or free memory, and run again"
                ) from None
            for part in todo:
                pending.append((executor.submit(work, part), len(part)))
                break
            yield result
            shown.advance(count)


class _Progress:
    """`what: done/total` every PROGRESS_S seconds, only in maps that last that long."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.last = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_S and self.done < self.total:
            self.last = now
            progress(f"{self.what}: {self.done}/{self.total}")
