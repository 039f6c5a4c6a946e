"""The ONNX export: every architecture exports with a dynamic batch and gives torch's class
probabilities (normalisation and softmax in the graph)."""

import numpy as np
import pytest
import torch

from cnnpipe.core.dataset import InputSpec
from cnnpipe.model import export, registry


@pytest.mark.parametrize(
    "arch, size, channels",
    [
        ("lenet5", 32, 1),
        # seconds each: the real exporter on torchvision's graphs
        pytest.param("resnet18", 32, 3, marks=pytest.mark.e2e),
        pytest.param("efficientnet_b0", 32, 3, marks=pytest.mark.e2e),
        pytest.param("densenet121", 32, 1, marks=pytest.mark.e2e),
    ],
)
def test_every_architecture_exports_and_matches_torch(arch, size, channels, tmp_path):
    torch.manual_seed(0)
    model = registry.build(arch, channels, 4, size).eval()
    spec = InputSpec(
        classes=list("abcd"),
        image_size=size,
        channels=channels,
        mean=[0.4] * channels,
        std=[0.2] * channels,
    )
    path = tmp_path / "model.onnx"
    export.export_onnx(model, spec, path)
    assert not model.training  # the exporter leaves the model as it found it
    images = np.random.default_rng(0).integers(0, 256, (9, channels, size, size), dtype=np.uint8)
    for batch in (images[:1], images):  # the batch dimension is dynamic
        assert export.max_difference(path, model, spec, batch) <= 1e-5
