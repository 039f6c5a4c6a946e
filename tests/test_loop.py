import io

import numpy as np
import pytest
import torch

from cnnpipe.core import params
from cnnpipe.core.dataset import Split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import registry
from cnnpipe.train import loop


def train_params(**kw) -> params.TrainParams:
    base = {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "weight_decay": 0.0}
    base |= {"warmup_epochs": 0, "label_smoothing": 0, "ema_decay": 0, "augment": False, "erase": 0}
    base |= {"crop_scale": 1.0}
    return params.parse({"train": {**base, "num_threads": 1, **kw}}).train


def toy_split(n: int, seed: int) -> Split:
    """Bright and dark 32 px images: two classes a LeNet learns in a couple of epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int64)
    images = rng.integers(0, 80, (n, 1, 32, 32)).astype(np.uint8) + (labels * 150).astype(
        np.uint8
    ).reshape(-1, 1, 1, 1)
    return Split(images, labels, [f"{i}.png" for i in range(n)])


def fit(p: params.TrainParams, on_epoch=lambda m: None, model=None, **kw):
    loop.make_deterministic(p.seed, p.num_threads)
    model = model or registry.build("lenet5", 1, 2, 32)
    train, val = toy_split(40, 0), toy_split(12, 1)
    return loop.fit(model, train, val, [0.5], [0.3], p, torch.device("cpu"), on_epoch, **kw)


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


def test_the_moving_average_is_scored_each_epoch_and_kept_when_it_is_better():
    seen = []
    _, result = fit(train_params(epochs=4, ema_decay=0.9), seen.append)
    assert all(m.ema_val_accuracy is not None for m in seen)
    scores = [(max(m.val_accuracy, m.ema_val_accuracy), m.epoch) for m in seen]
    best = max(score for score, _ in scores)
    assert result.best_val_accuracy == best
    first = next(m for m in seen if max(m.val_accuracy, m.ema_val_accuracy) == best)
    assert result.best_epoch == first.epoch
    assert result.best_weights == ("model" if first.val_accuracy == best else "ema")
    _, off = fit(train_params(epochs=1), seen.append)
    assert seen[-1].ema_val_accuracy is None and off.best_weights == "model"


def test_early_stopping_ends_after_patience_epochs_without_a_better_score():
    seen = []
    _, result = fit(train_params(epochs=30, patience=2, learning_rate=0.02), seen.append)
    assert result.epochs_run == len(seen) < 30  # the toy data is learnt long before 30
    assert result.epochs_run == result.best_epoch + 2
    assert all(m.val_accuracy <= result.best_val_accuracy for m in seen)


def test_balanced_class_weights_make_each_class_weigh_the_same():
    labels = np.array([0] * 90 + [1] * 10)
    weights = loop.class_weights(labels, 3, "balanced")
    counts = np.bincount(labels, minlength=3)
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])
    assert weights.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10), 1.0])
    assert loop.class_weights(labels, 3, "none") is None


def test_label_smoothing_keeps_the_loss_above_its_floor():
    _, plain = fit(train_params(epochs=15, learning_rate=0.02))
    _, smooth = fit(train_params(epochs=15, learning_rate=0.02, label_smoothing=0.2))
    # two classes, smoothing 0.2: the best a model can do is cross-entropy against (0.9, 0.1)
    floor = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert smooth.history[-1].train_loss > floor - 1e-3
    assert plain.history[-1].train_loss < floor


def test_frozen_epochs_train_only_the_head():
    model = registry.build("lenet5", 1, 2, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, _ = fit(train_params(epochs=1), model=model, freeze_epochs=1)
    after = trained.state_dict()
    head = registry.head_name(model) + "."
    for name, value in before.items():
        changed = not torch.equal(value, after[name])
        assert changed == name.startswith(head), name
    assert all(p.requires_grad for p in trained.parameters())  # unfrozen for later use


def test_a_diverging_fit_stops_at_the_first_non_finite_loss():
    seen = []
    with pytest.raises(CnnpipeError, match=r"loss became (nan|inf) in epoch 1: training diverged"):
        fit(train_params(epochs=5, optimizer="sgd", learning_rate=1e12), seen.append)
    assert seen == []  # the diverged epoch is not reported as a result


def as_saved(state: dict) -> dict:
    """A state as it comes back from the file the train stage keeps (torch.save, then
    torch.load with weights_only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def scores(result: loop.FitResult) -> list[tuple]:
    """An epoch's record but its timings."""
    return [(m.epoch, m.train_loss, m.val_accuracy, m.ema_val_accuracy) for m in result.history]


def assert_resumes_to_the_same_bits(p, **kw):
    """A fit stopped after any of its epochs and resumed from that epoch's state ends with the
    weights and per-epoch metrics of the uninterrupted fit."""
    states = []
    model, result = fit(p, save_state=lambda s: states.append(as_saved(s)), **kw)
    assert [s["epoch"] for s in states] == list(range(1, result.epochs_run + 1))
    for state in states:
        torch.manual_seed(1234)  # another start: the state must set everything
        seen = []
        resumed, again = fit(
            p, seen.append, model=registry.build("lenet5", 1, 2, 32), resume_from=state, **kw
        )
        assert [m.epoch for m in seen] == list(range(state["epoch"] + 1, result.epochs_run + 1))
        for name, value in model.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[name]), (state["epoch"], name)
        assert scores(again) == scores(result)
        assert (again.best_epoch, again.best_weights) == (result.best_epoch, result.best_weights)
    return result


def test_a_fit_resumed_after_any_epoch_ends_with_the_uninterrupted_bits():
    """Augmentation, erasing and the moving average, each drawing on its own state."""
    assert_resumes_to_the_same_bits(
        train_params(epochs=4, augment=True, erase=0.5, ema_decay=0.9, warmup_epochs=1.0)
    )


def test_resuming_keeps_frozen_epochs_and_early_stopping():
    assert_resumes_to_the_same_bits(train_params(epochs=3), freeze_epochs=2)
    result = assert_resumes_to_the_same_bits(
        train_params(epochs=30, patience=1, learning_rate=0.02)
    )
    assert result.epochs_run < 30  # a state after the stop resumes into no epoch at all


def test_resuming_restores_torchs_global_generator(monkeypatch):
    """What torchvision's transforms draw from: noise from torch's global generator is part of
    every step, and the resumed fit draws what the uninterrupted one drew."""

    def noisy(x, generator, params):
        return augment(x, generator, params) + 0.05 * torch.randn(x.shape)

    augment = loop.augment
    monkeypatch.setattr(loop, "augment", noisy)
    assert_resumes_to_the_same_bits(train_params(epochs=3, augment=True))
