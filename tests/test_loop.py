import numpy as np
import pytest
import torch

from cnnpipe.core import params
from cnnpipe.core.dataset import Split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import registry
from cnnpipe.train import loop


def train_params(**kw) -> params.TrainParams:
    base = {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "num_threads": 1}
    return params.parse({"train": {**base, **kw}}).train


def toy_split(n: int, seed: int) -> Split:
    """Bright and dark 32 px images: two classes a LeNet learns in a couple of epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int64)
    images = rng.integers(0, 80, (n, 1, 32, 32)).astype(np.uint8) + (labels * 150).astype(
        np.uint8
    ).reshape(-1, 1, 1, 1)
    return Split(images, labels, [f"{i}.png" for i in range(n)])


def fit(p: params.TrainParams, on_epoch=lambda m: None):
    loop.make_deterministic(p.seed, p.num_threads)
    model = registry.build("lenet5", 1, 2, 32)
    train, val = toy_split(40, 0), toy_split(12, 1)
    return loop.fit(model, train, val, [0.5], [0.3], p, torch.device("cpu"), on_epoch)


def test_fit_is_deterministic_and_keeps_the_best_epoch():
    seen = []
    p = train_params(epochs=3)
    model, result = fit(p, seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3]
    best = max(seen, key=lambda m: m.val_accuracy)
    assert result.best_val_accuracy == best.val_accuracy
    assert result.best_epoch == min(m.epoch for m in seen if m.val_accuracy == best.val_accuracy)
    again, _ = fit(p)
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    other, _ = fit(train_params(epochs=3, seed=1))
    weight = "features.0.weight"
    assert not torch.equal(other.state_dict()[weight], model.state_dict()[weight])


def test_bf16_and_channels_last_train_on_the_cpu():
    model, result = fit(train_params(epochs=1, mixed_precision="bf16", channels_last=True))
    assert result.history[0].train_loss > 0
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_diverging_fit_stops_at_the_first_non_finite_loss():
    seen = []
    with pytest.raises(CnnpipeError, match=r"loss became (nan|inf) in epoch 1: training diverged"):
        fit(train_params(epochs=5, optimizer="sgd", learning_rate=1e12), seen.append)
    assert seen == []  # the diverged epoch is not reported as a result
