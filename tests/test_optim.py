import pytest
import torch

from cnnpipe.core import params
from cnnpipe.model import registry
from cnnpipe.train import optim


def train_params(**kw) -> params.TrainParams:
    base = {"learning_rate": 0.1, "weight_decay": 0.05, "epochs": 10, "warmup_epochs": 0}
    return params.parse({"train": {**base, **kw}}).train


def rates(p: params.TrainParams, steps_per_epoch: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = optim.make_optimizer(model, p)
    scheduler = optim.make_scheduler(optimizer, p, steps_per_epoch)
    seen = []
    for _ in range(p.epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_rises_linearly_then_cosine_falls_to_zero():
    lr = rates(train_params(warmup_epochs=2, lr_schedule="cosine"), steps_per_epoch=5)
    assert lr[0] == pytest.approx(0.001)  # 1% of the rate
    warm = lr[:10]
    assert all(b > a for a, b in zip(warm, warm[1:], strict=False))
    assert [b - a for a, b in zip(warm, warm[1:], strict=False)] == pytest.approx([0.0099] * 9)
    assert max(lr) == pytest.approx(0.1) and lr[10] == pytest.approx(0.1)
    cooling = lr[10:]
    assert all(b < a for a, b in zip(cooling, cooling[1:], strict=False))
    assert cooling[-1] < 0.001
    assert cooling[len(cooling) // 2] == pytest.approx(0.05, abs=0.005)  # cosine: half way, half


def test_without_warmup_the_schedule_starts_at_the_rate_and_steps_by_epochs():
    assert rates(train_params(lr_schedule="none"), 3) == pytest.approx([0.1] * 30)
    stepped = rates(train_params(lr_schedule="step", step_size=4, gamma=0.5), 3)
    assert stepped[:12] == pytest.approx([0.1] * 12) and stepped[12:24] == pytest.approx(
        [0.05] * 12
    )


def test_weights_decay_and_biases_and_norm_scales_do_not():
    model = registry.build("resnet18", 1, 3, 32)
    decay, keep = optim.parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in keep["params"])
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    ("name", "kind"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)],
)
def test_the_optimizer_param_picks_the_optimizer(name, kind):
    optimizer = optim.make_optimizer(torch.nn.Linear(2, 2), train_params(optimizer=name))
    assert type(optimizer) is kind


def test_decoupled_weight_decay_shrinks_weights_without_a_gradient_term():
    """AdamW decays by lr * wd per step whatever the gradient; Adam adds it to the gradient."""
    p = train_params(weight_decay=0.5, learning_rate=0.1)
    layer = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(layer.weight, 1.0)
    optimizer = optim.make_optimizer(layer, p)
    layer.weight.grad = torch.zeros_like(layer.weight)
    optimizer.step()
    assert float(layer.weight.detach()) == pytest.approx(1.0 - 0.1 * 0.5)
