"""The BentoML service: `POST /predict` with an uploaded image returns its label and the
probability of every class. The model comes from the BentoML model store (the package stage
puts it there); its preprocessing is the pipeline's own (cnnpipe.preprocess)."""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
import torch
from bentoml.exceptions import InvalidArgument
from pydantic import BaseModel

from cnnpipe import checkpoint, preprocess

MODEL_TAG = os.environ.get("CNNPIPE_MODEL", "cnnpipe:latest")
THREADS = int(os.environ.get("CNNPIPE_THREADS", "1"))


class Prediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]


def probabilities(
    model: torch.nn.Module, info: checkpoint.ModelInfo, batch: np.ndarray
) -> np.ndarray:
    """Class probabilities for a uint8 batch (N, C, H, W) made by preprocess.load."""
    with torch.inference_mode():
        x = preprocess.normalize(torch.as_tensor(batch), info.mean, info.std)
        return torch.softmax(model(x), dim=1).numpy()


@bentoml.service(name="cnnpipe", traffic={"timeout": 30})
class Classifier:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        torch.set_num_threads(THREADS)
        self.model, self.info, _ = checkpoint.load(Path(self.bento_model.path_of("model.pt")))

    @bentoml.api
    def predict(self, file: Path, top_k: int = 0) -> Prediction:
        """Classify one uploaded image (multipart field `file`)."""
        try:
            pixels = preprocess.load(file, self.info.image_size, self.info.channels)
        except preprocess.ImageError as exc:
            raise InvalidArgument(str(exc)) from None
        probs = probabilities(self.model, self.info, pixels[None])[0]
        ranked = np.argsort(-probs, kind="stable")
        if top_k > 0:
            ranked = ranked[:top_k]
        return Prediction(
            label=self.info.classes[ranked[0]],
            confidence=float(probs[ranked[0]]),
            probabilities={self.info.classes[i]: float(probs[i]) for i in ranked},
        )
