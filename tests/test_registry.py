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
