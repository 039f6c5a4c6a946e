"""The model as ONNX: one graph from uint8 images to calibrated class probabilities
(normalisation, model, softmax of the logits over the temperature), checked against torch before
it is packaged."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from cnnpipe.core.dataset import InputSpec
from cnnpipe.core.preprocess import normalize
from cnnpipe.model.inference import probabilities

# Opset 17 covers every layer of the four architectures (LeNet-5's average pools, ResNet's and
# DenseNet's batch norms and adaptive pools, EfficientNet's SiLU and squeeze-excitation) and
# every onnxruntime since 1.13.
OPSET = 17
INPUT, OUTPUT = "images", "probabilities"


class ServedModel(nn.Module):
    """What the service computes for a uint8 batch (N, C, H, W) made by preprocess.load: the
    pipeline's normalisation, the model, softmax(logits / temperature) (the calibration)."""

    def __init__(self, model: nn.Module, spec: InputSpec, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.mean, self.std = spec.mean, spec.std
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(normalize(images, self.mean, self.std))
        return torch.softmax(logits / self.temperature, dim=1)


def export_onnx(model: nn.Module, spec: InputSpec, path: Path, temperature: float = 1.0) -> None:
    """Write the ONNX graph of ServedModel, with a dynamic batch dimension."""
    example = torch.zeros((2, spec.channels, spec.image_size, spec.image_size), dtype=torch.uint8)
    # The TorchScript exporter (dynamo=False) needs no onnxscript and exports all four
    # architectures exactly; torch warns that it is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            ServedModel(
                model, spec, temperature
            ).eval(),  # eval: the exporter restores the wrapper's mode
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )


def max_difference(
    path: Path,
    model: nn.Module,
    spec: InputSpec,
    images: np.ndarray,
    batch_size: int = 256,
    temperature: float = 1.0,
) -> float:
    """The largest absolute difference between the class probabilities of the ONNX export (run
    by onnxruntime) and of the torch model at this temperature, over uint8 images."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for start in range(0, len(images), batch_size):
        batch = np.array(images[start : start + batch_size])  # a memory map slice is read-only
        (exported,) = session.run([OUTPUT], {INPUT: batch})
        expected = probabilities(model, spec, batch, temperature)
        worst = max(worst, float(np.abs(exported - expected).max()))
    return worst
