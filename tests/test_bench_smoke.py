"""bench/smoke.py, the step of CI that runs every benchmark small: it has a command for every
script of bench/, and a command that runs out of time goes with everything it started."""

import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import smoke  # noqa: E402


def test_every_benchmark_script_has_a_command() -> None:
    assert smoke.unlisted() == []
    for script, _, _ in smoke.COMMANDS:
        assert (BENCH / f"{script}.py").is_file(), script


def test_out_of_time_kills_what_the_command_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    command = ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    code, _ = smoke.run(command, 1, tmp_path / "log")
    assert code is None
    pid = int(pid_file.read_text())
    # SIGKILL is delivered when the process next runs: on a loaded machine it may still show as
    # running for a moment. Gone, or a zombie (killed, not yet reaped by init), within 10 s.
    deadline = time.monotonic() + 10
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        assert time.monotonic() < deadline, f"process {pid} outlived its command by 10 s ({state})"
        time.sleep(0.05)
