"""The ONNX export: every architecture exports with a dynamic batch and gives torch's class
probabilities (normalisation and softmax in the graph) and distances to the nearest class, every
weight (and the feature statistics) read from the checkpoint."""

import numpy as np
import onnx
import pytest
import torch

from cnnpipe.core.dataset import InputSpec
from cnnpipe.model import checkpoint, export, familiarity, files, registry
from cnnpipe.model.inference import Placement, logits_and_features


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
    images = np.random.default_rng(0).integers(0, 256, (9, channels, size, size), dtype=np.uint8)
    # feature statistics of these images: the graph computes the distance too
    layers = familiarity.feature_layers(model, size, channels)
    placement = Placement(torch.device("cpu"), spec.mean, spec.std)
    _, features = logits_and_features(model, torch.from_numpy(images), placement, 9, layers)
    statistics = familiarity.fit(features.numpy(), np.arange(9) % 4, 4, layers)
    checkpoint.save(tmp_path / files.MODEL_FILE, model, arch, spec, statistics.checkpoint_entries())
    path = tmp_path / files.ONNX_FILE
    path.write_bytes(export.export_onnx(model, spec, tmp_path / files.MODEL_FILE, 1.0, statistics))
    assert not model.training  # the exporter leaves the model as it found it
    graph = onnx.load(path, load_external_data=False)
    # every distinct weight is there (the exporter merges equal ones: fresh batch norms are all
    # ones and zeros)
    distinct = {p.detach().numpy().tobytes() for p in model.parameters()}
    assert len(graph.graph.initializer) >= len(distinct)
    for tensor in graph.graph.initializer:  # no second copy of any weight
        assert tensor.data_location == onnx.TensorProto.EXTERNAL, tensor.name
        assert {e.key: e.value for e in tensor.external_data}["location"] == files.MODEL_FILE
    assert path.stat().st_size < (tmp_path / files.MODEL_FILE).stat().st_size / 10
    for batch in (images[:1], images):  # the batch dimension is dynamic
        difference, distance_difference = export.max_difference(
            path, model, spec, batch, statistics=statistics
        )
        assert difference <= 1e-5 and distance_difference <= 1e-4
