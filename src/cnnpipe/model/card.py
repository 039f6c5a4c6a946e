"""The model card: what a trained model takes and what the pipeline knows of it. This module
imports no torch, so the service's supervising process can read cards without loading torch."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from cnnpipe.core.dataset import InputSpec

RefusalKind = t.Literal["unsure", "unfamiliar"]


@dataclass(frozen=True)
class Refusal:
    """Why an image gets no label: its kind and a sentence for people."""

    kind: RefusalKind
    reason: str


class ModelCard(InputSpec):
    """A trained model: what it takes (InputSpec), its architecture, and what the pipeline knows
    of it. The checkpoint holds the first part; the package stage completes it for the model
    store, and the service's /metadata answers with it."""

    architecture: str
    best_epoch: int | None = None
    sha256: str | None = None
    test_metrics: dict[str, float] = {}
    git_revision: str | None = None
    # Calibration, fitted on the validation split after training (cnnpipe.model.calibration):
    # the probabilities served are softmax(logits / temperature), and an image whose top
    # probability is under the threshold gets no label. 1 and 0: uncalibrated, always a label.
    temperature: float = 1.0
    threshold: float = 0.0
    target_coverage: float | None = None  # the share of validation images both rules keep
    # The distance rule (cnnpipe.model.familiarity): an image whose features lie farther than
    # this from every class (the Mahalanobis distance to the nearest class mean of the channel
    # statistics of the outputs of `feature_layers`) gets no label either. None: a model without
    # feature statistics.
    distance_threshold: float | None = None
    feature_layers: list[str] | None = None
    data_hash: str | None = None  # DVC's hash of the processed data it was trained on

    def refusal(self, confidence: float, distance: float | None = None) -> Refusal | None:
        """Why an image with this top probability (and distance) gets no label, or None if it
        gets one: "unfamiliar" when its features are far from every class, else "unsure" when
        its top probability is under the threshold."""
        unsure = confidence < self.threshold
        limit = self.distance_threshold
        far = distance is not None and limit is not None and distance > limit
        if not (unsure or far):
            return None
        kept = (
            f" ({self.target_coverage:.0%} of the validation images get a label)"
            if self.target_coverage is not None
            else ""
        )
        said = []
        if far:
            said.append(
                f"its features lie {distance:.1f} from the nearest class, farther than the "
                f"model's distance threshold {limit:.1f}"
            )
        if unsure:
            said.append(
                f"the top probability {confidence:.3f} is under the model's threshold "
                f"{self.threshold:.3f}"
            )
        why = " and ".join(said)
        return Refusal(
            "unfamiliar" if far else "unsure",
            f"{why}{kept}: the image may show none of its classes",
        )
