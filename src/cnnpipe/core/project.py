"""Where the project lives, also when DVC runs a stage inside a temporary experiment copy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def project_root() -> Path:
    """The project's own root: DVC_ROOT under DVC (the real root, also in a queued experiment),
    else the nearest parent of the current directory holding dvc.yaml."""
    if root := os.environ.get("DVC_ROOT"):
        return Path(root)
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


def git_revision(cwd: Path | None = None) -> str | None:
    """The commit the working tree is on, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None
