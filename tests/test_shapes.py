import numpy as np

from cnnpipe.core import params
from cnnpipe.data import parallel, shapes, sources


def test_same_seed_gives_the_same_pixels_and_another_seed_does_not():
    p = params.parse({}).generate
    first = shapes.draw_shape("star", p, shapes.image_rng(0, "star", 3))
    again = shapes.draw_shape("star", p, shapes.image_rng(0, "star", 3))
    other = shapes.draw_shape("star", p, shapes.image_rng(1, "star", 3))
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_an_image_does_not_depend_on_the_class_list_order():
    a = params.parse({"generate": {"classes": ["circle", "cross"]}}).generate
    b = params.parse({"generate": {"classes": ["cross", "circle"]}}).generate
    first = dict((n, np.asarray(i)) for n, _, i in sources.shape_items(a))
    second = dict((n, np.asarray(i)) for n, _, i in sources.shape_items(b))
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_every_shape_draws_at_the_configured_size():
    p = params.parse({"generate": {"image_size": 40}}).generate
    for shape in params.SHAPES:
        image = shapes.draw_shape(shape, p, shapes.image_rng(0, shape, 0))
        assert image.size == (40, 40) and image.mode == "RGB"
        assert np.asarray(image).std() > 10  # a shape was drawn, not a blank canvas


def test_write_raw_is_deterministic_to_the_byte_on_any_number_of_processes(tmp_path, monkeypatch):
    p = params.parse({"generate": {"classes": ["square", "hexagon"], "images_per_class": 4}})
    counts = sources.write_raw(p.generate, tmp_path / "a", processes=1).counts
    monkeypatch.setattr(parallel, "CHUNK", 3)  # three chunks, over two processes
    sources.write_raw(p.generate, tmp_path / "b", processes=2)
    assert counts == {"square": 4, "hexagon": 4}
    files = sorted(f.relative_to(tmp_path / "a") for f in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 9  # 8 images + labels.csv
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
