"""How far an image lies from every class the model knows: the Mahalanobis distance of its
features to the nearest class mean (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", 2018).

A classifier's softmax is confident far from its training data too: a digit shown to a shapes
model gets a high top probability about three times in four, so the confidence threshold alone
refuses few pictures of other kinds. What gives such a picture away is its low-level texture:
the mean and standard deviation of each channel of the early feature maps (the outputs of the
stages of the feature extractor whose map is larger than 1x1: `feature_layers`), measured on
shapes lenet5 to refuse every digit at the validation coverage where the head's input refuses a
fifth (bench/calibration.py). After training, the train split's feature vectors give one mean
per class and one covariance shared by the classes, shrunk by Ledoit-Wolf; the distance
threshold is chosen on the validation split with the confidence threshold
(cnnpipe.model.calibration.thresholds). The stages are taken from the first while the vector has
at most MAX_FEATURES numbers, which bounds the statistics' size in the checkpoint (a DenseNet's
stages have thousands of channels).

The statistics are stored whitened: W with W W^T the inverse covariance (its Cholesky factor)
and the class means times W, so the distance is the plain Euclidean distance of features @ W to
the nearest whitened mean, in float32 without cancellation, the same in torch and in the ONNX
graph (both run `distance`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# the checkpoint's keys of the statistics (beside the card's distance_threshold, feature_layers)
MEANS, WHITENING = "feature_means", "feature_whitening"
MAX_FEATURES = 2048  # numbers in the feature vector: 16 MB of whitening matrix at most


@dataclass(frozen=True)
class FeatureStatistics:
    layers: list[str]  # the modules whose output maps' channel statistics are the features
    means: torch.Tensor  # (classes, features): each class's mean feature vector, whitened
    whitening: torch.Tensor  # (features, features): W, with W W^T the inverse covariance

    def checkpoint_entries(self) -> dict:
        return {"feature_layers": self.layers, MEANS: self.means, WHITENING: self.whitening}


def from_checkpoint(data: dict) -> FeatureStatistics | None:
    """The statistics a checkpoint carries; None for one saved without them."""
    if data.get(MEANS) is None or data.get(WHITENING) is None:
        return None
    return FeatureStatistics(list(data["feature_layers"]), data[MEANS], data[WHITENING])


def feature_layers(model: nn.Module, image_size: int, channels: int) -> list[str]:
    """The stages whose output maps' statistics are the features: of the children of
    `model.features` where the model has one, else of the model, the convolutions and blocks
    whose output map is larger than 1x1 on this input, from the first while the feature vector
    (two numbers per channel) stays within MAX_FEATURES (at least the first stage)."""
    extractor = getattr(model, "features", model)
    prefix = "features." if extractor is not model else ""
    stages = {
        prefix + name: m
        for name, m in extractor.named_children()
        if isinstance(m, nn.Conv2d) or any(m.children())
    }
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, out: torch.Tensor) -> None:
        shapes.setdefault(name, tuple(out.shape))

    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=name: record(n, out))
        for name, m in stages.items()
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, channels, image_size, image_size), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    chosen: list[str] = []
    size = 0
    for name in stages:
        shape = shapes.get(name, ())
        if len(shape) != 4 or min(shape[-2:]) <= 1:
            continue
        if chosen and size + 2 * shape[1] > MAX_FEATURES:
            break
        chosen.append(name)
        size += 2 * shape[1]
    return chosen


@contextmanager
def captured(model: nn.Module, layers: list[str]) -> Iterator[list[torch.Tensor]]:
    """While inside, each forward pass appends its feature vectors (N, features) to the list
    yielded: the mean and standard deviation of each channel of each layer's output, in the
    order of `layers`. Forward hooks: the same for every architecture, and traced into the ONNX
    graph like any other operation."""
    found: list[torch.Tensor] = []
    maps: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> None:
        maps[name] = output
        if len(maps) == len(layers):
            found.append(
                torch.cat(
                    [s for n in layers for s in (maps[n].mean((2, 3)), maps[n].std((2, 3)))], 1
                )
            )
            maps.clear()

    hooks = [
        model.get_submodule(name).register_forward_hook(lambda _m, _i, out, n=name: keep(n, out))
        for name in layers
    ]
    try:
        yield found
    finally:
        for hook in hooks:
            hook.remove()


def fit(
    features: torch.Tensor | np.ndarray, labels: np.ndarray, classes: int, layers: list[str]
) -> FeatureStatistics:
    """Class means and the Ledoit-Wolf shrunk covariance of the features around them, in
    float64, stored whitened in float32. A class with no image gets the mean of all (it then
    refuses nothing it would not refuse anyway).

    In torch, not scikit-learn's LedoitWolf (which tests/test_familiarity.py checks it against):
    the statistics go into models/model.pt, whose bits must be the same on every machine, and
    torch's kernels are pinned in portable mode (cnnpipe.core.kernels) where NumPy's BLAS is
    not."""
    x = torch.as_tensor(features).double()
    y = torch.as_tensor(labels).long()
    overall = x.mean(0)
    means = torch.stack([x[y == c].mean(0) if (y == c).any() else overall for c in range(classes)])
    covariance = ledoit_wolf(x - means[y])
    # covariance = L L^T, so the precision is W W^T with W = L^-T
    lower = torch.linalg.cholesky(covariance)
    whitening = torch.linalg.solve_triangular(
        lower, torch.eye(len(covariance), dtype=torch.float64), upper=False
    ).T
    return FeatureStatistics(layers, (means @ whitening).float(), whitening.float())


def ledoit_wolf(x: torch.Tensor) -> torch.Tensor:
    """The Ledoit-Wolf shrunk covariance of centred samples (rows): the empirical covariance
    pulled towards a multiple of the identity by the shrinkage that minimises the expected
    squared error (Ledoit and Wolf, 2004), as sklearn.covariance.ledoit_wolf with
    assume_centered=True computes it."""
    n, p = x.shape
    empirical = x.T @ x / n
    mu = torch.trace(empirical) / p
    squared = x * x
    beta_sum = (squared.T @ squared).sum() / n
    delta_sum = (empirical * empirical).sum()
    beta = (beta_sum - delta_sum) / (p * n)
    delta = (delta_sum - 2 * mu * torch.trace(empirical) + p * mu * mu) / p
    shrinkage = 0.0 if delta == 0 else float(torch.clamp(beta, max=delta) / delta)
    identity = torch.eye(p, dtype=x.dtype)
    return (1 - shrinkage) * empirical + shrinkage * mu * identity


def distance(features: torch.Tensor, means: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    """(N,) the Mahalanobis distance of each feature vector to the nearest class mean, from the
    whitened statistics (see the module docstring)."""
    whitened = features.float() @ whitening
    gaps = whitened.unsqueeze(1) - means.unsqueeze(0)  # (N, classes, features)
    return (gaps * gaps).sum(2).min(1).values.sqrt()
