"""A stage stops cleanly on SIGTERM and dies with the process that started it, also through the
shell DVC runs commands in; process identities tell a dead owner from a live one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from cnnpipe.core import processes

# A stage that writes its output through atomic_path and never finishes.
STAGE = """
import sys, time
from pathlib import Path
from cnnpipe.core import stage
from cnnpipe.core.outputs import atomic_path

def main(out: Path, marker: Path) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text("half written")
        marker.write_text(str(tmp))
        while True:
            time.sleep(0.05)

stage.run(main)
"""
# Starts its argv as a child, prints the child's pid, then waits to be killed.
PARENT = "import subprocess, sys, time; print(subprocess.Popen(sys.argv[1:]).pid, flush=True); "
PARENT += "time.sleep(120)"


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pythons_running(script: Path) -> list[int]:
    """The python processes whose command line names script."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            name = (entry / "comm").read_text()
        except OSError:  # not a process, or one that just ended
            continue
        if str(script) in command and name.startswith("python"):
            found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def stage_script(tmp_path: Path) -> Path:
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    return script


def env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}


def test_sigterm_stops_a_stage_like_ctrl_c_and_leaves_no_output(stage_script, tmp_path):
    out, marker = tmp_path / "out.txt", tmp_path / "marker"
    stage = subprocess.Popen(
        [sys.executable, str(stage_script), str(out), str(marker)],
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(marker.exists, 30)
    stage.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=10) == 143
    assert stage.stderr.read().strip() == "error: stage stopped by SIGTERM"
    assert not out.exists() and not Path(marker.read_text()).exists()


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal and /proc are Linux's")
@pytest.mark.parametrize("through_shell", [False, True], ids=["direct", "through sh -c"])
def test_a_stage_dies_with_the_process_that_started_it(stage_script, tmp_path, through_shell):
    """kill -9 of the starter (DVC, the train launcher): the stage stops cleanly within a
    second or two, also when a shell sits between them (dash does not exec DVC's `sh -c`)."""
    out, marker = tmp_path / "out.txt", tmp_path / "marker"
    command = [sys.executable, str(stage_script), str(out), str(marker)]
    if through_shell:
        command = ["/bin/sh", "-c", " ".join(command) + "; true"]  # the shell stays
    starter = subprocess.Popen(
        [sys.executable, "-c", PARENT, *command],
        env=env(DVC_STAGE="stage"),
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(starter.stdout.readline())
    wait_for(marker.exists, 30)
    stage = next(pid for pid in pythons_running(stage_script) if pid != starter.pid)
    assert through_shell == (stage != child)
    starter.kill()
    starter.wait()
    seconds = wait_for(lambda: not alive(stage), processes.GRACE_S + 5)
    assert seconds < processes.GRACE_S  # stopped by SIGTERM, not by the SIGKILL after grace
    assert not out.exists() and not Path(marker.read_text()).exists()


def test_a_stage_run_by_hand_is_not_tied_to_its_shell(monkeypatch):
    for name in ("DVC_STAGE", processes.OWNER_ENV, "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not processes.tied_to_parent()  # `nohup python stages/train.py ... &` survives logout
    monkeypatch.setenv("DVC_STAGE", "train")
    assert processes.tied_to_parent()


@pytest.mark.skipif(sys.platform != "linux", reason="process start times come from /proc")
def test_a_process_identity_tells_the_living_from_the_dead():
    me = processes.process_id()
    assert processes.still_running(me) is True
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = processes.process_id(gone.pid)
    gone.wait()
    assert processes.still_running(identity) is False
    host, boot, pid, start = me.split(" ")
    assert processes.still_running(f"{host} {boot} {pid} {int(start) + 1}") is False  # reused pid
    assert processes.still_running(f"{host} other-boot {pid} {start}") is False
    assert processes.still_running(f"another-host {boot} {pid} {start}") is None


SECTION = """
import os, signal, sys, time
from pathlib import Path
from cnnpipe.core import processes, stage

def main(marker: Path) -> None:
    with processes.uninterrupted():  # a database write: SIGTERM waits for its end
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        marker.write_text("section finished")
    marker.write_text("went on after the section")

stage.run(main)
"""
FINALIZER = """
import os, signal, threading, time
from pathlib import Path
from cnnpipe.core import stage

class Slow:
    def __del__(self):  # SIGTERM arrives in here, where Python drops exceptions
        time.sleep(0.5)

def main(marker: Path) -> None:
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
    Slow()
    marker.write_text("the finalizer swallowed the stop")
    while True:
        time.sleep(0.05)

stage.run(main)
"""


@pytest.mark.parametrize(
    ("code", "marked"),
    [(SECTION, "section finished"), (FINALIZER, "the finalizer swallowed the stop")],
    ids=["inside an uninterrupted section", "inside a finalizer"],
)
def test_sigterm_is_never_lost(tmp_path, code, marked):
    """Deferred to the end of an uninterrupted section; asked again when Python dropped it in
    a finalizer. Either way a clean stop, well before the SIGKILL after GRACE_S."""
    script, marker = tmp_path / "stage.py", tmp_path / "marker"
    script.write_text(code)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script), str(marker)], env=env(), capture_output=True, text=True
    )
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip() == "error: stage stopped by SIGTERM"
    assert marker.read_text() == marked
    assert time.monotonic() - started < processes.GRACE_S
