"""dvc.yaml declares exactly what each stage reads: its params sections and its library code.

Read from the code, without running it: an undeclared param would be silently ignored by DVC when
it changes; undeclared code would not re-run the stage when it changes; over-declared code would
re-run it for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src"
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
LIB = DVC_YAML["vars"][0]["lib"]


def module_file(name: str) -> Path | None:
    """The file of a cnnpipe module (a package's __init__.py), None if there is none."""
    path = SRC / name.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(tree: ast.AST) -> set[str]:
    """The cnnpipe modules an AST imports, each with its parent packages."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [
                f"{node.module}.{alias.name}"
                if module_file(f"{node.module}.{alias.name}")
                else node.module
                for alias in node.names
            ]
        for name in names:
            if name.split(".")[0] == "cnnpipe":
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def closure(script: Path) -> set[Path]:
    """Every library file a script imports, directly or through other library modules."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for name in imported_modules(tree):
            path = module_file(name)
            if path is not None and path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


# Functions allowed to import library code, each for a reason. The graph read below still sees
# their imports (ast.walk enters functions), so what a stage or the bento needs stays complete.
DEFERRED_IMPORTS = {
    # only a torch worker loads torch: not the supervising process, not an ONNX worker
    ("src/cnnpipe/serve/runtime.py", "__init__"),
    # captum and matplotlib load on a worker's first /explain only
    ("src/cnnpipe/serve/runtime.py", "explain"),
    # torch loads once the params are known good: a bad value fails the stage in a second
    ("stages/train.py", "main"),
}


def test_library_code_imports_cnnpipe_at_module_level_only():
    """Imports at module level make the import graph a reader sees the one that runs."""
    for path in [*SRC.rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = imported_modules(ast.Module(body=node.body, type_ignores=[]))
                where = (path.relative_to(REPO).as_posix(), node.name)
                assert not inner or where in DEFERRED_IMPORTS, f"{where} imports {inner}"


def sections_read(script: Path) -> set[str]:
    """The params sections a stage reads: `params.load().<section>` (or one key of it,
    `params.load().<section>.<key>`); a bare `params.load()` (the check stage) reads them all."""
    tree = ast.parse(script.read_text())
    loads = {
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "params"
    }
    sections = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.value in loads
    }
    # `params.load().train.model`: one key of a section
    keys = {
        f"{node.value.attr}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.value in loads
    }
    sections = (sections - {key.split(".")[0] for key in keys}) | keys
    used = {node.value for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    if loads - used:
        sections |= set(yaml.safe_load((REPO / "params.yaml").read_text()))
    return sections


def script_of(stage: dict) -> Path:
    return REPO / stage["cmd"].split()[1]


@pytest.mark.parametrize("name", list(STAGES))
def test_declared_params_are_the_params_the_stage_reads(name):
    stage = STAGES[name]
    assert set(stage["params"]) == sections_read(script_of(stage))


@pytest.mark.parametrize("name", list(STAGES))
def test_declared_code_is_the_code_the_stage_imports(name):
    stage = STAGES[name]
    declared = [
        REPO / dep.replace("${lib}", LIB) for dep in stage["deps"] if dep.startswith("${lib}")
    ]
    imported = closure(script_of(stage))
    for path in imported:
        assert any(path == d or d in path.parents for d in declared), (
            f"{name} imports {path.relative_to(REPO)}, which dvc.yaml does not declare"
        )
    for dep in declared:
        assert any(path == dep or dep in path.parents for path in imported), (
            f"{name} declares {dep.relative_to(REPO)} but imports nothing of it"
        )
    assert script_of(stage).relative_to(REPO).as_posix() in stage["deps"]


def test_the_bento_includes_exactly_the_modules_the_service_imports_and_its_pages():
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    module, _ = bentofile["service"].split(":")
    service = module_file(module)
    imported = {p.relative_to(SRC).as_posix() for p in closure(service) | {service}}
    modules = [name for name in bentofile["include"] if name.endswith(".py")]
    assert sorted(modules) == sorted(imported)
    assert set(bentofile["include"]) - set(modules) == {"cnnpipe/serve/static/*"}


def test_the_stages_are_a_chain_from_check_to_package():
    outs = {name: {str(o) for o in stage.get("outs", [])} for name, stage in STAGES.items()}
    assert list(STAGES) == ["check", "generate", "process", "train", "evaluate", "package"]
    assert "${source}" in STAGES["generate"]["deps"] and "${raw}" in STAGES["process"]["deps"]
    assert "${raw}" in outs["generate"] and "${raw}" in STAGES["process"]["deps"]
    assert "${processed}" in STAGES["train"]["deps"] and "${model}" in STAGES["evaluate"]["deps"]


def test_every_stage_is_downstream_of_the_check_which_reads_every_param():
    """DVC runs check before it removes any other stage's outputs: it depends on every params
    section (so a changed value is checked first) and keeps its own output when it fails
    (persist). It is no always-changed stage, so `dvc status` can say the pipeline is up to date.
    generate hashes the image folder itself, which exists by default (images/ in git)."""
    check = STAGES["check"]
    assert not check.get("always_changed")
    assert check["outs"] == [{"${source}": {"persist": True}}]
    assert set(check["params"]) == set(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert "${generate.folder}" in STAGES["generate"]["deps"]
    default = yaml.safe_load((REPO / "params.yaml").read_text())["generate"]["folder"]
    assert (REPO / default).is_dir()
