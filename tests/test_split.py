from pathlib import Path

import numpy as np
import pytest

from cnnpipe.core import dataset, params
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.data import parallel, sources, split


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
    done = split.write_processed(tmp_path / "raw", tmp_path / "out", process, "resnet18")
    spec, counts = done.spec, done.counts
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


def test_given_splits_are_kept_and_val_is_carved_from_train_only():
    labels = ["a"] * 20 + ["b"] * 20 + ["a"] * 5 + ["b"] * 5
    given = ["train"] * 40 + ["test"] * 10
    parts = split.split_indices(labels, split_params(val_ratio=0.25), given=given)
    assert parts["test"].tolist() == list(range(40, 50))  # the folder's test split, as it is
    assert set(parts["val"]) | set(parts["train"]) == set(range(40))
    assert [labels[i] for i in parts["val"]].count("a") == 5  # 25% of each class's train images


def test_duplicates_go_wherever_their_group_goes():
    labels = ["a"] * 30 + ["b"] * 30
    groups = [[0, 1, 2, 3, 4, 5], [30, 31, 32], [7, 40]]  # the last spans two classes
    for seed in range(5):
        parts = split.split_indices(labels, split_params(seed=seed), groups)
        where = {int(i): name for name, indices in parts.items() for i in indices}
        for group in groups:
            assert len({where[i] for i in group}) == 1, (seed, group, where)
        assert sorted(where) == list(range(60))


def test_a_class_that_is_one_picture_cannot_be_split():
    labels = ["a"] * 10 + ["b"] * 4
    with pytest.raises(CnnpipeError, match="class 'b' has no image left for the"):
        split.split_indices(labels, split_params(), [[10, 11, 12, 13]])


def raw_image(**kw) -> dataset.RawImage:
    return dataset.RawImage(**{"file": "x.png", "label": "a", **kw})


@pytest.mark.parametrize(
    ("images", "model", "expected"),
    [
        ([raw_image(colour=True, width=120, height=90)] * 10, "resnet18", (3, 64)),
        ([raw_image(colour=False, width=120, height=90)] * 10, "resnet18", (1, 64)),
        ([raw_image(colour=True, width=120, height=90)] * 10, "lenet5", (3, 32)),
        ([raw_image(width=8, height=8)] * 10, "densenet121", (1, 32)),
        ([raw_image(width=50, height=200)] * 10, "efficientnet_b0", (1, 48)),
        (  # one colour picture in a hundred grey ones: grey
            [raw_image(colour=True, width=64, height=64)] + [raw_image(width=64, height=64)] * 99,
            "resnet18",
            (1, 64),
        ),
    ],
)
def test_auto_channels_and_size_fit_the_images_and_the_model(images, model, expected):
    assert split.input_shape(params.ProcessParams(), images, model) == expected
    fixed = params.ProcessParams(channels=1, image_size=40)
    assert split.input_shape(fixed, images, model) == (1, 40)  # set by hand: as set
    # shapes and digits take the model's smallest input, what their results are measured at
    channels = expected[0]
    assert split.input_shape(params.ProcessParams(), images, model, bundled=True) == (channels, 32)


def test_copies_and_near_duplicates_are_found_and_reported_across_given_splits(tmp_path):
    from conftest import encode
    from image_folders import folder_params, make_split_folder

    from cnnpipe.data import shapes

    root = make_split_folder(tmp_path / "photos", {"train": 6, "test": 3})
    drawing = params.GenerateParams(noise=0.0, image_size=96)
    star = shapes.draw_shape("star", drawing, shapes.image_rng(0, "star", 0))
    (root / "train" / "cat" / "0.png").write_bytes(encode(star, "PNG"))
    resized = star.resize((80, 60))  # the same picture, resized and saved as a JPEG
    (root / "test" / "cat" / "resized-copy.jpg").write_bytes(encode(resized, "JPEG", quality=85))
    (root / "train" / "dog" / "same-file.png").write_bytes(
        (root / "train" / "dog" / "1.png").read_bytes()
    )
    sources.write_raw(folder_params(root), tmp_path / "raw")
    done = split.write_processed(
        tmp_path / "raw", tmp_path / "out", params.ProcessParams(), "lenet5"
    )
    report = done.duplicates
    assert report["groups"] == 2 and report["groups_across_given_splits"] == 1
    across = report["examples"][0]
    assert across["across_given_splits"] == ["test", "train"]
    assert across["files"] == ["train/cat/0.png", "test/cat/resized-copy.jpg"]
    same = report["examples"][1]
    assert len(same["splits"]) == 1 and same["files"][1].endswith("same-file.png")
    assert done.resolved == {"channels": 3, "image_size": 32}
    test = dataset.read_split(tmp_path / "out", "test")
    assert len(test.labels) == 7 and all(f.startswith("test/") for f in test.files)

    # Two processes, a few images a chunk (the confirmation of the pairs included): the same
    # bytes.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parallel, "CHUNK", 3)
        again = split.write_processed(
            tmp_path / "raw", tmp_path / "again", params.ProcessParams(), "lenet5", processes=2
        )
    assert again == done
    assert contents(tmp_path / "again") == contents(tmp_path / "out")


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_images_are_decoded_where_the_folder_is_and_must_be_there(tmp_path):
    from image_folders import folder_params, make_split_folder

    root = make_split_folder(tmp_path / "photos", {"train": 4, "test": 2})
    sources.write_raw(folder_params(root), tmp_path / "raw")
    process = params.ProcessParams()
    (root / "train" / "dog" / "1.png").write_bytes((root / "train" / "dog" / "2.png").read_bytes())
    with pytest.raises(CnnpipeError) as caught:
        split.write_processed(tmp_path / "raw", tmp_path / "out", process, "lenet5")
    expected = f"{root / 'train' / 'dog' / '1.png'} changed after the generate stage read it"
    assert str(caught.value) == f"{expected}; run dvc repro again"
    root.rename(tmp_path / "moved")
    with pytest.raises(CnnpipeError) as caught:
        split.write_processed(tmp_path / "raw", tmp_path / "out", process, "lenet5")
    message = str(caught.value)
    assert f"read from the folder {str(root)!r}, which is not here" in message
    assert "`dvc pull` it" in message and "set generate.folder to your copy" in message


def test_the_bundled_sources_have_no_false_duplicates(tmp_path):
    """Hashes of 8 px digits agree for different drawings; the pixels tell them apart."""
    from cnnpipe.core.dataset import LABELS_FILE, read_raw_table
    from cnnpipe.data import duplicates

    sources.write_raw(params.parse({"generate": {"source": "digits"}}).generate, tmp_path)
    images = read_raw_table(tmp_path / LABELS_FILE)
    assert len(images) == 1797 and not any(image.colour for image in images)
    assert duplicates.groups(images, tmp_path) == []
