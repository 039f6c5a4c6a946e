"""Probabilities that mean what they say, and when to say "I don't know".

A network trained with cross-entropy (and label smoothing) is rarely calibrated: among the images
it gives 0.9, far more or far fewer than 90% are right. Temperature scaling (Guo et al., "On
Calibration of Modern Neural Networks", 2017) divides the logits by one scalar T fitted on the
validation split by minimising the negative log-likelihood: the predicted class of every image
stays the same (accuracy is unchanged), only the confidence moves.

An image gets no label ("unknown") for one of two reasons: its calibrated top probability is
under the threshold ("unsure"), or its features lie farther than the distance threshold from
every class (cnnpipe.model.familiarity: "unfamiliar"). Together the two rules keep
`target_coverage` of the validation images; of the validation images they refuse, the
confidence threshold is set to refuse the share 1 - `unfamiliar_share` on its own, and the
distance threshold then refuses the rest among the images it left (`thresholds`). With
`unfamiliar_share` 0 there is no distance rule, and the threshold alone keeps `target_coverage`.
Calibration error is measured on the test split, with the usual 15 equal-width bins of the top
probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from cnnpipe.core.dataset import InputSpec, Split
from cnnpipe.model import familiarity
from cnnpipe.model.familiarity import FeatureStatistics
from cnnpipe.model.inference import Placement, as_tensor, logits_and_features

ECE_BINS = 15
# T stays within these bounds: a very small validation split can push it anywhere.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


@dataclass(frozen=True)
class Calibration:
    temperature: float
    threshold: float
    target_coverage: float
    val_nll: float  # with the temperature
    val_nll_uncalibrated: float
    # the distance rule: None without one (unfamiliar_share 0, or coverage 1)
    distance_threshold: float | None = None
    statistics: FeatureStatistics | None = None

    def checkpoint_entries(self) -> dict:
        """What the checkpoint keeps of it (the card's fields and the feature statistics)."""
        entries: dict[str, object] = {
            "temperature": self.temperature,
            "threshold": self.threshold,
            "target_coverage": self.target_coverage,
        }
        if self.statistics is not None:
            entries |= {"distance_threshold": self.distance_threshold}
            entries |= self.statistics.checkpoint_entries()
        return entries


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the NLL of softmax(logits / T): LBFGS on log T (which
    keeps T positive), in float64, bounded to [MIN_TEMPERATURE, MAX_TEMPERATURE].

    When the model gets every image right the NLL has no minimum (it falls as T goes to 0, and
    the first wrong image later gets a probability of 0): T is then the one whose mean top
    probability is Laplace's estimate of the accuracy, (n + 1) / (n + 2) for n images."""
    z, y = logits.detach().double(), labels.long()
    bounds = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    if len(y) and bool((z.argmax(1) == y).all()):
        return _temperature_for_confidence(z, (len(y) + 1) / (len(y) + 2), bounds)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(*bounds).exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(*bounds).exp())


def _temperature_for_confidence(
    z: torch.Tensor, target: float, bounds: tuple[float, float]
) -> float:
    """The T within bounds whose mean top probability is `target` (it falls as T rises), by
    bisection on log T."""
    low, high = bounds
    for _ in range(60):
        middle = (low + high) / 2
        confidence = torch.softmax(z / math.exp(middle), dim=1).max(1).values.mean()
        low, high = (middle, high) if confidence > target else (low, middle)
    return math.exp((low + high) / 2)


def softmax(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) as float64, for the metrics."""
    return torch.softmax(logits.double() / temperature, dim=1).numpy()


def threshold_for_coverage(confidence: np.ndarray, coverage: float) -> float:
    """The highest threshold that at least `coverage` of these top probabilities reach (an image
    is labelled when its top probability >= the threshold); 0 for coverage 1."""
    refused = math.floor(len(confidence) * (1.0 - coverage) + 1e-9)
    if refused <= 0:
        return 0.0
    return float(np.sort(confidence)[refused])


def thresholds(
    confidence: np.ndarray, distance: np.ndarray, coverage: float, unfamiliar_share: float
) -> tuple[float, float]:
    """(confidence threshold, distance threshold) that together keep at least `coverage` of
    these images (an image is kept when its confidence >= the first and its distance <= the
    second). Of the images to refuse, the confidence threshold refuses 1 - unfamiliar_share on
    its own; the distance threshold is the largest distance among the images it leaves that
    still keeps `coverage` of all."""
    alone = 1.0 - (1.0 - coverage) * (1.0 - unfamiliar_share)  # what the first rule keeps
    threshold = threshold_for_coverage(confidence, alone)
    left = np.sort(distance[confidence >= threshold])
    if not len(left):
        return threshold, 0.0
    kept = math.ceil(len(confidence) * coverage - 1e-9)
    return threshold, float(left[min(max(kept, 1), len(left)) - 1])


def calibrate(
    model: torch.nn.Module,
    train: Split,
    val: Split,
    spec: InputSpec,
    device: torch.device,
    batch_size: int,
    fit: bool,
    target_coverage: float,
    unfamiliar_share: float = 0.0,
) -> Calibration:
    """The temperature (fitted, or 1 when not `fit`) and the threshold, from the val split; with
    an `unfamiliar_share` (and a coverage under 1), the feature statistics of the train split and
    the distance threshold too."""
    model.to(device)
    placement = Placement(device, spec.mean, spec.std)
    distance_rule = unfamiliar_share > 0 and target_coverage < 1
    layers = (
        familiarity.feature_layers(model, spec.image_size, spec.channels) if distance_rule else None
    )
    z, features = logits_and_features(model, as_tensor(val.images), placement, batch_size, layers)
    y = torch.from_numpy(val.labels)
    temperature = fit_temperature(z, y) if fit else 1.0
    calibrated = softmax(z, temperature)
    confidence_only = Calibration(
        temperature=temperature,
        threshold=threshold_for_coverage(calibrated.max(1), target_coverage),
        target_coverage=target_coverage,
        val_nll=negative_log_likelihood(calibrated, val.labels),
        val_nll_uncalibrated=negative_log_likelihood(softmax(z), val.labels),
    )
    if not layers:
        return confidence_only
    _, train_features = logits_and_features(
        model, as_tensor(train.images), placement, batch_size, layers
    )
    statistics = familiarity.fit(train_features, train.labels, int(z.shape[1]), layers)
    distance = familiarity.distance(features, statistics.means, statistics.whitening).numpy()
    threshold, distance_threshold = thresholds(
        calibrated.max(1), distance, target_coverage, unfamiliar_share
    )
    return replace(
        confidence_only,
        threshold=threshold,
        distance_threshold=distance_threshold,
        statistics=statistics,
    )


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class)."""
    p = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean()) if len(labels) else 0.0


@dataclass(frozen=True)
class Reliability:
    """Per bin of the top probability: its images, their mean top probability and accuracy."""

    edges: np.ndarray  # bins + 1 edges from 0 to 1
    count: np.ndarray
    confidence: np.ndarray  # nan in an empty bin
    accuracy: np.ndarray  # nan in an empty bin


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """The reliability diagram's bins: (i/bins, (i+1)/bins], the first including 0."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return Reliability(edges, count, mean_confidence, accuracy)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the mean over images of |accuracy - confidence| of their bin."""
    r = reliability(probabilities, labels, bins)
    filled = r.count > 0
    gaps = np.abs(r.accuracy[filled] - r.confidence[filled]) * r.count[filled]
    return float(gaps.sum() / max(1, len(labels)))


def selective_scores(
    probabilities: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    distance: np.ndarray | None = None,
    distance_threshold: float | None = None,
) -> tuple[float, float]:
    """(coverage, accuracy on the covered images) at a threshold on the top probability, and
    on the distance where both are given."""
    covered = probabilities.max(1) >= threshold
    if distance is not None and distance_threshold is not None:
        covered &= distance <= distance_threshold
    right = probabilities.argmax(1) == labels
    accuracy = float(right[covered].mean()) if covered.any() else 0.0
    return float(covered.mean()) if len(labels) else 0.0, accuracy
