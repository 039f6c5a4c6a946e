"""The life of a stage's processes: SIGTERM stops them cleanly as Ctrl-C does, they die with the
process that started them, and each has an identity a later run can check.

A process killed with SIGKILL (the OOM killer, `kill -9`) cleans nothing up, and its children would
go on training and writing outputs after DVC has reported the stage as failed. So a stage started
by DVC, by torchrun or by the stage's own launcher asks the kernel for a SIGTERM when its parent
dies (PR_SET_PDEATHSIG), and a watchdog thread also watches the shells between it and its owner
(DVC runs a command through `$SHELL -c`, and dash does not replace itself by the command). A
process that has not stopped GRACE_S after that SIGTERM is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER_ENV = "CNNPIPE_OWNER_PID"  # set by a process for the children it starts
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish"})
GRACE_S = 6.0  # time for a clean stop: temporary outputs removed, the MLflow run closed
POLL_S = 0.5
_PR_SET_PDEATHSIG = 1
_stopping = threading.Event()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (or the parent died): unwinds the stage like Ctrl-C, cleanup included."""


_uninterrupted = 0  # depth of the sections SIGTERM must not break into
_deferred = False  # a SIGTERM arrived inside such a section


def _on_sigterm(signum: int, frame: object) -> None:
    global _deferred
    if _stopping.is_set():  # already unwinding: let the cleanup finish
        return
    _stopping.set()
    threading.Thread(target=_kill_after_grace, daemon=True).start()
    if _uninterrupted:
        _deferred = True
        return
    raise Terminated("stopped by SIGTERM")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A section that SIGTERM must not break into (a database write whose lock the cleanup
    would wait for; replacing an output); the stop is raised when the section ends."""
    global _uninterrupted, _deferred
    _uninterrupted += 1
    try:
        yield
    finally:
        _uninterrupted -= 1
    if _deferred and not _uninterrupted:
        _deferred = False
        raise Terminated("stopped by SIGTERM")


def _rearm_if_swallowed(unraisable: sys.UnraisableHookArgs) -> None:
    """A Terminated raised inside a finalizer (__del__, a weakref callback) is dropped by
    Python; ask again, from outside it."""
    if getattr(unraisable, "exc_type", None) is not Terminated:
        _default_unraisablehook(unraisable)
        return
    _stopping.clear()
    threading.Timer(POLL_S, os.kill, (os.getpid(), signal.SIGTERM)).start()


_default_unraisablehook = sys.unraisablehook


def _kill_after_grace() -> None:
    time.sleep(GRACE_S)
    os.kill(os.getpid(), signal.SIGKILL)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into Terminated in the main thread (must be called from it)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _rearm_if_swallowed


def tied_to_parent() -> bool:
    """Whether this process was started by a pipeline tool (DVC, torchrun, the train launcher)
    and so must not outlive it. A stage run by hand (`nohup python stages/train.py ... &`) is
    left to its user."""
    return any(name in os.environ for name in ("DVC_STAGE", OWNER_ENV, "TORCHELASTIC_RUN_ID"))


def die_with_parent() -> None:
    """Stop (SIGTERM, then SIGKILL after GRACE_S) when the process that started this one dies."""
    owner = os.environ.pop(OWNER_ENV, None)  # meant for this process, not for its children
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    chain = _ancestors_to_owner()
    orphaned = os.getppid() == 1 or (owner is not None and int(owner) != os.getppid())
    if orphaned:  # the parent died before the kernel was asked to tell
        threading.Thread(target=_stop_self, daemon=True).start()
        return
    threading.Thread(target=_watch, args=(chain,), daemon=True, name="parent-watch").start()


def _ancestors_to_owner() -> list[tuple[int, int]]:
    """(pid, parent pid) from this process up through the shells that merely wait for it."""
    chain = [(os.getpid(), os.getppid())]
    while sys.platform == "linux" and _name(chain[-1][1]) in SHELLS:
        shell = chain[-1][1]
        parent = _parent_of(shell)
        if parent is None or parent <= 1:
            break
        chain.append((shell, parent))
    return chain


def _watch(chain: list[tuple[int, int]]) -> None:
    while True:
        time.sleep(POLL_S)
        if any(_parent_of(pid) != parent for pid, parent in chain):
            _stop_self()
            return


def _stop_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    _kill_after_grace()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _parent_of(pid: int) -> int | None:
    if pid == os.getpid():
        return os.getppid()
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """When the process started (clock ticks since boot): tells a pid from its reuse."""
    fields = _stat_fields(pid)
    return fields[19] if fields else ""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def process_id(pid: int | None = None) -> str:
    """`host boot pid start`: names one process across pid reuse and reboots."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()} {_boot_id()} {pid} {_start_time(pid)}"


def still_running(identity: str) -> bool | None:
    """Whether the process process_id() named is alive; None when it ran on another host."""
    host, boot, pid, start = (identity.split(" ") + ["", "", "", ""])[:4]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if boot != _boot_id():
        return False
    if not pid_alive(int(pid)):
        return False
    return not start or _start_time(int(pid)) == start
