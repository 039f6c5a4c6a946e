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
