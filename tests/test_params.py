import pytest
import yaml
from conftest import REPO, run_stage, tiny_params

from cnnpipe.core import params
from cnnpipe.core.params import ParamsError


def test_committed_params_yaml_is_valid_and_lists_every_key():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    parsed = params.parse(raw)
    # `dvc exp run -S section.key=...` only works for keys written in params.yaml.
    assert raw == parsed.model_dump()


def test_defaults_fill_missing_sections():
    assert params.parse({}).train.model == "lenet5"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"model": "vgg16"}}, ["train.model", "'vgg16'", "lenet5", "densenet121"]),
        ({"train": {"epochs": -1}}, ["train.epochs", "-1"]),
        ({"train": {"epocs": 3}}, ["train", "unknown key 'epocs'", "epochs"]),
        ({"generate": {"classes": ["circle", "blob"]}}, ["generate.classes", "'blob'", "hexagon"]),
        ({"process": {"val_ratio": 0.6, "test_ratio": 0.5}}, ["process", "val_ratio + test_ratio"]),
        ({"trian": {}}, ["unknown key 'trian'", "train"]),
        ({"generate": {"min_scale": 0.9, "max_scale": 0.5}}, ["min_scale", "max_scale"]),
        ({"process": {"seed": -1}}, ["process.seed: -1", "greater than or equal to 0"]),
        ({"generate": {"seed": -1}}, ["generate.seed: -1", "greater than or equal to 0"]),
        ({"train": {"seed": 1e20}}, ["train.seed: 1e+20", "a whole number"]),
        ({"train": {"seed": 2**32}}, ["train.seed: 4294967296", "less than or equal to"]),
        ({"train": {"learning_rate": float("inf")}}, ["train.learning_rate: inf", "finite"]),
        ({"train": {"learning_rate": float("nan")}}, ["train.learning_rate: nan", "finite"]),
        ({"train": {"epochs": True}}, ["train.epochs: true", "a whole number"]),
        ({"train": {"epochs": 2.5}}, ["train.epochs: 2.5", "a whole number"]),
        ({"train": {"augment": "yes"}}, ["train.augment: 'yes'", "true or false"]),
        ({"train": {"flip": 1}}, ["train.flip: 1", "true or false"]),
        ({"process": {"image_size": 31}}, ["process.image_size: 31", "lenet5", "exactly 32"]),
        ({"process": {"image_size": 64}}, ["process.image_size: 64", "lenet5", "exactly 32"]),
        (
            {"process": {"image_size": 8}, "train": {"model": "resnet18"}},
            ["process.image_size: 8 is below 32 px", "resnet18", "32 or more"],
        ),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_choices(raw, expected):
    with pytest.raises(ParamsError) as caught:
        params.parse(raw)
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_a_model_that_takes_the_size_passes():
    parsed = params.parse({"process": {"image_size": 64}, "train": {"model": "resnet18"}})
    assert parsed.process.image_size == 64


def test_floats_are_read_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S train.learning_rate=1e-6` writes `1e-06`, a string to YAML 1.1."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rate: 1e-06\n  max_rotation: 2E+1\n  epochs: 3\n")
    loaded = params.load(path).train
    assert loaded.learning_rate == 1e-06 and loaded.max_rotation == 20.0 and loaded.epochs == 3
    path.write_text("train:\n  augment: yes\n")  # `-S train.augment=yes`: the word, to DVC
    with pytest.raises(ParamsError, match="train.augment: 'yes' is invalid"):
        params.load(path)
    path.write_text("train:\n  augment: true\n  flip: False\n")
    assert params.load(path).train.augment is True
    path.write_text("train:\n  learning_rate: .inf\n")
    with pytest.raises(ParamsError, match="train.learning_rate: inf is invalid"):
        params.load(path)


def test_load_reports_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        params.load(path)


def test_bad_params_stop_the_stage_with_one_line(tmp_path):
    params = tiny_params()
    params["train"]["model"] = "vgg16"
    result = run_stage("train", params, tmp_path, "processed", "models/model.pt", "live")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "train.model" in result.stderr and "'vgg16'" in result.stderr
    assert "lenet5" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
