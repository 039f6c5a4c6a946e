import pytest
import torch

from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import registry


def test_lenet5_has_the_reference_parameter_count():
    assert registry.count_parameters(registry.LeNet5(in_channels=1, num_classes=10)) == 61_706


@pytest.mark.parametrize(
    ("name", "count"),
    [("resnet18", 11_689_512), ("efficientnet_b0", 5_288_548), ("densenet121", 7_978_856)],
)
def test_torchvision_models_match_the_reference_at_1000_classes(name, count):
    assert registry.count_parameters(registry.build(name, 3, 1000, 64)) == count


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_model_maps_a_batch_to_one_logit_per_class(name, channels):
    model = registry.build(name, channels, 7, 32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7)


def test_lenet5_refuses_other_sizes_with_the_fix():
    with pytest.raises(CnnpipeError, match="process.image_size: 32"):
        registry.build("lenet5", 1, 3, 64)


def test_pretrained_without_weights_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-cnnpipe-torch-home")
    with pytest.raises(CnnpipeError, match="pretrained: false"):
        registry.build("lenet5", 1, 3, 32, pretrained=True)


def test_resnet18_blocks_start_as_the_identity():
    model = registry.build("resnet18", 1, 5, 32)
    last_norms = [
        block.bn2.weight for layer in range(1, 5) for block in model.get_submodule(f"layer{layer}")
    ]
    assert len(last_norms) == 8 and all(torch.count_nonzero(w) == 0 for w in last_norms)
    assert torch.count_nonzero(model.bn1.weight) == 64  # the stem is untouched


def test_efficientnet_b0_keeps_two_by_two_features_at_32_px_and_starts_near_uniform():
    model = registry.build("efficientnet_b0", 1, 5, 32).eval()
    with torch.no_grad():
        features = model.features(torch.randn(2, 1, 32, 32))
        logits = model(torch.randn(8, 1, 32, 32))
    assert features.shape[-2:] == (2, 2)
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert abs(loss.item() - torch.log(torch.tensor(5.0)).item()) < 0.05  # log(classes)
    assert registry.build("efficientnet_b0", 1, 5, 64).features[0][0].stride == (2, 2)


def test_efficientnet_b0_residual_blocks_start_as_the_identity():
    from torchvision.models.efficientnet import MBConv

    model = registry.build("efficientnet_b0", 1, 5, 32)
    residual = [m for m in model.modules() if isinstance(m, MBConv) and m.use_res_connect]
    assert len(residual) == 9
    assert all(torch.count_nonzero(m.block[-1][1].weight) == 0 for m in residual)
    assert all(m.stochastic_depth.p == 0 for m in residual)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME whose hub cache holds generated weights under torchvision's own file names
    (torchvision loads a cached file without checking its hash: no download)."""
    import torch.hub
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win
    saved = {}
    for name in ("resnet18", "efficientnet_b0", "densenet121"):
        weights = models.get_model_weights(name).DEFAULT
        torch.manual_seed(len(name))
        state = getattr(models, name)(weights=None).state_dict()
        target = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
        saved[name] = state
    return saved


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "densenet121"])
def test_pretrained_weights_come_from_torch_home_with_a_new_head_and_an_adapted_stem(
    torch_home, name
):
    model = registry.build(name, 1, 4, 64, pretrained=True)
    state, saved = model.state_dict(), torch_home[name]
    head, stem = registry.head_name(model), registry.first_conv_name(model) + ".weight"
    assert state[head + ".weight"].shape[0] == 4  # the classes of this data
    assert torch.equal(state[stem], registry.adapt_filters(saved[stem], 1))  # RGB summed
    body = [k for k in saved if not k.startswith(head) and k != stem]
    assert body and all(torch.equal(state[k], saved[k]) for k in body)
    mean, std = registry.pretrained_statistics(name, 3)
    assert mean == [0.485, 0.456, 0.406] and std == [0.229, 0.224, 0.225]
    assert registry.pretrained_statistics(name, 1) == ([0.449], [0.226])


def test_pretrained_weights_missing_offline_name_the_file_to_fetch(tmp_path, monkeypatch):
    import socket

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(CnnpipeError) as caught:
        registry.build("resnet18", 3, 4, 64, pretrained=True)
    message = str(caught.value)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "\n" not in message and str(expected) in message and "pretrained: false" in message


def test_a_model_from_imagenet_weights_takes_its_input_as_they_were_trained():
    from cnnpipe.core import params
    from cnnpipe.core.dataset import InputSpec
    from cnnpipe.train.session import model_input

    spec = InputSpec(classes=["a", "b"], image_size=64, channels=3, mean=[0.5] * 3, std=[0.2] * 3)
    scratch = params.parse({"train": {"model": "resnet18"}}).train
    assert model_input(scratch, spec) == spec  # the train split's own statistics
    weights = scratch.model_copy(update={"pretrained": True})
    used = model_input(weights, spec)
    assert used.mean == [0.485, 0.456, 0.406] and used.std == [0.229, 0.224, 0.225]
    assert used.classes == spec.classes and used.image_size == 64
