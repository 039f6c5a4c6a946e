"""What the package stage records beside the model it packaged (models/package.json, a DVC
output): the model's BentoML tag, its store entry's labels and metadata, the sha256 of its two
files, the bento built around it, and the MLflow registry version it registered.

From the record and the two files, anyone holding them (a teammate after `dvc pull`) makes the
same store entry (cnnpipe.serve.packaging), and the regression gate knows which registry version
is this model's, by identity rather than by a tag anyone may set (cnnpipe.gate).
"""

from __future__ import annotations

import typing as t
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outputs import write_json

RECORD = Path("models/package.json")  # beside models/model.pt and models/model.onnx


class Registered(BaseModel):
    """A model version in MLflow's registry, with the sha256 of every file it was registered
    with (by path within the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    run_id: str
    sha256: dict[str, str]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # the BentoML store tag, cnnpipe:<version>
    bento: str | None  # the bento's tag, when the stage built one (package.build)
    sha256: dict[str, str]  # of model.pt and model.onnx
    labels: dict[str, str]  # of the store entry
    metadata: dict[str, t.Any]  # of the store entry: the model card and the export's check
    registered: Registered | None  # None when tracking was off or failed


def write(record: Record, path: Path = RECORD) -> None:
    write_json(path, record.model_dump())


def read(path: Path = RECORD) -> Record:
    """The record; a missing or unreadable one raises one CnnpipeError saying how to get it."""
    try:
        return Record.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        problem = "not found" if isinstance(exc, FileNotFoundError) else "not a package record"
        raise CnnpipeError(
            f"{path}: {problem}; run `dvc pull` (or `dvc repro`) in the project root"
        ) from None
