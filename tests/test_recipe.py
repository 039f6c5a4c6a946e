from cnnpipe.core import params
from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.train import recipe


def test_auto_params_take_the_architectures_recipe_and_set_ones_stay():
    for name, arch in ARCHITECTURES.items():
        p = params.parse({"train": {"model": name}}).train
        resolved, chosen = recipe.resolve(p, 1)
        assert chosen == {k: getattr(arch.recipe, k) for k in recipe.RECIPE_KEYS} | {"flip": False}
        assert all(getattr(resolved, k) == v for k, v in chosen.items())
    p = params.parse({"train": {"model": "resnet18", "learning_rate": 0.3}}).train
    resolved, chosen = recipe.resolve(p, 3)
    assert resolved.learning_rate == 0.3 and "learning_rate" not in chosen
    assert resolved.flip is True  # colour pictures are mirrored; grey ones (digits) are not
    assert recipe.resolve(p.model_copy(update={"flip": False}), 3)[0].flip is False
    assert resolved.epochs == ARCHITECTURES["resnet18"].recipe.epochs


def test_auto_is_the_only_word_a_number_param_takes():
    for value, ok in [("auto", True), (0.01, True), ("fast", False), (-1.0, False)]:
        try:
            params.parse({"train": {"learning_rate": value}})
            assert ok, value
        except params.ParamsError as exc:
            assert not ok and "train.learning_rate" in str(exc) and "or auto" in str(exc)
