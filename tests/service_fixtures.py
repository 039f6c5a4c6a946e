"""What the service tests share: a tiny trained model in the store with its checked ONNX export
(a temperature and feature statistics in its graph, the thresholds in its card), a picture it
does not know, and the service module imported afresh with given settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bentoml
import numpy as np
import pytest
import torch
from conftest import TINY, encode
from PIL import Image

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import read_split
from cnnpipe.core.params import GenerateParams, ProcessParams
from cnnpipe.data import sources, split
from cnnpipe.model import checkpoint, export, familiarity, files, registry
from cnnpipe.model.inference import Placement, logits_and_features, probabilities
from cnnpipe.serve import packaging

MAX_UPLOAD = 2_000_000
MAX_PIXELS = 1_000_000
TEST_METRICS = {"test_accuracy": 1.0}
SERVICE = "cnnpipe.serve.service"
TEMPERATURE = 1.5  # the card's, as training would fit it (the tiny model's val split is easy)
DATA_HASH = "0123456789abcdef0123456789abcdef.dir"


def stranger(size: int = 32) -> Image.Image:
    """A checkerboard: a picture of none of the classes, which the tiny model is unsure of."""
    return Image.fromarray((np.indices((size, size)).sum(0) % 2 * 255).astype(np.uint8))


def train_tiny(images: np.ndarray, labels: np.ndarray, spec) -> torch.nn.Module:
    """LeNet-5 fitted to the clean shapes in a few seconds."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = registry.build("lenet5", spec.channels, len(spec.classes), spec.image_size)
    x = preprocess.normalize(torch.from_numpy(np.asarray(images)), spec.mean, spec.std)
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    for _ in range(40):
        for i in torch.randperm(len(x)).split(16):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            optimizer.step()
    return model.eval()


def stored_model(base: Path) -> dict:
    """Raw images, processed splits, a trained model and its ONNX export in the store (as the
    package stage puts them there), and the test images."""
    raw, processed = base / "raw", base / "processed"
    sources.write_raw(GenerateParams(**{**TINY["generate"], "images_per_class": 60}), raw)
    spec = split.write_processed(raw, processed, ProcessParams(**TINY["process"]), "lenet5").spec
    train = read_split(processed, "train", mmap=False)
    model = train_tiny(train.images, train.labels, spec)
    test = read_split(processed, "test", mmap=False)
    # the threshold: halfway between the checkerboard's top probability and the least sure test
    # image's
    confidence = probabilities(model, spec, test.images, TEMPERATURE).max(1)
    board = preprocess.load(encode(stranger()), spec.image_size, spec.channels)
    unsure = probabilities(model, spec, board[None], TEMPERATURE).max()
    assert unsure < confidence.min(), (
        "the tiny model is surer of a checkerboard than of a test image"
    )
    # the distance rule: statistics of the train split, a distance threshold over every test
    # image's
    layers = familiarity.feature_layers(model, spec.image_size, spec.channels)
    placement = Placement(torch.device("cpu"), spec.mean, spec.std)
    _, features = logits_and_features(model, torch.from_numpy(train.images), placement, 256, layers)
    statistics = familiarity.fit(features.numpy(), train.labels, len(spec.classes), layers)
    _, features = logits_and_features(model, torch.from_numpy(test.images), placement, 256, layers)
    test_distance = familiarity.distance(features, statistics.means, statistics.whitening)
    calibrated = {
        "temperature": TEMPERATURE,
        "threshold": float(unsure + confidence.min()) / 2,
        "target_coverage": 1.0,
        "distance_threshold": 2 * float(test_distance.max()),
        **statistics.checkpoint_entries(),
        "data_hash": DATA_HASH,
    }
    checkpoint.save(base / "model.pt", model, "lenet5", spec, {"best_epoch": 1, **calibrated})
    card = checkpoint.card_of(checkpoint.read(base / "model.pt")).model_copy(
        update={
            "sha256": files.file_hash(base / "model.pt"),
            "test_metrics": TEST_METRICS,
            "git_revision": "abc123",
        }
    )
    graph = export.export_onnx(model, card, base / "model.pt", TEMPERATURE, statistics)
    (base / "model.onnx").write_bytes(graph)
    difference, _ = export.max_difference(
        base / "model.onnx", model, card, test.images, 256, TEMPERATURE, statistics
    )
    tag = packaging.store_model(
        f"{packaging.NAME}:test0000",
        base,
        {"architecture": card.architecture},
        {**card.model_dump(exclude_none=True), "onnx_max_difference": difference},
        files.hashes(base, files.FILES),
    )
    predicted = probabilities(model, spec, test.images).argmax(1)
    return {
        "raw": raw,
        "tag": tag,
        "dir": Path(bentoml.models.get(tag).path),
        "info": spec,
        "card": card,
        "model": model,
        "test": test,
        "predicted": predicted,
    }


@contextmanager
def imported_service(env: dict[str, str]) -> Iterator:
    """The service module imported with these CNNPIPE_* settings (and no others), afresh."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("CNNPIPE_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        sys.modules.pop(SERVICE, None)
        try:
            __import__(SERVICE)
            yield sys.modules[SERVICE]
        finally:
            sys.modules.pop(SERVICE, None)


def one_per_class(stored: dict) -> list[tuple[Path, str]]:
    """For each class, the first test image the model gets right in-process."""
    test, classes = stored["test"], stored["info"].classes
    firsts = {}
    for file, label, predicted in zip(test.files, test.labels, stored["predicted"], strict=True):
        if label == predicted:
            firsts.setdefault(classes[label], stored["raw"] / file)
    assert list(firsts) == classes, "the tiny model gets no test image of some class right"
    return [(path, name) for name, path in firsts.items()]


def truncated(fmt: str) -> bytes:
    data = encode(Image.new("RGB", (64, 64), (200, 10, 10)).effect_spread(8), fmt)
    return data[: len(data) // 2]
