"""The distance rule: feature statistics fitted on Gaussian clusters refuse a far cluster and keep
the validation coverage; the ONNX graph computes the torch runtime's distance; a checkpoint
without statistics still serves, with no distance rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnpipe.core.dataset import InputSpec
from cnnpipe.model import calibration, checkpoint, export, familiarity, files, registry
from cnnpipe.model.card import ModelCard
from cnnpipe.serve import runtime
from cnnpipe.serve.contract import answer

CLASSES, DIM = 3, 16


def clusters(n: int, seed: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n points per class around the class means 0, 4, 8 on every axis, correlated along the
    first two, shifted by `offset`."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), n)
    mixing = np.eye(DIM)
    mixing[0, 1] = 0.9
    points = rng.normal(size=(len(labels), DIM)) @ mixing + 4.0 * labels[:, None] + offset
    return points, labels


def test_the_distance_is_the_mahalanobis_distance_to_the_nearest_class():
    from sklearn.covariance import LedoitWolf  # seconds to import: only where it is used

    train, labels = clusters(400, seed=0)
    stats = familiarity.fit(train, labels, CLASSES, ["head"])
    means = np.stack([train[labels == c].mean(0) for c in range(CLASSES)])
    precision = LedoitWolf(assume_centered=True).fit(train - means[labels]).precision_
    x = np.random.default_rng(1).normal(2.0, 3.0, (20, DIM))
    expected = np.sqrt(
        np.min([np.einsum("ij,jk,ik->i", x - m, precision, x - m) for m in means], axis=0)
    )
    found = familiarity.distance(torch.from_numpy(x).float(), stats.means, stats.whitening)
    assert found.numpy() == pytest.approx(expected, rel=1e-4)


def test_the_two_thresholds_keep_the_val_coverage_and_refuse_a_far_cluster():
    train, labels = clusters(400, seed=0)
    stats = familiarity.fit(train, labels, CLASSES, ["head"])
    val, _ = clusters(300, seed=1)
    far, _ = clusters(100, seed=2, offset=12.0)  # beyond every class
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.4, 1.0, len(val))  # for the far cluster: as confident as val
    distance = familiarity.distance(torch.from_numpy(val).float(), stats.means, stats.whitening)
    threshold, limit = calibration.thresholds(confidence, distance.numpy(), 0.97, 0.5)
    kept = (confidence >= threshold) & (distance.numpy() <= limit)
    assert kept.mean() >= 0.97 and kept.mean() - 0.97 < 2 / len(val)
    unsure_alone = (confidence < threshold).mean()
    assert unsure_alone == pytest.approx(0.015, abs=1 / len(val))  # half the refused share
    far_distance = familiarity.distance(
        torch.from_numpy(far).float(), stats.means, stats.whitening
    ).numpy()
    assert (far_distance > limit).mean() >= 0.99
    # no distance rule: the confidence threshold alone keeps the coverage
    threshold_alone, _ = calibration.thresholds(confidence, distance.numpy(), 0.97, 0.0)
    assert threshold_alone == calibration.threshold_for_coverage(confidence, 0.97)


def test_selective_scores_count_both_rules():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    distance = np.array([1.0, 9.0, 2.0, 1.0])
    coverage, accuracy = calibration.selective_scores(p, np.array([0, 1, 1, 0]), 0.65, distance, 5)
    assert coverage == 0.5 and accuracy == 1.0  # the second is refused as far


CARD = ModelCard(
    classes=["a", "b"],
    image_size=32,
    channels=1,
    mean=[0.5],
    std=[0.25],
    architecture="lenet5",
    threshold=0.8,
    distance_threshold=6.0,
    feature_layers=["features.0", "features.3"],
    target_coverage=0.97,
)


def test_a_refused_answer_says_which_rule_refused_it():
    far = answer(np.array([0.95, 0.05]), CARD, None, 7.5)
    assert far.label is None and far.refusal == "unfamiliar" and far.distance == 7.5
    assert "7.5" in far.reason and "6.0" in far.reason
    unsure = answer(np.array([0.6, 0.4]), CARD, None, 2.0)
    assert unsure.label is None and unsure.refusal == "unsure" and "0.800" in unsure.reason
    both = answer(np.array([0.6, 0.4]), CARD, None, 9.0)
    assert both.refusal == "unfamiliar" and "0.800" in both.reason and "6.0" in both.reason
    sure = answer(np.array([0.95, 0.05]), CARD, None, 2.0)
    assert (sure.label, sure.refusal, sure.reason) == ("a", None, None)
    # a model without the distance rule: the distance alone refuses nothing
    old = CARD.model_copy(update={"distance_threshold": None})
    assert answer(np.array([0.95, 0.05]), old, None, None).label == "a"


def small_model(tmp_path, with_statistics: bool):
    """LeNet-5 (random weights) with statistics of random features, saved as a checkpoint."""
    torch.manual_seed(0)
    model = registry.build("lenet5", 1, 4, 32).eval()
    spec = InputSpec(classes=list("abcd"), image_size=32, channels=1, mean=[0.4], std=[0.2])
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 32, 32), dtype=np.uint8)
    layers = familiarity.feature_layers(model, 32, 1)
    assert layers == ["features.0", "features.3"]  # C1 and C3: the maps larger than 1x1
    extra = {"temperature": 1.3, "threshold": 0.3}
    stats = None
    if with_statistics:
        with familiarity.captured(model, layers) as found, torch.no_grad():
            model(((torch.from_numpy(images) / 255.0) - 0.4) / 0.2)
        stats = familiarity.fit(found[0].numpy(), np.arange(40) % 4, 4, layers)
        extra |= {"distance_threshold": 5.0, **stats.checkpoint_entries()}
    checkpoint.save(tmp_path / files.MODEL_FILE, model, "lenet5", spec, extra)
    return model, spec, stats, images


def test_the_onnx_graph_gives_the_torch_runtimes_distance(tmp_path):
    model, spec, _, images = small_model(tmp_path, with_statistics=True)
    data = checkpoint.read(tmp_path / files.MODEL_FILE)
    stats = familiarity.from_checkpoint(data)
    assert stats is not None and checkpoint.card_of(data).distance_threshold == 5.0
    graph = export.export_onnx(model, spec, tmp_path / files.MODEL_FILE, 1.3, stats)
    (tmp_path / files.ONNX_FILE).write_bytes(graph)
    onnx, torch_runtime = (runtime.load(tmp_path, name, threads=1) for name in ("onnx", "torch"))
    p_onnx, d_onnx = onnx.scores(images)
    p_torch, d_torch = torch_runtime.scores(images)
    assert d_onnx is not None and d_torch is not None and d_onnx.shape == (40,)
    assert np.abs(d_onnx - d_torch).max() <= 1e-4 * max(1.0, float(d_torch.max()))
    assert np.abs(p_onnx - p_torch).max() <= 1e-5
    difference, distance_difference = export.max_difference(
        tmp_path / files.ONNX_FILE, model, spec, images, temperature=1.3, statistics=stats
    )
    assert difference <= 1e-5 and distance_difference <= 1e-4


def test_a_checkpoint_without_statistics_serves_with_no_distance(tmp_path):
    model, spec, _, images = small_model(tmp_path, with_statistics=False)
    data = checkpoint.read(tmp_path / files.MODEL_FILE)
    assert familiarity.from_checkpoint(data) is None
    assert checkpoint.card_of(data).distance_threshold is None
    torch_runtime = runtime.load(tmp_path, "torch", threads=1)
    probabilities, distance = torch_runtime.scores(images)
    assert distance is None and probabilities.shape == (40, 4)
    graph = export.export_onnx(model, spec, tmp_path / files.MODEL_FILE, 1.3)
    (tmp_path / files.ONNX_FILE).write_bytes(graph)
    assert runtime.load(tmp_path, "onnx", threads=1).scores(images)[1] is None
