"""Probabilities that mean what they say, and when to say "I don't know".

A network trained with cross-entropy (and label smoothing) is rarely calibrated: among the images
it gives 0.9, far more or far fewer than 90% are right. Temperature scaling (Guo et al., "On
Calibration of Modern Neural Networks", 2017) divides the logits by one scalar T fitted on the
validation split by minimising the negative log-likelihood: the predicted class of every image
stays the same (accuracy is unchanged), only the confidence moves. The threshold is then the
calibrated top probability that `target_coverage` of the validation images reach: an image
under it gets no label ("unknown"). Calibration error is measured on the test split, with the
usual 15 equal-width bins of the top probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from cnnpipe.core.dataset import InputSpec, Split
from cnnpipe.model.inference import Placement, as_tensor, logits

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


def split_logits(
    model: torch.nn.Module, split: Split, spec: InputSpec, device: torch.device, batch_size: int
) -> torch.Tensor:
    """The logits of every image of a split, in order."""
    model.to(device)
    return logits(
        model, as_tensor(split.images), Placement(device, spec.mean, spec.std), batch_size
    )


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


def calibrate(
    model: torch.nn.Module,
    val: Split,
    spec: InputSpec,
    device: torch.device,
    batch_size: int,
    fit: bool,
    target_coverage: float,
) -> Calibration:
    """The temperature (fitted, or 1 when not `fit`) and the threshold, from the val split."""
    z, y = split_logits(model, val, spec, device, batch_size), torch.from_numpy(val.labels)
    temperature = fit_temperature(z, y) if fit else 1.0
    calibrated = softmax(z, temperature)
    return Calibration(
        temperature=temperature,
        threshold=threshold_for_coverage(calibrated.max(1), target_coverage),
        target_coverage=target_coverage,
        val_nll=negative_log_likelihood(calibrated, val.labels),
        val_nll_uncalibrated=negative_log_likelihood(softmax(z), val.labels),
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
    probabilities: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[float, float]:
    """(coverage, accuracy on the covered images) at a threshold on the top probability."""
    covered = probabilities.max(1) >= threshold
    right = probabilities.argmax(1) == labels
    accuracy = float(right[covered].mean()) if covered.any() else 0.0
    return float(covered.mean()) if len(labels) else 0.0, accuracy
