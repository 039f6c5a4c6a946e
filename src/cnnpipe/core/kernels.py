"""What decides the bits of torch's CPU arithmetic, fixed before torch loads.

torch picks its CPU kernels by the instruction set of the processor (ATen's vectorised code,
oneDNN's JIT code, MKL's BLAS) and splits reductions by its thread count; either changes the last
bits of a result, and training turns them into other weights. `portable` mode pins both: the
instruction set to a level every machine of the architecture has (AVX2 on x86-64: every server
and desktop CPU since about 2015) and the threads to a fixed count. `machine` mode leaves torch
to use the best this processor has.

The kernels are chosen when torch initialises its CPU dispatch, from the environment, so a stage
that runs torch sets `environment(...)` into `os.environ` before it imports anything that
imports torch, and checks with `verify` afterwards. Child processes (torchrun's workers) inherit
the environment and run the same code.

This module imports no torch.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from cnnpipe.core import params
from cnnpipe.core.errors import CnnpipeError

Determinism = Literal["portable", "machine"]
DEFAULT_THREADS = params.TrainParams().num_threads

# Per architecture: the variables that cap each library's instruction set, and the capability
# torch then reports (torch.backends.cpu.get_cpu_capability()).
PORTABLE_ISA: dict[str, tuple[dict[str, str], str]] = {
    "x86_64": (
        {
            "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        },
        "AVX2",
    ),
    "aarch64": (
        {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "ADVANCED_SIMD"},
        "DEFAULT",
    ),
}
PORTABLE_ISA["amd64"] = PORTABLE_ISA["x86_64"]
PORTABLE_ISA["arm64"] = PORTABLE_ISA["aarch64"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
REQUIRED_FLAGS = {"x86_64": {"avx2", "fma"}, "amd64": {"avx2", "fma"}}


def process_threads(threads: int, env: Mapping[str, str] | None = None) -> int:
    """Threads for each process: `threads` is the whole training's, shared by the processes
    torchrun started on this node (LOCAL_WORLD_SIZE); 0 stays 0 (torch's default)."""
    env = os.environ if env is None else env
    local = int(env.get("LOCAL_WORLD_SIZE", 1))
    return max(1, threads // local) if threads > 0 else 0


def cpu_flags() -> set[str] | None:
    """The processor's feature flags (Linux), None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def environment(
    determinism: Determinism = "portable",
    threads: int = DEFAULT_THREADS,
    machine: str | None = None,
    flags: set[str] | None = None,
) -> dict[str, str]:
    """The variables to set before torch loads: in portable mode the instruction set of the
    architecture's baseline (unless this CPU lacks it: `verify` then says so), and in both modes
    the thread count when it is not 0."""
    env: dict[str, str] = {}
    per_process = process_threads(threads)
    if per_process:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(per_process)))
    if determinism != "portable":
        return env
    machine = (machine or platform.machine()).lower()
    isa, _ = PORTABLE_ISA.get(machine, ({}, ""))
    flags = cpu_flags() if flags is None else flags
    if flags is not None and not REQUIRED_FLAGS.get(machine, set()) <= flags:
        return env  # forcing AVX2 kernels onto a CPU without them would crash; verify reports it
    return {**isa, **env}


def training_environment(params_file: Path = Path("params.yaml")) -> dict[str, str]:
    """environment() for params.yaml's `train` section (its defaults if the file does not
    validate: the stage reports that itself, in one line, once it runs)."""
    if "torch" in sys.modules:
        raise RuntimeError("torch is already loaded: pin its CPU kernels before importing it")
    try:
        p = params.load(params_file).train
    except CnnpipeError:
        p = params.TrainParams()
    return environment(p.determinism, p.num_threads)


def inference_environment() -> dict[str, str]:
    """environment() for stages that only run a trained model (evaluate, package): always
    portable, at the default thread count, so their outputs depend on the model bytes alone."""
    if "torch" in sys.modules:
        raise RuntimeError("torch is already loaded: pin its CPU kernels before importing it")
    return environment()


def verify(determinism: Determinism = "portable") -> None:
    """Check, once torch is loaded, that it runs the portable kernels; a CPU without them, or a
    stage that imported torch before pinning, stops here with one line."""
    if determinism != "portable":
        return
    import torch  # loaded already by the caller; imported here so that the module is torch-free

    machine = platform.machine().lower()
    if machine not in PORTABLE_ISA:
        return
    expected = PORTABLE_ISA[machine][1]
    running = torch.backends.cpu.get_cpu_capability()
    if running != expected:
        raise CnnpipeError(
            f"torch runs {running} CPU kernels, not the portable {expected} "
            f"({'this CPU lacks it' if running in ('DEFAULT', 'NO AVX') else 'pinned too late'}); "
            "set train.determinism: machine to train with what this CPU has"
        )
