"""`cnnpipe predict`: classify image files with a trained model, as the service would.

The model is the packaged one by default (the tag in the workspace's package record,
models/package.json, run by onnxruntime from the BentoML store, which gets it from the workspace
after a `dvc pull` as `bentoml serve` does), a store tag, or a checkpoint
file such as models/model.pt (run by torch). Each file is decoded by the pipeline's
preprocessing in a pool of processes, batches go to the runtime the service uses
(cnnpipe.serve.runtime), and each answer is the service's (cnnpipe.serve.contract.answer): the
same file gets the same label, "unknown" included, and the same probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model.card import ModelCard
from cnnpipe.predict import files
from cnnpipe.predict.results import Row
from cnnpipe.serve import packaging, runtime
from cnnpipe.serve.contract import answer
from cnnpipe.serve.settings import workspace_model

BATCH = 64  # images per call of the runtime
WORKSPACE_CHECKPOINT = Path("models/model.pt")
NO_MODEL = (
    "no model to predict with: run `dvc repro` (or `dvc pull`) in the project root, or name one "
    "with --model (a model store tag, or a checkpoint such as models/model.pt)"
)


@dataclass(frozen=True)
class Model:
    runtime: runtime.Runtime
    card: ModelCard
    name: str  # what to call it in messages


def open_model(choice: str | None, threads: int) -> Model:
    """The model `--model` names (see the module docstring), or CnnpipeError saying how to get
    one."""
    if choice is not None and Path(choice).is_file():
        return _checkpoint(Path(choice), threads)
    if choice is not None and Path(choice).exists():
        raise CnnpipeError(f"--model {choice}: a folder; name a checkpoint file or a store tag")
    if choice is not None and ("/" in choice or choice.endswith(".pt")):
        raise CnnpipeError(f"--model {choice}: no such file; name a checkpoint file or a store tag")
    tag = choice or workspace_model()
    if tag is not None:
        stored = _stored(tag, threads, required=choice is not None)
        if stored is not None:
            return stored
    if choice is None and WORKSPACE_CHECKPOINT.is_file():
        return _checkpoint(WORKSPACE_CHECKPOINT, threads)
    raise CnnpipeError(NO_MODEL)


def _checkpoint(path: Path, threads: int) -> Model:
    loaded = runtime.TorchRuntime(path, threads)
    return Model(loaded, loaded.card, f"{path} ({loaded.card.architecture}, torch)")


def _stored(tag: str, threads: int, required: bool) -> Model | None:
    import bentoml  # here: a checkpoint needs no model store
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        if not required and not _in_store(tag):
            packaging.store_workspace_model(tag)  # a pulled workspace: as `bentoml serve` does
        stored = bentoml.models.get(tag)
    except (NotFound, BentoMLException, ValueError, CnnpipeError) as exc:
        if required:
            raise CnnpipeError(f"--model {tag}: not in the BentoML model store ({exc})") from None
        return None
    loaded = runtime.load(Path(stored.path), "auto", threads)
    card = ModelCard.model_validate(stored.info.metadata)
    return Model(loaded, card, f"{stored.tag} ({card.architecture}, {loaded.name})")


def _in_store(tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        bentoml.models.get(tag)
    except (NotFound, BentoMLException, ValueError):
        return False
    return True


def predictions(
    paths: list[Path],
    model: Model,
    top_k: int | None,
    pool: Pool | None,
    progress: Callable[[int], object],
) -> Iterator[Row]:
    """One row per path, in order, the images answered BATCH at a time; `progress(n)` is called
    as n more are done."""
    window: list[tuple[Path, np.ndarray | str]] = []  # the files since the last batch
    readable = 0

    def answered() -> Iterator[Row]:
        images = [result for _, result in window if not isinstance(result, str)]
        answers: Iterator[tuple[np.ndarray, float | None]] = iter(())
        if images:
            probs, distances = model.runtime.scores(np.stack(images))
            far = [None] * len(probs) if distances is None else distances.tolist()
            answers = zip(probs, far, strict=True)
        for path, result in window:
            if isinstance(result, str):
                yield Row(path, None, result)
            else:
                p, d = next(answers)
                yield Row(path, answer(p, model.card, top_k, d))
        progress(len(window))
        window.clear()

    decoded = files.decoded(paths, model.card.image_size, model.card.channels, pool)
    for path, result in zip(paths, decoded, strict=True):
        window.append((path, result))
        readable += not isinstance(result, str)
        if readable == BATCH:
            yield from answered()
            readable = 0
    if window:
        yield from answered()
