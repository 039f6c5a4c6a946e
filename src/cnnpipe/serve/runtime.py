"""What runs the model in a worker: onnxruntime on the package stage's ONNX export, or torch on
the checkpoint. Both take the uint8 batch preprocess.load makes and return calibrated class
probabilities, softmax(logits / the card's temperature), and, for a model with feature
statistics, each image's distance to the nearest class (cnnpipe.model.familiarity); the export
is the torch runtime's module (cnnpipe.model.inference.ServedModel) traced, and was checked
against torch on the test split when it was packaged. A model packaged without statistics has
no distance: no distance rule.

Torch and onnxruntime are imported only when a worker loads its runtime: the supervising process
of `bentoml serve` imports the service module too, and an ONNX worker never loads torch (it would
cost seconds of start-up and hundreds of MB per process).
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import numpy as np

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model.files import MODEL_FILE, ONNX_FILE

RuntimeName = t.Literal["onnx", "torch"]


class Runtime(t.Protocol):
    name: RuntimeName

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, classes) of a uint8 batch (N, C, H, W), and the distances
        (N,) where the model has feature statistics."""
        ...

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of a uint8 batch (N, C, H, W)."""
        ...


class OnnxRuntime:
    name: RuntimeName = "onnx"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads would spin for the next batch, taking the core that parses the requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(None, {self.input: np.ascontiguousarray(batch)})
        return out[0], out[1] if len(out) > 1 else None

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.scores(batch)[0]


class TorchRuntime:
    name: RuntimeName = "torch"

    def __init__(self, path: Path, threads: int) -> None:
        # Deferred: only a torch worker loads torch (see the module docstring).
        import torch

        from cnnpipe.model import checkpoint, familiarity, inference

        torch.set_num_threads(threads)
        self.model, self.card, data = checkpoint.load(path)
        statistics = familiarity.from_checkpoint(data)
        self.served = inference.ServedModel(
            self.model, self.card, self.card.temperature, statistics
        ).eval()
        self._scores = inference.scores

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._scores(self.served, batch)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.scores(batch)[0]

    def explain(self, pixels: np.ndarray) -> tuple[bytes, int]:
        """A PNG of the Grad-CAM heat map of one model input over it, for its most probable
        class, and that class."""
        # Deferred: captum and matplotlib load on the first /explain only.
        from cnnpipe.model import explain

        return explain.explain_png(self.model, self.card, pixels)


def load(model_dir: Path, choice: str, threads: int) -> Runtime:
    """The runtime for a stored model: `onnx`, `torch`, or `auto` (onnx when the export is
    there)."""
    exported = model_dir / ONNX_FILE
    if choice == "onnx" and not exported.exists():
        raise CnnpipeError(
            f"CNNPIPE_RUNTIME=onnx but the stored model has no {ONNX_FILE}; package it again "
            "(dvc repro package in the project root), or unset CNNPIPE_RUNTIME"
        )
    if choice != "torch" and exported.exists():
        return OnnxRuntime(exported, threads)
    return TorchRuntime(model_dir / MODEL_FILE, threads)
