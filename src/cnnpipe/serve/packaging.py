"""Packaging: the trained model into the BentoML model store, and a bento built around it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from cnnpipe.model.card import ModelCard

NAME = "cnnpipe"  # of the stored model and of the bento (bentofile.yaml)
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"  # the ONNX export, when the package stage wrote one
TAGS_FILE = Path("models/bento/tags.json")  # the tags of the workspace's model and bento
MODEL_ARCHIVE = "cnnpipe.bentomodel"  # the stored model as one file, beside TAGS_FILE


def store_model(
    version: str,
    model_path: Path,
    card: ModelCard,
    onnx_path: Path | None = None,
    metadata: dict | None = None,
) -> str:
    """Put the model file (and its ONNX export) into the model store as cnnpipe:version, its card
    and `metadata` as the metadata. An entry of that version is kept if it holds the same files,
    and replaced if it lacks the export."""
    tag = f"{NAME}:{version}"
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        pass
    else:
        if onnx_path is None or Path(stored.path_of(ONNX_FILE)).exists():
            return str(stored.tag)
        bentoml.models.delete(tag)
    labels = {"architecture": card.architecture, "classes": str(len(card.classes))}
    # BentoML metadata holds no None
    metadata = {**card.model_dump(exclude_none=True), **(metadata or {})}
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as ref:
        shutil.copyfile(model_path, Path(ref.path) / MODEL_FILE)
        if onnx_path is not None:
            shutil.copyfile(onnx_path, Path(ref.path) / ONNX_FILE)
    return tag


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


def export_bento(tag: str, path: Path) -> None:
    """Write the bento, its model included, as one archive (bentoml import reads it)."""
    bentoml.bentos.export_bento(tag, str(path.resolve()))


def export_model(tag: str, path: Path) -> None:
    """Write the stored model as one archive (`bentoml models import` reads it)."""
    bentoml.models.export_model(tag, str(path.resolve()))
