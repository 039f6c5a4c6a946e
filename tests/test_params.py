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
    ],
)
def test_bad_values_name_the_key_the_value_and_the_choices(raw, expected):
    with pytest.raises(ParamsError) as caught:
        params.parse(raw)
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


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
