"""One dataclass feeds the CLI, the MLproject and experiments.yaml: these tests keep them from drifting."""

import importlib
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import click
import pytest
import yaml

from pipeline.errors import SettingsError
from pipeline.settings import MODEL_FIELDS, TrainSettings, settings_from_mapping
from pipeline.files import child_python_path
from tests.conftest import PROJECT_DIR, run_module


def mlproject():
    return yaml.safe_load((PROJECT_DIR / "MLproject").read_text())


def command_options(module: str) -> dict[str, click.Option]:
    """The options of `python -m pipeline.MODULE` by MLproject parameter name (`--max-steps` -> max_steps)."""
    command = importlib.import_module(f"pipeline.{module}").main
    return {p.opts[0].removeprefix("--").replace("-", "_"): p for p in command.params if isinstance(p, click.Option)}


def same_default(param_default, option_default) -> bool:
    if isinstance(option_default, bool):  # passed as `--compile false`
        return str(param_default).lower() == str(option_default).lower()
    if isinstance(option_default, (int, float)):
        return float(param_default) == float(option_default)
    if isinstance(option_default, tuple):  # a repeatable option: the MLproject joins its values with commas
        return str(param_default) == ",".join(option_default)
    if option_default is not None and Path(option_default).is_absolute():  # a file of the project, e.g. --file
        return PROJECT_DIR / param_default == Path(option_default)
    return (param_default or None) == (option_default or None)  # "" and None both mean not given


def test_every_entry_point_takes_every_option_with_its_default():
    """What a user can say to a command they can say through `mlflow run`, with the same default; train's
    options take theirs from TrainSettings, so this keeps the MLproject equal to pipeline/settings.py."""
    for name, entry in mlproject()["entry_points"].items():
        options = command_options(name)
        # model overrides: `mlflow run -P n_layer=2` passes them on when given, and only then
        passed_through = set(MODEL_FIELDS) if name == "train" else set()
        assert set(entry["parameters"]) == set(options) - passed_through, name
        for param, spec in entry["parameters"].items():
            default = spec.get("default") if isinstance(spec, dict) else None  # `run_id: string`: required
            assert (default is None) == options[param].required, (name, param)
            if default is not None:
                assert same_default(default, options[param].default), (name, param, default, options[param].default)


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


@pytest.mark.parametrize("args, message", [
    (["pipeline.train", "--help"], None),
    (["pipeline.sweep", "--help"], None),
    (["pipeline.report", "--help"], None),
    (["pipeline.train", "--corpus", "no-such-corpus"], "unknown corpus 'no-such-corpus'"),
    (["pipeline.train", "--corpus", "/no/such/file.txt"], "corpus path not found"),
    (["pipeline.train", "--config", "huge"], "unknown config 'huge'"),
    (["pipeline.train", "--n-embd", "33", "--n-head", "2"], "must be a multiple of n_head"),
    (["pipeline.train", "--tokenizer", "bpe:3"], "unknown tokenizer 'bpe:3'"),
    (["pipeline.train", "--tokenizer", "bpe:x"], "unknown tokenizer 'bpe:x'"),
    (["pipeline.train", "--tokenizer", "bpe:70000"], "unknown tokenizer 'bpe:70000'"),
    (["pipeline.train", "--tokenizer", "wordpiece"], "unknown tokenizer 'wordpiece'"),
    (["pipeline.sweep", "--name", "no-such-sweep"], "unknown sweep 'no-such-sweep'"),
])
def test_options_are_parsed_and_checked_without_loading_torch_or_mlflow(args, message):
    # what a learner waits for on a typo: python's start, click and our checks, not seconds of imports
    result = run_module(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not {"torch", "mlflow"} & imported
    if message is None:
        assert result.returncode == 0 and "Usage:" in result.stdout
    else:
        errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], errors


def test_a_command_leaves_its_objects_to_the_os_at_exit():
    # the cycle collector's pass over torch's and MLflow's objects at teardown cost ~1.3 s of every short run
    probe = ("import atexit, gc; atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0)); "
             "from pipeline.errors import run_cli; from pipeline.train import main; run_cli(main, ['--help'])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_DIR, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": child_python_path()}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "frozen at exit: True"


@pytest.mark.parametrize("text", ["", "# n_layer: 4\n", "{}\n"])
def test_a_model_yaml_that_sets_no_field_is_refused(tmp_path, text):
    # an empty file would train the default shape without a word: almost always a mistake
    path = tmp_path / "model.yaml"
    path.write_text(text)
    result = run_module("pipeline.train", "--config", str(path), "--corpus", "tiny", "--max-steps", "1")
    errors = result.stderr.splitlines()
    assert result.returncode == 2 and len(errors) == 1 and "sets no GPTConfig field" in errors[0], errors


@pytest.mark.parametrize("tokenizer, rows", [("gpt2", 50304), ("bytes", 320), ("bpe:256", 320), ("bpe:300", 320),
                                             ("bpe:4096", 4160), ("bpe:65535", 65536)])
def test_the_embedding_is_the_tokenizers_vocabulary_padded_to_64(tokenizer, rows):
    assert TrainSettings(tokenizer=tokenizer).validate().model_config().vocab_size == rows


def test_a_yaml_vocabulary_smaller_than_the_tokenizers_is_refused(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("vocab_size: 300\n")
    assert TrainSettings(config=str(path), tokenizer="bytes").model_config().vocab_size == 300
    with pytest.raises(SettingsError, match="hold the tokenizer's 50257 tokens"):
        TrainSettings(config=str(path)).validate()


def test_options_given_are_those_on_the_command_line_even_at_their_defaults(monkeypatch):
    """A resume compares what the user gave with the run's own: --tokenizer gpt2 is given, though the default.
    `mlflow run` passes every MLproject parameter: under it ($MLFLOW_RUN_ID) a default counts as not given."""
    import click
    from click.testing import CliRunner

    from pipeline.settings import options_given, settings_options

    seen = {}

    @click.command()
    @settings_options
    def command(**options):
        seen["given"] = options_given(click.get_current_context())

    args = ["--resume", "r", "--tokenizer", "gpt2", "--lr", "0.01", "--eval-corpus", "verdict"]
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert CliRunner().invoke(command, args).exit_code == 0
    assert seen["given"] == {"resume", "tokenizer", "lr", "eval_corpus"}
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    assert CliRunner().invoke(command, args).exit_code == 0
    assert seen["given"] == {"resume", "lr", "eval_corpus"}
