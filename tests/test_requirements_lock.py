"""requirements.lock pins every package the project installs, each with the sha256 of its files;
it must agree with pyproject.toml (regenerate it with the command in its header when pyproject's
dependencies change)."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO
from packaging.markers import Marker
from packaging.requirements import Requirement

COMMAND = (
    "uv pip compile pyproject.toml --extra dev --extra remote --universal --python-version 3.11"
    " --generate-hashes -o requirements.lock"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries() -> list[tuple[Requirement, list[str]]]:
    """(requirement, its hashes) for each requirement of requirements.lock, continuation lines
    joined."""
    text = (REPO / "requirements.lock").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        requirement, *hashes = line.split(" --hash=")
        found.append((Requirement(requirement.strip()), [h.strip() for h in hashes]))
    return found


def locked() -> dict[str, list[tuple[str, Marker | None]]]:
    """{package: [(pinned version, environment marker)]} of requirements.lock."""
    pins: dict[str, list[tuple[str, Marker | None]]] = {}
    for requirement, _ in entries():
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", requirement
        pins.setdefault(canonical(requirement.name), []).append(
            (specifier.version, requirement.marker)
        )
    return pins


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def wanted() -> list[Requirement]:
    extras = project()["optional-dependencies"]
    return [Requirement(r) for r in project()["dependencies"] + sum(extras.values(), [])]


def test_the_lock_is_compiled_from_pyproject_with_every_extra_and_hashes():
    header = (REPO / "requirements.lock").read_text().splitlines()[:2]
    assert header[1].strip().removeprefix("#").strip() == COMMAND
    for extra in project()["optional-dependencies"]:
        assert f"--extra {extra} " in COMMAND, f"the lock leaves out pyproject's extra {extra}"


def test_every_locked_package_carries_the_hashes_of_its_files():
    for requirement, hashes in entries():
        assert hashes, f"{requirement} has no --hash; recompile with: {COMMAND}"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), requirement


def test_every_pyproject_requirement_is_pinned_within_its_range():
    pins = locked()
    python311 = {"python_version": "3.11", "python_full_version": "3.11.7"}
    assert {"dvc-s3", "dvc-gs", "dvc-ssh"} <= {canonical(r.name) for r in wanted()}
    for requirement in wanted():
        name = canonical(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock; recompile it"
        for version, marker in pins[name]:
            if marker is None or marker.evaluate(python311):
                assert requirement.specifier.contains(version, prereleases=True), (
                    f"requirements.lock pins {name}=={version}, pyproject wants {requirement}"
                )
