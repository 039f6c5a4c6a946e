import numpy as np
import pytest
import torch

from cnnpipe.core.dataset import InputSpec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import inference, registry


def test_device_auto_is_the_cpu_without_cuda_and_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert inference.select_device("auto") == torch.device("cpu")
    with pytest.raises(CnnpipeError, match="device: auto"):
        inference.select_device("cuda")


def test_predict_in_batches_equals_one_pass_and_probabilities_sum_to_one(tmp_path):
    torch.manual_seed(0)
    model = registry.build("lenet5", 1, 3, 32).eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    placement = inference.Placement(torch.device("cpu"), [0.5], [0.25])
    loss, accuracy, predicted = inference.predict(
        model, torch.from_numpy(images), labels, placement, 4
    )
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert inference.predict(model, mapped, labels, placement, 10)[2].tolist() == predicted.tolist()
    spec = InputSpec(classes=["a", "b", "c"], image_size=32, channels=1, mean=[0.5], std=[0.25])
    probs = inference.probabilities(model, spec, images)
    assert probs.shape == (10, 3) and np.allclose(probs.sum(1), 1, atol=1e-6)
    assert probs.argmax(1).tolist() == predicted.tolist()
    assert accuracy == pytest.approx(float((predicted == labels).float().mean()))
    assert loss > 0
