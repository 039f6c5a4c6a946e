import numpy as np
import pytest
import torch

from cnnpipe import params, training
from cnnpipe.datasets import Split
from cnnpipe.errors import CnnpipeError


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


def fit(p: params.TrainParams):
    from cnnpipe import models

    training.make_deterministic(p.seed, p.num_threads)
    model = models.build("lenet5", 1, 2, 32)
    train, val = toy_split(40, 0), toy_split(12, 1)
    return training.fit(model, train, val, [0.5], [0.3], p, torch.device("cpu"))


def test_fit_is_deterministic_and_keeps_the_best_epoch():
    seen = []
    p = train_params(epochs=3)
    training.make_deterministic(p.seed, p.num_threads)
    from cnnpipe import models

    model = models.build("lenet5", 1, 2, 32)
    train, val = toy_split(40, 0), toy_split(12, 1)
    model, result = training.fit(
        model, train, val, [0.5], [0.3], p, torch.device("cpu"), seen.append
    )
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


def test_shuffled_order_depends_on_seed_and_epoch_and_shards_cover_every_image():
    one = training.Workers()
    order = training.shuffled_order(10, 0, 1, one)
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(order, training.shuffled_order(10, 0, 1, one))
    assert not torch.equal(order, training.shuffled_order(10, 0, 2, one))
    assert not torch.equal(order, training.shuffled_order(10, 1, 1, one))
    shards = [training.shuffled_order(11, 0, 1, training.Workers(r, 3, r)) for r in range(3)]
    assert {len(s) for s in shards} == {4}  # padded to an equal share per process
    assert set(torch.cat(shards).tolist()) == set(range(11))


def test_memory_mapped_and_in_memory_batches_hold_the_same_images(tmp_path):
    images = np.arange(20 * 2 * 2, dtype=np.uint8).reshape(20, 1, 2, 2)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    labels = torch.arange(20)
    order = training.shuffled_order(20, 0, 1, training.Workers())
    in_ram = list(training.batches(torch.from_numpy(images), labels, 6, order))
    from_map = list(training.batches(mapped, labels, 6, order))
    assert [len(y) for _, y in in_ram] == [6, 6, 6, 2]
    for (x1, y1), (x2, y2) in zip(in_ram, from_map, strict=True):
        assert sorted(y1.tolist()) == sorted(y2.tolist())
        assert torch.equal(x1[y1.argsort()], x2[y2.argsort()])
        assert torch.equal(x2.view(len(y2), -1)[:, 0], (y2 * 4).to(torch.uint8))


def test_small_splits_are_read_into_ram_and_large_ones_stay_memory_mapped(tmp_path, monkeypatch):
    from cnnpipe import datasets

    np.save(tmp_path / "train_images.npy", np.arange(16, dtype=np.uint8).reshape(4, 1, 2, 2))
    np.save(tmp_path / "train_labels.npy", np.zeros(4, np.int64))
    (tmp_path / "train.csv").write_text("file,label\n" + "x.png,a\n" * 4)
    small = datasets.read_split(tmp_path, "train", mmap=None).images
    assert not isinstance(small, np.memmap)
    tensor = training.as_tensor(small)
    assert tensor.data_ptr() == small.ctypes.data  # used where it lies, not copied
    mapped = datasets.read_split(tmp_path, "train").images
    assert isinstance(training.as_tensor(mapped), torch.Tensor)  # a small map is copied to RAM
    monkeypatch.setattr(datasets, "IN_MEMORY_LIMIT", 8)
    monkeypatch.setattr(training, "IN_MEMORY_LIMIT", 8)
    large = datasets.read_split(tmp_path, "train", mmap=None).images
    assert isinstance(large, np.memmap)
    assert training.as_tensor(large) is large


def test_global_batch_must_split_evenly_over_processes():
    assert training.per_process_batch(64, 4) == 16
    with pytest.raises(CnnpipeError, match="multiple of the process count"):
        training.per_process_batch(10, 4)


def test_workers_come_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert training.Workers.from_env() == training.Workers(0, 1, 0)
    assert not training.launched_by_torchrun()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    workers = training.Workers.from_env()
    assert (workers.rank, workers.world_size, workers.local_rank) == (3, 4, 1)
    assert workers.distributed and not workers.is_main
    assert training.launched_by_torchrun()


def test_device_auto_is_the_cpu_without_cuda_and_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert training.select_device("auto") == torch.device("cpu")
    with pytest.raises(CnnpipeError, match="device: auto"):
        training.select_device("cuda")


def test_bf16_and_channels_last_train_on_the_cpu():
    model, result = fit(train_params(epochs=1, mixed_precision="bf16", channels_last=True))
    assert result.history[0].train_loss > 0
    assert all(p.is_contiguous() for p in model.parameters())


def test_augment_with_zero_bounds_is_the_identity_and_otherwise_moves_pixels():
    x = torch.randn(6, 3, 32, 32)
    still = params.parse(
        {"train": {"augment": True, "max_shift": 0, "max_rotation": 0, "max_zoom": 0}}
    ).train
    assert torch.allclose(
        training.augment(x, torch.Generator().manual_seed(0), still), x, atol=1e-5
    )
    moving = params.parse({"train": {"augment": True, "max_shift": 4}}).train
    once = training.augment(x, torch.Generator().manual_seed(1), moving)
    again = training.augment(x, torch.Generator().manual_seed(1), moving)
    assert once.shape == x.shape and torch.equal(once, again)  # seeded: same batch, same change
    changed = (once - x).abs().mean(dim=(1, 2, 3))
    assert (changed > 0.05).all()  # every image was moved, each by its own amount
    assert len(set(changed.round(decimals=4).tolist())) == len(x)
