"""Packaging: the trained model into the BentoML model store, and a bento built around it.

A store entry is a packaged model's folder (cnnpipe.model.files) with the record's labels and
metadata; its checkpoint is hard-linked from the workspace's where the store is on the same file
system. The entry can always be made again from the workspace: after `dvc pull` the service makes
it from models/ when the store lacks it, so no archive of the model lives in DVC. A bento holds
no copy of the model (BentoML bundles it only into an exported archive).
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import files
from cnnpipe.serve import record

NAME = "cnnpipe"  # of the stored model and of the bento (bentofile.yaml)


def store_model(
    tag: str, folder: Path, labels: dict[str, str], metadata: dict, sha256: dict[str, str]
) -> str:
    """Put the packaged model in `folder` into the model store as `tag`. An entry of that tag is
    kept if its files have these hashes (`sha256`, of model.pt and model.onnx), else replaced."""
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        pass
    else:
        if _holds(Path(stored.path), sha256):
            return str(stored.tag)
        bentoml.models.delete(tag)
    try:
        with bentoml.models.create(tag, labels=labels, metadata=metadata):
            pass
    except BentoMLException:  # made meanwhile by another process (a worker of the same server)
        return str(bentoml.models.get(tag).tag)
    # BentoML copies what is written into a new entry: the files go into the saved one.
    path = Path(bentoml.models.get(tag).path)
    try:
        for name in files.FILES:
            files.place(folder / name, path / name)
    except BaseException:
        bentoml.models.delete(tag)  # no entry without its files
        raise
    return tag


def _holds(path: Path, sha256: dict[str, str]) -> bool:
    try:
        return files.hashes(path, sha256) == sha256
    except OSError:
        return False


def store_workspace_model(tag: str, record_path: Path = record.RECORD) -> bool:
    """Make the store entry `tag` from the workspace when the package record there names it:
    what `bentoml serve` in the project root does after `dvc pull`. False when it does not."""
    try:
        packaged = record.read(record_path)
    except CnnpipeError:
        return False
    if packaged.model != tag:
        return False
    folder = record_path.parent
    try:
        found = files.hashes(folder, packaged.sha256)
    except OSError:
        found = {}
    if found != packaged.sha256:
        raise CnnpipeError(
            f"{folder}/{files.MODEL_FILE} and {files.ONNX_FILE} are not the files "
            f"{record_path} records for {tag}; run `dvc checkout` (or `dvc pull`) in the project "
            "root"
        )
    store_model(tag, folder, packaged.labels, packaged.metadata, packaged.sha256)
    return True


def build_bento(bentofile: Path, version: str, model_tag: str) -> str:
    """Build the bento described by bentofile (its build context is src/) around model_tag,
    replacing one of the same version; returns its tag."""
    # The build imports the service, which picks its model from CNNPIPE_MODEL: name this one, or
    # the bento would bundle whichever model the store holds as the latest.
    os.environ["CNNPIPE_MODEL"] = model_tag
    try:
        bentoml.bentos.delete(f"{NAME}:{version}")
    except NotFound:
        pass
    bento = bentoml.bentos.build_bentofile(
        str(bentofile.resolve()),
        build_ctx=str((bentofile.parent / "src").resolve()),
        version=version,
        labels={"model": model_tag},
    )
    return str(bento.tag)
