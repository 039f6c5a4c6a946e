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
