"""Serving settings from CNNPIPE_* variables."""

import pytest

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.serve import record
from cnnpipe.serve.settings import Settings, api_key, cores, settings_from_env


def test_settings_come_from_env_and_bad_values_name_the_variable():
    assert settings_from_env({"CNNPIPE_MAX_BATCH_SIZE": "8"}).max_batch_size == 8
    assert settings_from_env({"CNNPIPE_RUNTIME": "torch"}).runtime == "torch"
    with pytest.raises(CnnpipeError, match="CNNPIPE_MAX_BATCH_SIZE='lots'"):
        settings_from_env({"CNNPIPE_MAX_BATCH_SIZE": "lots"})
    with pytest.raises(CnnpipeError, match="CNNPIPE_RUNTIME='tensorrt'"):
        settings_from_env({"CNNPIPE_RUNTIME": "tensorrt"})


def test_workers_and_threads_default_to_the_cores():
    default = Settings()
    assert default.worker_count == cores()
    assert default.worker_count * default.model_threads == cores()
    one = Settings(workers=1)
    assert (one.worker_count, one.model_threads) == (1, cores())
    assert Settings(workers=3, threads=2).model_threads == 2


def test_in_the_project_root_the_workspace_model_is_served(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert settings_from_env({}).model == "cnnpipe:latest"
    packaged = record.Record(
        model="cnnpipe:0123456789abcdef",
        bento=None,
        sha256={},
        labels={},
        metadata={},
        registered=None,
    )
    record.write(packaged, tmp_path / record.RECORD)
    assert settings_from_env({}).model == "cnnpipe:0123456789abcdef"
    assert settings_from_env({"CNNPIPE_MODEL": "cnnpipe:other"}).model == "cnnpipe:other"


def test_the_api_key_comes_from_the_variable_or_a_file_and_is_never_shown(tmp_path):
    assert api_key(settings_from_env({})) is None
    assert api_key(settings_from_env({"CNNPIPE_API_KEY": "k3y"})) == b"k3y"
    secret = tmp_path / "key"
    secret.write_text("fr0m-a-file\n")  # as `echo key > file` writes it
    assert api_key(settings_from_env({"CNNPIPE_API_KEY_FILE": str(secret)})) == b"fr0m-a-file"
    assert "k3y" not in repr(settings_from_env({"CNNPIPE_API_KEY": "k3y"}))
    with pytest.raises(CnnpipeError, match="both set; set one"):
        settings_from_env({"CNNPIPE_API_KEY": "k3y", "CNNPIPE_API_KEY_FILE": str(secret)})
    with pytest.raises(CnnpipeError, match=r"CNNPIPE_API_KEY=\(hidden\)") as empty:
        settings_from_env({"CNNPIPE_API_KEY": ""})  # e.g. ${KEY} of an unset KEY: not open
    assert "''" not in str(empty.value)
    with pytest.raises(CnnpipeError, match="cannot be read .No such file"):
        api_key(settings_from_env({"CNNPIPE_API_KEY_FILE": str(tmp_path / "missing")}))
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(CnnpipeError, match="is empty"):
        api_key(settings_from_env({"CNNPIPE_API_KEY_FILE": str(tmp_path / "blank")}))
