import numpy as np
import torch

from cnnpipe.core import dataset
from cnnpipe.model import inference
from cnnpipe.train import batches
from cnnpipe.train.distributed import ONE_PROCESS, ProcessRank


def test_shuffled_order_depends_on_seed_and_epoch_and_shards_cover_every_image():
    order = batches.shuffled_order(10, 0, 1, ONE_PROCESS)
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(order, batches.shuffled_order(10, 0, 1, ONE_PROCESS))
    assert not torch.equal(order, batches.shuffled_order(10, 0, 2, ONE_PROCESS))
    assert not torch.equal(order, batches.shuffled_order(10, 1, 1, ONE_PROCESS))
    shards = [batches.shuffled_order(11, 0, 1, ProcessRank(r, 3, r)) for r in range(3)]
    assert {len(s) for s in shards} == {4}  # padded to an equal share per process
    assert set(torch.cat(shards).tolist()) == set(range(11))


def test_memory_mapped_and_in_memory_batches_hold_the_same_images(tmp_path):
    images = np.arange(20 * 2 * 2, dtype=np.uint8).reshape(20, 1, 2, 2)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    labels = torch.arange(20)
    order = batches.shuffled_order(20, 0, 1, ONE_PROCESS)
    in_ram = list(batches.batches(torch.from_numpy(images), labels, 6, order))
    from_map = list(batches.batches(mapped, labels, 6, order))
    assert [len(y) for _, y in in_ram] == [6, 6, 6, 2]
    for (x1, y1), (x2, y2) in zip(in_ram, from_map, strict=True):
        assert sorted(y1.tolist()) == sorted(y2.tolist())
        assert torch.equal(x1[y1.argsort()], x2[y2.argsort()])
        assert torch.equal(x2.view(len(y2), -1)[:, 0], (y2 * 4).to(torch.uint8))


def test_small_splits_are_read_into_ram_and_large_ones_stay_memory_mapped(tmp_path, monkeypatch):
    np.save(tmp_path / "train_images.npy", np.arange(16, dtype=np.uint8).reshape(4, 1, 2, 2))
    np.save(tmp_path / "train_labels.npy", np.zeros(4, np.int64))
    (tmp_path / "train.csv").write_text("file,label\n" + "x.png,a\n" * 4)
    small = dataset.read_split(tmp_path, "train", mmap=None).images
    assert not isinstance(small, np.memmap)
    tensor = inference.as_tensor(small)
    assert tensor.data_ptr() == small.ctypes.data  # used where it lies, not copied
    mapped = dataset.read_split(tmp_path, "train").images
    assert isinstance(inference.as_tensor(mapped), torch.Tensor)  # a small map is copied to RAM
    monkeypatch.setattr(dataset, "IN_MEMORY_LIMIT", 8)
    monkeypatch.setattr(inference, "IN_MEMORY_LIMIT", 8)
    large = dataset.read_split(tmp_path, "train", mmap=None).images
    assert isinstance(large, np.memmap)
    assert inference.as_tensor(large) is large
    assert batches.resident(large, torch.device("cpu")) is large
