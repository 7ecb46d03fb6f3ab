"""One dataclass feeds the CLI, the MLproject and experiments.yaml: these tests keep them from drifting."""

import re
from dataclasses import fields

import pytest
import yaml

from pipeline.errors import SettingsError
from pipeline.settings import MODEL_FIELDS, TrainSettings, settings_from_mapping
from tests.conftest import PROJECT_DIR, run_module


def mlproject():
    return yaml.safe_load((PROJECT_DIR / "MLproject").read_text())


def test_mlproject_train_parameters_match_the_settings_defaults():
    params = mlproject()["entry_points"]["train"]["parameters"]
    for f in fields(TrainSettings):
        if f.name in MODEL_FIELDS:
            assert f.name not in params  # passed through by `mlflow run` only when given
            continue
        default = params[f.name]["default"]
        if isinstance(f.default, bool):
            assert str(default).lower() == str(f.default).lower(), f.name
        elif isinstance(f.default, (int, float)):
            assert float(default) == float(f.default), f.name
        else:
            assert default == f.default, f.name


def test_mlproject_commands_pass_every_parameter_by_its_option():
    for name, entry in mlproject()["entry_points"].items():
        for param in entry["parameters"]:
            option = "--" + param.replace("_", "-")
            assert f"{option} {{{param}}}" in entry["command"], (name, param)
        assert entry["command"].startswith(f"python -m pipeline.{name}")


def test_every_setting_is_an_option_with_help():
    result = run_module("pipeline.train", "--help")
    assert result.returncode == 0
    for f in fields(TrainSettings):
        assert "--" + f.name.replace("_", "-") in result.stdout, f.name
    assert "--n_layer" in result.stdout  # the spelling `mlflow run -P n_layer=2` passes through


@pytest.mark.parametrize("module", ["download", "tokenize", "train", "generate"])
def test_every_entry_point_explains_itself(module):
    result = run_module(f"pipeline.{module}", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 5


def test_mapping_builds_settings_and_refuses_unknown_keys_and_wrong_types():
    s = settings_from_mapping({"lr": 1, "max_steps": 5, "n_layer": 2}, where="sweep x")
    assert s.lr == 1.0 and isinstance(s.lr, float) and s.max_steps == 5 and s.n_layer == 2
    with pytest.raises(SettingsError, match=re.escape("sweep x: unknown setting 'learning_rate'")):
        settings_from_mapping({"learning_rate": 1e-3}, where="sweep x")
    with pytest.raises(SettingsError, match="'max_steps' must be int"):
        settings_from_mapping({"max_steps": "many"})
    with pytest.raises(SettingsError, match="'max_steps' must be int"):
        settings_from_mapping({"max_steps": True})


def test_validation_names_the_setting():
    with pytest.raises(SettingsError, match="min_lr must be between 0 and lr"):
        TrainSettings(lr=1e-4, min_lr=1e-3).validate()
    with pytest.raises(SettingsError, match="dropout must be in"):
        TrainSettings(dropout=1.5).validate()
    assert TrainSettings().validate().model_config().n_layer == 6


def test_blank_names_mean_not_given():
    settings = TrainSettings(run_name="  ", resume=" \t", prompt="   ")
    assert (settings.run_name, settings.resume, settings.prompt) == ("", "", "")
    assert TrainSettings(prompt=" The").prompt == " The"  # a prompt with text keeps its spaces
    for name in ("corpus", "config", "experiment"):
        with pytest.raises(SettingsError, match=f"{name} must not be empty"):
            TrainSettings(**{name: " "}).validate()
