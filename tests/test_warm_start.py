"""Starting from weights on disk: files are built here (a constructor + torch.save), never
downloaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_params
from torchvision import models as tv

from cnnpipe.core.dataset import InputSpec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import checkpoint, registry
from cnnpipe.train import warm_start

CLASSES = ["a", "b", "c", "d", "e"]


def test_a_torchvision_state_dict_loads_with_a_new_head_and_summed_rgb_filters(tmp_path):
    torch.manual_seed(1)
    imagenet = tv.resnet18(weights=None)  # the layout of torchvision's ImageNet file
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = registry.build("resnet18", 1, len(CLASSES), 32)
    fresh_head = model.fc.weight.clone()
    note = warm_start.load_initial_weights(model, path, "resnet18", CLASSES)
    assert "state dict" in note and "new head for 5 classes" in note and "adapted" in note
    source = imagenet.state_dict()
    summed = source["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1.weight, summed)
    assert torch.equal(model.fc.weight, fresh_head)  # the 1000-class head is not used
    for name, value in model.state_dict().items():
        if not name.startswith(("conv1.", "fc.")):
            assert torch.equal(value, source[name]), name
    grey = torch.rand(2, 1, 32, 32)
    imagenet.fc = model.fc
    with torch.no_grad():  # a grey image gives what its RGB copy gives the original
        assert torch.allclose(
            model.eval()(grey), imagenet.eval()(grey.expand(-1, 3, -1, -1)), atol=1e-4
        )


def save_cnnpipe(path, architecture: str, classes: list[str], channels: int = 1):
    model = registry.build(architecture, channels, len(classes), 32)
    spec = InputSpec(classes=classes, image_size=32, channels=channels, mean=[0.5], std=[0.2])
    checkpoint.save(path, model, architecture, spec, {"best_epoch": 1})
    return model


def test_a_cnnpipe_checkpoint_keeps_its_head_only_for_the_same_classes(tmp_path):
    source = save_cnnpipe(tmp_path / "model.pt", "lenet5", ["x", "y", "z", "w", "v"])
    same = registry.build("lenet5", 1, 5, 32)
    note = warm_start.load_initial_weights(
        same, tmp_path / "model.pt", "lenet5", ["x", "y", "z", "w", "v"]
    )
    assert "cnnpipe checkpoint" in note and "head kept" in note
    for name, value in same.state_dict().items():
        assert torch.equal(value, source.state_dict()[name])
    other = registry.build("lenet5", 1, 3, 32)
    note = warm_start.load_initial_weights(other, tmp_path / "model.pt", "lenet5", ["p", "q", "r"])
    assert "new head for 3 classes" in note
    assert torch.equal(other.features[0].weight, source.features[0].weight)


def test_an_rgb_cnnpipe_checkpoint_starts_a_greyscale_model(tmp_path):
    source = save_cnnpipe(tmp_path / "rgb.pt", "lenet5", CLASSES, channels=3)
    grey = registry.build("lenet5", 1, 5, 32)
    warm_start.load_initial_weights(grey, tmp_path / "rgb.pt", "lenet5", CLASSES)
    assert torch.allclose(grey.features[0].weight, source.features[0].weight.sum(1, keepdim=True))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_text("not weights"), ["cannot be read as weights"]),
        (lambda p: torch.save([1, 2, 3], p), ["holds no state dict"]),
        (lambda p: save_cnnpipe(p, "lenet5", CLASSES), ["holds a lenet5 model", "resnet18"]),
        (lambda p: torch.save(tv.densenet121(weights=None).state_dict(), p), ["does not fit"]),
        (lambda p: None, ["is not a file"]),
    ],
)
def test_a_file_that_does_not_fit_is_named_in_one_line(tmp_path, make, words):
    path = tmp_path / "weights.pt"
    make(path)
    model = registry.build("resnet18", 1, 5, 32)
    with pytest.raises(CnnpipeError) as caught:
        warm_start.load_initial_weights(model, path, "resnet18", CLASSES)
    message = str(caught.value)
    assert "\n" not in message and "train.init_from" in message and str(path) in message
    for word in words:
        assert word in message


@pytest.mark.e2e
def test_init_from_is_a_dvc_dependency_of_the_train_stage(workspace):
    start = workspace.root / "checkpoints" / "start.pt"
    shutil.copy(workspace.root / "models/model.pt", start)  # another run's model, same classes
    workspace.write_params(
        tiny_params(train={"init_from": "checkpoints/start.pt", "freeze_epochs": 1, "epochs": 2})
    )
    output = workspace.dvc("repro", "train").stdout
    assert "started from checkpoints/start.pt (cnnpipe checkpoint" in output, output
    assert "head kept (same classes)" in output
    assert "train" not in json.loads(workspace.dvc("status", "--json").stdout)
    save_cnnpipe(start, "lenet5", ["circle", "square", "triangle"])  # other weights
    status = json.loads(workspace.dvc("status", "--json").stdout)
    assert {"changed deps": {"checkpoints/start.pt": "modified"}} in status["train"]
