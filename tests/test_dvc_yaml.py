"""dvc.yaml declares exactly what each stage reads: its params sections and its library modules.

Each stage runs for real (tiny params) under a probe that records which params sections it reads
and which cnnpipe modules it imports. An undeclared param would be silently ignored by DVC when it
changes; an undeclared module would not re-run the stage when its code changes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, copy_project, tiny_params

PROBE = """
import json, runpy, sys
from cnnpipe import params

read = set()
load = params.load


class Recording:
    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name in type(self._inner).model_fields:
            read.add(name)
            return getattr(self._inner, name)
        raise AssertionError(f"a stage used params.load().{name}; read a section instead")


params.load = lambda *args, **kwargs: Recording(load(*args, **kwargs))
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
finally:
    modules = sorted(m for m in sys.modules if m == "cnnpipe" or m.startswith("cnnpipe."))
    with open(sys.argv[2], "w") as f:
        json.dump({"params": sorted(read), "modules": modules}, f)
"""

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("probe")
    project = copy_project(base / "repo", base, tiny_params())
    (base / "probe.py").write_text(PROBE)
    found = {}
    for name, stage in STAGES.items():
        script = stage["cmd"].split()[-1]
        out = base / f"{name}.json"
        project.run(sys.executable, str(base / "probe.py"), script, str(out))
        found[name] = json.loads(out.read_text())
    return found


@pytest.mark.parametrize("stage", list(STAGES))
def test_declared_params_are_the_params_the_stage_reads(probed, stage):
    assert sorted(STAGES[stage].get("params", [])) == probed[stage]["params"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_declared_library_modules_are_the_modules_the_stage_imports(probed, stage):
    declared = sorted(d for d in STAGES[stage]["deps"] if d.startswith("src/cnnpipe/"))
    imported = sorted(
        "src/" + m.replace(".", "/") + ("/__init__.py" if m == "cnnpipe" else ".py")
        for m in probed[stage]["modules"]
    )
    assert declared == imported


def test_the_bento_includes_exactly_the_modules_the_service_imports():
    code = (
        "import sys, cnnpipe.service; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('cnnpipe'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    imported = sorted(
        m.replace(".", "/") + ("/__init__.py" if m == "cnnpipe" else ".py")
        for m in out.stdout.split()
    )
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert sorted(bentofile["include"]) == imported
