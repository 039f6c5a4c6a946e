from cnnpipe.core import params
from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.train import recipe


def test_auto_params_take_the_architectures_recipe_and_set_ones_stay():
    for name, arch in ARCHITECTURES.items():
        p = params.parse({"train": {"model": name}}).train
        resolved, chosen = recipe.resolve(p)
        assert chosen == {k: getattr(arch.recipe, k) for k in recipe.RECIPE_KEYS}
        assert all(getattr(resolved, k) == v for k, v in chosen.items())
    p = params.parse({"train": {"model": "resnet18", "learning_rate": 0.3}}).train
    resolved, chosen = recipe.resolve(p)
    assert resolved.learning_rate == 0.3 and "learning_rate" not in chosen
    assert resolved.epochs == ARCHITECTURES["resnet18"].recipe.epochs


def test_auto_is_the_only_word_a_number_param_takes():
    for value, ok in [("auto", True), (0.01, True), ("fast", False), (-1.0, False)]:
        try:
            params.parse({"train": {"learning_rate": value}})
            assert ok, value
        except params.ParamsError as exc:
            assert not ok and "train.learning_rate" in str(exc) and "or auto" in str(exc)
