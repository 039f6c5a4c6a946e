"""Portable determinism: the CPU kernels and threads torch runs with are pinned before it loads,
so a stage gives the same bits whatever the machine's instruction set and its environment say."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, other_machine_environment, tiny_params

from cnnpipe.core import kernels
from cnnpipe.core.errors import CnnpipeError


def test_portable_pins_the_x86_64_baseline_and_the_thread_count():
    env = kernels.environment("portable", 2, machine="x86_64", flags={"avx2", "fma", "sse2"})
    assert env == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    arm = kernels.environment("portable", 4, machine="aarch64", flags={"asimd", "sve"})
    assert arm["ATEN_CPU_CAPABILITY"] == "default" and arm["OMP_NUM_THREADS"] == "4"
    assert arm["ONEDNN_MAX_CPU_ISA"] == "ADVANCED_SIMD"


def test_machine_mode_and_a_cpu_without_avx2_leave_the_instruction_set_alone():
    assert kernels.environment("machine", 2, machine="x86_64") == {
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    assert kernels.environment("machine", 0, machine="x86_64") == {}
    old_cpu = kernels.environment("portable", 2, machine="x86_64", flags={"sse2", "avx"})
    assert "ATEN_CPU_CAPABILITY" not in old_cpu  # forced AVX2 code would crash there


def test_threads_are_shared_by_the_processes_of_a_node():
    assert kernels.process_threads(2, {}) == 2
    assert kernels.process_threads(2, {"LOCAL_WORLD_SIZE": "2"}) == 1
    assert kernels.process_threads(8, {"LOCAL_WORLD_SIZE": "2"}) == 4
    assert kernels.process_threads(1, {"LOCAL_WORLD_SIZE": "4"}) == 1
    assert kernels.process_threads(0, {"LOCAL_WORLD_SIZE": "2"}) == 0


def test_pinning_after_torch_loaded_is_refused():
    assert "torch" in sys.modules
    with pytest.raises(RuntimeError, match="already loaded"):
        kernels.training_environment()


def test_verify_names_kernels_that_are_not_the_portable_ones(monkeypatch):
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(CnnpipeError, match="runs AVX512 CPU kernels, not the portable AVX2"):
        kernels.verify("portable")
    kernels.verify("machine")  # machine mode takes whatever runs


PROBE = """
import runpy, sys
runpy.run_path(sys.argv[1], run_name="probe")  # the stage's module level, not its main()
import torch
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
"""


@pytest.mark.e2e
def test_the_package_stage_pins_before_torch_loads(tmp_path):
    """Its module level overrides what the environment says, before torch loads (train and
    evaluate: the bytes test below)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(train={"num_threads": 2})))
    script = str(REPO / "stages" / "package.py")
    env = {**os.environ, **other_machine_environment(), "PYTHONPATH": str(REPO / "src")}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    expected = kernels.PORTABLE_ISA.get(kernels.platform.machine().lower(), ({}, None))[1]
    capability, threads = probe.stdout.split()[-2:]
    assert threads == "2"
    if expected and "avx2" in (kernels.cpu_flags() or {"avx2"}):
        assert capability == expected
