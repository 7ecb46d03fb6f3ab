"""Sweeps in experiments.yaml (sweeps/spec.py): the shipped exercises, a sweep found by name and scale, grid and
random expansion, and a file refused whole, naming the sweep and key, before anything runs."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.errors import SettingsError
from pipeline.sweeps.spec import load_sweep, load_sweeps
from tests.conftest import TINY_MODEL_FIELDS, assert_one_line_error, run_command

TINY_BASE = {"corpus": "tiny", **TINY_MODEL_FIELDS, "epochs": 100, "max_steps": 6, "warmup_steps": 2,
             "log_interval": 1, "eval_interval": 3, "sample_interval": 6, "sample_tokens": 8}


def write_sweeps(path, sweeps: dict):
    path.write_text(yaml.safe_dump({"sweeps": sweeps}, sort_keys=False))
    return path


EXERCISES = ("memorization", "lr_sensitivity", "context_length", "scaling", "optimizers")


def test_shipped_sweeps_cover_the_learning_exercises_at_both_scales():
    sweeps = load_sweeps()
    assert {f"{name}_{scale}" for name in EXERCISES for scale in ("cpu", "gpu")} | {"smoke"} <= set(sweeps)
    assert [p.settings.lr for p in sweeps["lr_sensitivity_gpu"].points] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    assert [p.settings.context_length for p in sweeps["context_length_gpu"].points] == [64, 128, 256]
    assert [p.settings.config for p in sweeps["scaling_gpu"].points] == ["nano", "small", "medium"]
    for scale in ("cpu", "gpu"):
        memorization = sweeps[f"memorization_{scale}"].points
        assert [p.settings.corpus for p in memorization] == ["verdict", "tinystories"]
        for name in EXERCISES:  # every run of an exercise sees the same number of tokens
            points = sweeps[f"{name}_{scale}"].points
            assert len({p.settings.max_tokens for p in points}) == 1 and points[0].settings.max_tokens > 0, name
    rates = [p.settings.lr for p in sweeps["lr_sensitivity_cpu"].points]
    assert len(rates) >= 4 and max(rates) / min(rates) >= 10 ** 1.5  # 1.5 decades at least
    assert len({p.settings.context_length for p in sweeps["context_length_cpu"].points}) == 3
    widths = [p.settings.model_config() for p in sweeps["scaling_cpu"].points]
    non_embedding = [12 * c.n_layer * c.n_embd ** 2 for c in widths]  # attention + MLP weights per block
    assert len(non_embedding) >= 4 and max(non_embedding) / min(non_embedding) >= 10  # a decade at least


def test_an_exercise_is_found_by_its_name_at_the_scale_asked(tmp_path):
    assert load_sweep("memorization", scale="cpu").name == "memorization_cpu"
    assert load_sweep("scaling", scale="gpu").name == "scaling_gpu"
    assert load_sweep("lr_sensitivity").name == "lr_sensitivity_cpu"  # no CUDA GPU on the test machines
    assert load_sweep("smoke", scale="gpu").name == "smoke"  # a sweep of one scale is itself at any scale
    path = write_sweeps(tmp_path / "e.yaml", {"only_gpu": {"base": TINY_BASE, "method": "grid",
                                                            "parameters": {"lr": {"values": [0.01]}}}})
    with pytest.raises(SettingsError, match="sweep 'only' has no cpu scale"):
        load_sweep("only", path, scale="cpu")
    with pytest.raises(SettingsError, match="unknown sweep 'nope'"):
        load_sweep("nope", path)
    assert_one_line_error(run_command("pipeline.sweep", "--name", "scaling", "--scale", "tpu", "--dry-run"),
                          "'tpu' is not one of")


def test_grid_is_the_cross_product_and_random_is_seeded_and_in_range(tmp_path):
    path = write_sweeps(tmp_path / "e.yaml", {
        "g": {"base": TINY_BASE, "method": "grid",
              "parameters": {"lr": {"values": [0.01, 0.003]}, "batch_size": {"values": [2, 4, 8]}}},
        "r": {"base": TINY_BASE, "method": "random", "run_cap": 5, "seed": 3,
              "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                             "batch_size": {"values": [2, 4]}}},
    })
    sweeps = load_sweeps(path)
    grid = [(p.settings.lr, p.settings.batch_size) for p in sweeps["g"].points]
    assert sorted(grid) == sorted((lr, b) for lr in (0.01, 0.003) for b in (2, 4, 8))
    draws = [(p.settings.lr, p.settings.batch_size) for p in sweeps["r"].points]
    assert len(draws) == 5 and all(1e-4 <= lr <= 1e-2 and b in (2, 4) for lr, b in draws)
    assert draws == [(p.settings.lr, p.settings.batch_size) for p in load_sweeps(path)["r"].points]
    assert sweeps["g"].swept == ["batch_size", "lr"]


def one_sweep(base: dict | None = None, **spec) -> dict:
    """A file of one sweep 's' on TINY_BASE (or base), with spec's keys beside it."""
    return {"s": {"base": TINY_BASE if base is None else base, **spec}}


ONE_LR = {"lr": {"values": [0.1]}}
BAD_SWEEPS = [
    (one_sweep(parameters=ONE_LR, methd="grid"), "sweep 's': unknown key 'methd'"),
    (one_sweep(method="hyperopt", parameters=ONE_LR), "method must be one of"),
    (one_sweep(parameters={"learning_rate": {"values": [0.1]}}), "unknown parameter 'learning_rate'"),
    (one_sweep(parameters={"lr": {"values": []}}), "values must be a non-empty list"),
    (one_sweep(parameters={}), "'parameters' must map at least one setting"),
    (one_sweep(parameters={"batch_size": {"values": ["big"]}}), "'batch_size' must be int"),
    (one_sweep(parameters={"lr": [0.1, 0.2]}), "give values: [...] or value: x"),
    (one_sweep({**TINY_BASE, "epoch": 3}, parameters=ONE_LR), "base: unknown setting 'epoch'"),
    (one_sweep({**TINY_BASE, "max_steps": "ten"}, parameters=ONE_LR), "'max_steps' must be int"),
    (one_sweep(method="list"), "'runs' must be a non-empty list"),
    (one_sweep(method="list", runs=[{"lr": 0.1}, {"lr": 0.1}]), "two runs have the same settings"),
    (one_sweep(method="random", parameters=ONE_LR), "needs run_cap"),
    (one_sweep(method="random", run_cap=2, parameters={"lr": {"distribution": "normal", "min": 0.1, "max": 0.2}}),
     "distribution must be one of"),
    (one_sweep(method="random", run_cap=2, parameters={"lr": {"distribution": "uniform", "min": 0.2, "max": 0.1}}),
     "min < max"),
    (one_sweep(parameters=ONE_LR, metric={"name": "val_loss", "goal": "lowest"}), "goal must be minimize or maximize"),
    (one_sweep(parameters={"lr": {"values": [-1.0]}}), "lr must be a positive number"),
    ({"s": ["lr"]}, "sweep 's': must be a mapping"),
    ({}, "defines no sweeps"),
]


@pytest.mark.parametrize("sweeps, message", BAD_SWEEPS)
def test_invalid_experiments_files_are_refused_with_the_sweep_and_key(tmp_path, sweeps, message):
    path = write_sweeps(tmp_path / "e.yaml", sweeps)
    with pytest.raises(SettingsError) as caught:
        load_sweeps(path)
    assert message in str(caught.value)


def test_one_bad_sweep_stops_the_whole_file_before_anything_runs(tmp_path, store):
    path = write_sweeps(tmp_path / "e.yaml", {
        "good": {"base": TINY_BASE, "parameters": {"lr": {"values": [0.01]}}},
        "bad": {"base": TINY_BASE, "parameters": {"lr": {"values": ["fast"]}}},
    })
    result = run_command("pipeline.sweep", "--name", "good", "--file", str(path))
    assert_one_line_error(result, "sweep 'bad'", "'lr' must be float")
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(store).search_runs(
        [e.experiment_id for e in MlflowClient(store).search_experiments()])
    assert_one_line_error(run_command("pipeline.sweep", "--name", "nope"), "unknown sweep 'nope'")


def test_the_tokenizers_exercise_compares_three_tokenizers_on_one_model_at_both_scales():
    for scale in ("cpu", "gpu"):
        sweep = load_sweep("tokenizers", scale=scale)
        assert sweep.name == f"tokenizers_{scale}"
        points = sweep.points
        assert [p.settings.tokenizer for p in points] == ["gpt2", "bpe:4096", "bytes"]
        shapes = {(c.n_layer, c.n_head, c.n_embd) for c in (p.settings.model_config() for p in points)}
        assert len(shapes) == 1  # the same model but for its vocabulary and context
        # a wall-clock budget: the cheaper a token, the more tokens the run is given
        budgets = [p.settings.max_tokens for p in points]
        assert budgets[0] < budgets[1] < budgets[2]


def test_the_tokenizers_sweep_lists_its_three_runs_in_a_dry_run():
    result = run_command("pipeline.sweep", "--name", "tokenizers", "--scale", "cpu", "--dry-run")
    assert result.returncode == 0, result.stderr
    for tokenizer in ("gpt2", "bpe:4096", "bytes"):
        assert tokenizer in result.stdout
