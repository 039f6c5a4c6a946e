"""Grad-CAM for every architecture: the layer it is taken at, maps in [0, 1] over the input, and
the PNG /explain answers (what the service's torch runtime computes)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import InputSpec
from cnnpipe.model import checkpoint, explain, registry
from cnnpipe.serve import runtime


def spec(size: int, channels: int) -> InputSpec:
    return InputSpec(
        classes=list("abc"),
        image_size=size,
        channels=channels,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )


@pytest.mark.parametrize(
    "arch, size, channels, layer",
    [
        ("lenet5", 32, 1, "features.3"),  # C3, 10x10: C5 is 1x1
        # seconds each: torchvision's models, forward and backward
        pytest.param("resnet18", 32, 3, "layer2", marks=pytest.mark.e2e),  # layer3 is 2x2
        pytest.param("resnet18", 64, 1, "layer3", marks=pytest.mark.e2e),
        pytest.param("efficientnet_b0", 32, 1, "features.5", marks=pytest.mark.e2e),
        pytest.param("densenet121", 32, 1, "features.denseblock2", marks=pytest.mark.e2e),
    ],
)
def test_every_architecture_is_explained_at_its_last_map_of_4x4_or_more(
    arch, size, channels, layer, tmp_path
):
    torch.manual_seed(0)
    model = registry.build(arch, channels, 3, size).eval()
    names = {module: name for name, module in model.named_modules()}
    assert names[explain.target_layer(model, spec(size, channels))] == layer
    images = np.random.default_rng(0).integers(0, 256, (2, channels, size, size), dtype=np.uint8)
    maps, targets = explain.heatmaps(model, spec(size, channels), images)
    assert maps.shape == (2, size, size) and 0 <= maps.min() and maps.max() <= 1
    assert (
        list(targets)
        == model(
            preprocess.normalize(torch.from_numpy(images), [0.5] * channels, [0.25] * channels)
        )
        .argmax(1)
        .tolist()
    )
    # what /explain runs: the checkpoint in the torch runtime
    checkpoint.save(tmp_path / "model.pt", model, arch, spec(size, channels), {})
    png, target = runtime.load(tmp_path, "torch", threads=1).explain(images[0])
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (256, 256), "RGB")
    assert target == targets[0]


def test_the_map_of_a_trained_model_points_at_the_object():
    """A LeNet-5 taught that a bright square in the left half is class 0 and in the right half
    class 1: its map for the image's class is hotter on that side."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = np.zeros((200, 1, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 2, 200)
    for image, label in zip(images, labels, strict=True):
        top, left = rng.integers(4, 20), rng.integers(2, 8) + 16 * label
        image[0, top : top + 8, left : left + 8] = 255
    model = registry.build("lenet5", 1, 2, 32)
    x = preprocess.normalize(torch.from_numpy(images), [0.1], [0.3])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels)).backward()
        optimizer.step()
    two = InputSpec(classes=["left", "right"], image_size=32, channels=1, mean=[0.1], std=[0.3])
    maps, targets = explain.heatmaps(model.eval(), two, images[:20])
    assert (targets == labels[:20]).mean() >= 0.9
    left, right = maps[..., :16].sum((1, 2)), maps[..., 16:].sum((1, 2))
    hotter_side = np.where(left > right, 0, 1)
    assert (hotter_side == labels[:20]).mean() >= 0.8
