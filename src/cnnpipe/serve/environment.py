"""The bento's Python environment: every package the service imports, and everything those need,
at the versions requirements.lock pins, so that a containerised bento runs the versions the suite
ran. bentofile.yaml installs them from bento-requirements.txt beside this module (the build
context, src/, must hold it), which this writes from the lock:

    python -m cnnpipe.serve.environment

(tests/test_environment.py fails while the file disagrees with the lock or the service's
imports). No hashes: BentoML adds an unhashed `bentoml==<its version>` line to the bento's
requirements, and one hashed line would make pip require a hash of every line.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outputs import atomic_path

LOCK = Path("requirements.lock")
BENTOFILE = Path("bentofile.yaml")
BUILD_CONTEXT = Path("src")  # where bentofile.yaml's paths start (serve.packaging.build_bento)
HEADER = (
    "# The bento's packages: what the service imports and all they need, at requirements.lock's\n"
    "# versions. Written from the lock by `python -m cnnpipe.serve.environment`; do not edit.\n"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    """One requirement of the lock: `name==version ; marker`, and the packages it is there for."""

    name: str
    requirement: str
    needed_by: set[str] = field(default_factory=set)


def pins(lock: str) -> list[Pin]:
    """The lock's requirements in its order, hashes dropped, with uv's `# via` annotations."""
    found: list[Pin] = []
    in_via = False
    for line in lock.replace("\\\n", " ").splitlines():
        if line and not line.startswith(("#", " ")):
            requirement = line.split(" --hash=")[0].strip()
            name = re.match(r"[A-Za-z0-9._-]+", requirement)
            if name is None:
                raise CnnpipeError(f"{requirement!r} in the lock is no requirement: recompile it")
            found.append(Pin(canonical(name.group()), requirement))
            in_via = False
        elif found and (via := re.fullmatch(r"\s+# via(?: (.+))?", line)):
            if via.group(1):
                found[-1].needed_by.add(canonical(via.group(1).split(" (")[0]))
            in_via = via.group(1) is None
        elif found and in_via and (parent := re.fullmatch(r"\s+#\s+(\S+).*", line)):
            found[-1].needed_by.add(canonical(parent.group(1)))
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    """{top-level module: the installed distributions providing it}: a read of every installed
    distribution's file list (a second or two), once per process."""
    return dict(importlib.metadata.packages_distributions())


def imported_distributions(sources: Iterable[Path]) -> set[str]:
    """The installed distributions whose top-level modules these files import (cnnpipe's own and
    the standard library's left out)."""
    providers = _providers()
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for top in {module.split(".")[0] for module in modules}:
                if top == "cnnpipe" or top in sys.stdlib_module_names:
                    continue
                if top not in providers:
                    raise CnnpipeError(
                        f"{source} imports {top}, which no installed package provides: "
                        "install requirements.lock first"
                    )
                names.update(canonical(d) for d in providers[top])
    return names


def requirements(lock: str, roots: set[str]) -> str:
    """The lock's requirements of `roots` and of everything they need, in the lock's order."""
    locked = pins(lock)
    missing = roots - {pin.name for pin in locked}
    if missing:
        raise CnnpipeError(
            f"requirements.lock does not pin {', '.join(sorted(missing))}, which the service "
            "imports: add it to pyproject.toml and recompile the lock"
        )
    needed = set(roots)
    while grown := {p.name for p in locked if p.name not in needed and p.needed_by & needed}:
        needed |= grown
    return HEADER + "".join(f"{pin.requirement}\n" for pin in locked if pin.name in needed)


def bento_requirements(bentofile: Path = BENTOFILE, lock: Path = LOCK) -> tuple[Path, str]:
    """Where bentofile.yaml reads its requirements from, and what that file must say."""
    config = yaml.safe_load(bentofile.read_text())
    context = bentofile.parent / BUILD_CONTEXT
    # bentofile's include entries are glob patterns; only the Python files among them import
    sources = [
        path
        for pattern in config["include"]
        for path in sorted(context.glob(pattern))
        if path.suffix == ".py"
    ]
    text = requirements(lock.read_text(), imported_distributions(sources))
    return context / config["python"]["requirements_txt"], text


def main() -> None:
    try:
        path, text = bento_requirements()
    except CnnpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    lines = text.count("\n") - HEADER.count("\n")
    print(f"wrote {os.path.normpath(path)}: {lines} requirements")


if __name__ == "__main__":
    main()
