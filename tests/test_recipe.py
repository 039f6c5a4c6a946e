from cnnpipe.core import params
from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.train import recipe


def test_auto_params_take_the_architectures_recipe_and_set_ones_stay():
    for name, arch in ARCHITECTURES.items():
        p = params.parse({"train": {"model": name}}).train
        resolved, chosen = recipe.resolve(p, 1, arch.min_size)
        assert chosen == {k: getattr(arch.recipe, k) for k in recipe.RECIPE_KEYS} | {"flip": False}
        assert all(getattr(resolved, k) == v for k, v in chosen.items())
        assert resolved.crop_scale == 1.0  # the bundled sources, at min_size, are never cropped
    p = params.parse({"train": {"model": "resnet18", "learning_rate": 0.3}}).train
    resolved, chosen = recipe.resolve(p, 3, 32)
    assert resolved.learning_rate == 0.3 and "learning_rate" not in chosen
    assert resolved.flip is True  # colour pictures are mirrored; grey ones (digits) are not
    assert recipe.resolve(p.model_copy(update={"flip": False}), 3, 32)[0].flip is False
    assert resolved.epochs == ARCHITECTURES["resnet18"].recipe.epochs


def test_pictures_above_the_smallest_input_take_the_pictures_recipe():
    resnet = ARCHITECTURES["resnet18"]
    assert resnet.pictures is not None and resnet.pictures.crop_scale < 1.0
    p = params.parse({"train": {"model": "resnet18"}}).train
    for size in (48, 64):  # a folder's pictures, process.image_size: auto
        resolved, chosen = recipe.resolve(p, 3, size)
        assert chosen["epochs"] == resolved.epochs == resnet.pictures.epochs
        assert chosen["crop_scale"] == resolved.crop_scale == resnet.pictures.crop_scale
    assert recipe.resolve(p, 3, 32)[0].crop_scale == 1.0
    mild = p.model_copy(update={"crop_scale": 0.8, "epochs": 5})
    resolved, chosen = recipe.resolve(mild, 3, 64)  # set values win over the recipe
    assert (resolved.crop_scale, resolved.epochs) == (0.8, 5) and "crop_scale" not in chosen
    lenet = ARCHITECTURES["lenet5"]  # one size only, one recipe
    assert lenet.recipe_for(64) == lenet.recipe_for(32) == lenet.recipe


def test_auto_is_the_only_word_a_number_param_takes():
    for value, ok in [("auto", True), (0.01, True), ("fast", False), (-1.0, False)]:
        try:
            params.parse({"train": {"learning_rate": value}})
            assert ok, value
        except params.ParamsError as exc:
            assert not ok and "train.learning_rate" in str(exc) and "or auto" in str(exc)
