import numpy as np
import pytest

from cnnpipe import datasets, params, sources
from cnnpipe.errors import CnnpipeError


def split_params(**kw):
    return params.parse({"process": kw}).process


def test_split_is_stratified_disjoint_and_complete():
    labels = ["a"] * 100 + ["b"] * 40 + ["c"] * 20
    parts = datasets.split_indices(labels, split_params(val_ratio=0.2, test_ratio=0.1))
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(len(labels)))  # every image once, none twice
    y = np.asarray(labels)
    for name, ratio in (("val", 0.2), ("test", 0.1)):
        for cls, total in (("a", 100), ("b", 40), ("c", 20)):
            assert (y[parts[name]] == cls).sum() == round(total * ratio)


def test_split_depends_on_the_seed_only():
    labels = ["a", "b"] * 30
    one = datasets.split_indices(labels, split_params(seed=1))
    again = datasets.split_indices(labels, split_params(seed=1))
    other = datasets.split_indices(labels, split_params(seed=2))
    assert all(np.array_equal(one[k], again[k]) for k in one)
    assert not all(np.array_equal(one[k], other[k]) for k in one)


def test_a_class_too_small_to_split_is_named():
    with pytest.raises(CnnpipeError, match="class 'b' has 2 image"):
        datasets.split_indices(["a"] * 10 + ["b"] * 2, split_params())


def test_a_single_class_is_refused():
    with pytest.raises(CnnpipeError, match="at least 2"):
        datasets.split_indices(["a"] * 10, split_params())


def test_processed_arrays_match_the_csvs_and_meta(tmp_path):
    p = params.parse(
        {
            "generate": {"classes": ["circle", "star"], "images_per_class": 12},
            "process": {"image_size": 16, "channels": 3},
        }
    )
    sources.write_raw(p.generate, tmp_path / "raw")
    meta = datasets.write_processed(tmp_path / "raw", tmp_path / "out", p.process)
    assert meta.classes == ["circle", "star"] and meta.channels == 3
    total = 0
    for name in datasets.SPLITS:
        split = datasets.read_split(tmp_path / "out", name)
        assert split.images.shape[1:] == (3, 16, 16) and split.images.dtype == np.uint8
        assert len(split.images) == len(split.labels) == len(split.files)
        for file, label in zip(split.files, split.labels, strict=True):
            assert f"/{meta.classes[label]}/" in file
        total += len(split.labels)
    assert total == 24
    assert datasets.Meta.read(tmp_path / "out") == meta
    train = datasets.read_split(tmp_path / "out", "train").images
    assert meta.mean == pytest.approx((train / 255.0).mean(axis=(0, 2, 3)), abs=1e-5)
