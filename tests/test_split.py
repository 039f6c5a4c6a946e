import numpy as np
import pytest

from cnnpipe.core import dataset, params
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.data import sources, split


def split_params(**kw):
    return params.parse({"process": kw}).process


def test_split_is_stratified_disjoint_and_complete():
    labels = ["a"] * 100 + ["b"] * 40 + ["c"] * 20
    parts = split.split_indices(labels, split_params(val_ratio=0.2, test_ratio=0.1))
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(len(labels)))  # every image once, none twice
    y = np.asarray(labels)
    for name, ratio in (("val", 0.2), ("test", 0.1)):
        for cls, total in (("a", 100), ("b", 40), ("c", 20)):
            assert (y[parts[name]] == cls).sum() == round(total * ratio)


def test_split_depends_on_the_seed_only():
    labels = ["a", "b"] * 30
    one = split.split_indices(labels, split_params(seed=1))
    again = split.split_indices(labels, split_params(seed=1))
    other = split.split_indices(labels, split_params(seed=2))
    assert all(np.array_equal(one[k], again[k]) for k in one)
    assert not all(np.array_equal(one[k], other[k]) for k in one)


def test_a_class_too_small_to_split_is_named():
    with pytest.raises(CnnpipeError, match="class 'b' has 2 image"):
        split.split_indices(["a"] * 10 + ["b"] * 2, split_params())


def test_a_single_class_is_refused():
    with pytest.raises(CnnpipeError, match="at least 2"):
        split.split_indices(["a"] * 10, split_params())


def test_processed_arrays_match_the_csvs_and_meta(tmp_path):
    # 16 px fits no model (the params schema refuses it with train's model), but splitting it
    # does not care: the sections are checked on their own here.
    generate = params.GenerateParams(classes=["circle", "star"], images_per_class=12)
    process = params.ProcessParams(image_size=16, channels=3)
    sources.write_raw(generate, tmp_path / "raw")
    spec, counts = split.write_processed(tmp_path / "raw", tmp_path / "out", process)
    assert spec.classes == ["circle", "star"] and spec.channels == 3
    total = 0
    for name in dataset.SPLITS:
        part = dataset.read_split(tmp_path / "out", name)
        assert part.images.shape[1:] == (3, 16, 16) and part.images.dtype == np.uint8
        assert len(part.images) == len(part.labels) == len(part.files)
        for file, label in zip(part.files, part.labels, strict=True):
            assert f"/{spec.classes[label]}/" in file
        assert counts[name] == {
            c: int((part.labels == k).sum()) for k, c in enumerate(spec.classes)
        }
        total += len(part.labels)
    assert total == 24
    assert dataset.read_spec(tmp_path / "out") == spec
    train = dataset.read_split(tmp_path / "out", "train").images
    assert spec.mean == pytest.approx((train / 255.0).mean(axis=(0, 2, 3)), abs=1e-5)
