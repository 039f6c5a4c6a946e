"""requirements.lock pins every package the project installs; it must agree with pyproject.toml
(regenerate it with the command in its header when pyproject's dependencies change)."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO
from packaging.markers import Marker
from packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, list[tuple[str, Marker | None]]]:
    """{package: [(pinned version, environment marker)]} of requirements.lock."""
    pins: dict[str, list[tuple[str, Marker | None]]] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        pins.setdefault(canonical(requirement.name), []).append(
            (specifier.version, requirement.marker)
        )
    return pins


def wanted() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def test_the_lock_is_compiled_from_pyproject_with_the_dev_extra():
    header = (REPO / "requirements.lock").read_text().splitlines()[:2]
    assert "uv pip compile pyproject.toml --extra dev --universal" in header[1]
    assert "-o requirements.lock" in header[1]


def test_every_pyproject_requirement_is_pinned_within_its_range():
    pins = locked()
    python311 = {"python_version": "3.11", "python_full_version": "3.11.7"}
    for requirement in wanted():
        name = canonical(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock; recompile it"
        for version, marker in pins[name]:
            if marker is None or marker.evaluate(python311):
                assert requirement.specifier.contains(version, prereleases=True), (
                    f"requirements.lock pins {name}=={version}, pyproject wants {requirement}"
                )
