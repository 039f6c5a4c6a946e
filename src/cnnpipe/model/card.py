"""The model card: what a trained model takes and what the pipeline knows of it. This module
imports no torch, so the service's supervising process can read cards without loading torch."""

from __future__ import annotations

from cnnpipe.core.dataset import InputSpec


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
    target_coverage: float | None = None  # the share of validation images the threshold keeps
    data_hash: str | None = None  # DVC's hash of the processed data it was trained on

    def refusal(self, confidence: float) -> str | None:
        """Why an image with this top probability gets no label, or None if it gets one."""
        if confidence >= self.threshold:
            return None
        reached = (
            f", which {self.target_coverage:.0%} of the validation images reach"
            if self.target_coverage is not None
            else ""
        )
        return (
            f"the top probability {confidence:.3f} is under the model's threshold "
            f"{self.threshold:.3f}{reached}: the image may show none of its classes"
        )
